//! One plan's record in the registry: its log, the latest event of each gate, counts,
//! summary, and how far the log is durable; and the small pure helpers that maintain it
//! (applying an event, trimming results, new plan ids).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_common::cache::unix_ms_now;
use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::PlanId;
use gatehouse_common::land::{LandRecord, LandReport};
use gatehouse_common::plan::Plan;
use gatehouse_common::source::Resolution;
use tokio::sync::watch;

use crate::core::{GateEvent, GateStatus, PlanEvent, PlanSummary, RunOptions, Terminal};

/// What the registry keeps of one plan.
pub(super) struct PlanRecord {
    pub(super) plan: Arc<Plan>,
    pub(super) submitted_unix_ms: u64,
    pub(super) finished_unix_ms: Option<u64>,
    /// Event `seq` is `log[seq - 1]`.
    pub(super) log: Vec<PlanEvent>,
    pub(super) latest: Vec<Option<GateEvent>>,
    pub(super) summary: Option<PlanSummary>,
    pub(super) counts: crate::core::Counts,
    /// Events up to this sequence number are durable (served to watchers).
    pub(super) durable: u64,
    /// Announces `durable`.
    pub(super) newest: watch::Sender<u64>,
    /// Submitter options (`land`: landing asked at submission; `None`: the plan ends
    /// with its summary).
    pub(super) options: RunOptions,
    /// The landing attempt: one more each time the branch moved and the plan ran again.
    pub(super) round: u32,
    /// Its landing's report, once over.
    pub(super) land: Option<LandReport>,
    /// A cancel was asked: a landing that starts later (after the round's summary)
    /// starts cancelled.
    pub(super) cancel_requested: bool,
}

impl PlanRecord {
    /// Its gates ended and, if it lands, its landing is over: no event follows.
    pub(super) fn done(&self) -> bool {
        self.land.is_some() || (self.summary.is_some() && self.options.land.is_none())
    }
}

/// Per item of `plan`: a gate of it failed or timed out, as `latest` says.
pub(super) fn failed_items(plan: &Plan, latest: &[Option<GateEvent>]) -> Vec<bool> {
    let mut failed = vec![false; plan.items.len()];
    for (gate, event) in plan.gates.iter().zip(latest) {
        if let (Some(item), Some(event)) = (gate.item, event)
            && matches!(
                event.status,
                GateStatus::Finished(Terminal::Failed | Terminal::TimedOut)
            )
        {
            failed[item.ix()] = true;
        }
    }
    failed
}

/// Where the current round starts in a plan's log: after its last re-speculation.
pub(super) fn round_start(log: &[PlanEvent]) -> usize {
    log.iter()
        .rposition(|e| {
            matches!(
                e,
                PlanEvent::Land {
                    record: LandRecord::Respeculated { .. },
                    ..
                }
            )
        })
        .map_or(0, |i| i + 1)
}

/// `plan` with its source resolved as `resolution` (a landing's new round).
pub(super) fn with_resolution(plan: &Plan, resolution: &Resolution) -> Plan {
    let mut plan = plan.clone();
    if let Some(source) = plan.source.as_mut() {
        source.resolution = Some(Arc::new(resolution.clone()));
    }
    plan
}

/// An empty record of a plan submitted at `submitted_unix_ms`.
pub(super) fn new_record(
    plan: Arc<Plan>,
    submitted_unix_ms: u64,
    options: RunOptions,
) -> PlanRecord {
    PlanRecord {
        options,
        cancel_requested: false,
        round: 0,
        land: None,
        latest: vec![None; plan.gates.len()],
        counts: crate::core::Counts {
            total: plan.gates.len() as u32,
            ..Default::default()
        },
        plan,
        submitted_unix_ms,
        finished_unix_ms: None,
        log: Vec::new(),
        summary: None,
        durable: 0,
        newest: watch::channel(0).0,
    }
}

/// Applies one event to a plan's record; returns its sequence number if it was logged.
pub(super) fn apply(
    r: &mut PlanRecord,
    mut event: PlanEvent,
    stderr_tail_bytes: usize,
) -> Option<u64> {
    match &mut event {
        PlanEvent::Gate(g) => {
            if let Some(result) = &mut g.result {
                trim(result, stderr_tail_bytes);
            }
            if let GateStatus::Finished(t) = g.status {
                r.counts.record(t, g.cached, g.flaky);
            }
            r.latest[g.gate.ix()] = Some(g.clone());
            if g.status == GateStatus::Dispatched {
                // The `Running` event follows at once; clients gain nothing from
                // this one, and leaving it out keeps logs and streams a third smaller.
                return None;
            }
        }
        PlanEvent::Finished(s) => {
            r.summary = Some(s.clone());
            if r.options.land.is_none() {
                r.finished_unix_ms = Some(unix_ms_now());
            }
        }
        PlanEvent::Land { record, .. } => match record {
            LandRecord::Finished(report) => {
                r.land = Some(report.clone());
                r.finished_unix_ms = Some(unix_ms_now());
            }
            LandRecord::Respeculated {
                round,
                resolution: Some(resolution),
                ..
            } => {
                // The plan runs again on the branch's new tip: a fresh round of gates.
                r.round = *round;
                r.plan = Arc::new(with_resolution(&r.plan, resolution));
                r.latest = vec![None; r.plan.gates.len()];
                r.counts = crate::core::Counts {
                    total: r.plan.gates.len() as u32,
                    ..Default::default()
                };
                r.summary = None;
            }
            LandRecord::Respeculated { .. }
            | LandRecord::Verified { .. }
            | LandRecord::Pushing { .. } => {}
        },
    }
    r.log.push(event);
    Some(r.log.len() as u64)
}

/// Drops stdout and keeps the last `keep` bytes of stderr, counting what was dropped.
fn trim(result: &mut GateResult, keep: usize) {
    result.stdout.dropped += result.stdout.bytes.len() as u64;
    result.stdout.bytes = Vec::new();
    // Which watched tests passed is the test history's (its own records), not the log's.
    if let Some(tests) = result.tests.as_mut() {
        tests.results.watched_passed = Vec::new();
    }
    let len = result.stderr.bytes.len();
    if len > keep {
        result.stderr.bytes.drain(..len - keep);
        result.stderr.dropped += (len - keep) as u64;
    }
}

/// A new plan id: `p-<unix ms in base 36>-<counter>`, unique for this coordinator.
pub(super) fn new_plan_id() -> PlanId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut ms = unix_ms_now();
    let mut digits = Vec::new();
    while ms > 0 {
        let d = (ms % 36) as u8;
        digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        ms /= 36;
    }
    digits.reverse();
    PlanId::new(format!("p-{}-{n}", String::from_utf8_lossy(&digits)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ids_are_unique_and_valid() {
        let a = new_plan_id();
        let b = new_plan_id();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("p-"));
        assert!(gatehouse_common::ids::is_valid_id(a.as_str()));
    }

    #[test]
    fn trimming_keeps_the_stderr_tail_and_counts_drops() {
        let mut r = crate::core::testkit::result(gatehouse_common::exec::ExitStatus::Exited(1));
        r.stdout.bytes = vec![b'o'; 100];
        r.stderr.bytes = b"0123456789".to_vec();
        trim(&mut r, 4);
        assert!(r.stdout.bytes.is_empty());
        assert_eq!(r.stdout.dropped, 100);
        assert_eq!(r.stderr.bytes, b"6789");
        assert_eq!(r.stderr.dropped, 6);
    }
}
