//! Every event message converts domain -> wire -> domain to the original, the wire form
//! is the one clients read, and malformed wire input is a typed error naming the field.

use std::collections::HashMap;

use gatehouse_common::exec::ExitStatus;

use gatehouse_common::samples::{FLAT, ITEMS, event, every_kind_of_event, plan, result};

use super::*;

/// A client's index of a plan, as it would build one from `GetPlan`.
struct Index {
    id: PlanId,
    gates: HashMap<String, GateIdx>,
    items: HashMap<String, ItemIdx>,
}

impl Index {
    fn of(plan: &Plan) -> Self {
        Self {
            id: PlanId::new("p-1"),
            gates: plan
                .gates
                .iter()
                .enumerate()
                .map(|(i, g)| (g.id.to_string(), GateIdx(i as u32)))
                .collect(),
            items: plan
                .items
                .iter()
                .enumerate()
                .map(|(i, item)| (item.id.to_string(), ItemIdx(i as u32)))
                .collect(),
        }
    }
}

impl PlanIndex for Index {
    fn plan_id(&self) -> &PlanId {
        &self.id
    }

    fn gate_index(&self, id: &str) -> Option<GateIdx> {
        self.gates.get(id).copied()
    }

    fn item_index(&self, id: &str) -> Option<ItemIdx> {
        self.items.get(id).copied()
    }
}

fn encode(plan: &Plan, ev: &GateEvent) -> v1::GateEvent {
    InPlan::new(plan, ev).into()
}

fn decode(index: &Index, ev: v1::GateEvent) -> Result<GateEvent, WireError> {
    InPlan::new(index, ev).try_into()
}

fn summary(outcome: PlanOutcome) -> PlanSummary {
    PlanSummary {
        plan: PlanId::new("p-1"),
        outcome,
        counts: Counts {
            total: 4,
            passed: 3,
            failed: 1,
            cached: 1,
            ..Counts::default()
        },
        merge_order: vec![ItemIdx(0), ItemIdx(2)],
        duration: Duration::from_millis(2345),
    }
}

#[test]
fn every_gate_event_round_trips() {
    let plan = plan(ITEMS);
    let index = Index::of(&plan);
    for ev in every_kind_of_event() {
        let back = decode(&index, encode(&plan, &ev)).expect("decodes");
        assert_eq!(back, ev);
    }
}

#[test]
fn a_dispatch_round_trips_without_its_queue_wait() {
    let plan = plan(FLAT);
    let queued = GateEvent {
        queued: Some(Duration::from_millis(40)),
        ..event(1, GateStatus::Dispatched)
    };
    let back = decode(&Index::of(&plan), encode(&plan, &queued)).expect("decodes");
    assert_eq!(
        back,
        GateEvent {
            queued: None,
            ..queued
        }
    );
}

#[test]
fn gate_events_are_published_with_ids() {
    let plan = plan(ITEMS);
    let skipped = GateEvent {
        worker: None,
        attempt: 0,
        reason: Some("dependency_failed"),
        cause: Some(GateIdx(1)),
        ..event(2, GateStatus::Finished(Terminal::Skipped))
    };
    assert_eq!(
        encode(&plan, &skipped),
        v1::GateEvent {
            gate_id: "pr-2/test".into(),
            item_id: "pr-2".into(),
            state: v1::GateState::Skipped as i32,
            reason: "dependency_failed".into(),
            cause: "pr-1/test".into(),
            ..Default::default()
        }
    );
    let retrying = GateEvent {
        attempt: 2,
        result: Some(result(ExitStatus::Exited(3), "boom\n", 0)),
        reason: Some("exit_code"),
        ..event(
            0,
            GateStatus::Retrying {
                backoff: Duration::from_millis(1500),
            },
        )
    };
    let wire = encode(&plan, &retrying);
    assert_eq!(
        (
            wire.gate_id.as_str(),
            wire.item_id.as_str(),
            wire.state,
            wire.attempt,
            wire.worker_id.as_str(),
            wire.backoff_ms
        ),
        (
            "pr-1/lint",
            "pr-1",
            v1::GateState::Retrying as i32,
            2,
            "w-1",
            1500
        )
    );
    let waiting = event(
        1,
        GateStatus::Waiting {
            reason: "no worker has label gpu".into(),
        },
    );
    assert_eq!(
        encode(&plan, &waiting).waiting_for,
        "no worker has label gpu"
    );
}

#[test]
fn every_wire_state_decodes() {
    let plan = plan(FLAT);
    let index = Index::of(&plan);
    let decode_state = |state: i32| {
        let ev = v1::GateEvent {
            gate_id: "b".into(),
            state,
            backoff_ms: 250,
            waiting_for: "no worker".into(),
            ..Default::default()
        };
        decode(&index, ev).map(|e| e.status)
    };
    let expected = [
        (v1::GateState::Pending, GateStatus::Dispatched),
        (v1::GateState::Running, GateStatus::Running),
        (
            v1::GateState::Retrying,
            GateStatus::Retrying {
                backoff: Duration::from_millis(250),
            },
        ),
        (
            v1::GateState::Waiting,
            GateStatus::Waiting {
                reason: "no worker".into(),
            },
        ),
        (
            v1::GateState::Passed,
            GateStatus::Finished(Terminal::Passed),
        ),
        (
            v1::GateState::Failed,
            GateStatus::Finished(Terminal::Failed),
        ),
        (
            v1::GateState::TimedOut,
            GateStatus::Finished(Terminal::TimedOut),
        ),
        (
            v1::GateState::Skipped,
            GateStatus::Finished(Terminal::Skipped),
        ),
        (
            v1::GateState::Cancelled,
            GateStatus::Finished(Terminal::Cancelled),
        ),
    ];
    for (state, status) in expected {
        assert_eq!(decode_state(state as i32), Ok(status), "{state:?}");
    }
    assert_eq!(
        decode_state(v1::GateState::Unspecified as i32),
        Err(WireError::Missing("state"))
    );
    assert!(
        matches!(
            decode_state(99),
            Err(WireError::Invalid { field: "state", .. })
        ),
        "a state this build does not know is refused"
    );
}

#[test]
fn terminal_states_round_trip_and_others_are_refused() {
    for t in Terminal::ALL {
        assert_eq!(Terminal::try_from(v1::GateState::from(t)), Ok(t));
        assert_eq!(
            v1::GateState::from(&GateStatus::Finished(t)),
            v1::GateState::from(t)
        );
    }
    for s in [
        v1::GateState::Pending,
        v1::GateState::Running,
        v1::GateState::Retrying,
        v1::GateState::Waiting,
    ] {
        assert!(matches!(
            Terminal::try_from(s),
            Err(WireError::Invalid { field: "state", .. })
        ));
    }
    assert_eq!(
        Terminal::try_from(v1::GateState::Unspecified),
        Err(WireError::Missing("state"))
    );
}

#[test]
fn outcomes_and_counts_round_trip() {
    for (o, wire, state) in [
        (
            PlanOutcome::Passed,
            v1::PlanOutcome::Passed,
            v1::PlanState::Passed,
        ),
        (
            PlanOutcome::Failed,
            v1::PlanOutcome::Failed,
            v1::PlanState::Failed,
        ),
        (
            PlanOutcome::Cancelled,
            v1::PlanOutcome::Cancelled,
            v1::PlanState::Cancelled,
        ),
    ] {
        assert_eq!(v1::PlanOutcome::from(o), wire);
        assert_eq!(PlanOutcome::try_from(wire), Ok(o));
        assert_eq!(v1::PlanState::from(o), state);
    }
    assert_eq!(
        PlanOutcome::try_from(v1::PlanOutcome::Unspecified),
        Err(WireError::Missing("outcome"))
    );
    let counts = Counts {
        total: 36,
        passed: 1,
        failed: 2,
        timed_out: 3,
        skipped: 4,
        cancelled: 5,
        cached: 6,
        flaky: 7,
    };
    assert_eq!(Counts::from(v1::Counts::from(counts)), counts);
}

#[test]
fn summaries_round_trip_and_are_published_with_ids() {
    let plan = plan(ITEMS);
    let index = Index::of(&plan);
    for (outcome, wire_outcome) in [
        (PlanOutcome::Passed, v1::PlanOutcome::Passed),
        (PlanOutcome::Failed, v1::PlanOutcome::Failed),
        (PlanOutcome::Cancelled, v1::PlanOutcome::Cancelled),
    ] {
        let s = summary(outcome);
        let wire = v1::PlanSummary::from(InPlan::new(&plan, &s));
        assert_eq!(
            wire,
            v1::PlanSummary {
                plan_id: "p-1".into(),
                name: "pyramid".into(),
                outcome: wire_outcome as i32,
                counts: Some(v1::Counts {
                    total: 4,
                    passed: 3,
                    failed: 1,
                    cached: 1,
                    ..Default::default()
                }),
                merge_order: vec!["pr-1".into(), "pr-3".into()],
                levels: vec![
                    v1::Level {
                        ids: vec!["pr-1".into(), "pr-3".into()]
                    },
                    v1::Level {
                        ids: vec!["pr-2".into()]
                    },
                ],
                duration_ms: 2345,
            }
        );
        assert_eq!(PlanSummary::try_from(InPlan::new(&index, wire)), Ok(s));
    }
    let flat = self::plan(FLAT);
    let s = PlanSummary {
        merge_order: Vec::new(),
        ..summary(PlanOutcome::Passed)
    };
    let wire = v1::PlanSummary::from(InPlan::new(&flat, &s));
    assert_eq!(wire.levels.len(), 2, "flat levels list gate ids");
    assert_eq!(
        PlanSummary::try_from(InPlan::new(&Index::of(&flat), wire)),
        Ok(s)
    );
}

#[test]
fn plan_events_round_trip_with_their_sequence_numbers() {
    let plan = plan(ITEMS);
    let index = Index::of(&plan);
    let events = every_kind_of_event()
        .into_iter()
        .map(PlanEvent::Gate)
        .chain([PlanEvent::Finished(summary(PlanOutcome::Failed))]);
    for (seq, ev) in (1..).zip(events) {
        let wire = v1::PlanEvent::from(InPlan::new(&plan, (seq, &ev)));
        assert_eq!(wire.seq, seq);
        let back = <(u64, PlanEvent)>::try_from(InPlan::new(&index, wire)).expect("decodes");
        assert_eq!(back, (seq, ev));
    }
    let empty = v1::PlanEvent {
        seq: 7,
        event: None,
    };
    assert_eq!(
        <(u64, PlanEvent)>::try_from(InPlan::new(&index, empty)),
        Err(WireError::Missing("event"))
    );
}

#[test]
fn malformed_gate_events_name_the_field() {
    let plan = plan(FLAT);
    let index = Index::of(&plan);
    let good = v1::GateEvent {
        gate_id: "b".into(),
        state: v1::GateState::Skipped as i32,
        ..Default::default()
    };
    let cases = [
        (
            v1::GateEvent {
                gate_id: String::new(),
                ..good.clone()
            },
            WireError::Missing("gate_id"),
        ),
        (
            v1::GateEvent {
                gate_id: "zzz".into(),
                ..good.clone()
            },
            WireError::Unknown {
                field: "gate_id",
                value: "zzz".into(),
            },
        ),
        (
            v1::GateEvent {
                cause: "not-a-gate".into(),
                ..good.clone()
            },
            WireError::Unknown {
                field: "cause",
                value: "not-a-gate".into(),
            },
        ),
        (
            v1::GateEvent {
                result: Some(v1::AttemptResult::default()),
                ..good.clone()
            },
            WireError::Missing("result.kind"),
        ),
        (
            v1::GateEvent {
                result: Some(v1::AttemptResult {
                    kind: 42,
                    ..Default::default()
                }),
                ..good.clone()
            },
            WireError::Missing("result.kind"),
        ),
    ];
    for (ev, err) in cases {
        assert_eq!(decode(&index, ev.clone()), Err(err), "{ev:?}");
    }
    // Optional fields left empty are absent, not errors.
    let bare = decode(&index, good).expect("decodes");
    assert_eq!(
        (bare.worker, bare.reason, bare.cause, bare.result),
        (None, None, None, None)
    );
}

#[test]
fn a_reason_this_build_does_not_know_reads_as_unknown() {
    let plan = plan(FLAT);
    let ev = v1::GateEvent {
        gate_id: "a".into(),
        state: v1::GateState::Failed as i32,
        reason: "something_new".into(),
        ..Default::default()
    };
    let back = decode(&Index::of(&plan), ev).expect("decodes");
    assert_eq!(back.reason, Some("unknown"));
}

#[test]
fn malformed_summaries_name_the_field() {
    let plan = plan(ITEMS);
    let index = Index::of(&plan);
    let good = v1::PlanSummary::from(InPlan::new(&plan, &summary(PlanOutcome::Passed)));
    let decode = |s: v1::PlanSummary| PlanSummary::try_from(InPlan::new(&index, s));
    let cases = [
        (
            v1::PlanSummary {
                plan_id: String::new(),
                ..good.clone()
            },
            WireError::Missing("plan_id"),
        ),
        (
            v1::PlanSummary {
                outcome: v1::PlanOutcome::Unspecified as i32,
                ..good.clone()
            },
            WireError::Missing("outcome"),
        ),
        (
            v1::PlanSummary {
                merge_order: vec!["pr-1".into(), "pr-9".into()],
                ..good.clone()
            },
            WireError::Unknown {
                field: "merge_order",
                value: "pr-9".into(),
            },
        ),
    ];
    for (s, err) in cases {
        assert_eq!(decode(s.clone()), Err(err), "{s:?}");
    }
    assert!(matches!(
        decode(v1::PlanSummary {
            outcome: 99,
            ..good.clone()
        }),
        Err(WireError::Invalid {
            field: "outcome",
            ..
        })
    ));
    // Absent counts are proto3's default message: zero.
    let bare = decode(v1::PlanSummary {
        counts: None,
        ..good
    })
    .expect("decodes");
    assert_eq!(bare.counts, Counts::default());
}
