//! An in-process fake coordinator for the session tests: a real tonic `WorkerService`
//! on `127.0.0.1:0` that hands every session to the test, which scripts the
//! coordinator's side frame by frame; or, as a follower, answers every session with the
//! not-leader status (naming a leader or not) and counts the refusals.

use std::time::Duration;

use gatehouse_common::exec::{AttemptRef, GateResult};
use gatehouse_common::spawn::spawn_named;
use gatehouse_proto::convert::attempt_from_wire;
use gatehouse_proto::leader::not_leader;
use gatehouse_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use gatehouse_proto::v1::{
    self, CoordinatorMessage, WorkerMessage, coordinator_message, worker_message,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// How long any awaited event may take before the test fails.
pub(super) const DEADLINE: Duration = Duration::from_secs(20);

/// The fake coordinator's server.
pub(super) struct Fake {
    pub(super) url: String,
    /// Sessions opened (a leader) or refused (a follower).
    sessions: mpsc::Receiver<Conn>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

/// The coordinator's ends of one session.
pub(super) struct Conn {
    from: Streaming<WorkerMessage>,
    to: mpsc::Sender<Result<CoordinatorMessage, Status>>,
}

struct Service {
    sessions: mpsc::Sender<Conn>,
    /// `Some(leader)`: answer every session as a follower that knows `leader` (if any).
    follower_of: Option<Option<String>>,
}

#[tonic::async_trait]
impl WorkerService for Service {
    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (to, rx) = mpsc::channel(64);
        let conn = Conn {
            from: request.into_inner(),
            to,
        };
        self.sessions
            .send(conn)
            .await
            .map_err(|_| Status::unavailable("test over"))?;
        match &self.follower_of {
            Some(leader) => Err(not_leader(leader.as_deref())),
            None => Ok(Response::new(ReceiverStream::new(rx))),
        }
    }
}

impl Fake {
    pub(super) async fn start() -> Self {
        Self::serve(None).await
    }

    /// A coordinator that is not the leader and names `leader` as the one that is.
    pub(super) async fn follower(leader: Option<&str>) -> Self {
        Self::serve(Some(leader.map(str::to_owned))).await
    }

    async fn serve(follower_of: Option<Option<String>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let (tx, sessions) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(Service {
                sessions: tx,
                follower_of,
            }))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        Self {
            url: format!("http://{addr}"),
            sessions,
            stop,
            task: Some(spawn_named("fake-coordinator", server)),
        }
    }

    /// The next session a worker opens (on a follower: the next one it refused).
    pub(super) async fn accept(&mut self) -> Conn {
        tokio::time::timeout(DEADLINE, self.sessions.recv())
            .await
            .expect("timed out waiting for a worker session")
            .expect("server running")
    }

    pub(super) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let served = tokio::time::timeout(DEADLINE, task).await;
            served
                .expect("server stops")
                .expect("joins")
                .expect("serves");
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Conn {
    /// The next frame; `None` once the worker closed its side or the stream failed.
    pub(super) async fn next(&mut self) -> Option<worker_message::Msg> {
        let frame = tokio::time::timeout(DEADLINE, self.from.message())
            .await
            .expect("timed out waiting for a frame from the worker");
        frame
            .ok()
            .flatten()
            .map(|m| m.msg.expect("frames carry a message"))
    }

    /// The next frame that is not a heartbeat.
    pub(super) async fn next_event(&mut self) -> Option<worker_message::Msg> {
        loop {
            match self.next().await {
                Some(worker_message::Msg::Heartbeat(_)) => {}
                other => return other,
            }
        }
    }

    /// The next heartbeat that satisfies `pred` (others are skipped; so is anything else
    /// that is not an attempt report).
    pub(super) async fn heartbeat_where(
        &mut self,
        pred: impl Fn(&v1::Heartbeat) -> bool,
    ) -> v1::Heartbeat {
        loop {
            match self.next().await {
                Some(worker_message::Msg::Heartbeat(h)) if pred(&h) => return h,
                Some(worker_message::Msg::Heartbeat(_)) => {}
                other => panic!("expected a heartbeat, got {other:?}"),
            }
        }
    }

    pub(super) async fn send(&self, msg: coordinator_message::Msg) {
        self.to
            .send(Ok(CoordinatorMessage { msg: Some(msg) }))
            .await
            .expect("session open");
    }

    /// Reads `Hello` and answers `Welcome` with a 50 ms heartbeat.
    pub(super) async fn handshake(&mut self) -> v1::Hello {
        let hello = self.hello().await;
        self.welcome().await;
        hello
    }

    /// Reads `Hello`, the first frame.
    pub(super) async fn hello(&mut self) -> v1::Hello {
        let Some(worker_message::Msg::Hello(hello)) = self.next().await else {
            panic!("expected hello first");
        };
        hello
    }

    /// Answers `Welcome` with a 50 ms heartbeat.
    pub(super) async fn welcome(&self) {
        self.send(coordinator_message::Msg::Welcome(v1::Welcome {
            heartbeat_interval_ms: 50,
            liveness_timeout_ms: 1000,
        }))
        .await;
    }

    /// Acknowledges the results of `attempts`.
    pub(super) async fn ack(&self, attempts: &[&AttemptRef]) {
        self.send(coordinator_message::Msg::Ack(v1::ResultAck {
            attempts: attempts.iter().map(|a| v1::AttemptRef::from(*a)).collect(),
        }))
        .await;
    }

    pub(super) async fn assign(&self, attempt: &AttemptRef, spec: v1::GateSpec) {
        self.send(coordinator_message::Msg::Assign(v1::Assignment {
            attempt: Some(attempt.into()),
            spec: Some(spec),
            ..Default::default()
        }))
        .await;
    }

    pub(super) async fn expect_started(&mut self, attempt: &AttemptRef) {
        match self.next_event().await {
            Some(worker_message::Msg::Started(s)) => {
                assert_eq!(&attempt_from_wire(s.attempt).expect("attempt"), attempt);
            }
            other => panic!("expected started for {attempt:?}, got {other:?}"),
        }
    }

    pub(super) async fn expect_finished(&mut self, attempt: &AttemptRef) -> GateResult {
        match self.next_event().await {
            Some(worker_message::Msg::Finished(f)) => {
                assert_eq!(&attempt_from_wire(f.attempt).expect("attempt"), attempt);
                GateResult::try_from(f.result.expect("result")).expect("result decodes")
            }
            other => panic!("expected finished for {attempt:?}, got {other:?}"),
        }
    }
}
