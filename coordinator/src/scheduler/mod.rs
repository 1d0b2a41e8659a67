//! The scheduler actor: the driver around the sans-IO [`crate::core::Scheduler`].
//!
//! It owns the core, the timers the core asked for, each live plan's subscriber, and
//! the cache I/O ([`lookups`]). Inputs: its mailbox ([`SchedulerHandle`], bounded at
//! [`MAILBOX_CAPACITY`]: submissions, restores and cancels), one ordered channel of
//! [`WorkerEvent`]s (executor reports and membership), its timers and its cache
//! lookups. Outputs: [`ToWorker`](gatehouse_common::exec::ToWorker) messages through a
//! [`WorkerTransport`], and [`PlanOutput`]s to each plan's subscriber.
//!
//! It decides nothing: every event goes through the core, and every command the core
//! returns is carried out in order — dispatches and cancellations to the transport
//! (adding only the trace context), cache checks and writes to the cache I/O, timers to
//! a `DelayQueue`, events and acknowledgements to the plan's subscriber. Single flight,
//! which results are acknowledged, and when a restored plan's recovery window ends are
//! the core's decisions.
//!
//! Concurrency contract: handlers never block. Key computation runs in
//! `spawn_blocking`, lookups and writes in child tasks owned by `JoinSet`s, at most
//! [`SchedulerConfig::max_cache_lookups`] lookups at once; their answers come back
//! through the run loop. The actor never awaits another actor: transports and
//! subscribers take messages without waiting (subscribers are unbounded because one
//! plan publishes at most gates × (attempts + 3) events, plus one acknowledgement per
//! worker report).
//!
//! Shutdown: when the token fires or every handle is dropped the loop ends, queued
//! submissions are answered with [`SchedulerError::ShuttingDown`], and pending cache
//! writes get [`SchedulerConfig::drain_timeout`] to finish.

mod actor;
mod handle;
mod lookups;
mod transport;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::cache::ResultCache;
use gatehouse_common::exec::AttemptRef;
use gatehouse_common::ids::{PlanId, SessionKey};
use gatehouse_common::spawn::spawn_named;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::core::{CoreConfig, Now, PlanEvent, WorkerView};

pub use handle::{RestoredPlan, SchedulerHandle};
pub use transport::{LocalTransport, TransportError, WorkerEvent, WorkerTransport};

/// Capacity of the scheduler's mailbox.
pub const MAILBOX_CAPACITY: usize = 1024;

/// Driver configuration.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Core tunables.
    pub core: CoreConfig,
    /// Cache lookups (key computation + get) in flight at once.
    pub max_cache_lookups: usize,
    /// How long shutdown waits for pending cache writes.
    pub drain_timeout: Duration,
    /// Executors write passed results to the cache themselves (the cluster's workers,
    /// with the key their assignment carries): the scheduler writes nothing.
    pub executors_store: bool,
    /// Whether gates' `inputs` files are visible here and can be hashed into keys. In
    /// the cluster they are not (they live on the workers): a gate with `inputs` then
    /// runs uncached, and so do the gates that depend on it.
    pub hash_inputs: bool,
    /// Metrics the driver updates (registered by the caller, if exported).
    pub metrics: crate::metrics::Metrics,
    /// Tracer of the plan and gate spans (`None`: no spans).
    pub tracer: gatehouse_common::telemetry::Tracer,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            core: CoreConfig::default(),
            max_cache_lookups: 32,
            drain_timeout: Duration::from_secs(10),
            executors_store: false,
            hash_inputs: true,
            metrics: crate::metrics::Metrics::default(),
            tracer: None,
        }
    }
}

/// Errors of the scheduler actor.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The actor has stopped (shutdown) and takes no more requests.
    #[error("scheduler is shutting down")]
    ShuttingDown,
    /// A plan with this id is already live.
    #[error("plan {0} is already running")]
    DuplicatePlan(PlanId),
}

/// What a plan's subscriber receives, in the order the core produced it.
#[derive(Clone, Debug)]
// The event is the variant sent for nearly every message: boxing it would cost an
// allocation each time to shrink the rare ones.
#[allow(clippy::large_enum_variant)]
pub enum PlanOutput {
    /// A published event of the plan.
    Event(PlanEvent),
    /// `worker` may forget these results of the plan once every event sent before this
    /// is durable (the registry does that; a subscriber that keeps nothing durable
    /// ignores it). Only remote workers' results are acknowledged.
    Ack {
        /// The worker that reported them.
        worker: SessionKey,
        /// Their attempts.
        attempts: Vec<AttemptRef>,
    },
    /// A fact for the durable test history (the core already folded it into its own).
    /// The registry writes it to the state store; `gatehouse run` to its history file.
    Tests(Arc<gatehouse_common::reports::history::TestRun>),
}

/// The workers as the core accounts them, at one moment.
#[derive(Clone, Debug)]
pub struct WorkerSnapshot {
    /// The instant core time counts from.
    pub epoch: Instant,
    /// Every registered worker session, sorted.
    pub workers: Vec<WorkerView>,
}

impl WorkerSnapshot {
    /// No workers, with core time counting from `epoch`.
    pub fn empty(epoch: Instant) -> Self {
        Self {
            epoch,
            workers: Vec::new(),
        }
    }

    /// How long ago core time `at` was.
    pub fn age(&self, at: Now) -> Duration {
        (self.epoch + at).elapsed()
    }
}

/// Starts the scheduler actor. Also returns the published [`WorkerSnapshot`]s.
///
/// `late_acks`: where acknowledgements go for results of plans that are not live here
/// (finished, or never seen): the channel the plans' subscriber (the registry) reads,
/// so they still wait for every event sent before them to be durable. Without one
/// (`gatehouse run`, whose executor keeps no results) there are none.
pub fn spawn(
    config: SchedulerConfig,
    transport: Box<dyn WorkerTransport>,
    reports: mpsc::Receiver<WorkerEvent>,
    cache: Option<Arc<dyn ResultCache>>,
    late_acks: Option<mpsc::UnboundedSender<PlanOutput>>,
    shutdown: CancellationToken,
) -> (
    SchedulerHandle,
    watch::Receiver<Arc<WorkerSnapshot>>,
    JoinHandle<()>,
) {
    let (tx, mailbox) = mpsc::channel(MAILBOX_CAPACITY);
    let epoch = Instant::now();
    let (workers_tx, workers) = watch::channel(Arc::new(WorkerSnapshot::empty(epoch)));
    let edges = actor::Edges {
        transport,
        reports,
        cache,
        late_acks,
        mailbox,
        workers: workers_tx,
    };
    let actor = actor::SchedulerActor::new(config, edges, epoch, shutdown);
    let task = spawn_named("scheduler", actor.run());
    (SchedulerHandle { tx }, workers, task)
}
