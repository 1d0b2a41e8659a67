//! Domain -> wire conversions of plan state and events (the client API): what the
//! coordinator publishes. Public so clients can test that they read back exactly what
//! the coordinator writes.

use gatehouse_common::plan::Plan;
use gatehouse_proto::v1;

use crate::core::{Counts, GateEvent, GateStatus, PlanEvent, PlanOutcome, PlanSummary, Terminal};
use crate::registry::{PlanInfo, PlanSnapshot};

/// The worker id a user knows: the scheduler tracks sessions as `id#generation`.
pub fn worker_name(w: &gatehouse_common::ids::WorkerId) -> String {
    w.as_str().split('#').next().unwrap_or_default().to_string()
}

pub fn gate_state(status: &GateStatus) -> v1::GateState {
    match status {
        GateStatus::Dispatched => v1::GateState::Pending,
        GateStatus::Running => v1::GateState::Running,
        GateStatus::Retrying { .. } => v1::GateState::Retrying,
        GateStatus::Waiting { .. } => v1::GateState::Waiting,
        GateStatus::Finished(t) => match t {
            Terminal::Passed => v1::GateState::Passed,
            Terminal::Failed => v1::GateState::Failed,
            Terminal::TimedOut => v1::GateState::TimedOut,
            Terminal::Skipped => v1::GateState::Skipped,
            Terminal::Cancelled => v1::GateState::Cancelled,
        },
    }
}

pub fn counts(c: &Counts) -> v1::Counts {
    v1::Counts {
        total: c.total,
        passed: c.passed,
        failed: c.failed,
        timed_out: c.timed_out,
        skipped: c.skipped,
        cancelled: c.cancelled,
        cached: c.cached,
        flaky: c.flaky,
    }
}

fn outcome(o: PlanOutcome) -> v1::PlanOutcome {
    match o {
        PlanOutcome::Passed => v1::PlanOutcome::Passed,
        PlanOutcome::Failed => v1::PlanOutcome::Failed,
        PlanOutcome::Cancelled => v1::PlanOutcome::Cancelled,
    }
}

pub fn levels(plan: &Plan) -> Vec<v1::Level> {
    plan.level_ids()
        .into_iter()
        .map(|ids| v1::Level { ids })
        .collect()
}

pub fn gate_event(plan: &Plan, ev: &GateEvent) -> v1::GateEvent {
    let gate = plan.gate(ev.gate);
    let mut out = v1::GateEvent {
        gate_id: gate.id.to_string(),
        item_id: gate
            .item
            .map(|i| plan.item(i).id.to_string())
            .unwrap_or_default(),
        state: gate_state(&ev.status) as i32,
        attempt: ev.attempt,
        cached: ev.cached,
        flaky: ev.flaky,
        worker_id: ev.worker.as_ref().map(worker_name).unwrap_or_default(),
        reason: ev.reason.unwrap_or_default().to_string(),
        cause: ev
            .cause
            .map(|c| plan.gate(c).id.to_string())
            .unwrap_or_default(),
        result: ev.result.as_ref().map(v1::AttemptResult::from),
        ..v1::GateEvent::default()
    };
    match &ev.status {
        GateStatus::Retrying { backoff } => out.backoff_ms = backoff.as_millis() as u64,
        GateStatus::Waiting { reason } => out.waiting_for = reason.clone(),
        _ => {}
    }
    out
}

pub fn summary(plan: &Plan, s: &PlanSummary) -> v1::PlanSummary {
    v1::PlanSummary {
        plan_id: s.plan.to_string(),
        name: plan.name.clone(),
        outcome: outcome(s.outcome) as i32,
        counts: Some(counts(&s.counts)),
        merge_order: s
            .merge_order
            .iter()
            .map(|i| plan.item(*i).id.to_string())
            .collect(),
        levels: levels(plan),
        duration_ms: s.duration.as_millis() as u64,
    }
}

pub fn plan_event(plan: &Plan, seq: u64, ev: &PlanEvent) -> v1::PlanEvent {
    let event = match ev {
        PlanEvent::Gate(g) => v1::plan_event::Event::Gate(gate_event(plan, g)),
        PlanEvent::Finished(s) => v1::plan_event::Event::Summary(summary(plan, s)),
    };
    v1::PlanEvent {
        seq,
        event: Some(event),
    }
}

pub fn plan_info(info: &PlanInfo) -> v1::PlanInfo {
    let state = match &info.summary {
        None => v1::PlanState::Running,
        Some(s) => match s.outcome {
            PlanOutcome::Passed => v1::PlanState::Passed,
            PlanOutcome::Failed => v1::PlanState::Failed,
            PlanOutcome::Cancelled => v1::PlanState::Cancelled,
        },
    };
    v1::PlanInfo {
        plan_id: info.id.to_string(),
        name: info.name.clone(),
        state: state as i32,
        counts: Some(counts(&info.counts)),
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
                    }
                }
            }
        })
        .collect();
    v1::GetPlanResponse {
        plan: Some(plan_info(&s.info)),
        gates,
        levels: levels(plan),
        summary: s.info.summary.as_ref().map(|x| summary(plan, x)),
    }
}
