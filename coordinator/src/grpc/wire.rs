//! What the coordinator publishes to clients (`WatchPlan`, `GetPlan`, `ListPlans`), built
//! on the one conversion per message of [`gatehouse_proto::convert::events`]. What is
//! the coordinator's own: plan info and `GetPlan` answers are built from the
//! registry's snapshots. Public so clients can test that they read back exactly
//! what the coordinator writes.

use gatehouse_common::events::{GateEvent, PlanEvent};
use gatehouse_common::plan::Plan;
use gatehouse_proto::convert::events::{InPlan, levels};
use gatehouse_proto::convert::source::source_info;
use gatehouse_proto::v1;

use crate::registry::{PlanInfo, PlanSnapshot};

/// A gate event as published.
pub fn gate_event(plan: &Plan, ev: &GateEvent) -> v1::GateEvent {
    v1::GateEvent::from(InPlan::new(plan, ev))
}

/// The event numbered `seq` in the plan's log, as streamed by `WatchPlan`.
pub fn plan_event(plan: &Plan, seq: u64, ev: &PlanEvent) -> v1::PlanEvent {
    v1::PlanEvent::from(InPlan::new(plan, (seq, ev)))
}

pub fn plan_info(info: &PlanInfo) -> v1::PlanInfo {
    let state = info
        .summary
        .as_ref()
        .map_or(v1::PlanState::Running, |s| s.outcome.into());
    v1::PlanInfo {
        plan_id: info.id.to_string(),
        name: info.name.clone(),
        state: state as i32,
        counts: Some(info.counts.into()),
        submitted_unix_ms: info.submitted_unix_ms,
        finished_unix_ms: info.finished_unix_ms.unwrap_or(0),
    }
}

pub fn get_plan_response(s: &PlanSnapshot) -> v1::GetPlanResponse {
    let plan = &s.plan;
    let gates = plan
        .gates
        .iter()
        .zip(&s.gates)
        .map(|(gate, latest)| {
            let item_id = gate
                .item
                .map(|i| plan.item(i).id.to_string())
                .unwrap_or_default();
            match latest {
                None => v1::GateStatus {
                    gate_id: gate.id.to_string(),
                    item_id,
                    state: v1::GateState::Pending as i32,
                    ..v1::GateStatus::default()
                },
                Some(ev) => {
                    let e = gate_event(plan, ev);
                    v1::GateStatus {
                        gate_id: e.gate_id,
                        item_id: e.item_id,
                        state: e.state,
                        attempt: e.attempt,
                        cached: e.cached,
                        flaky: e.flaky,
                        worker_id: e.worker_id,
                        reason: if e.waiting_for.is_empty() {
                            e.reason
                        } else {
                            e.waiting_for
                        },
                        result: e.result,
                        flaky_tests: e.flaky_tests,
                        quarantined_tests: e.quarantined_tests,
                    }
                }
            }
        })
        .collect();
    v1::GetPlanResponse {
        plan: Some(plan_info(&s.info)),
        gates,
        levels: levels(plan),
        summary: s
            .info
            .summary
            .as_ref()
            .map(|x| InPlan::new(&**plan, x).into()),
        source: source_info(plan),
        land_branch: s.info.land_branch.clone().unwrap_or_default(),
        land: s
            .info
            .land
            .as_ref()
            .map(|report| InPlan::new(&**plan, report).into()),
    }
}
