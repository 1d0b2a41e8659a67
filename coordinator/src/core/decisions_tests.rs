//! Unit tests of the decisions the core owns beyond gate lifecycles: single flight on
//! cache keys, acknowledgements of reported results, recovery timing, and what a
//! dispatch carries.

use std::time::Duration;

use gatehouse_common::exec::{AttemptRef, ExitStatus};
use gatehouse_common::ids::{GateIdx, PlanId, SessionKey};
use gatehouse_common::plan::Policy;

use super::testkit::*;
use super::*;

/// A simulator with one worker of 4 slots and three copies of a one-gate plan (`a`),
/// whose lookups missed on the same key, in plan order.
fn three_misses() -> Sim {
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 4, 4096 * MI)]);
    let plan = flat(Policy::default(), &[g("a", &[])]);
    for p in ["p1", "p2", "p3"] {
        sim.feed(Event::PlanSubmitted {
            id: PlanId::new(p),
            plan: plan.clone(),
            options: RunOptions {
                use_cache: true,
                ..RunOptions::default()
            },
        });
        sim.feed(Event::CacheChecked {
            plan: PlanId::new(p),
            gate: GateIdx(0),
            key: Some(key(7)),
            hit: None,
        });
    }
    sim
}

fn running_plans(sim: &Sim) -> Vec<String> {
    sim.running
        .iter()
        .map(|(_, a)| a.plan.to_string())
        .collect()
}

fn finish(sim: &mut Sim, plan: &str, status: ExitStatus) -> Vec<Command> {
    let i = sim
        .running
        .iter()
        .position(|(_, a)| a.plan == PlanId::new(plan))
        .expect("the plan's gate runs");
    let (_, attempt) = sim.running.remove(i);
    sim.feed(Event::GateFinished {
        attempt,
        result: result(status),
    })
}

fn ended<'a>(sim: &'a Sim, plan: &str) -> Option<&'a GateEvent> {
    sim.events
        .iter()
        .find(|e| e.plan == PlanId::new(plan) && matches!(e.status, GateStatus::Finished(_)))
}

#[test]
fn the_first_miss_leads_and_a_pass_serves_every_waiter() {
    let mut sim = three_misses();
    assert_eq!(running_plans(&sim), ["p1"], "only the leader runs");
    assert_eq!(sim.core.flights(), 1);
    finish(&mut sim, "p1", ExitStatus::Exited(0));
    for p in ["p2", "p3"] {
        let e = ended(&sim, p).expect("served");
        assert_eq!(e.status, GateStatus::Finished(Terminal::Passed));
        assert!(e.cached, "{p} took the leader's result");
        assert_eq!(
            e.result.as_ref().map(|r| r.status.clone()),
            Some(ExitStatus::Exited(0))
        );
    }
    assert!(sim.running.is_empty());
    assert_eq!(sim.core.flights(), 0);
}

#[test]
fn a_failed_leader_hands_the_key_to_the_oldest_waiter() {
    let mut sim = three_misses();
    finish(&mut sim, "p1", ExitStatus::Exited(1));
    assert_eq!(running_plans(&sim), ["p2"], "the oldest waiter runs it now");
    assert!(ended(&sim, "p3").is_none(), "the other keeps waiting");
    finish(&mut sim, "p2", ExitStatus::Exited(0));
    let e = ended(&sim, "p3").expect("served by the new leader");
    assert!(e.cached);
    assert_eq!(sim.core.flights(), 0);
}

#[test]
fn a_waiter_that_was_cancelled_leaves_and_is_never_promoted() {
    let mut sim = three_misses();
    sim.feed(Event::Cancel {
        plan: PlanId::new("p2"),
        force: false,
    });
    assert_eq!(
        ended(&sim, "p2").map(|e| e.status.clone()),
        Some(GateStatus::Finished(Terminal::Cancelled))
    );
    finish(&mut sim, "p1", ExitStatus::Exited(1));
    assert_eq!(running_plans(&sim), ["p3"], "p2 stopped waiting: p3 leads");
}

#[test]
fn a_cancelled_leader_hands_the_key_on_once_its_attempt_ends() {
    let mut sim = three_misses();
    sim.feed(Event::Cancel {
        plan: PlanId::new("p1"),
        force: false,
    });
    assert!(
        sim.running_gates().len() == 1 && ended(&sim, "p2").is_none(),
        "the leader is still stopping: the waiters wait"
    );
    finish(&mut sim, "p1", ExitStatus::Cancelled);
    assert_eq!(running_plans(&sim), ["p2"]);
}

#[test]
fn an_uncacheable_gate_or_one_without_a_key_never_waits() {
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 4, 4096 * MI)]);
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[]), g("c", &[])]);
    let mut uncacheable = (*plan).clone();
    uncacheable.gates[1].cache = false;
    sim.submit(std::sync::Arc::new(uncacheable), true);
    let answers = [(0, Some(key(1))), (1, Some(key(1))), (2, None)];
    for (gate, key) in answers {
        sim.feed(Event::CacheChecked {
            plan: sim.plan.clone(),
            gate: GateIdx(gate),
            key,
            hit: None,
        });
    }
    assert_eq!(sim.running_gates(), [0, 1, 2], "all three run at once");
    let keys: Vec<_> = sim
        .log
        .iter()
        .filter_map(|c| match c {
            Command::Dispatch { assignment, .. } => Some(assignment.cache_key),
            _ => None,
        })
        .collect();
    assert_eq!(
        keys,
        [Some(key(1)), None, None],
        "an assignment carries the key its result is stored under, if any"
    );
    let stored = sim.pass(0);
    assert!(
        stored.iter().any(|c| matches!(c,
            Command::StoreResult { key: k, gate, .. } if *k == key(1) && gate.0 == 0)),
        "a pass is stored under its key"
    );
    let not_stored = sim.pass(2);
    assert!(
        !not_stored
            .iter()
            .any(|c| matches!(c, Command::StoreResult { .. })),
        "a gate without a key is not stored"
    );
}

#[test]
fn a_stale_result_is_acked_at_once_and_a_used_one_after_its_event() {
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 1, 4096 * MI)]);
    sim.submit(flat(Policy::default(), &[g("a", &[])]), false);
    let (_, attempt) = sim.running[0].clone();
    let stale = AttemptRef {
        attempt: 7,
        ..attempt.clone()
    };
    let cmds = sim.feed(Event::AttemptsReported {
        worker: wk("w"),
        running: vec![],
        finished: vec![(stale.clone(), result(ExitStatus::Exited(0)))],
    });
    assert!(
        matches!(cmds.as_slice(), [Command::AckResults { attempts, .. }] if *attempts == [stale]),
        "a result the core ignores is acknowledged and changes nothing: {cmds:?}"
    );
    let cmds = sim.feed(Event::AttemptsReported {
        worker: wk("w"),
        running: vec![],
        finished: vec![(attempt.clone(), result(ExitStatus::Exited(0)))],
    });
    let recorded = cmds.iter().position(|c| {
        matches!(c, Command::Emit(PlanEvent::Gate(e)) if e.result.is_some() && e.attempt == attempt.attempt)
    });
    let acked = cmds.iter().position(
        |c| matches!(c, Command::AckResults { attempts, .. } if *attempts == [attempt.clone()]),
    );
    assert!(
        matches!((recorded, acked), (Some(r), Some(a)) if r < a),
        "the ack follows the event that records the result: {cmds:?}"
    );
    // An executor reporting in-process (no worker keeps the result) is never acked.
    let mut local = Sim::new(CoreConfig::default(), &[worker("w", 1, 4096 * MI)]);
    local.submit(flat(Policy::default(), &[g("a", &[])]), false);
    let cmds = local.pass(0);
    assert!(!cmds.iter().any(|c| matches!(c, Command::AckResults { .. })));
}

#[test]
fn a_restored_plan_with_gates_in_doubt_asks_for_its_recovery_window() {
    let config = CoreConfig {
        recovery_window: Duration::from_secs(7),
        ..CoreConfig::default()
    };
    let mut sim = Sim::new(config, &[worker("w", 1, 4096 * MI)]);
    sim.now = Duration::from_secs(100);
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    let restored = |id: &str, gates: Vec<RestoredGate>| Event::PlanRestored {
        id: PlanId::new(id),
        plan: plan.clone(),
        options: RunOptions::default(),
        gates,
        cancel: None,
        age: Duration::ZERO,
        keys: vec![Some(key(1)), None],
    };
    sim.feed(restored("p1", vec![RestoredGate::NotStarted; 2]));
    assert_eq!(
        sim.timers,
        [(
            Duration::from_secs(107),
            Timer::RecoveryWindow {
                plan: PlanId::new("p1")
            }
        )],
        "one recovery window from the restore"
    );
    assert!(sim.running.is_empty(), "nothing runs while `a` is in doubt");
    sim.fire_timer();
    assert_eq!(sim.running_gates(), [0], "the window ended: `a` runs again");
    // A plan whose gates all ended in the log has nothing in doubt and no window.
    let done = RestoredGate::Done {
        terminal: Terminal::Passed,
        cached: false,
        flaky: false,
    };
    sim.feed(restored("p2", vec![done.clone(), done]));
    assert!(sim.timers.is_empty());
}

/// Misses of gates `gates` of the simulator's plan on key `k`, in order.
fn miss(sim: &mut Sim, gates: &[u32], k: u8) {
    for &gate in gates {
        sim.feed(Event::CacheChecked {
            plan: sim.plan.clone(),
            gate: GateIdx(gate),
            key: Some(key(k)),
            hit: None,
        });
    }
}

#[test]
fn a_leader_that_fails_while_dispatching_hands_on_its_key_at_once() {
    // `gatehouse run` (fixed capacity): `x` can never be placed and fails when it is
    // dispatched, which happens only once `z` frees the plan's one slot.
    let config = CoreConfig {
        fail_unschedulable: true,
        ..CoreConfig::default()
    };
    let mut sim = Sim::new(config, &[worker("w", 1, 4096 * MI)]);
    let policy = Policy {
        max_parallel: Some(1),
        ..Policy::default()
    };
    let mut x = g("x", &[]);
    x.memory = 8192 * MI;
    sim.submit(flat(policy, &[g("z", &[]), x, g("y", &[])]), true);
    miss(&mut sim, &[0], 1);
    miss(&mut sim, &[1, 2], 2);
    assert_eq!(sim.running_gates(), [0], "x leads key 2, y waits for it");
    sim.pass(0);
    assert_eq!(sim.state(1), Terminal::Failed);
    assert_eq!(sim.running_gates(), [2], "y took the lead in the same step");
    sim.pass(2);
    assert!(sim.summary.is_some());
    assert_eq!(sim.core.flights(), 0);
}

#[test]
fn a_lost_executor_ends_the_waiters_of_its_leader_too() {
    let config = CoreConfig {
        fail_unschedulable: true,
        ..CoreConfig::default()
    };
    let mut sim = Sim::new(config, &[worker("w", 2, 4096 * MI)]);
    sim.submit(flat(Policy::default(), &[g("a", &[]), g("b", &[])]), true);
    miss(&mut sim, &[0, 1], 1);
    assert_eq!(sim.running_gates(), [0], "b waits for a");
    sim.running.clear();
    sim.feed(Event::WorkerLost { worker: wk("w") });
    let summary = sim
        .summary
        .clone()
        .expect("the plan ends instead of hanging");
    assert_eq!(summary.counts.failed, 2, "a and then b are unschedulable");
}

#[test]
fn a_miss_just_after_a_pass_takes_it_until_the_pass_is_forgotten() {
    let config = CoreConfig {
        recent_passes: Duration::from_secs(60),
        // Room for one remembered pass of a result without output (256 bytes).
        recent_passes_bytes: 300,
        ..CoreConfig::default()
    };
    let mut sim = Sim::new(config, &[worker("w", 4, 4096 * MI)]);
    let plan = flat(
        Policy::default(),
        &[g("a", &[]), g("b", &[]), g("c", &[]), g("d", &[])],
    );
    sim.submit(plan, true);
    miss(&mut sim, &[0], 1);
    sim.pass(0);
    sim.now = Duration::from_secs(30);
    miss(&mut sim, &[1], 1);
    assert!(sim.terminal(1).cached, "30 s later the pass still answers");
    sim.now = Duration::from_secs(91);
    miss(&mut sim, &[2], 1);
    assert_eq!(
        sim.running_gates(),
        [2],
        "91 s later it is forgotten: c runs"
    );
    // c passes key 1 again, then d passes key 2: only one pass fits in the bytes.
    sim.pass(2);
    miss(&mut sim, &[3], 2);
    sim.pass(3);
    assert_eq!(sim.core.flights(), 0);
    let again = flat(Policy::default(), &[g("e", &[]), g("f", &[])]);
    sim.feed(Event::PlanSubmitted {
        id: PlanId::new("p2"),
        plan: again,
        options: RunOptions {
            use_cache: true,
            ..RunOptions::default()
        },
    });
    for (gate, k) in [(0, 1), (1, 2)] {
        sim.feed(Event::CacheChecked {
            plan: PlanId::new("p2"),
            gate: GateIdx(gate),
            key: Some(key(k)),
            hit: None,
        });
    }
    let cached: Vec<bool> = sim
        .events
        .iter()
        .filter(|e| e.plan == PlanId::new("p2") && matches!(e.status, GateStatus::Finished(_)))
        .map(|e| e.cached)
        .collect();
    assert_eq!(cached, [true], "key 2 is remembered; key 1 was pushed out");
    assert_eq!(running_plans(&sim), ["p2"], "p2's e runs key 1 again");
}

#[test]
fn a_worker_that_reconnects_before_its_old_session_is_lost_keeps_its_attempt() {
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 1, 4096 * MI)]);
    sim.submit(flat(Policy::default(), &[g("a", &[])]), false);
    let (old, attempt) = sim.running[0].clone();
    let mut again = worker("w", 1, 4096 * MI);
    again.id = SessionKey::new(old.worker.clone(), 1);
    sim.feed(Event::WorkerJoined(again.clone()));
    let cmds = sim.feed(Event::AttemptsReported {
        worker: again.id.clone(),
        running: vec![attempt.clone()],
        finished: vec![],
    });
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::CancelAttempt { .. })),
        "the only copy of the attempt keeps running: {cmds:?}"
    );
    let lost = sim.feed(Event::WorkerLost { worker: old });
    assert!(
        !lost.iter().any(|c| matches!(c, Command::Dispatch { .. })),
        "the old session's loss re-queues nothing it no longer holds"
    );
    assert_eq!(sim.core.slot_use(&again.id).map(|s| s.used), Some(1));
    sim.feed(Event::AttemptsReported {
        worker: again.id.clone(),
        running: vec![],
        finished: vec![(attempt, result(ExitStatus::Exited(0)))],
    });
    let s = sim.summary.clone().expect("summary");
    assert_eq!((s.counts.passed, s.outcome), (1, PlanOutcome::Passed));
    assert_eq!(sim.terminal(0).attempt, 1, "the same attempt, run once");
}

#[test]
fn a_blocked_item_fails_before_anything_runs_and_its_stack_is_skipped() {
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 4, 4096 * MI)]);
    // pr1 <- pr2 (stacked) and pr3 beside; pr2 does not merge.
    let plan = items(
        Policy::default(),
        &[
            ("pr1", &[], vec![g("test", &[])]),
            ("pr2", &[0], vec![g("lint", &[]), g("test", &[1])]),
            ("pr3", &[1], vec![g("test", &[])]),
            ("pr4", &[], vec![g("test", &[])]),
        ],
    );
    sim.feed(Event::PlanSubmitted {
        id: sim.plan.clone(),
        plan,
        options: RunOptions {
            blocked: vec![
                (GateIdx(1), "merge_conflict"),
                (GateIdx(2), "merge_conflict"),
            ],
            ..RunOptions::default()
        },
    });
    for g in [1, 2] {
        let e = sim.terminal(g);
        assert_eq!(
            (e.status.clone(), e.reason, e.attempt),
            (
                GateStatus::Finished(Terminal::Failed),
                Some("merge_conflict"),
                0
            ),
            "every gate of the blocked item fails, none runs"
        );
    }
    assert_eq!(
        sim.terminal(3).reason,
        Some("dependency_failed"),
        "stacked: skipped"
    );
    assert_eq!(sim.running_gates(), [0, 4], "the rest runs");
    sim.pass(0);
    sim.pass(4);
    let s = sim.summary.clone().expect("summary");
    assert_eq!(
        (s.counts.passed, s.counts.failed, s.counts.skipped),
        (2, 2, 1)
    );
}

#[test]
fn a_restored_plan_fails_its_blocked_items_gates_that_the_log_does_not_show() {
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 2, 4096 * MI)]);
    let plan = items(
        Policy::default(),
        &[
            ("pr1", &[], vec![g("test", &[])]),
            ("pr2", &[], vec![g("test", &[])]),
        ],
    );
    sim.feed(Event::PlanRestored {
        id: sim.plan.clone(),
        plan,
        options: RunOptions {
            blocked: vec![(GateIdx(1), "source")],
            ..RunOptions::default()
        },
        gates: vec![RestoredGate::NotStarted; 2],
        cancel: None,
        age: Duration::ZERO,
        keys: vec![],
    });
    assert_eq!(sim.terminal(1).reason, Some("source"));
    sim.end_recovery();
    assert_eq!(
        sim.running_gates(),
        [0],
        "only the item that can be built runs"
    );
}
