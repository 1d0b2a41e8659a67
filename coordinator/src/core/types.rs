//! Inputs, outputs and published records of the scheduler core. The published records
//! (plan and gate events, summaries, counts) are plain types of
//! [`gatehouse_common::events`], re-exported here.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::cache::{CacheEntry, CacheKey};
use gatehouse_common::exec::{Assignment, AttemptRef, GateResult};
use gatehouse_common::ids::{GateIdx, PlanId, SessionKey};
use gatehouse_common::plan::Plan;

pub use gatehouse_common::events::{
    Counts, GateEvent, GateStatus, PlanEvent, PlanOutcome, PlanSummary, Terminal,
};

/// Core time: the driver's monotonic clock, as a duration since an epoch it chooses.
pub type Now = Duration;

/// Per-run options the submitter chooses (not part of the plan file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// W3C `traceparent` of the submitter's span: the plan's trace continues it. The
    /// core ignores it; the plan's stored record keeps it, so a plan resumed by another
    /// leader stays in its trace.
    pub trace_parent: Option<String>,
    /// Whether the result cache is consulted and written (`--no-cache` turns it off).
    pub use_cache: bool,
    /// Gates that cannot run on their code, decided before submission from the plan's
    /// source (`Resolution::blocked`), with the reason (`merge_conflict`: their item's
    /// speculative state does not merge; `source`: their code could not be fetched).
    /// Each fails with that reason before anything starts, and what depends on it is
    /// skipped, as for any failure.
    pub blocked: Vec<(GateIdx, &'static str)>,
    /// Landing asked at submission. The core ignores it: the registry lands the plan
    /// after its summary (`crate::land`).
    pub land: Option<gatehouse_common::land::LandSpec>,
}

/// What a worker (executor) declares when it joins.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerInfo {
    /// The worker's id.
    pub id: SessionKey,
    /// Gates it runs at once.
    pub slots: u32,
    /// Its machine's total memory in bytes (bounds what it could ever admit).
    pub memory_total: u64,
    /// Memory it reports available now, in bytes.
    pub memory_available: u64,
    /// Its labels; a gate with `labels` runs only where all of them match.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its own memory-pressure threshold, if it set one (else the core's default).
    pub memory_pressure: Option<f64>,
}

/// Events into the core.
#[derive(Clone, Debug)]
pub enum Event {
    /// A validated plan was accepted; it starts now.
    PlanSubmitted {
        /// Id chosen by the driver (unique among live plans).
        id: PlanId,
        /// The plan.
        plan: Arc<Plan>,
        /// Submitter options.
        options: RunOptions,
    },
    /// An executor joined (or rejoined as a fresh worker).
    WorkerJoined(WorkerInfo),
    /// An executor reported its memory (heartbeat).
    WorkerCapacity {
        /// Which worker.
        worker: SessionKey,
        /// Memory in use on its machine, in bytes.
        memory_used: u64,
        /// Memory available now, in bytes.
        memory_available: u64,
    },
    /// An executor is draining: it finishes what it runs and takes nothing new.
    WorkerDraining {
        /// Which worker.
        worker: SessionKey,
    },
    /// An executor is gone; its running attempts are re-queued.
    WorkerLost {
        /// Which worker.
        worker: SessionKey,
    },
    /// The driver finished a cache lookup requested by [`Command::CheckCache`].
    CacheChecked {
        /// The plan.
        plan: PlanId,
        /// The gate.
        gate: GateIdx,
        /// The gate's cache key (`None`: it could not be computed, so the gate runs
        /// uncached and so do the gates keyed on it).
        key: Option<CacheKey>,
        /// The entry on a hit.
        hit: Option<Box<CacheEntry>>,
    },
    /// An executor spawned the attempt.
    GateStarted {
        /// The attempt.
        attempt: AttemptRef,
    },
    /// An executor finished the attempt.
    GateFinished {
        /// The attempt.
        attempt: AttemptRef,
        /// Its result.
        result: GateResult,
    },
    /// A timer set with [`Command::SetTimer`] is due.
    TimerFired(Timer),
    /// A plan resumed from the durable log by a new leader (see [`super::recovery`]).
    /// Gates the log shows running, or ready to run, are *in doubt* until a worker
    /// re-reports them or the plan's [`Timer::RecoveryWindow`] fires.
    PlanRestored {
        /// The plan's id.
        id: PlanId,
        /// The plan.
        plan: Arc<Plan>,
        /// Submitter options.
        options: RunOptions,
        /// What the log says of each gate, in plan order.
        gates: Vec<RestoredGate>,
        /// A cancellation was recorded (`Some(force)`).
        cancel: Option<bool>,
        /// Time since the plan was first submitted (for the summary's duration).
        age: Duration,
        /// Cache keys of its gates, in plan order, as far as the driver could compute
        /// them up front (empty or shorter: unknown). Gates that passed before the
        /// takeover are never looked up again, and the gates keyed on them need them.
        keys: Vec<Option<CacheKey>>,
    },
    /// The durable test history, read at start (or by a new leader): folded into the
    /// core's in order, before any plan runs.
    HistoryLoaded(Vec<gatehouse_common::reports::history::TestRun>),
    /// A (re)connected worker re-reported attempts it kept from an earlier session:
    /// still running, or finished and not yet acknowledged. Arrives right after its
    /// [`Event::WorkerJoined`]; every result of a remote worker comes this way. Each
    /// finished result is answered by exactly one [`Command::AckResults`], after the
    /// event that records it.
    AttemptsReported {
        /// The worker.
        worker: SessionKey,
        /// Attempts it still runs.
        running: Vec<AttemptRef>,
        /// Attempts that ended, with their results.
        finished: Vec<(AttemptRef, GateResult)>,
    },
    /// Cancel a plan: running gates are stopped, the rest cancelled. `force` stops them
    /// without a grace period (a second Ctrl-C).
    Cancel {
        /// The plan.
        plan: PlanId,
        /// Kill at once instead of TERM-then-KILL.
        force: bool,
    },
}

/// What the durable log says about one gate of a restored plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoredGate {
    /// Nothing started (or it only waited for capacity).
    NotStarted,
    /// It ran: the highest attempt number the log shows, and how many failed.
    Started {
        /// Highest attempt number in the log.
        attempt: u32,
        /// Failed attempts (retries used).
        failures: u32,
        /// That attempt's result is not in the log (it was running).
        open: bool,
    },
    /// It ended; its terminal event is in the log.
    Done {
        /// How it ended.
        terminal: Terminal,
        /// From the cache.
        cached: bool,
        /// Passed after a failure.
        flaky: bool,
    },
}

/// Timers the core asks the driver for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The backoff before `attempt` of `gate` is over.
    Retry {
        /// The plan.
        plan: PlanId,
        /// The gate.
        gate: GateIdx,
        /// The attempt that waits.
        attempt: u32,
    },
    /// The window for workers to re-report the attempts of a restored plan is over:
    /// its gates still in doubt run again as new attempts ([`CoreConfig::recovery_window`]
    /// after [`Event::PlanRestored`]).
    ///
    /// [`CoreConfig::recovery_window`]: super::CoreConfig::recovery_window
    RecoveryWindow {
        /// The restored plan.
        plan: PlanId,
    },
}

/// Commands out of the core, carried out by the driver in order.
#[derive(Clone, Debug)]
pub enum Command {
    /// Send this assignment to `worker` (its slot and memory are reserved). The
    /// assignment is complete as far as the core knows it (the cache key its result is
    /// stored under, if any); the driver adds only transport details (trace context).
    Dispatch {
        /// The worker.
        worker: SessionKey,
        /// The assignment.
        assignment: Assignment,
        /// How long the gate waited from ready to this dispatch.
        queued: Duration,
    },
    /// Stop a running attempt (TERM, then KILL after `grace`).
    CancelAttempt {
        /// The worker running it.
        worker: SessionKey,
        /// The attempt.
        attempt: AttemptRef,
        /// Grace between TERM and KILL.
        grace: Duration,
    },
    /// Compute the gate's cache key from `deps` and look it up; answer with
    /// [`Event::CacheChecked`]. When the gate has `cache: false` the driver computes the
    /// key (dependents need it) but answers with a miss without looking up. The answer
    /// decides nothing else: single flight on the key is the core's.
    CheckCache {
        /// The plan.
        plan: PlanId,
        /// The gate.
        gate: GateIdx,
        /// The keys of the gates it directly depends on, in `Plan::prerequisites`
        /// order; `None` if one is unknown (the gate cannot be keyed).
        deps: Option<Vec<CacheKey>>,
    },
    /// Store a passed gate's result under its key (the driver, or the executor that
    /// ran it when executors write their results themselves).
    StoreResult {
        /// The plan.
        plan: PlanId,
        /// The gate.
        gate: GateIdx,
        /// Its cache key.
        key: CacheKey,
        /// The passing result.
        result: GateResult,
        /// For a flaky pass stored under `policy.cache_flaky`: its flaky tests. Such a
        /// pass is never written by the executor that ran it, so the driver writes it
        /// even where executors store their own results.
        flaky: Option<gatehouse_common::reports::TestVerdict>,
    },
    /// Record this fact in the durable test history (the core has already folded it
    /// into its own).
    RecordTests(Arc<gatehouse_common::reports::history::TestRun>),
    /// `worker` may forget these results. Comes after every event that records one of
    /// them, so the driver delivers it once those events are durable.
    AckResults {
        /// The worker that reported them.
        worker: SessionKey,
        /// Their attempts.
        attempts: Vec<AttemptRef>,
    },
    /// Deliver [`Event::TimerFired`] at `at` (core time). Timers are not cancelled;
    /// a timer that no longer matches the gate's state is ignored.
    SetTimer {
        /// When.
        at: Now,
        /// What.
        timer: Timer,
    },
    /// Publish a plan event (to `--json`, the progress display, `WatchPlan`).
    Emit(PlanEvent),
}

/// Point-in-time figures of the core, for metrics ([`crate::core::Scheduler::gauges`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Live plans.
    pub plans: u64,
    /// Gates whose prerequisites passed, waiting for a worker.
    pub queued: u64,
    /// Attempts dispatched and not finished.
    pub running: u64,
    /// Workers that take new gates.
    pub workers_ready: u64,
    /// Draining workers.
    pub workers_draining: u64,
    /// Workers above their memory-pressure threshold (and not draining).
    pub workers_pressured: u64,
}

/// A worker's slots as the core accounts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotUse {
    /// Slots taken by attempts.
    pub used: u32,
    /// Slots it declared.
    pub total: u32,
}
