//! A worker's Prometheus metrics, served by `--http` at `/metrics` (docs/observability.md
//! lists each): its session and slots, the attempts it ran, its writes to the shared
//! cache and, on a cache node, the node's store.
//!
//! Counters kept elsewhere (the cache client's and the store's atomics) are read at
//! scrape time by a collector, so nothing is counted twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_cache::ClusterCache;
use gatehouse_cache::node::NodeStore;
use gatehouse_common::exec::ExitStatus;
use gatehouse_common::telemetry::metrics::{duration_buckets, seconds};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

type L1 = [(&'static str, &'static str); 1];

/// Metrics the session updates as it works.
#[derive(Clone)]
pub struct WorkerMetrics {
    executions: Family<L1, Counter>,
    execution_duration: Family<L1, Histogram, fn() -> Histogram>,
    running: Arc<AtomicU64>,
}

fn histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            executions: Family::default(),
            execution_duration: Family::new_with_constructor(histogram),
            running: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

/// The outcome label of an attempt.
fn outcome(status: &ExitStatus) -> &'static str {
    match status {
        ExitStatus::Exited(0) => "passed",
        ExitStatus::TimedOut => "timed_out",
        ExitStatus::Cancelled => "cancelled",
        ExitStatus::SpawnFailed(_) => "spawn_failed",
        _ => "failed",
    }
}

impl WorkerMetrics {
    /// An attempt ended here.
    pub fn attempt_finished(&self, status: &ExitStatus, duration: Duration) {
        let label = [("outcome", outcome(status))];
        self.executions.get_or_create(&label).inc();
        self.execution_duration
            .get_or_create(&label)
            .observe(seconds(duration));
    }

    /// Attempts running here now.
    pub fn set_running(&self, n: usize) {
        self.running.store(n as u64, Ordering::Relaxed);
    }

    /// Registers these and the scrape-time figures of `state` into `registry`.
    pub fn register(&self, registry: &mut Registry, state: ScrapeState) {
        registry.register(
            "executions",
            "Gate attempts this worker ran, by outcome",
            self.executions.clone(),
        );
        registry.register_with_unit(
            "execution_duration",
            "Run time of the attempts this worker ran (spawn to exit), by outcome",
            Unit::Seconds,
            self.execution_duration.clone(),
        );
        registry.register_collector(Box::new(Scrape {
            state,
            running: self.running.clone(),
        }));
    }
}

/// What the scrape-time collector reads.
#[derive(Clone)]
pub struct ScrapeState {
    /// Slots the worker declares.
    pub slots: u32,
    /// Welcomed by the leader and not draining.
    pub ready: Arc<AtomicBool>,
    /// The worker's cache client (its writes of passed results).
    pub cache: Arc<ClusterCache>,
    /// The cache node's store, on a cache node.
    pub store: Option<Arc<NodeStore>>,
}

struct Scrape {
    state: ScrapeState,
    running: Arc<AtomicU64>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

/// Encodes one labelled metric family of constant samples.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L1, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes one unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.state;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut e,
            "worker_ready",
            "1 while the worker has a session with the leader and is not draining",
            i64::from(s.ready.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut e,
            "worker_running_gates",
            "Gate attempts running on this worker",
            load(&self.running) as i64,
        )?;
        gauge(
            &mut e,
            "worker_declared_slots",
            "Slots this worker offers",
            i64::from(s.slots),
        )?;
        let c = s.cache.stats();
        family(
            &mut e,
            "cache_writes",
            "Cache entries this worker delivered to a replica (ok) or gave up on after every retry (failed)",
            None,
            MetricType::Counter,
            [
                ([("result", "ok")], ConstCounter::new(load(&c.puts))),
                (
                    [("result", "failed")],
                    ConstCounter::new(load(&c.put_failures)),
                ),
            ],
        )?;
        let Some(store) = &s.store else {
            return Ok(());
        };
        let st = store.snapshot();
        family(
            &mut e,
            "cache_node_requests",
            "Requests this cache node answered: lookups (hit, miss) and writes (stored, rejected)",
            None,
            MetricType::Counter,
            [
                ([("result", "hit")], ConstCounter::new(st.hits)),
                ([("result", "miss")], ConstCounter::new(st.misses)),
                ([("result", "stored")], ConstCounter::new(st.puts)),
                ([("result", "rejected")], ConstCounter::new(st.rejected)),
            ],
        )?;
        family(
            &mut e,
            "cache_node_removals",
            "Entries this cache node dropped: evicted for space or expired (TTL)",
            None,
            MetricType::Counter,
            [
                ([("cause", "evicted")], ConstCounter::new(st.evictions)),
                ([("cause", "expired")], ConstCounter::new(st.expirations)),
            ],
        )?;
        family(
            &mut e,
            "cache_node_entries",
            "Entries held by this cache node, by tier (memory, disk)",
            None,
            MetricType::Gauge,
            [
                (
                    [("tier", "memory")],
                    ConstGauge::new(st.memory_entries as i64),
                ),
                ([("tier", "disk")], ConstGauge::new(st.disk_entries as i64)),
            ],
        )?;
        family(
            &mut e,
            "cache_node",
            "Bytes held by this cache node, by tier (memory, disk)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            [
                (
                    [("tier", "memory")],
                    ConstGauge::new(st.memory_bytes as i64),
                ),
                ([("tier", "disk")], ConstGauge::new(st.disk_bytes as i64)),
            ],
        )?;
        Ok(())
    }
}
