//! The events a plan publishes while it runs: one [`GateEvent`] per change of a gate,
//! then one [`PlanSummary`], both as a [`PlanEvent`].
//!
//! The scheduler core emits them (`coordinator::core` re-exports these types); `gatehouse
//! run` renders them, the coordinator logs them durably and streams them to clients
//! (`WatchPlan`, `GetPlan`), and clients decode the stream back into them and render
//! them exactly as `gatehouse run` does. Their one wire conversion lives next to the
//! protocol (`gatehouse_proto::convert::events`).
//!
//! Plain data: no state, no I/O. Gates and items are addressed by their index in the
//! validated plan ([`GateIdx`], [`ItemIdx`]), so an event means something only together
//! with its plan.

use std::time::Duration;

use crate::exec::GateResult;
use crate::ids::{GateIdx, ItemIdx, PlanId, WorkerId};
use crate::land::LandRecord;

/// Terminal states of a gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Terminal {
    /// Exit code 0 (or a cache hit).
    Passed,
    /// Non-zero exit, signal, memory limit, spawn failure, lost workers, unschedulable.
    Failed,
    /// Exceeded its timeout on the last attempt.
    TimedOut,
    /// Never ran because a dependency failed (or fail-fast stopped the plan).
    Skipped,
    /// Stopped or never started because the plan was cancelled.
    Cancelled,
}

impl Terminal {
    /// Every terminal state.
    pub const ALL: [Terminal; 5] = [
        Terminal::Passed,
        Terminal::Failed,
        Terminal::TimedOut,
        Terminal::Skipped,
        Terminal::Cancelled,
    ];

    /// The lowercase name used in `--json` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Terminal::Passed => "passed",
            Terminal::Failed => "failed",
            Terminal::TimedOut => "timed_out",
            Terminal::Skipped => "skipped",
            Terminal::Cancelled => "cancelled",
        }
    }
}

/// What a published gate event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateStatus {
    /// The attempt was dispatched to a worker.
    Dispatched,
    /// The worker spawned the attempt.
    Running,
    /// The attempt failed; the next one starts after `backoff`.
    Retrying {
        /// Delay before the next attempt.
        backoff: Duration,
    },
    /// The gate is ready but no worker can run it; `reason` says why.
    Waiting {
        /// Why it waits.
        reason: String,
    },
    /// The gate ended.
    Finished(Terminal),
}

/// Every reason a [`GateEvent`] carries: [`crate::exec::ExitStatus::reason`] of an
/// attempt's result, and the scheduler's own (`worker_lost`, `unschedulable`,
/// `dependency_failed`, `fail_fast`).
pub const REASONS: &[&str] = &[
    "passed",
    "exit_code",
    "signal",
    "timeout",
    "memory",
    "cancelled",
    "spawn_failed",
    "worker_lost",
    "unschedulable",
    "dependency_failed",
    "fail_fast",
    "merge_conflict",
    "source",
];

/// The reason read back from text (a stored log, the wire) as the static string events
/// carry; a reason this build does not know (a newer peer's) reads as `unknown`.
pub fn known_reason(reason: &str) -> &'static str {
    REASONS
        .iter()
        .find(|r| **r == reason)
        .copied()
        .unwrap_or("unknown")
}

/// A published change of one gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateEvent {
    /// The plan.
    pub plan: PlanId,
    /// The gate.
    pub gate: GateIdx,
    /// What happened.
    pub status: GateStatus,
    /// Attempt number (0 if the gate never ran).
    pub attempt: u32,
    /// The worker involved, if any.
    pub worker: Option<WorkerId>,
    /// Whether the result came from the cache.
    pub cached: bool,
    /// Passed after at least one failed attempt.
    pub flaky: bool,
    /// Result of the attempt (finished and retrying events of executed or cached gates).
    pub result: Option<GateResult>,
    /// Machine-readable reason for failed/skipped/cancelled/waiting (`exit_code`,
    /// `timeout`, `memory`, `worker_lost`, `unschedulable`, `dependency_failed`, ...;
    /// one of [`REASONS`]).
    pub reason: Option<&'static str>,
    /// For a skipped gate: the failed gate that caused it.
    pub cause: Option<GateIdx>,
    /// For a dispatched attempt: how long it waited from ready to dispatch (for
    /// metrics; not published on the wire).
    pub queued: Option<Duration>,
    /// For a finished gate with test reports: its flaky and quarantined tests.
    pub verdict: Option<Box<crate::reports::TestVerdict>>,
}

impl GateEvent {
    /// An event of `gate` with nothing else to say: not cached, not flaky, no result,
    /// reason, cause or queue wait (set those with struct update syntax).
    pub fn new(
        plan: PlanId,
        gate: GateIdx,
        status: GateStatus,
        attempt: u32,
        worker: Option<WorkerId>,
    ) -> Self {
        Self {
            plan,
            gate,
            status,
            attempt,
            worker,
            cached: false,
            flaky: false,
            result: None,
            reason: None,
            cause: None,
            queued: None,
            verdict: None,
        }
    }
}

/// Plan outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanOutcome {
    /// Every gate passed.
    Passed,
    /// At least one gate failed or timed out.
    Failed,
    /// The plan was cancelled.
    Cancelled,
}

impl PlanOutcome {
    /// The lowercase name used in `--json` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanOutcome::Passed => "passed",
            PlanOutcome::Failed => "failed",
            PlanOutcome::Cancelled => "cancelled",
        }
    }
}

/// Gate counts of a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Gates in the plan.
    pub total: u32,
    /// Passed (including cached).
    pub passed: u32,
    /// Failed.
    pub failed: u32,
    /// Timed out.
    pub timed_out: u32,
    /// Skipped.
    pub skipped: u32,
    /// Cancelled.
    pub cancelled: u32,
    /// Passed from the cache.
    pub cached: u32,
    /// Passed after a failed attempt.
    pub flaky: u32,
}

impl Counts {
    /// Counts one gate that ended in `t`.
    pub fn record(&mut self, t: Terminal, cached: bool, flaky: bool) {
        match t {
            Terminal::Passed => self.passed += 1,
            Terminal::Failed => self.failed += 1,
            Terminal::TimedOut => self.timed_out += 1,
            Terminal::Skipped => self.skipped += 1,
            Terminal::Cancelled => self.cancelled += 1,
        }
        self.cached += u32::from(cached);
        self.flaky += u32::from(flaky);
    }
}

/// The last event of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanSummary {
    /// The plan.
    pub plan: PlanId,
    /// How it ended.
    pub outcome: PlanOutcome,
    /// Gate counts.
    pub counts: Counts,
    /// Items that may merge, in merge order (flat form: empty).
    pub merge_order: Vec<ItemIdx>,
    /// Core time from submission to the last gate's end.
    pub duration: Duration,
}

/// A published plan event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanEvent {
    /// A gate changed.
    Gate(GateEvent),
    /// The plan's gates ended. Unless it lands, no further events for it follow.
    Finished(PlanSummary),
    /// A step of the plan's landing (after its summary; the last is
    /// [`LandRecord::Finished`]).
    Land {
        /// The plan.
        plan: PlanId,
        /// The step.
        record: LandRecord,
    },
}

impl PlanEvent {
    /// The plan it belongs to.
    pub fn plan(&self) -> &PlanId {
        match self {
            PlanEvent::Gate(g) => &g.plan,
            PlanEvent::Finished(s) => &s.plan,
            PlanEvent::Land { plan, .. } => plan,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::ExitStatus;

    #[test]
    fn every_exit_reason_is_a_known_reason() {
        for status in [
            ExitStatus::Exited(0),
            ExitStatus::Exited(2),
            ExitStatus::Signaled(9),
            ExitStatus::TimedOut,
            ExitStatus::MemoryExceeded { peak: 2, limit: 1 },
            ExitStatus::Cancelled,
            ExitStatus::SpawnFailed("no such directory".into()),
        ] {
            assert_eq!(known_reason(status.reason()), status.reason());
        }
        assert_eq!(known_reason("worker_lost"), "worker_lost");
        assert_eq!(known_reason("something_new"), "unknown");
    }

    #[test]
    fn counts_record_each_terminal_once() {
        let mut c = Counts::default();
        for t in Terminal::ALL {
            c.record(t, t == Terminal::Passed, false);
        }
        c.record(Terminal::Passed, false, true);
        let expected = Counts {
            total: 0,
            passed: 2,
            failed: 1,
            timed_out: 1,
            skipped: 1,
            cancelled: 1,
            cached: 1,
            flaky: 1,
        };
        assert_eq!(c, expected);
    }
}
