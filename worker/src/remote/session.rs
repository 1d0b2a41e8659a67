//! One session with a coordinator: the handshake, then the loop that turns frames into
//! executor messages and executor reports into frames, heartbeats, acknowledgements and
//! drain.
//!
//! State it owns per session: the outbox (bounded, see [`outbox_capacity`]; a full
//! outbox means the coordinator stopped reading, and the session is treated as lost
//! rather than letting the loop block), the inbound stream, whether `Draining` was sent,
//! and the backlog of kept results still to send. What outlives the session belongs to
//! [`Worker`], in parts that keep their own state behind their methods: the attempts
//! and their unacknowledged results ([`Attempts`]), the drain, shutdown and orphan
//! deadlines ([`Lifecycle`]), the cache membership ([`CacheLink`]), and the settings,
//! host name, memory probe and workspace, which only this module uses.
//!
//! **Handshake.** `Hello` carries the attempts still running and the unacknowledged
//! results that fit [`HELLO_FINISHED_BYTES`]. Until `Welcome` arrives the worker is
//! offline ([`Worker::offline`]): reports are kept, deadlines fire. A refusal naming
//! another leader ends the session as [`SessionEnd::NotLeader`].
//!
//! **Once welcomed**, the worker first sends `AttemptStarted` for attempts that started
//! while it was offline, then, paced by the outbox's free room, `AttemptFinished` for
//! every kept result the `Hello` did not carry (too large, or finished during the
//! handshake). Results of attempts finishing during the session are sent as they come.
//! Every result stays kept until an `Ack` names it.
//!
//! An assignment of an attempt that already runs here is ignored (it reports once, when
//! it ends); one whose result is kept is answered with that result, never run twice (the
//! coordinator lost track of a result it had not acknowledged). An attempt whose result
//! was acknowledged is forgotten: assigning it again runs it again.
//!
//! The loop `select!`s, in this order: shutdown, the drain signal, the drain deadline,
//! executor reports, coordinator frames, the heartbeat tick, then the backlog. A session
//! ends as:
//! - [`SessionEnd::Lost`]: the stream failed or ended, no `Welcome` came in time, or the
//!   outbox overflowed. The caller keeps the attempts running and reconnects.
//! - [`SessionEnd::NotLeader`]: the coordinator does not lead (possibly naming the one
//!   that does); nothing was sent to it beyond `Hello`.
//! - [`SessionEnd::Drained`]: the drain finished (every attempt reported, the backlog
//!   sent); the stream was closed and the coordinator's side awaited (bounded), so the
//!   last reports are delivered before the process exits.
//! - [`SessionEnd::Shutdown`]: every running attempt was killed at once and its report
//!   forwarded (best effort, bounded), then the stream was closed the same way, with a
//!   shorter bound on the coordinator's answer.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::cache::CacheKey;
use gatehouse_common::exec::{AttemptRef, ExitStatus, FromWorker};
use gatehouse_common::reports::TestKey;
use gatehouse_proto::leader::{is_not_leader, leader_hint};
use gatehouse_proto::v1::worker_service_client::WorkerServiceClient;
use gatehouse_proto::v1::{self, CoordinatorMessage, WorkerMessage};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::remote::attempts::Attempts;
use crate::remote::cache_link::CacheLink;
use crate::remote::frames::{self, Inbound, Welcome};
use crate::remote::lifecycle::{Lifecycle, SessionEnd};
use crate::remote::memory::MemoryProbe;
use crate::remote::offline::{Offline, offline};
use crate::remote::unacked::HELLO_FINISHED_BYTES;
use crate::remote::workspace::Workspace;
use crate::remote::{RemoteWorkerConfig, RemoteWorkerError};

/// Extra time, beyond the kill grace and the pipe drain, that killed attempts get to
/// report before they are given up on.
const KILL_SLACK: Duration = Duration::from_secs(5);

/// Bound on waiting for the coordinator to close its side on shutdown, which should
/// be quick.
const SHUTDOWN_CLOSE: Duration = Duration::from_secs(1);

/// Frames the outbox holds before the session counts as lost: a heartbeat and a couple
/// of reports per slot, plus room for bursts. The backlog only uses the first half, so
/// live reports always find room.
pub(crate) fn outbox_capacity(slots: u32) -> usize {
    64 + 4 * slots as usize
}

/// What the worker keeps across sessions.
pub(crate) struct Worker {
    /// Its settings.
    cfg: RemoteWorkerConfig,
    /// The machine's name, sent in `Hello`.
    hostname: String,
    /// Where assignments run.
    workspace: Workspace,
    /// The memory figures of `Hello` and heartbeats.
    memory: MemoryProbe,
    /// The attempts and their unacknowledged results.
    attempts: Attempts,
    /// Drain, shutdown, orphan deadline and readiness.
    lifecycle: Lifecycle,
    /// Its cache node's URL and the cache membership.
    cache: CacheLink,
}

/// One live session's stream ends and progress.
struct Live {
    outbox: mpsc::Sender<WorkerMessage>,
    inbound: Streaming<CoordinatorMessage>,
    /// Whether `Draining` was sent on this stream.
    draining: bool,
    /// Kept results still to send on this stream, oldest first.
    backlog: VecDeque<AttemptRef>,
}

impl Live {
    /// Whether the backlog may use the outbox now (it leaves half of it free).
    fn backlog_ready(&self) -> bool {
        !self.backlog.is_empty() && self.outbox.capacity() > self.outbox.max_capacity() / 2
    }
}

/// One turn of the session loop.
enum Step {
    Shutdown,
    StartDrain,
    DrainExpired,
    Report(FromWorker),
    Frame(Result<Option<CoordinatorMessage>, tonic::Status>),
    Heartbeat,
    Backlog,
}

/// Why a handshake did not reach `Welcome`.
enum Refused {
    NotLeader(Option<String>, String),
    Failed(String),
}

impl Refused {
    fn from_status(status: &tonic::Status, context: &str) -> Self {
        if is_not_leader(status) {
            Self::NotLeader(leader_hint(status), status_text(status))
        } else {
            Self::Failed(format!("{context}{}", status_text(status)))
        }
    }
}

impl Worker {
    pub(crate) fn new(
        cfg: RemoteWorkerConfig,
        hostname: String,
        workspace: Workspace,
        memory: MemoryProbe,
        attempts: Attempts,
        lifecycle: Lifecycle,
        cache: CacheLink,
    ) -> Self {
        Self {
            cfg,
            hostname,
            workspace,
            memory,
            attempts,
            lifecycle,
            cache,
        }
    }

    pub(crate) fn cfg(&self) -> &RemoteWorkerConfig {
        &self.cfg
    }

    /// Whether the worker holds attempts running or results not acknowledged.
    pub(crate) fn holds_attempts(&self) -> bool {
        self.attempts.holds_any()
    }

    /// Runs `fut` while no session is welcomed (see [`offline`]).
    pub(crate) async fn offline<F: Future>(
        &mut self,
        fut: F,
    ) -> Result<Offline<F::Output>, RemoteWorkerError> {
        offline(&mut self.lifecycle, &mut self.attempts, fut).await
    }

    /// A welcomed session was lost: the running attempts start their orphan grace.
    pub(crate) fn session_lost(&mut self) {
        self.lifecycle.session_lost(&self.attempts);
    }

    /// Kills what still runs and stops the executor.
    pub(crate) async fn finish(self) -> Result<(), RemoteWorkerError> {
        self.attempts.finish().await
    }

    /// The bound on waiting for attempts killed with `grace` to report.
    fn kill_bound(&self, grace: Duration) -> Duration {
        grace + self.cfg.exec.pipe_drain + KILL_SLACK
    }

    /// Runs one session over a connected channel.
    pub(crate) async fn session(
        &mut self,
        channel: Channel,
    ) -> Result<SessionEnd, RemoteWorkerError> {
        let (outbox, rx) = mpsc::channel(outbox_capacity(self.cfg.slots));
        let split = self.attempts.split_for_hello(HELLO_FINISHED_BYTES);
        let hello = frames::hello(
            &self.cfg,
            self.cache.url(),
            &self.hostname,
            self.memory.total(),
            self.attempts.running(),
            &split.in_hello,
        );
        tracing::debug!(
            running = self.attempts.running_count(),
            finished = split.in_hello.len(),
            after_welcome = split.after_welcome.len(),
            "hello"
        );
        let in_hello: HashSet<AttemptRef> = split.in_hello.into_iter().map(|(a, _)| a).collect();
        if outbox.try_send(hello).is_err() {
            return Ok(SessionEnd::lost("outbox closed before hello"));
        }
        let mut client = WorkerServiceClient::new(channel);
        let welcome_timeout = self.cfg.welcome_timeout;
        let handshake = async {
            let mut inbound = client
                .session(ReceiverStream::new(rx))
                .await
                .map_err(|s| Refused::from_status(&s, "session refused: "))?
                .into_inner();
            let first = inbound
                .message()
                .await
                .map_err(|s| Refused::from_status(&s, ""))?
                .ok_or_else(|| Refused::Failed("stream closed before welcome".to_owned()))?;
            match frames::decode(first) {
                Ok(Inbound::Welcome(w)) => Ok((inbound, w)),
                Ok(other) => Err(Refused::Failed(format!(
                    "expected welcome first, got {other:?}"
                ))),
                Err(e) => Err(Refused::Failed(format!("undecodable first frame: {e}"))),
            }
        };
        let handshake = tokio::time::timeout(welcome_timeout, handshake);
        let (inbound, welcome) = match self.offline(handshake).await? {
            Offline::Ended(end) => return Ok(end),
            Offline::Done(Ok(Ok(ok))) => ok,
            Offline::Done(Ok(Err(Refused::NotLeader(leader, reason)))) => {
                return Ok(SessionEnd::NotLeader { leader, reason });
            }
            Offline::Done(Ok(Err(Refused::Failed(reason)))) => {
                return Ok(SessionEnd::Lost {
                    reason,
                    welcomed: false,
                });
            }
            Offline::Done(Err(_)) => {
                let reason = format!("no welcome within {welcome_timeout:?}");
                return Ok(SessionEnd::Lost {
                    reason,
                    welcomed: false,
                });
            }
        };
        tracing::info!(heartbeat = ?welcome.heartbeat, liveness = ?welcome.liveness,
            "session established");
        self.lifecycle.welcomed(&self.attempts);
        let backlog = self
            .attempts
            .unacked()
            .filter(|a| !in_hello.contains(a))
            .cloned()
            .collect();
        let mut live = Live {
            outbox,
            inbound,
            draining: false,
            backlog,
        };
        let end = match self.announce_started(&live) {
            Err(end) => end,
            Ok(()) => self.serve(&mut live, welcome).await?,
        };
        if end == SessionEnd::Shutdown {
            self.kill_and_report(&live).await?;
        }
        match end {
            SessionEnd::Drained => self.close(live, self.cfg.close_timeout).await,
            SessionEnd::Shutdown => {
                self.close(live, SHUTDOWN_CLOSE.min(self.cfg.close_timeout))
                    .await
            }
            SessionEnd::Lost { .. } | SessionEnd::NotLeader { .. } => {}
        }
        Ok(end)
    }

    /// Sends `AttemptStarted` for the attempts that started while offline and still run.
    fn announce_started(&mut self, live: &Live) -> Result<(), SessionEnd> {
        for attempt in self.attempts.take_started_offline() {
            send(
                &live.outbox,
                frames::report(&FromWorker::Started { attempt }),
            )?;
        }
        Ok(())
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
            if let Some(end) = drained(live, &self.attempts) {
                return Ok(end);
            }
            let backlog_ready = live.backlog_ready();
            let step = tokio::select! {
                biased;
                () = self.lifecycle.shutdown_requested() => Step::Shutdown,
                () = self.lifecycle.drain_requested(), if !live.draining => Step::StartDrain,
                () = self.lifecycle.drain_due() => Step::DrainExpired,
                report = self.attempts.recv() => match report {
                    Some(report) => Step::Report(report),
                    None => return Err(RemoteWorkerError::ExecutorStopped),
                },
                frame = live.inbound.message() => Step::Frame(frame),
                _ = heartbeat.tick() => Step::Heartbeat,
                () = std::future::ready(()), if backlog_ready => Step::Backlog,
            };
            let end = match step {
                Step::Shutdown => Some(SessionEnd::Shutdown),
                Step::StartDrain => self.start_drain(live),
                Step::DrainExpired => {
                    self.lifecycle.drain_expired(&self.attempts)?;
                    None
                }
                Step::Report(report) => self.forward(live, report),
                Step::Frame(Ok(Some(msg))) => self.on_frame(live, msg)?,
                Step::Frame(Ok(None)) => Some(SessionEnd::lost("coordinator closed the stream")),
                Step::Frame(Err(status)) => Some(SessionEnd::lost(status_text(&status))),
                Step::Heartbeat => send(&live.outbox, self.heartbeat(live)).err(),
                Step::Backlog => self.send_backlog(live),
            };
            if let Some(end) = end {
                return Ok(end);
            }
        }
    }

    fn start_drain(&mut self, live: &mut Live) -> Option<SessionEnd> {
        let grace = self.lifecycle.begin_drain(&self.attempts);
        live.draining = true;
        send(&live.outbox, frames::draining(grace)).err()
    }

    /// Sends an executor report, keeping a result until it is acknowledged.
    fn forward(&mut self, live: &Live, report: FromWorker) -> Option<SessionEnd> {
        let frame = frames::report(&report);
        if let FromWorker::Finished { attempt, result } = report {
            self.attempts.keep_result(attempt, result);
        }
        send(&live.outbox, frame).err()
    }

    /// Sends the oldest kept result of the backlog that is still unacknowledged.
    fn send_backlog(&mut self, live: &mut Live) -> Option<SessionEnd> {
        while let Some(attempt) = live.backlog.pop_front() {
            if let Some(result) = self.attempts.result(&attempt) {
                return send(&live.outbox, frames::finished(&attempt, result)).err();
            }
        }
        None
    }

    fn heartbeat(&mut self, live: &Live) -> WorkerMessage {
        let running = self.attempts.running_count();
        let free_slots = if live.draining {
            0
        } else {
            self.cfg
                .slots
                .saturating_sub(u32::try_from(running).unwrap_or(u32::MAX))
        };
        let memory = self.memory.sample(self.attempts.requested_memory());
        frames::heartbeat(free_slots, memory, self.attempts.running())
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
            Inbound::Assign {
                attempt,
                spec,
                cache_key,
                traceparent,
                watch,
            } => self.on_assign(live, attempt, spec, cache_key, (traceparent, watch)),
            Inbound::CacheMembers(members) => {
                self.cache.set_members(members);
                Ok(None)
            }
            Inbound::Cancel { attempt, grace } => {
                if self.attempts.is_running(&attempt) {
                    tracing::debug!(?attempt, ?grace, "cancel");
                    self.attempts.cancel(attempt, grace)?;
                } else {
                    tracing::debug!(?attempt, "cancel for an attempt not running; ignored");
                }
                Ok(None)
            }
            Inbound::Ack(attempts) => {
                self.attempts.ack(&attempts);
                Ok(None)
            }
        }
    }

    fn on_assign(
        &mut self,
        live: &Live,
        attempt: AttemptRef,
        spec: Option<v1::GateSpec>,
        cache_key: Option<CacheKey>,
        (traceparent, watch): (Option<String>, Arc<[TestKey]>),
    ) -> Result<Option<SessionEnd>, RemoteWorkerError> {
        if self.attempts.is_running(&attempt) {
            tracing::warn!(
                ?attempt,
                "assignment of an attempt already running here; it reports when it ends"
            );
            return Ok(None);
        }
        if let Some(result) = self.attempts.result(&attempt) {
            tracing::warn!(
                ?attempt,
                "assignment of an attempt that already ran here; answered with its result"
            );
            return Ok(send(&live.outbox, frames::finished(&attempt, result)).err());
        }
        if live.draining {
            tracing::info!(?attempt, "assignment while draining; answered cancelled");
            return Ok(self.answer_not_run(live, attempt, ExitStatus::Cancelled));
        }
        if self.attempts.running_count() >= self.cfg.slots as usize {
            tracing::warn!(
                ?attempt,
                slots = self.cfg.slots,
                "assignment beyond the advertised slots; running it anyway"
            );
        }
        match frames::prepare_assignment(&self.workspace, attempt.clone(), spec, traceparent) {
            Ok(mut prepared) => {
                prepared.assignment.watch = watch;
                tracing::debug!(?attempt, gate = %prepared.assignment.spec.gate, "assigned");
                self.attempts.assign(prepared, cache_key)?;
                Ok(None)
            }
            Err(reason) => {
                tracing::warn!(?attempt, %reason, "cannot run the assignment");
                let status = ExitStatus::SpawnFailed(reason);
                Ok(self.answer_not_run(live, attempt, status))
            }
        }
    }

    /// Answers an assignment that is not run with `status`; the answer is a result like
    /// any other, kept until acknowledged.
    fn answer_not_run(
        &mut self,
        live: &Live,
        attempt: AttemptRef,
        status: ExitStatus,
    ) -> Option<SessionEnd> {
        let result = frames::not_run(status);
        let frame = frames::finished(&attempt, &result);
        self.attempts.keep_result(attempt, result);
        send(&live.outbox, frame).err()
    }

    /// Shutdown: kill everything at once and forward the reports while the stream lives.
    async fn kill_and_report(&mut self, live: &Live) -> Result<(), RemoteWorkerError> {
        if self.attempts.running_count() == 0 {
            return Ok(());
        }
        tracing::info!(
            running = self.attempts.running_count(),
            "shutting down; killing attempts"
        );
        self.attempts.cancel_all(Duration::ZERO)?;
        let bound = self.kill_bound(Duration::ZERO);
        let forward = async {
            while self.attempts.running_count() > 0 {
                let Some(report) = self.attempts.recv().await else {
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
    /// which tells that everything sent was received; acknowledgements arriving
    /// meanwhile are applied.
    async fn close(&mut self, live: Live, bound: Duration) {
        let Live {
            outbox,
            mut inbound,
            ..
        } = live;
        drop(outbox);
        let rest = async {
            loop {
                match inbound.message().await {
                    Ok(Some(msg)) => match frames::decode(msg) {
                        Ok(Inbound::Ack(attempts)) => self.attempts.ack(&attempts),
                        other => {
                            tracing::debug!(?other, "frame after closing the stream; ignored");
                        }
                    },
                    Ok(None) | Err(_) => return,
                }
            }
        };
        if tokio::time::timeout(bound, rest).await.is_err() {
            tracing::warn!("coordinator did not close its side of the stream in time");
        }
        if self.attempts.unacked_count() > 0 {
            tracing::info!(
                unacknowledged = self.attempts.unacked_count(),
                "stopping with results the coordinator has not acknowledged"
            );
        }
    }
}

/// `Drained` once draining, nothing runs any more and the backlog is sent.
fn drained(live: &Live, attempts: &Attempts) -> Option<SessionEnd> {
    (live.draining && attempts.running_count() == 0 && live.backlog.is_empty())
        .then_some(SessionEnd::Drained)
}

/// Queues a frame; a full or closed outbox loses the session.
fn send(outbox: &mpsc::Sender<WorkerMessage>, frame: WorkerMessage) -> Result<(), SessionEnd> {
    outbox.try_send(frame).map_err(|e| match e {
        TrySendError::Full(_) => SessionEnd::lost("coordinator is not reading the stream"),
        TrySendError::Closed(_) => SessionEnd::lost("stream closed"),
    })
}

/// A status as `Code: message`, for logs, with the chain of its transport error when it
/// was made on this side (a failed connection: a TLS alert, a reset).
fn status_text(status: &tonic::Status) -> String {
    let text = format!("{:?}: {}", status.code(), status.message());
    match std::error::Error::source(status) {
        Some(transport) => format!("{text}: {}", super::error_chain(transport)),
        None => text,
    }
}
