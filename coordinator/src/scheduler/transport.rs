//! The scheduler's edges to executors: [`WorkerTransport`] carries assignments,
//! cancellations and acknowledgements out (it never waits), and [`WorkerEvent`]s come
//! in on one ordered channel.

use gatehouse_common::exec::{AttemptRef, FromWorker, GateResult, ToWorker};
use gatehouse_common::ids::SessionKey;
use tokio::sync::mpsc;

use crate::core::WorkerInfo;

/// A transport could not deliver to a worker; the core treats the worker as lost.
#[derive(Debug, thiserror::Error)]
#[error("worker {worker} is unreachable")]
pub struct TransportError {
    /// The unreachable worker.
    pub worker: SessionKey,
}

/// Carries [`ToWorker`] messages to executors. `send` must not block or await: an
/// implementation queues the message (in-process channel, a gRPC stream's outbox).
/// Acknowledgements of results do not go this way: they wait for durability in the
/// plans' subscriber ([`super::PlanOutput::Ack`]).
pub trait WorkerTransport: Send + 'static {
    /// Queues `msg` for `worker`.
    fn send(&mut self, worker: &SessionKey, msg: ToWorker) -> Result<(), TransportError>;
}

/// In-process transport to one local executor (used by `gatehouse run`). The channel is
/// unbounded because the scheduler must never wait on it; it holds at most one message
/// per slot plus cancellations, which the core bounds.
pub struct LocalTransport {
    tx: mpsc::UnboundedSender<ToWorker>,
}

impl LocalTransport {
    /// Wraps the local executor's inbox.
    pub fn new(tx: mpsc::UnboundedSender<ToWorker>) -> Self {
        Self { tx }
    }
}

impl WorkerTransport for LocalTransport {
    fn send(&mut self, worker: &SessionKey, msg: ToWorker) -> Result<(), TransportError> {
        self.tx.send(msg).map_err(|_| TransportError {
            worker: worker.clone(),
        })
    }
}

/// What executors and their sessions tell the scheduler, on one ordered channel: a
/// worker's reports and its membership changes must be seen in the order they happened
/// (a result sent just before a worker leaves must count before it is declared lost).
#[derive(Debug)]
pub enum WorkerEvent {
    /// An attempt report of an in-process executor (which keeps no results).
    Report(FromWorker),
    /// An executor joined (or rejoined as a fresh worker).
    Joined(WorkerInfo),
    /// A heartbeat's memory figures.
    Capacity {
        /// The worker.
        worker: SessionKey,
        /// Memory in use on its machine, in bytes.
        memory_used: u64,
        /// Memory available now, in bytes.
        memory_available: u64,
    },
    /// The executor is draining: nothing new for it.
    Draining(SessionKey),
    /// The executor is gone; its attempts are re-queued.
    Lost(SessionKey),
    /// A remote executor reported attempts: those kept from an earlier session (sent
    /// right after its `Joined`), or a result it just finished. Every finished result
    /// reported this way is acknowledged.
    Reported {
        /// The worker.
        worker: SessionKey,
        /// Attempts it still runs.
        running: Vec<AttemptRef>,
        /// Attempts that ended, with their results.
        finished: Vec<(AttemptRef, GateResult)>,
    },
}

impl From<FromWorker> for WorkerEvent {
    fn from(report: FromWorker) -> Self {
        WorkerEvent::Report(report)
    }
}
