//! One session with a coordinator: the handshake, then the loop that turns frames into
//! executor messages and executor reports into frames, heartbeats, and drain.
//!
//! State it owns per session: the outbox (bounded, see [`outbox_capacity`]; a full
//! outbox means the coordinator stopped reading, and the session is treated as lost
//! rather than letting the loop block), the inbound stream and the drain progress. The
//! executor, memory probe and workspace belong to [`Worker`] and outlive the session.
//!
//! The loop `select!`s, in this order: shutdown, the drain signal, the drain deadline,
//! executor reports, coordinator frames, the heartbeat tick. A session ends as:
//! - [`SessionEnd::Lost`]: the stream failed or ended, no `Welcome` came in time, or the
//!   outbox overflowed. The caller kills the running attempts and reconnects.
//! - [`SessionEnd::Drained`]: the drain finished (every attempt reported); the stream
//!   was closed and the coordinator's side awaited (bounded), so the last reports are
//!   delivered before the process exits.
//! - [`SessionEnd::Shutdown`]: every running attempt was killed at once and its report
//!   forwarded (best effort, bounded), then the stream was closed the same way, with a
//!   shorter bound on the coordinator's answer.

use std::time::Duration;

use gatehouse_common::exec::{AttemptRef, ExitStatus, FromWorker};
use gatehouse_proto::v1::worker_service_client::WorkerServiceClient;
use gatehouse_proto::v1::{self, CoordinatorMessage, WorkerMessage};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::remote::executor::Executor;
use crate::remote::frames::{self, Inbound, Welcome};
use crate::remote::memory::MemoryProbe;
use crate::remote::workspace::Workspace;
use crate::remote::{RemoteWorkerConfig, RemoteWorkerError};

/// Extra time, beyond the kill grace and the pipe drain, that killed attempts get to
/// report before they are given up on.
const KILL_SLACK: Duration = Duration::from_secs(5);

/// Bound on waiting for the coordinator to close its side on shutdown, which should
/// be quick.
const SHUTDOWN_CLOSE: Duration = Duration::from_secs(1);

/// Frames the outbox holds before the session counts as lost: a heartbeat and a couple
/// of reports per slot, plus room for bursts.
pub(crate) fn outbox_capacity(slots: u32) -> usize {
    64 + 4 * slots as usize
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// Connection or protocol failure; `welcomed` says whether the session got as far
    /// as `Welcome` (the reconnect backoff restarts then).
    Lost { reason: String, welcomed: bool },
    /// The drain completed.
    Drained,
    /// The shutdown token fired.
    Shutdown,
}

impl SessionEnd {
    fn lost(reason: impl Into<String>) -> Self {
        Self::Lost {
            reason: reason.into(),
            welcomed: true,
        }
    }
}

/// Drain progress.
#[derive(Clone, Copy, Debug)]
struct Draining {
    /// When running attempts get cancelled.
    deadline: Instant,
    /// Whether they were.
    cancelled: bool,
}

/// What the worker keeps across sessions.
pub(crate) struct Worker {
    pub(crate) cfg: RemoteWorkerConfig,
    pub(crate) hostname: String,
    pub(crate) workspace: Workspace,
    pub(crate) memory: MemoryProbe,
    pub(crate) exec: Executor,
    pub(crate) shutdown: CancellationToken,
    pub(crate) drain: CancellationToken,
}

/// One live session's stream ends and drain state.
struct Live {
    outbox: mpsc::Sender<WorkerMessage>,
    inbound: Streaming<CoordinatorMessage>,
    draining: Option<Draining>,
}

/// One turn of the session loop.
enum Step {
    Shutdown,
    StartDrain,
    DrainExpired,
    Report(FromWorker),
    Frame(Result<Option<CoordinatorMessage>, tonic::Status>),
    Heartbeat,
}

impl Worker {
    /// The bound on waiting for attempts killed with `grace` to report.
    pub(crate) fn kill_bound(&self, grace: Duration) -> Duration {
        grace + self.cfg.exec.pipe_drain + KILL_SLACK
    }

    /// Runs one session over a connected channel.
    pub(crate) async fn session(
        &mut self,
        channel: Channel,
    ) -> Result<SessionEnd, RemoteWorkerError> {
        let (outbox, rx) = mpsc::channel(outbox_capacity(self.cfg.slots));
        let hello = frames::hello(&self.cfg, &self.hostname, self.memory.total());
        if outbox.try_send(hello).is_err() {
            return Ok(SessionEnd::lost("outbox closed before hello"));
        }
        let mut client = WorkerServiceClient::new(channel);
        let handshake = async {
            let mut inbound = client
                .session(ReceiverStream::new(rx))
                .await
                .map_err(|s| format!("session refused: {}", status_text(&s)))?
                .into_inner();
            let first = inbound
                .message()
                .await
                .map_err(|s| status_text(&s))?
                .ok_or_else(|| "stream closed before welcome".to_owned())?;
            match frames::decode(first) {
                Ok(Inbound::Welcome(w)) => Ok((inbound, w)),
                Ok(other) => Err(format!("expected welcome first, got {other:?}")),
                Err(e) => Err(format!("undecodable first frame: {e}")),
            }
        };
        let handshake = tokio::time::timeout(self.cfg.welcome_timeout, handshake);
        let (inbound, welcome) = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            () = self.drain.cancelled() => return Ok(SessionEnd::Drained),
            done = handshake => match done {
                Ok(Ok(ok)) => ok,
                Ok(Err(reason)) => return Ok(SessionEnd::Lost { reason, welcomed: false }),
                Err(_) => {
                    let reason = format!("no welcome within {:?}", self.cfg.welcome_timeout);
                    return Ok(SessionEnd::Lost { reason, welcomed: false });
                }
            },
        };
        tracing::info!(heartbeat = ?welcome.heartbeat, liveness = ?welcome.liveness,
            "session established");
        let mut live = Live {
            outbox,
            inbound,
            draining: None,
        };
        let end = self.serve(&mut live, welcome).await?;
        if end == SessionEnd::Shutdown {
            self.kill_and_report(&live).await?;
        }
        match end {
            SessionEnd::Drained => self.close(live, self.cfg.close_timeout).await,
            SessionEnd::Shutdown => {
                self.close(live, SHUTDOWN_CLOSE.min(self.cfg.close_timeout))
                    .await
            }
            SessionEnd::Lost { .. } => {}
        }
        Ok(end)
    }

    /// The session loop, until it ends.
    async fn serve(
        &mut self,
        live: &mut Live,
        welcome: Welcome,
    ) -> Result<SessionEnd, RemoteWorkerError> {
        let mut heartbeat = tokio::time::interval(welcome.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let drain_deadline = live.draining.filter(|d| !d.cancelled).map(|d| d.deadline);
            let step = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Step::Shutdown,
                () = self.drain.cancelled(), if live.draining.is_none() => Step::StartDrain,
                () = sleep_until_some(drain_deadline) => Step::DrainExpired,
                report = self.exec.recv() => match report {
                    Some(report) => Step::Report(report),
                    None => return Err(RemoteWorkerError::ExecutorStopped),
                },
                frame = live.inbound.message() => Step::Frame(frame),
                _ = heartbeat.tick() => Step::Heartbeat,
            };
            let end = match step {
                Step::Shutdown => Some(SessionEnd::Shutdown),
                Step::StartDrain => self.start_drain(live),
                Step::DrainExpired => {
                    tracing::warn!(
                        running = self.exec.running_count(),
                        "drain grace expired; cancelling running attempts"
                    );
                    self.exec.cancel_all(self.cfg.exec.kill_grace)?;
                    if let Some(d) = live.draining.as_mut() {
                        d.cancelled = true;
                    }
                    None
                }
                Step::Report(report) => send(&live.outbox, frames::report(&report))
                    .err()
                    .or_else(|| drained(live, &self.exec)),
                Step::Frame(Ok(Some(msg))) => self.on_frame(live, msg)?,
                Step::Frame(Ok(None)) => Some(SessionEnd::lost("coordinator closed the stream")),
                Step::Frame(Err(status)) => Some(SessionEnd::lost(status_text(&status))),
                Step::Heartbeat => send(&live.outbox, self.heartbeat(live)).err(),
            };
            if let Some(end) = end {
                return Ok(end);
            }
        }
    }

    fn start_drain(&mut self, live: &mut Live) -> Option<SessionEnd> {
        let grace = self.cfg.drain_grace;
        tracing::info!(running = self.exec.running_count(), ?grace, "draining");
        live.draining = Some(Draining {
            deadline: Instant::now() + grace,
            cancelled: false,
        });
        send(&live.outbox, frames::draining(grace))
            .err()
            .or_else(|| drained(live, &self.exec))
    }

    fn heartbeat(&mut self, live: &Live) -> WorkerMessage {
        let running = self.exec.running_count();
        let free_slots = if live.draining.is_some() {
            0
        } else {
            self.cfg
                .slots
                .saturating_sub(u32::try_from(running).unwrap_or(u32::MAX))
        };
        let memory = self.memory.sample(self.exec.requested_memory());
        frames::heartbeat(free_slots, memory, self.exec.running())
    }

    fn on_frame(
        &mut self,
        live: &Live,
        msg: CoordinatorMessage,
    ) -> Result<Option<SessionEnd>, RemoteWorkerError> {
        let inbound = match frames::decode(msg) {
            Ok(inbound) => inbound,
            Err(error) => {
                tracing::warn!(%error, "undecodable frame from the coordinator; ignored");
                return Ok(None);
            }
        };
        match inbound {
            Inbound::Welcome(_) => {
                tracing::warn!("second welcome from the coordinator; ignored");
                Ok(None)
            }
            Inbound::Assign { attempt, spec } => self.on_assign(live, attempt, spec),
            Inbound::Cancel { attempt, grace } => {
                if self.exec.is_running(&attempt) {
                    tracing::debug!(?attempt, ?grace, "cancel");
                    self.exec.cancel(attempt, grace)?;
                } else {
                    tracing::debug!(?attempt, "cancel for an attempt not running; ignored");
                }
                Ok(None)
            }
            Inbound::Ack(attempts) => {
                tracing::debug!(count = attempts.len(), "results acknowledged");
                Ok(None)
            }
        }
    }

    fn on_assign(
        &mut self,
        live: &Live,
        attempt: AttemptRef,
        spec: Option<v1::GateSpec>,
    ) -> Result<Option<SessionEnd>, RemoteWorkerError> {
        if live.draining.is_some() {
            tracing::info!(?attempt, "assignment while draining; answered cancelled");
            let result = frames::not_run(ExitStatus::Cancelled);
            return Ok(send(&live.outbox, frames::finished(&attempt, &result)).err());
        }
        if self.exec.is_running(&attempt) {
            tracing::warn!(
                ?attempt,
                "attempt assigned twice; ignoring the second assignment"
            );
            return Ok(None);
        }
        if self.exec.running_count() >= self.cfg.slots as usize {
            tracing::warn!(
                ?attempt,
                slots = self.cfg.slots,
                "assignment beyond the advertised slots; running it anyway"
            );
        }
        match frames::prepare_assignment(&self.workspace, attempt.clone(), spec) {
            Ok(prepared) => {
                tracing::debug!(?attempt, gate = %prepared.assignment.spec.gate, "assigned");
                self.exec.assign(prepared)?;
                Ok(None)
            }
            Err(reason) => {
                tracing::warn!(?attempt, %reason, "cannot run the assignment");
                let result = frames::not_run(ExitStatus::SpawnFailed(reason));
                Ok(send(&live.outbox, frames::finished(&attempt, &result)).err())
            }
        }
    }

    /// Shutdown: kill everything at once and forward the reports while the stream lives.
    async fn kill_and_report(&mut self, live: &Live) -> Result<(), RemoteWorkerError> {
        if self.exec.running_count() == 0 {
            return Ok(());
        }
        tracing::info!(
            running = self.exec.running_count(),
            "shutting down; killing attempts"
        );
        self.exec.cancel_all(Duration::ZERO)?;
        let bound = self.kill_bound(Duration::ZERO);
        let forward = async {
            while self.exec.running_count() > 0 {
                let Some(report) = self.exec.recv().await else {
                    return Err(RemoteWorkerError::ExecutorStopped);
                };
                // Best effort: a dead stream only loses reports the coordinator re-queues.
                let _ = send(&live.outbox, frames::report(&report));
            }
            Ok(())
        };
        match tokio::time::timeout(bound, forward).await {
            Ok(result) => result,
            Err(_) => {
                tracing::error!("killed attempts did not report in time");
                Ok(())
            }
        }
    }

    /// Ends the request stream and waits (bounded) for the coordinator to end its side,
    /// which tells that everything sent was received.
    async fn close(&self, live: Live, bound: Duration) {
        let Live {
            outbox,
            mut inbound,
            ..
        } = live;
        drop(outbox);
        let rest = async {
            loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        tracing::debug!(?msg, "frame after closing the stream; ignored");
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        };
        if tokio::time::timeout(bound, rest).await.is_err() {
            tracing::warn!("coordinator did not close its side of the stream in time");
        }
    }
}

/// `Drained` once draining and nothing runs any more.
fn drained(live: &Live, exec: &Executor) -> Option<SessionEnd> {
    (live.draining.is_some() && exec.running_count() == 0).then_some(SessionEnd::Drained)
}

/// Queues a frame; a full or closed outbox loses the session.
fn send(outbox: &mpsc::Sender<WorkerMessage>, frame: WorkerMessage) -> Result<(), SessionEnd> {
    outbox.try_send(frame).map_err(|e| match e {
        TrySendError::Full(_) => SessionEnd::lost("coordinator is not reading the stream"),
        TrySendError::Closed(_) => SessionEnd::lost("stream closed"),
    })
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A status with its code, for logs.
fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
