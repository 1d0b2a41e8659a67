//! Reading stored plans back: decoding, re-validating the document, and deriving what
//! the scheduler needs to resume each unfinished plan ([`RestoredGate`] per gate).
//!
//! CPU-bound (documents are parsed again): callers run [`prepare`] in the blocking
//! pool. A plan whose record or log cannot be read is skipped with an error log, never
//! a panic and never a half-restored plan.

use std::path::Path;
use std::sync::Arc;

use gatehouse_common::ids::PlanId;
use gatehouse_common::plan::{Plan, parse_plan};

use super::codec::{self, PlanRecord};
use crate::core::{GateStatus, PlanEvent, RestoredGate};
use crate::store::StoredPlan;

/// A stored plan, decoded.
pub struct Restored {
    pub id: PlanId,
    pub plan: Arc<Plan>,
    pub record: PlanRecord,
    /// The event log, `seq` = index + 1.
    pub log: Vec<PlanEvent>,
    pub cancel: Option<bool>,
}

impl Restored {
    /// Whether the log ends with the plan's summary.
    pub fn finished(&self) -> bool {
        matches!(self.log.last(), Some(PlanEvent::Finished(_)))
    }

    /// What the log says of each gate.
    pub fn gates(&self) -> Vec<RestoredGate> {
        gate_states(&self.plan, &self.log)
    }
}

/// Decodes every stored plan that can be read; the others are logged and skipped.
pub fn prepare(stored: Vec<StoredPlan>) -> Vec<Restored> {
    stored
        .into_iter()
        .filter_map(|s| {
            let id = s.plan.clone();
            match decode(s) {
                Ok(r) => Some(r),
                Err(reason) => {
                    tracing::error!(plan_id = %id, %reason, "cannot restore plan; skipped");
                    None
                }
            }
        })
        .collect()
}

fn decode(s: StoredPlan) -> Result<Restored, String> {
    let record = codec::decode_record(&s.record).map_err(|e| format!("record: {e}"))?;
    let mut record = record;
    let mut plan = parse_plan(
        &record.source.document,
        record.source.format,
        &record.source.name,
        Path::new("/"),
    )
    .map_err(|e| format!("the stored document no longer validates: {e}"))?;
    // A source plan runs on the commits recorded at submission, never resolved again.
    match (plan.source.is_some(), &record.source.resolution) {
        (true, Some(resolution)) if !resolution.matches(&plan) => {
            return Err("the stored resolution does not match the plan".into());
        }
        (true, None) => {
            return Err("a plan with a source was stored without its resolution".into());
        }
        _ => {}
    }
    if let (Some(source), Some(resolution)) = (plan.source.as_mut(), &record.source.resolution) {
        source.resolution = Some(resolution.clone());
    }
    record.options.blocked = plan
        .resolution()
        .map(|r| r.blocked(&plan))
        .unwrap_or_default();
    let mut log = Vec::new();
    for (first_seq, chunk) in &s.chunks {
        if *first_seq != log.len() as u64 + 1 {
            return Err(format!(
                "the log has a gap: chunk starts at {first_seq}, expected {}",
                log.len() + 1
            ));
        }
        let events =
            codec::decode_events(&s.plan, chunk).map_err(|e| format!("log at {first_seq}: {e}"))?;
        log.extend(events);
    }
    Ok(Restored {
        id: s.plan,
        plan: Arc::new(plan),
        record,
        log,
        cancel: s.cancel,
    })
}

/// Folds a plan's log into one [`RestoredGate`] per gate.
pub fn gate_states(plan: &Plan, log: &[PlanEvent]) -> Vec<RestoredGate> {
    let mut gates = vec![RestoredGate::NotStarted; plan.gates.len()];
    for event in log {
        let PlanEvent::Gate(ev) = event else { continue };
        let Some(slot) = gates.get_mut(ev.gate.ix()) else {
            continue;
        };
        let failures = match slot {
            RestoredGate::Started { failures, .. } => *failures,
            _ => 0,
        };
        match &ev.status {
            GateStatus::Dispatched | GateStatus::Running => {
                *slot = RestoredGate::Started {
                    attempt: ev.attempt,
                    failures,
                    open: true,
                };
            }
            GateStatus::Retrying { .. } => {
                *slot = RestoredGate::Started {
                    attempt: ev.attempt,
                    failures: failures + 1,
                    open: false,
                };
            }
            GateStatus::Waiting { .. } => {}
            GateStatus::Finished(terminal) => {
                *slot = RestoredGate::Done {
                    terminal: *terminal,
                    cached: ev.cached,
                    flaky: ev.flaky,
                };
            }
        }
    }
    gates
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gatehouse_common::ids::GateIdx;
    use gatehouse_common::plan::Policy;

    use super::*;
    use crate::core::testkit::{flat, g};
    use crate::core::{GateEvent, Terminal};

    fn ev(gate: u32, status: GateStatus, attempt: u32) -> PlanEvent {
        PlanEvent::Gate(GateEvent {
            flaky: attempt > 1,
            ..GateEvent::new(PlanId::new("p"), GateIdx(gate), status, attempt, None)
        })
    }

    #[test]
    fn the_log_folds_into_one_state_per_gate() {
        let plan = flat(
            Policy::default(),
            &[g("a", &[]), g("b", &[]), g("c", &[]), g("d", &[])],
        );
        let retry = GateStatus::Retrying {
            backoff: Duration::from_secs(1),
        };
        let log = vec![
            ev(0, GateStatus::Running, 1),
            ev(1, GateStatus::Running, 1),
            ev(1, retry.clone(), 1),
            ev(2, GateStatus::Running, 1),
            ev(2, retry, 1),
            ev(2, GateStatus::Running, 2),
            ev(2, GateStatus::Finished(Terminal::Passed), 2),
            ev(99, GateStatus::Running, 1), // out of range: ignored
        ];
        let states = gate_states(&plan, &log);
        assert_eq!(
            states,
            vec![
                RestoredGate::Started {
                    attempt: 1,
                    failures: 0,
                    open: true
                },
                RestoredGate::Started {
                    attempt: 1,
                    failures: 1,
                    open: false
                },
                RestoredGate::Done {
                    terminal: Terminal::Passed,
                    cached: false,
                    flaky: true
                },
                RestoredGate::NotStarted,
            ]
        );
    }
}
