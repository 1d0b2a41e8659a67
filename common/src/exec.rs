//! Messages between a scheduler and an executor, independent of the transport
//! (in-process channels in `gatehouse run`, gRPC streams in the cluster).
//!
//! The scheduler sends [`ToWorker`]; the executor answers with [`FromWorker`]. Every
//! message names the attempt it is about ([`AttemptRef`]), so a result for an attempt
//! that is no longer current can be recognised and ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{GateId, GateIdx, ItemId, PlanId};

/// Identifies one attempt of one gate of one plan run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    /// The plan run the gate belongs to.
    pub plan: PlanId,
    /// The gate's index in the plan.
    pub gate: GateIdx,
    /// 1-based attempt number; retries and re-queues get a new number.
    pub attempt: u32,
}

/// Everything an executor needs to run one gate attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSpec {
    /// Plan name, exported to the gate as `GATEHOUSE_PLAN`.
    pub plan_name: String,
    /// Full gate id, exported as `GATEHOUSE_GATE`.
    pub gate: GateId,
    /// Item id (item form only), exported as `GATEHOUSE_ITEM`.
    pub item: Option<ItemId>,
    /// Shell command run as `sh -c <run>`.
    pub run: String,
    /// Added to the executor's inherited environment.
    pub env: BTreeMap<String, String>,
    /// Absolute working directory on the executor's machine.
    pub workdir: PathBuf,
    /// `workdir` as written in the plan; a remote worker resolves it against its own
    /// workspace instead of using `workdir`.
    pub workdir_rel: String,
    /// Per-attempt timeout; on expiry the process group is killed (`timed_out`).
    pub timeout: Duration,
    /// Memory request in bytes; a process tree above twice this is killed (`memory`).
    pub memory: u64,
    /// For a gate of a source-aware plan: the tree it runs on. The attempt runs in a
    /// fresh checkout of it, with `workdir_rel` relative to the checkout's root.
    pub checkout: Option<crate::source::Checkout>,
    /// JUnit XML report globs relative to the workdir, read after the attempt.
    pub reports: Vec<String>,
}

/// Why an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// The shell exited with this code (0 means the gate passed).
    Exited(i32),
    /// The shell was killed by this signal, not by Gatehouse.
    Signaled(i32),
    /// The attempt exceeded its timeout and its process group was killed.
    TimedOut,
    /// The process tree exceeded twice the memory request and was killed.
    MemoryExceeded { peak: u64, limit: u64 },
    /// The scheduler cancelled the attempt (fail-fast, Ctrl-C, plan cancel).
    Cancelled,
    /// The process could not be started at all (missing workdir, fork failure...).
    SpawnFailed(String),
    /// The gate's tree could not be checked out (fetch failed or timed out, or a
    /// rebuilt speculative commit differed from the one keyed); nothing ran.
    SourceFailed(String),
}

impl ExitStatus {
    /// Whether this status means the gate passed.
    pub fn passed(&self) -> bool {
        matches!(self, ExitStatus::Exited(0))
    }

    /// Short machine-readable reason for a non-passing status.
    pub fn reason(&self) -> &'static str {
        match self {
            ExitStatus::Exited(0) => "passed",
            ExitStatus::Exited(_) => "exit_code",
            ExitStatus::Signaled(_) => "signal",
            ExitStatus::TimedOut => "timeout",
            ExitStatus::MemoryExceeded { .. } => "memory",
            ExitStatus::Cancelled => "cancelled",
            ExitStatus::SpawnFailed(_) => "spawn_failed",
            ExitStatus::SourceFailed(_) => "source",
        }
    }
}

/// The last bytes of one output stream of an attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTail {
    /// At most the executor's tail limit (1 MiB by default) of the stream's end.
    pub bytes: Vec<u8>,
    /// How many bytes at the start of the stream were dropped to respect the limit.
    pub dropped: u64,
}

/// What an executor reports about a finished attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateResult {
    /// How the attempt ended.
    pub status: ExitStatus,
    /// Wall time from spawn to the end of the process group.
    pub duration: Duration,
    /// Peak resident memory of the process tree as sampled, if any sample was taken.
    pub peak_memory: Option<u64>,
    /// Tail of stdout.
    pub stdout: OutputTail,
    /// Tail of stderr.
    pub stderr: OutputTail,
    /// What the gate's declared reports said (`None`: it declares none).
    pub tests: Option<Box<crate::reports::GateTests>>,
}

impl GateResult {
    /// A passed attempt whose reports show no flaky test: what an executor may store
    /// in the cache on its own (anything flaky is the scheduler's to judge).
    pub fn clean_pass(&self) -> bool {
        self.status.passed() && self.tests.as_ref().is_none_or(|t| t.results.flaky == 0)
    }
}

/// An assignment of one gate attempt to an executor.
#[derive(Clone, Debug)]
pub struct Assignment {
    /// Which attempt this is.
    pub attempt: AttemptRef,
    /// What to run.
    pub spec: Arc<GateSpec>,
    /// In a cluster: the gate's cache key, when the executor should write a passed
    /// result to the shared cache (`None` otherwise, and always for `gatehouse run`,
    /// whose scheduler writes its own cache).
    pub cache_key: Option<crate::cache::CacheKey>,
    /// W3C `traceparent` of the gate's attempt span, when the plan is traced: the
    /// executor's `gate.execute` span continues it.
    pub traceparent: Option<String>,
    /// Tests whose passes the result should list (they failed before; see
    /// [`crate::reports::TestResults::watched_passed`]).
    pub watch: Arc<[crate::reports::TestKey]>,
}

/// Scheduler -> executor.
#[derive(Clone, Debug)]
pub enum ToWorker {
    /// Start this attempt now (the scheduler has reserved a slot and memory for it).
    Assign(Assignment),
    /// Stop this attempt: SIGTERM to its process group, SIGKILL after `grace`.
    /// The executor still answers with [`FromWorker::Finished`] (status `Cancelled`).
    Cancel {
        attempt: AttemptRef,
        grace: Duration,
    },
}

/// Executor -> scheduler.
#[derive(Clone, Debug)]
pub enum FromWorker {
    /// The attempt's process was spawned.
    Started { attempt: AttemptRef },
    /// The attempt ended (always sent exactly once per assignment).
    Finished {
        attempt: AttemptRef,
        result: GateResult,
    },
}
