//! Unit tests of plan restoration after a leader change.

use std::time::Duration;

use gatehouse_common::exec::{AttemptRef, ExitStatus};
use gatehouse_common::ids::{GateIdx, SessionKey};
use gatehouse_common::plan::Policy;

use super::testkit::*;
use super::*;

fn restore(sim: &mut Sim, plan: Arc<Plan>, gates: Vec<RestoredGate>, cancel: Option<bool>) {
    sim.feed(Event::PlanRestored {
        id: sim.plan.clone(),
        plan,
        options: RunOptions {
            use_cache: false,
            ..RunOptions::default()
        },
        gates,
        cancel,
        age: Duration::from_secs(3),
        keys: vec![],
    });
}

fn done(terminal: Terminal) -> RestoredGate {
    RestoredGate::Done {
        terminal,
        cached: false,
        flaky: false,
    }
}

fn aref(sim: &Sim, g: u32, attempt: u32) -> AttemptRef {
    AttemptRef {
        plan: sim.plan.clone(),
        gate: GateIdx(g),
        attempt,
    }
}

fn w1() -> SessionKey {
    wk("w1")
}

#[test]
fn ended_gates_are_not_published_again_and_ready_gates_wait_for_the_window() {
    // a -> b -> c; a passed, b was running as attempt 1.
    let plan = flat(
        Policy::default(),
        &[g("a", &[]), g("b", &[0]), g("c", &[1])],
    );
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w1", 2, 1024 * MI)]);
    restore(
        &mut sim,
        plan,
        vec![
            done(Terminal::Passed),
            RestoredGate::Started {
                attempt: 1,
                failures: 0,
                open: true,
            },
            RestoredGate::NotStarted,
        ],
        None,
    );
    assert!(
        sim.events.is_empty(),
        "nothing to publish: {:?}",
        sim.events
    );
    assert!(sim.running.is_empty(), "b is in doubt, not dispatched");
    sim.end_recovery();
    // b runs again, numbered past the attempt that may still run unreported.
    assert_eq!(sim.running.len(), 1);
    assert_eq!(sim.running[0].1, aref(&sim, 1, 2));
    sim.pass(1);
    sim.pass(2);
    let s = sim.summary.clone().expect("summary");
    assert_eq!(s.outcome, PlanOutcome::Passed);
    assert_eq!(s.counts.passed, 3);
    assert!(
        s.duration >= Duration::from_secs(3),
        "age counts: {:?}",
        s.duration
    );
}

#[test]
fn a_re_reported_running_attempt_is_adopted_and_its_result_counts_once() {
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w1", 1, 1024 * MI)]);
    restore(
        &mut sim,
        plan,
        vec![
            RestoredGate::Started {
                attempt: 1,
                failures: 0,
                open: true,
            },
            RestoredGate::NotStarted,
        ],
        None,
    );
    let a1 = aref(&sim, 0, 1);
    sim.feed(Event::AttemptsReported {
        worker: w1(),
        running: vec![a1.clone()],
        finished: vec![],
    });
    assert!(sim.cancels.is_empty());
    assert!(
        sim.events.is_empty(),
        "the log already shows attempt 1 running: {:?}",
        sim.events
    );
    // The window ends: the adopted gate is not re-queued; the slot stays taken.
    sim.end_recovery();
    assert!(sim.running.is_empty());
    sim.feed(Event::GateFinished {
        attempt: a1.clone(),
        result: result(ExitStatus::Exited(0)),
    });
    assert_eq!(sim.state(0), Terminal::Passed);
    // The same result again (a resend) changes nothing.
    sim.feed(Event::GateFinished {
        attempt: a1,
        result: result(ExitStatus::Exited(1)),
    });
    assert_eq!(sim.state(0), Terminal::Passed);
    assert_eq!(sim.running_gates(), vec![1]);
}

#[test]
fn a_result_finished_between_sessions_is_taken_if_the_gate_is_in_doubt() {
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[])]);
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w1", 1, 1024 * MI)]);
    restore(
        &mut sim,
        plan,
        vec![done(Terminal::Passed), RestoredGate::NotStarted],
        None,
    );
    // `b` was dispatched as attempt 1 but nothing of it reached the log.
    let b1 = aref(&sim, 1, 1);
    let stale = aref(&sim, 0, 1);
    sim.feed(Event::AttemptsReported {
        worker: w1(),
        running: vec![],
        finished: vec![
            (b1, result(ExitStatus::Exited(3))),
            (stale, result(ExitStatus::Exited(1))),
        ],
    });
    assert_eq!(sim.state(1), Terminal::Failed);
    let s = sim.summary.clone().expect("summary");
    assert_eq!(s.counts.passed, 1, "a's logged pass is kept");
    assert_eq!(s.counts.failed, 1);
}

#[test]
fn unwanted_running_attempts_are_cancelled_and_hold_their_slot_until_they_end() {
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[])]);
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w1", 1, 1024 * MI)]);
    restore(
        &mut sim,
        plan,
        vec![done(Terminal::Passed), RestoredGate::NotStarted],
        None,
    );
    let old = aref(&sim, 0, 1); // a already passed: this attempt is unwanted
    sim.feed(Event::AttemptsReported {
        worker: w1(),
        running: vec![old.clone()],
        finished: vec![],
    });
    assert!(sim.cancels.contains(&old));
    sim.end_recovery();
    assert!(sim.running.is_empty(), "the only slot is still taken");
    sim.feed(Event::GateFinished {
        attempt: old,
        result: result(ExitStatus::Cancelled),
    });
    assert_eq!(sim.running_gates(), vec![1], "the slot is free again");
    sim.pass(1);
    let s = sim.summary.clone().expect("summary");
    assert_eq!(
        s.counts.passed, 2,
        "the cancelled old attempt changed nothing"
    );
}

#[test]
fn a_logged_failure_skips_dependents_whose_skip_was_not_logged() {
    // a fails; b needs a; c needs b.
    let plan = flat(
        Policy::default(),
        &[g("a", &[]), g("b", &[0]), g("c", &[1])],
    );
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w1", 1, 1024 * MI)]);
    restore(
        &mut sim,
        plan,
        vec![
            done(Terminal::Failed),
            done(Terminal::Skipped),
            RestoredGate::NotStarted,
        ],
        None,
    );
    assert_eq!(sim.state(2), Terminal::Skipped);
    assert!(
        !sim.events.iter().any(|e| e.gate == GateIdx(1)),
        "b's skip is already logged"
    );
    let s = sim.summary.clone().expect("summary");
    assert_eq!(s.outcome, PlanOutcome::Failed);
    assert_eq!((s.counts.failed, s.counts.skipped), (1, 2));
}

#[test]
fn a_logged_cancellation_is_applied_again() {
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w1", 1, 1024 * MI)]);
    restore(
        &mut sim,
        plan,
        vec![RestoredGate::NotStarted, RestoredGate::NotStarted],
        Some(false),
    );
    let s = sim.summary.clone().expect("summary");
    assert_eq!(s.outcome, PlanOutcome::Cancelled);
    assert_eq!(s.counts.cancelled, 2);
}

#[test]
fn a_retrying_gate_keeps_its_failures_and_ends_flaky() {
    let mut spec = g("a", &[]);
    spec.retries = 2;
    let plan = flat(Policy::default(), &[spec]);
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w1", 1, 1024 * MI)]);
    restore(
        &mut sim,
        plan,
        vec![RestoredGate::Started {
            attempt: 1,
            failures: 1,
            open: false,
        }],
        None,
    );
    // The logged failure of attempt 1, re-sent by the worker, is not counted again.
    let a1 = aref(&sim, 0, 1);
    sim.feed(Event::AttemptsReported {
        worker: w1(),
        running: vec![],
        finished: vec![(a1, result(ExitStatus::Exited(1)))],
    });
    assert!(sim.events.is_empty());
    sim.end_recovery();
    assert_eq!(sim.running[0].1.attempt, 3);
    sim.pass(0);
    let ev = sim.terminal(0);
    assert!(ev.flaky);
}

#[test]
fn a_start_reported_again_after_adoption_is_published_once() {
    let plan = flat(Policy::default(), &[g("a", &[])]);
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w1", 1, 1024 * MI)]);
    restore(&mut sim, plan, vec![RestoredGate::NotStarted], None);
    let a1 = aref(&sim, 0, 1);
    // Dispatched by the old leader, started while the worker was disconnected: the
    // worker re-reports it running, then sends the start it could not send before.
    sim.feed(Event::AttemptsReported {
        worker: w1(),
        running: vec![a1.clone()],
        finished: vec![],
    });
    sim.feed(Event::GateStarted { attempt: a1 });
    let running = sim
        .events
        .iter()
        .filter(|e| e.status == GateStatus::Running)
        .count();
    assert_eq!(running, 1, "{:?}", sim.events);
}
