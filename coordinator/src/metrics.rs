//! The coordinator's Prometheus metrics (docs/observability.md lists each with its
//! meaning). [`Metrics`] is a set of cheap, shared handles: the scheduler driver, the
//! election and the state store update them, and `--http` serves them at `/metrics`
//! once [`Metrics::register`] has put them in a registry. Unregistered (the default,
//! e.g. in `gatehouse run`) they are counted but never shown.
//!
//! Gauges about the cluster (ready and running gates, plans, workers) describe the
//! leader's view; a follower reports zeros.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::telemetry::metrics::{duration_buckets, fast_buckets, seconds};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::core::{Gauges, SlotUse, Terminal};

/// One label.
type L1 = [(&'static str, &'static str); 1];
/// A worker and a kind of figure.
type WorkerKind = [(&'static str, String); 2];
type HistogramFamily = Family<L1, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

fn fast_histogram() -> Histogram {
    Histogram::new(fast_buckets())
}

/// The coordinator's metrics. Clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Registered for export: the figures that cost work to gather (gauges from the
    /// core, per-worker series) are gathered only then.
    exported: std::sync::atomic::AtomicBool,
    gates: Family<L1, Counter>,
    gates_cached: Counter,
    gates_flaky: Counter,
    retries: Counter,
    tests: Family<L1, Counter>,
    tests_flaky: Counter,
    tests_quarantined: Counter,
    gate_duration: HistogramFamily,
    gate_queue: Histogram,
    ready_gates: Gauge,
    running_gates: Gauge,
    plans: Family<L1, Gauge>,
    plans_finished: Family<L1, Counter>,
    workers: Family<L1, Gauge>,
    worker_memory: Family<WorkerKind, Gauge>,
    worker_slots: Family<WorkerKind, Gauge>,
    throttled: Counter,
    cache_requests: Family<L1, Counter>,
    is_leader: Gauge,
    leader_changes: Counter,
    store_txn: HistogramFamily,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                exported: std::sync::atomic::AtomicBool::new(false),
                gates: Family::default(),
                gates_cached: Counter::default(),
                gates_flaky: Counter::default(),
                retries: Counter::default(),
                tests: Family::default(),
                tests_flaky: Counter::default(),
                tests_quarantined: Counter::default(),
                gate_duration: Family::new_with_constructor(duration_histogram),
                gate_queue: duration_histogram(),
                ready_gates: Gauge::default(),
                running_gates: Gauge::default(),
                plans: Family::default(),
                plans_finished: Family::default(),
                workers: Family::default(),
                worker_memory: Family::default(),
                worker_slots: Family::default(),
                throttled: Counter::default(),
                cache_requests: Family::default(),
                is_leader: Gauge::default(),
                leader_changes: Counter::default(),
                store_txn: Family::new_with_constructor(fast_histogram),
            }),
        }
    }
}

/// How a cache lookup ended, for `gatehouse_cache_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// An entry was found.
    Hit,
    /// No replica had it (or none answered in time).
    Miss,
    /// The lookup failed (counted as a miss by the scheduler).
    Error,
}

impl CacheResult {
    fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Error => "error",
        }
    }
}

/// The outcome of one executed attempt, for `gatehouse_gate_duration_seconds`.
pub fn attempt_outcome(status: &gatehouse_common::exec::ExitStatus) -> &'static str {
    use gatehouse_common::exec::ExitStatus;
    match status {
        ExitStatus::Exited(0) => "passed",
        ExitStatus::TimedOut => "timed_out",
        ExitStatus::Cancelled => "cancelled",
        _ => "failed",
    }
}

impl Metrics {
    /// Puts every metric in `registry` (prefix `gatehouse_`).
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.inner;
        m.exported.store(true, std::sync::atomic::Ordering::Relaxed);
        registry.register(
            "gates",
            "Gates that reached a terminal state, by outcome (passed includes cached)",
            m.gates.clone(),
        );
        registry.register(
            "gates_cached",
            "Gates passed from the result cache without running",
            m.gates_cached.clone(),
        );
        registry.register(
            "gates_flaky",
            "Gates that passed flaky: after a failed attempt, with a test that passed only on a rerun, or through quarantined tests",
            m.gates_flaky.clone(),
        );
        registry.register(
            "gate_retries",
            "Failed attempts that were retried",
            m.retries.clone(),
        );
        registry.register(
            "tests",
            "Test cases in the reports of executed attempts, by outcome (passed, failed, skipped)",
            m.tests.clone(),
        );
        registry.register(
            "tests_flaky",
            "Tests found flaky: they failed and passed on the same inputs",
            m.tests_flaky.clone(),
        );
        registry.register(
            "tests_quarantined",
            "Failed tests that were quarantined, so their gate passed",
            m.tests_quarantined.clone(),
        );
        registry.register_with_unit(
            "gate_duration",
            "Run time of executed gate attempts (spawn to exit), by attempt outcome",
            Unit::Seconds,
            m.gate_duration.clone(),
        );
        registry.register_with_unit(
            "gate_queue",
            "Time from a gate becoming ready to its dispatch to a worker",
            Unit::Seconds,
            m.gate_queue.clone(),
        );
        registry.register(
            "ready_gates",
            "Gates whose prerequisites passed, waiting for a worker",
            m.ready_gates.clone(),
        );
        registry.register(
            "running_gates",
            "Gate attempts dispatched and not finished",
            m.running_gates.clone(),
        );
        registry.register(
            "plans",
            "Plans by state: running (live on this leader)",
            m.plans.clone(),
        );
        registry.register(
            "plans_finished",
            "Plans that finished on this coordinator, by outcome",
            m.plans_finished.clone(),
        );
        registry.register(
            "workers",
            "Connected workers by state: ready, draining, pressured (over the memory threshold)",
            m.workers.clone(),
        );
        registry.register_with_unit(
            "worker_memory",
            "Worker memory as last reported, by worker and kind (used, available, total)",
            Unit::Bytes,
            m.worker_memory.clone(),
        );
        registry.register(
            "worker_slots",
            "Worker slots by worker and kind (used, total)",
            m.worker_slots.clone(),
        );
        registry.register(
            "admission_throttled",
            "Ready gates held back because no worker with a free slot had the memory (counted once per wait)",
            m.throttled.clone(),
        );
        registry.register(
            "cache_requests",
            "Result cache lookups by result (hit, miss, error)",
            m.cache_requests.clone(),
        );
        registry.register(
            "is_leader",
            "1 while this coordinator leads, else 0",
            m.is_leader.clone(),
        );
        registry.register(
            "leader_changes",
            "Changes of the elected leader seen by this coordinator",
            m.leader_changes.clone(),
        );
        registry.register_with_unit(
            "state_store_txn",
            "Duration of state store operations, by operation (apply, load)",
            Unit::Seconds,
            m.store_txn.clone(),
        );
    }

    /// Whether these metrics are served (see [`Metrics::register`]); `gatehouse run`'s
    /// are not, and its scheduler skips gathering them.
    pub fn exported(&self) -> bool {
        self.inner
            .exported
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A gate reached `terminal`.
    pub fn gate_finished(&self, terminal: Terminal, cached: bool, flaky: bool) {
        self.inner
            .gates
            .get_or_create(&[("outcome", terminal.as_str())])
            .inc();
        if cached {
            self.inner.gates_cached.inc();
        }
        if flaky {
            self.inner.gates_flaky.inc();
        }
    }

    /// An executed attempt's reports held these test cases.
    pub fn tests_ran(&self, tests: &gatehouse_common::reports::TestResults) {
        for (outcome, n) in [
            ("passed", tests.passed),
            ("failed", tests.failed),
            ("skipped", tests.skipped),
        ] {
            if n > 0 {
                self.inner
                    .tests
                    .get_or_create(&[("outcome", outcome)])
                    .inc_by(n);
            }
        }
    }

    /// A gate ended with these flaky and quarantined tests.
    pub fn tests_judged(&self, verdict: &gatehouse_common::reports::TestVerdict) {
        self.inner.tests_flaky.inc_by(verdict.flaky.len() as u64);
        self.inner
            .tests_quarantined
            .inc_by(verdict.quarantined.len() as u64);
    }

    /// A failed attempt will be retried.
    pub fn gate_retried(&self) {
        self.inner.retries.inc();
    }

    /// An executed attempt ended after `duration`.
    pub fn attempt_ran(&self, outcome: &'static str, duration: Duration) {
        self.inner
            .gate_duration
            .get_or_create(&[("outcome", outcome)])
            .observe(seconds(duration));
    }

    /// A gate waited `queued` from ready to dispatch.
    pub fn dispatched(&self, queued: Duration) {
        self.inner.gate_queue.observe(seconds(queued));
    }

    /// The core's point-in-time figures.
    pub fn set_gauges(&self, g: &Gauges) {
        let m = &self.inner;
        m.ready_gates.set(g.queued as i64);
        m.running_gates.set(g.running as i64);
        m.plans
            .get_or_create(&[("state", "running")])
            .set(g.plans as i64);
        for (state, n) in [
            ("ready", g.workers_ready),
            ("draining", g.workers_draining),
            ("pressured", g.workers_pressured),
        ] {
            m.workers.get_or_create(&[("state", state)]).set(n as i64);
        }
    }

    /// A plan finished with `outcome`.
    pub fn plan_finished(&self, outcome: &'static str) {
        self.inner
            .plans_finished
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// Admission held back `n` more gates.
    pub fn throttled(&self, n: u64) {
        if n > 0 {
            self.inner.throttled.inc_by(n);
        }
    }

    /// One cache lookup ended.
    pub fn cache_request(&self, result: CacheResult) {
        self.inner
            .cache_requests
            .get_or_create(&[("result", result.as_str())])
            .inc();
    }

    /// A worker's slot use changed.
    pub fn worker_slots(&self, worker: &str, slots: SlotUse) {
        for (kind, v) in [("used", slots.used), ("total", slots.total)] {
            self.inner
                .worker_slots
                .get_or_create(&[("worker", worker.to_string()), ("kind", kind.to_string())])
                .set(i64::from(v));
        }
    }

    /// A worker's memory figures (`None`: unchanged).
    pub fn worker_memory(
        &self,
        worker: &str,
        used: Option<u64>,
        available: Option<u64>,
        total: Option<u64>,
    ) {
        for (kind, v) in [("used", used), ("available", available), ("total", total)] {
            if let Some(v) = v {
                self.inner
                    .worker_memory
                    .get_or_create(&[("worker", worker.to_string()), ("kind", kind.to_string())])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }

    /// A worker left: its series go away.
    pub fn worker_gone(&self, worker: &str) {
        for kind in ["used", "available", "total"] {
            self.inner
                .worker_memory
                .remove(&[("worker", worker.to_string()), ("kind", kind.to_string())]);
        }
        for kind in ["used", "total"] {
            self.inner
                .worker_slots
                .remove(&[("worker", worker.to_string()), ("kind", kind.to_string())]);
        }
    }

    /// Leadership started or ended here. Ending clears the cluster gauges: a follower
    /// knows no plans or workers.
    pub fn set_leader(&self, leading: bool) {
        let m = &self.inner;
        m.is_leader.set(i64::from(leading));
        if !leading {
            self.set_gauges(&Gauges::default());
            m.worker_memory.clear();
            m.worker_slots.clear();
        }
    }

    /// The observed leader changed.
    pub fn leader_changed(&self) {
        self.inner.leader_changes.inc();
    }

    /// A state store operation took `d`.
    pub fn store_op(&self, op: &'static str, d: Duration) {
        self.inner
            .store_txn
            .get_or_create(&[("op", op)])
            .observe(seconds(d));
    }
}
