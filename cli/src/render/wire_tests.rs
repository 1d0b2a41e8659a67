//! Wire events, as the coordinator publishes them and this client decodes them, render
//! exactly like the core events they were encoded from. (That every message converts
//! domain -> wire -> domain losslessly is tested with the conversions, in
//! `gatehouse_proto::convert::events`.)

use std::time::Duration;

use gatehouse_common::events::Terminal;
use gatehouse_common::ids::{ItemIdx, PlanId};
use gatehouse_common::plan::Plan;
use gatehouse_common::samples::{FLAT, ITEMS, every_kind_of_event, plan};
// The coordinator itself encodes, so these tests read exactly what it publishes.
use gatehouse_coordinator::grpc::wire;
use gatehouse_coordinator::registry::{PlanInfo, PlanSnapshot};

use super::*;
use crate::render::json::{gate_value, summary_value};
use crate::render::text::gate_line;
use crate::render::view::{Change, GateUpdate, SummaryView};

/// What the coordinator publishes for a core event.
fn encode(plan: &Plan, ev: &GateEvent) -> v1::GateEvent {
    wire::gate_event(plan, ev)
}

fn p1() -> PlanId {
    PlanId::new("p-1")
}

/// What the coordinator answers to `GetPlan` for a plan where nothing happened yet.
fn describe(plan: &Plan) -> v1::GetPlanResponse {
    let plan = std::sync::Arc::new(plan.clone());
    let snapshot = PlanSnapshot {
        info: PlanInfo {
            id: PlanId::new("p-1"),
            name: plan.name.clone(),
            total_gates: plan.gates.len() as u32,
            submitted_unix_ms: 0,
            finished_unix_ms: None,
            summary: None,
            counts: Counts::default(),
            land_branch: None,
            land: None,
        },
        gates: vec![None; plan.gates.len()],
        plan,
    };
    wire::get_plan_response(&snapshot)
}

#[test]
fn a_plan_described_by_the_coordinator_has_the_local_view() {
    for text in [ITEMS, FLAT] {
        let plan = plan(text);
        assert_eq!(plan_view(&describe(&plan)), PlanView::from_plan(&plan));
    }
}

#[test]
fn wire_events_render_exactly_like_the_core_events_they_encode() {
    let plan = plan(ITEMS);
    let local = PlanView::from_plan(&plan);
    let remote = plan_view(&describe(&plan));
    let id = p1();
    let followed = Followed {
        id: &id,
        view: &remote,
    };
    for ev in every_kind_of_event() {
        let decoded = gate_event(&followed, encode(&plan, &ev))
            .expect("known gate")
            .expect("a state this client knows");
        let from_core = GateUpdate::from_core(&ev);
        let from_wire = GateUpdate::from_core(&decoded);
        assert_eq!(
            from_core.is_some(),
            from_wire.is_some(),
            "shown from both or neither: {ev:?}"
        );
        let (Some(a), Some(b)) = (from_core, from_wire) else {
            continue;
        };
        assert_eq!(a, b, "same update for {ev:?}");
        let (ja, jb) = (gate_value(&local, &a), gate_value(&remote, &b));
        assert_eq!(ja.to_string(), jb.to_string(), "same JSON line for {ev:?}");
        assert_eq!(gate_line(&local, &a), gate_line(&remote, &b));
    }
}

#[test]
fn every_wire_state_converts() {
    let plan = plan(FLAT);
    let view = plan_view(&describe(&plan));
    let id = p1();
    let followed = Followed {
        id: &id,
        view: &view,
    };
    let convert = |state: v1::GateState| {
        let ev = v1::GateEvent {
            gate_id: "b".into(),
            state: state as i32,
            backoff_ms: 250,
            waiting_for: "no worker".into(),
            ..Default::default()
        };
        gate_event(&followed, ev).expect("known gate")
    };
    let expected = [
        (v1::GateState::Unspecified, None),
        (v1::GateState::Pending, None),
        (v1::GateState::Running, Some(Change::Running)),
        (
            v1::GateState::Retrying,
            Some(Change::Retrying {
                backoff: Duration::from_millis(250),
            }),
        ),
        (
            v1::GateState::Waiting,
            Some(Change::Waiting {
                reason: "no worker",
            }),
        ),
        (
            v1::GateState::Passed,
            Some(Change::Finished(Terminal::Passed)),
        ),
        (
            v1::GateState::Failed,
            Some(Change::Finished(Terminal::Failed)),
        ),
        (
            v1::GateState::TimedOut,
            Some(Change::Finished(Terminal::TimedOut)),
        ),
        (
            v1::GateState::Skipped,
            Some(Change::Finished(Terminal::Skipped)),
        ),
        (
            v1::GateState::Cancelled,
            Some(Change::Finished(Terminal::Cancelled)),
        ),
    ];
    for (state, change) in expected {
        let ev = convert(state);
        let shown = ev
            .as_ref()
            .and_then(GateUpdate::from_core)
            .map(|u| u.change);
        assert_eq!(shown, change, "{state:?}");
    }
    // A state this client does not know yet reads as unspecified.
    let unknown = v1::GateEvent {
        gate_id: "b".into(),
        state: 99,
        ..Default::default()
    };
    assert_eq!(gate_event(&followed, unknown), Ok(None));
}

#[test]
fn wire_events_for_unknown_gates_are_refused_and_bad_fields_dropped() {
    let view = plan_view(&describe(&plan(FLAT)));
    let id = p1();
    let followed = Followed {
        id: &id,
        view: &view,
    };
    let ev = v1::GateEvent {
        gate_id: "zzz".into(),
        state: v1::GateState::Passed as i32,
        ..Default::default()
    };
    assert_eq!(
        gate_event(&followed, ev),
        Err(WireError::Unknown {
            field: "gate_id",
            value: "zzz".into()
        })
    );
    let ev = v1::GateEvent {
        gate_id: "b".into(),
        state: v1::GateState::Skipped as i32,
        cause: "not-a-gate".into(),
        result: Some(v1::AttemptResult::default()),
        ..Default::default()
    };
    let decoded = gate_event(&followed, ev)
        .expect("known gate")
        .expect("a state this client knows");
    let update = GateUpdate::from_core(&decoded).expect("shown");
    assert_eq!(
        (update.cause, update.result, update.worker),
        (None, None, None)
    );
}

#[test]
fn wire_summaries_render_like_core_summaries() {
    let plan = plan(ITEMS);
    let local = PlanView::from_plan(&plan);
    let remote = plan_view(&describe(&plan));
    let id = p1();
    let followed = Followed {
        id: &id,
        view: &remote,
    };
    let counts = Counts {
        total: 4,
        passed: 3,
        failed: 1,
        cached: 1,
        ..Counts::default()
    };
    for (outcome, wire_outcome) in [
        (PlanOutcome::Passed, v1::PlanOutcome::Passed),
        (PlanOutcome::Failed, v1::PlanOutcome::Failed),
        (PlanOutcome::Cancelled, v1::PlanOutcome::Cancelled),
    ] {
        let core_summary = PlanSummary {
            plan: PlanId::new("p-1"),
            outcome,
            counts,
            merge_order: vec![ItemIdx(0), ItemIdx(2)],
            duration: Duration::from_millis(2345),
        };
        let wire_summary = v1::PlanSummary {
            plan_id: "p-1".into(),
            name: plan.name.clone(),
            outcome: wire_outcome as i32,
            counts: Some(v1::Counts {
                total: 4,
                passed: 3,
                failed: 1,
                cached: 1,
                ..Default::default()
            }),
            merge_order: vec!["pr-1".into(), "pr-3".into()],
            levels: describe(&plan).levels,
            duration_ms: 2345,
        };
        let a = SummaryView::from_core(&local, &core_summary);
        let b =
            SummaryView::from_core(&remote, &summary(&followed, wire_summary).expect("decodes"));
        assert_eq!(a, b);
        assert_eq!(
            summary_value(&local, &a).to_string(),
            summary_value(&remote, &b).to_string()
        );
    }
    assert_eq!(
        outcome(v1::PlanOutcome::Unspecified as i32),
        PlanOutcome::Failed
    );
    // An ending this client does not know (a newer coordinator's) never exits 0.
    assert_eq!(outcome(99), PlanOutcome::Failed);
    let unknown = v1::PlanSummary {
        plan_id: "p-1".into(),
        outcome: 99,
        ..Default::default()
    };
    assert_eq!(
        summary(&followed, unknown).map(|s| s.outcome),
        Ok(PlanOutcome::Failed)
    );
}
