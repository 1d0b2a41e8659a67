//! `gatehouse.v1.WorkerService`: one bidirectional session per worker.
//!
//! Each session is a task (owned by the server's `TaskTracker`) that turns frames into
//! scheduler messages: Hello registers the worker (`WorkerJoined`), heartbeats update its
//! memory (`WorkerCapacity`), attempt reports go to the scheduler's report channel,
//! Draining stops new assignments. A session ends when the worker closes the stream,
//! the stream fails, no frame arrives for the liveness timeout, or on shutdown; the
//! worker is then declared lost (its attempts are re-queued).
//!
//! The scheduler knows each session by its [`SessionKey`] (worker id and a generation
//! unique per process), so a reconnect racing an older session's cleanup never touches
//! the new one. A session registers itself in [`Sessions`] (see [`super::sessions`])
//! and keeps no worker state of its own: slots, memory, pressure and draining are the
//! scheduler core's.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_common::exec::FromWorker;

use gatehouse_cache::Membership;
use gatehouse_common::ids::{SessionKey, WorkerId, is_valid_id};
use gatehouse_common::spawn::spawn_tracked;
use gatehouse_proto::convert::{WireError, attempt_from_wire};
use gatehouse_proto::v1;
use gatehouse_proto::v1::worker_service_server::WorkerService;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::sessions::{Outbound, Sessions, WorkerAbout};
use crate::core::WorkerInfo;
use crate::role::{RoleWatch, current_term};
use crate::scheduler::WorkerEvent;

/// How often a session forwards cache membership changes at most.
const MEMBERS_EVERY: Duration = Duration::from_millis(100);

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Session timing.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// How often workers are asked to send a heartbeat.
    pub heartbeat_interval: Duration,
    /// No frame for this long and the worker is declared lost.
    pub liveness_timeout: Duration,
    /// How long a new session may take to send its Hello.
    pub hello_timeout: Duration,
}

/// The worker-facing service.
pub struct WorkerServiceImpl {
    /// The current term's components, or who leads.
    role: RoleWatch,
    config: SessionConfig,
    generations: Arc<AtomicU64>,
}

impl WorkerServiceImpl {
    /// A service feeding worker membership and attempt reports to the current term's
    /// scheduler (one ordered channel); `UNAVAILABLE` naming the leader while this
    /// coordinator does not lead. Sessions end with the term.
    pub fn new(role: RoleWatch, config: SessionConfig) -> Self {
        Self {
            role,
            config,
            generations: Arc::new(AtomicU64::new(1)),
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerServiceImpl {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let address = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let term = current_term(&self.role)?;
        let inbound = request.into_inner();
        let (out, out_rx) = mpsc::unbounded_channel();
        let session = Session {
            reports: term.reports.clone(),
            sessions: term.sessions.clone(),
            cache_members: term.cache_members.clone(),
            config: self.config.clone(),
            shutdown: term.token.clone(),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            address,
        };
        spawn_tracked(&term.tasks, "worker-session", session.run(inbound, out));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            out_rx,
        ))))
    }
}

/// One worker connection.
struct Session {
    reports: mpsc::Sender<WorkerEvent>,
    sessions: Sessions,
    cache_members: super::CacheMembers,
    config: SessionConfig,
    shutdown: CancellationToken,
    generation: u64,
    address: String,
}

impl Session {
    async fn run(self, mut inbound: Streaming<v1::WorkerMessage>, out: Outbound) {
        let hello = tokio::select! {
            () = self.shutdown.cancelled() => return,
            first = tokio::time::timeout(self.config.hello_timeout, inbound.message()) => first,
        };
        let hello = match hello {
            Ok(Ok(Some(v1::WorkerMessage {
                msg: Some(v1::worker_message::Msg::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                let _ = out.send(Err(Status::invalid_argument(
                    "the first message of a session must be hello",
                )));
                return;
            }
            Ok(Err(status)) => {
                tracing::debug!(%status, "worker session failed before hello");
                return;
            }
            Err(_) => {
                let _ = out.send(Err(Status::deadline_exceeded(
                    "no hello within the hello timeout",
                )));
                return;
            }
        };
        let id = match validate_hello(&hello) {
            Ok(id) => id,
            Err(e) => {
                let _ = out.send(Err(e.into()));
                return;
            }
        };
        tracing::info!(worker_id = %id, address = %self.address, slots = hello.slots,
            memory_total = hello.memory_total_bytes, "worker joined");
        let key = SessionKey::new(id.clone(), self.generation);
        let about = WorkerAbout {
            hostname: hello.hostname.clone(),
            address: self.address.clone(),
            version: hello.version.clone(),
            cache_url: hello.cache_url.clone(),
        };
        if !self.sessions.insert(&key, out.clone(), about) {
            tracing::info!(worker_id = %id, "a newer session of this worker exists; ending this one");
            let _ = out.send(Err(Status::aborted(
                "a newer session of this worker exists",
            )));
            return;
        }
        let welcome = v1::CoordinatorMessage {
            msg: Some(v1::coordinator_message::Msg::Welcome(v1::Welcome {
                heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
                liveness_timeout_ms: self.config.liveness_timeout.as_millis() as u64,
            })),
        };
        let _ = out.send(Ok(welcome));
        if !hello.cache_url.is_empty() {
            self.cache_members
                .join(id.as_str(), self.generation, &hello.cache_url);
        }
        let info = WorkerInfo {
            id: key.clone(),
            slots: hello.slots,
            memory_total: hello.memory_total_bytes,
            memory_available: hello.memory_total_bytes,
            labels: hello.labels.into_iter().collect::<BTreeMap<_, _>>(),
            memory_pressure: (hello.memory_pressure > 0.0 && hello.memory_pressure <= 1.0)
                .then_some(hello.memory_pressure),
        };
        let reported = reported_attempts(&hello.running, hello.finished);
        if self.reports.send(WorkerEvent::Joined(info)).await.is_ok()
            && self
                .reports
                .send(WorkerEvent::Reported {
                    worker: key.clone(),
                    running: reported.0,
                    finished: reported.1,
                })
                .await
                .is_ok()
        {
            self.serve(&id, &key, &mut inbound, &out).await;
        }
        self.leave(&id, &key).await;
    }

    /// Handles frames until the session ends.
    async fn serve(
        &self,
        id: &WorkerId,
        key: &SessionKey,
        inbound: &mut Streaming<v1::WorkerMessage>,
        out: &Outbound,
    ) {
        let mut deadline = Instant::now() + self.config.liveness_timeout;
        // The cache membership: sent now, then at most every MEMBERS_EVERY while it
        // changes, so N workers joining at once cost each session a few frames rather
        // than N (every frame names every node).
        let mut members = self.cache_members.subscribe();
        let send_members = |members: &mut watch::Receiver<Arc<Membership>>| {
            let frame = members.borrow_and_update().to_wire();
            let _ = out.send(Ok(v1::CoordinatorMessage {
                msg: Some(v1::coordinator_message::Msg::CacheMembers(frame)),
            }));
        };
        send_members(&mut members);
        let mut members_due: Option<Instant> = None;
        loop {
            // Biased: a frame that is already there counts before the deadline is judged,
            // so a busy coordinator never declares a talking worker lost.
            let frame = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                frame = inbound.message() => frame,
                Ok(()) = members.changed(), if members_due.is_none() => {
                    members_due = Some(Instant::now() + MEMBERS_EVERY);
                    continue;
                }
                () = sleep_until_some(members_due) => {
                    members_due = None;
                    send_members(&mut members);
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(worker_id = %id, timeout = ?self.config.liveness_timeout,
                        "no heartbeat within the liveness timeout; declaring the worker lost");
                    return;
                }
            };
            if let Ok(Some(_)) = frame {
                // Any frame is a sign of life, even one this version cannot read.
                deadline = Instant::now() + self.config.liveness_timeout;
            }
            let msg = match frame {
                Ok(Some(v1::WorkerMessage { msg: Some(msg) })) => msg,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    tracing::info!(worker_id = %id, "worker closed its session");
                    return;
                }
                Err(status) => {
                    tracing::warn!(worker_id = %id, %status, "worker session failed");
                    return;
                }
            };
            if self.reports.is_closed() {
                tracing::error!(worker_id = %id, "the scheduler is gone; ending the session");
                return;
            }
            if let Err(e) = self.on_frame(id, key, msg).await {
                tracing::warn!(worker_id = %id, error = %e, "ignoring a malformed frame");
            }
        }
    }

    async fn on_frame(
        &self,
        id: &WorkerId,
        key: &SessionKey,
        msg: v1::worker_message::Msg,
    ) -> Result<(), WireError> {
        use v1::worker_message::Msg;
        fn stopping<E>(_: E) -> WireError {
            WireError::Invalid {
                field: "session",
                reason: "coordinator is shutting down".into(),
            }
        }
        match msg {
            Msg::Heartbeat(hb) => {
                self.reports
                    .send(WorkerEvent::Capacity {
                        worker: key.clone(),
                        memory_used: hb.memory_used_bytes,
                        memory_available: hb.memory_available_bytes,
                    })
                    .await
                    .map_err(stopping)?;
            }
            Msg::Started(s) => {
                let attempt = attempt_from_wire(s.attempt)?;
                self.reports
                    .send(FromWorker::Started { attempt }.into())
                    .await
                    .map_err(stopping)?;
            }
            Msg::Finished(f) => {
                let attempt = attempt_from_wire(f.attempt)?;
                let result = f.result.ok_or(WireError::Missing("result"))?.try_into()?;
                // With the worker's session key, so a stale result can be acknowledged.
                self.reports
                    .send(WorkerEvent::Reported {
                        worker: key.clone(),
                        running: Vec::new(),
                        finished: vec![(attempt, result)],
                    })
                    .await
                    .map_err(stopping)?;
            }
            Msg::Draining(d) => {
                tracing::info!(worker_id = %id, grace_ms = d.grace_ms, "worker is draining");
                self.reports
                    .send(WorkerEvent::Draining(key.clone()))
                    .await
                    .map_err(stopping)?;
            }
            Msg::Hello(_) => {
                return Err(WireError::Invalid {
                    field: "hello",
                    reason: "sent twice in one session".into(),
                });
            }
        }
        Ok(())
    }

    /// Removes this session's entries (unless a newer session of the same worker id
    /// replaced them) and declares the worker lost.
    async fn leave(&self, id: &WorkerId, key: &SessionKey) {
        self.sessions.remove(key);
        self.cache_members.leave(id.as_str(), self.generation);
        tracing::info!(worker_id = %id, "worker left");
        let _ = self.reports.send(WorkerEvent::Lost(key.clone())).await;
    }
}

/// The attempts a Hello re-reports; malformed entries are logged and dropped.
#[allow(clippy::type_complexity)]
fn reported_attempts(
    running: &[v1::AttemptRef],
    finished: Vec<v1::AttemptFinished>,
) -> (
    Vec<gatehouse_common::exec::AttemptRef>,
    Vec<(
        gatehouse_common::exec::AttemptRef,
        gatehouse_common::exec::GateResult,
    )>,
) {
    let running = running
        .iter()
        .filter_map(|a| attempt_from_wire(Some(a.clone())).ok())
        .collect();
    let finished = finished
        .into_iter()
        .filter_map(|f| {
            let attempt = attempt_from_wire(f.attempt).ok()?;
            let result = f.result?.try_into().ok()?;
            Some((attempt, result))
        })
        .collect();
    (running, finished)
}

fn validate_hello(h: &v1::Hello) -> Result<WorkerId, WireError> {
    if !is_valid_id(&h.worker_id) {
        return Err(WireError::Invalid {
            field: "hello.worker_id",
            reason: format!("{:?} is not [A-Za-z0-9._-]{{1,128}}", h.worker_id),
        });
    }
    if !h.cache_url.is_empty() {
        gatehouse_proto::cache::check_url(&h.cache_url).map_err(|reason| WireError::Invalid {
            field: "hello.cache_url",
            reason,
        })?;
    }
    if h.slots == 0 {
        return Err(WireError::Invalid {
            field: "hello.slots",
            reason: "must be at least 1".into(),
        });
    }
    Ok(WorkerId::new(h.worker_id.clone()))
}
