//! An in-process fake `PlanService` for the client tests: a real tonic server on
//! `127.0.0.1:0` playing a leader, a follower, a coordinator in an election or one
//! shutting down, and recording every call it gets.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_common::spawn::spawn_named;
use gatehouse_proto::leader::not_leader;
use gatehouse_proto::v1::plan_service_server::{PlanService, PlanServiceServer};
use gatehouse_proto::v1::{self};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How long a fake server gets to stop.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// How a fake coordinator answers.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// `Some(leader)`: a follower, answering every call not-leader naming `leader`.
    pub follower_of: Option<Option<String>>,
    /// Answers the first this many calls not-leader without a name (an election), then
    /// serves.
    pub electing: usize,
    /// Answers every call `UNAVAILABLE` (not a not-leader answer): shutting down.
    pub unavailable: bool,
    /// The events of every plan's watch, `seq` 1, 2, ...
    pub events: Vec<v1::PlanEvent>,
    /// A watch stops after this `seq` with `UNAVAILABLE`, and every later call is
    /// answered not-leader without a name: a leader that lost its lease.
    pub step_down_after: Option<u64>,
}

/// One call received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    /// `WatchPlan`'s `after_seq`.
    pub after_seq: Option<u64>,
}

struct Service {
    script: Script,
    calls: Arc<Mutex<Vec<Call>>>,
    deposed: AtomicBool,
}

impl Service {
    /// Records the call and answers as the script says; `Ok` means serve it.
    fn gate(&self, method: &'static str, after_seq: Option<u64>) -> Result<(), Status> {
        let count = {
            let mut calls = self.calls.lock().expect("calls lock");
            calls.push(Call { method, after_seq });
            calls.len()
        };
        if let Some(leader) = &self.script.follower_of {
            return Err(not_leader(leader.as_deref()));
        }
        if self.deposed.load(Ordering::SeqCst) || count <= self.script.electing {
            return Err(not_leader(None));
        }
        if self.script.unavailable {
            return Err(Status::unavailable("the coordinator is shutting down"));
        }
        Ok(())
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::PlanEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PlanService for Service {
    type WatchPlanStream = EventStream;

    async fn submit_plan(
        &self,
        _: Request<v1::SubmitPlanRequest>,
    ) -> Result<Response<v1::SubmitPlanResponse>, Status> {
        self.gate("SubmitPlan", None)?;
        Ok(Response::new(v1::SubmitPlanResponse {
            plan_id: "p-1".into(),
            gates: 1,
            items: 0,
        }))
    }

    async fn get_plan(
        &self,
        _: Request<v1::GetPlanRequest>,
    ) -> Result<Response<v1::GetPlanResponse>, Status> {
        self.gate("GetPlan", None)?;
        Ok(Response::new(v1::GetPlanResponse::default()))
    }

    async fn watch_plan(
        &self,
        request: Request<v1::WatchPlanRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let after = request.into_inner().after_seq;
        self.gate("WatchPlan", Some(after))?;
        let mut items: Vec<Result<v1::PlanEvent, Status>> = Vec::new();
        for ev in self.script.events.iter().filter(|e| e.seq > after) {
            if self.script.step_down_after.is_some_and(|s| ev.seq > s) {
                self.deposed.store(true, Ordering::SeqCst);
                items.push(Err(Status::unavailable("leadership lost")));
                break;
            }
            items.push(Ok(ev.clone()));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn cancel_plan(
        &self,
        _: Request<v1::CancelPlanRequest>,
    ) -> Result<Response<v1::CancelPlanResponse>, Status> {
        self.gate("CancelPlan", None)?;
        Ok(Response::new(v1::CancelPlanResponse { cancelled: true }))
    }

    async fn list_plans(
        &self,
        _: Request<v1::ListPlansRequest>,
    ) -> Result<Response<v1::ListPlansResponse>, Status> {
        self.gate("ListPlans", None)?;
        Ok(Response::new(v1::ListPlansResponse::default()))
    }

    async fn list_workers(
        &self,
        _: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        self.gate("ListWorkers", None)?;
        Ok(Response::new(v1::ListWorkersResponse::default()))
    }

    async fn list_flakes(
        &self,
        _: Request<v1::ListFlakesRequest>,
    ) -> Result<Response<v1::ListFlakesResponse>, Status> {
        self.gate("ListFlakes", None)?;
        Ok(Response::new(v1::ListFlakesResponse::default()))
    }
}

/// A running fake coordinator.
pub struct FakeCoordinator {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl FakeCoordinator {
    pub async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let service = Service {
            script,
            calls: calls.clone(),
            deposed: AtomicBool::new(false),
        };
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(PlanServiceServer::new(service))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        Self {
            url: format!("http://{addr}"),
            calls,
            stop,
            task: Some(spawn_named("fake-plan-service", server)),
        }
    }

    /// Every call received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// How many calls of `method` were received.
    pub fn count(&self, method: &str) -> usize {
        self.calls().iter().filter(|c| c.method == method).count()
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let served = tokio::time::timeout(STOP_DEADLINE, task).await;
            served
                .expect("server stops")
                .expect("joins")
                .expect("serves");
        }
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A URL nobody listens on: bound, then released.
pub async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    format!("http://{}", listener.local_addr().expect("addr"))
}
