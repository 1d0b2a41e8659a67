//! Unit tests of the scheduler core, one per rule.

use std::time::Duration;

use gatehouse_common::cache::CacheEntry;
use gatehouse_common::exec::ExitStatus;
use gatehouse_common::ids::{GateId, GateIdx, PlanId};
use gatehouse_common::plan::Policy;

use super::testkit::*;
use super::*;

fn local() -> Vec<WorkerInfo> {
    vec![worker("local-0", 4, 64 * 1024 * MI)]
}

fn fixed() -> CoreConfig {
    CoreConfig {
        fail_unschedulable: true,
        ..CoreConfig::default()
    }
}

#[test]
fn chain_runs_in_dependency_order_and_passes() {
    let plan = flat(
        Policy::default(),
        &[g("a", &[]), g("b", &[0]), g("c", &[1])],
    );
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    assert_eq!(sim.running_gates(), vec![0]);
    sim.pass(0);
    assert_eq!(sim.running_gates(), vec![1]);
    sim.pass(1);
    sim.pass(2);
    let s = sim.summary.clone().expect("summary");
    assert_eq!(s.outcome, PlanOutcome::Passed);
    assert_eq!(s.counts.passed, 3);
    assert_eq!(sim.core.live_plans(), 0);
}

#[test]
fn failure_skips_transitive_dependents_only() {
    // a -> b -> c, d independent
    let plan = flat(
        Policy::default(),
        &[g("a", &[]), g("b", &[0]), g("c", &[1]), g("d", &[])],
    );
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    sim.fail(0);
    assert_eq!(sim.state(0), Terminal::Failed);
    assert_eq!(sim.state(1), Terminal::Skipped);
    assert_eq!(sim.state(2), Terminal::Skipped);
    assert_eq!(sim.terminal(2).cause, Some(GateIdx(0)));
    assert_eq!(sim.terminal(2).reason, Some("dependency_failed"));
    assert!(sim.summary.is_none(), "d still runs");
    sim.pass(3);
    let s = sim.summary.clone().expect("summary");
    assert_eq!(s.outcome, PlanOutcome::Failed);
    assert_eq!(
        (s.counts.failed, s.counts.skipped, s.counts.passed),
        (1, 2, 1)
    );
}

#[test]
fn item_deps_gate_the_next_item_and_failure_skips_it() {
    // pr-101 {lint, test(needs lint)}, pr-102 deps pr-101 {test}, pr-103 {test}
    let plan = items(
        Policy::default(),
        &[
            ("pr-101", &[], vec![g("lint", &[]), g("test", &[0])]),
            ("pr-102", &[0], vec![g("test", &[])]),
            ("pr-103", &[], vec![g("test", &[])]),
        ],
    );
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan.clone(), false);
    assert_eq!(sim.running_gates(), vec![0, 3]);
    sim.pass(0);
    assert_eq!(sim.running_gates(), vec![3, 1]);
    sim.pass(1);
    assert!(
        sim.running_gates().contains(&2),
        "pr-102 starts once pr-101 passed"
    );
    sim.pass(2);
    sim.pass(3);
    let s = sim.summary.clone().expect("summary");
    let order: Vec<&str> = s
        .merge_order
        .iter()
        .map(|i| plan.item(*i).id.as_str())
        .collect();
    assert_eq!(order, ["pr-101", "pr-102", "pr-103"]);

    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan.clone(), false);
    sim.pass(0);
    sim.fail(1);
    assert_eq!(sim.state(2), Terminal::Skipped);
    sim.pass(3);
    let s = sim.summary.clone().expect("summary");
    let order: Vec<&str> = s
        .merge_order
        .iter()
        .map(|i| plan.item(*i).id.as_str())
        .collect();
    assert_eq!(order, ["pr-103"]);
}

#[test]
fn merge_order_breaks_ties_by_plan_order() {
    // c (no deps) listed first, a, b deps a.
    let plan = items(
        Policy::default(),
        &[
            ("c", &[], vec![g("t", &[])]),
            ("b", &[2], vec![g("t", &[])]),
            ("a", &[], vec![g("t", &[])]),
        ],
    );
    let order = plan.merge_order(|_| true);
    let ids: Vec<&str> = order.iter().map(|i| plan.item(*i).id.as_str()).collect();
    assert_eq!(ids, ["c", "a", "b"]);
}

#[test]
fn fail_fast_cancels_running_and_skips_the_rest() {
    let policy = Policy {
        fail_fast: true,
        ..Policy::default()
    };
    let plan = flat(
        policy,
        &[g("a", &[]), g("b", &[]), g("c", &[0]), g("d", &[])],
    );
    let mut sim = Sim::new(fixed(), &[worker("w", 2, 64 * 1024 * MI)]);
    sim.submit(plan, false);
    assert_eq!(sim.running_gates(), vec![0, 1]);
    let cmds = sim.fail(0);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::CancelAttempt { attempt, .. } if attempt.gate.0 == 1))
    );
    assert_eq!(sim.state(2), Terminal::Skipped);
    assert_eq!(sim.state(3), Terminal::Skipped);
    assert!(
        sim.running.iter().all(|(_, a)| a.gate.0 == 1),
        "nothing new dispatched"
    );
    sim.finish(1, ExitStatus::Cancelled);
    assert_eq!(sim.state(1), Terminal::Cancelled);
    assert_eq!(
        sim.summary.clone().expect("summary").outcome,
        PlanOutcome::Failed
    );
}

#[test]
fn retry_then_pass_is_flaky_with_doubling_backoff() {
    let policy = Policy {
        retry_backoff: Duration::from_millis(100),
        ..Policy::default()
    };
    let mut a = g("a", &[]);
    a.retries = 2;
    let plan = flat(policy, &[a]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    sim.fail(0);
    assert_eq!(
        sim.timers.last().map(|t| t.0),
        Some(Duration::from_millis(100))
    );
    assert!(sim.running.is_empty(), "no dispatch before the backoff");
    sim.fire_timer();
    assert_eq!(sim.running[0].1.attempt, 2);
    sim.finish(0, ExitStatus::TimedOut);
    assert_eq!(
        sim.timers.last().map(|t| t.0),
        Some(Duration::from_millis(300))
    );
    sim.fire_timer();
    sim.pass(0);
    let ev = sim.terminal(0);
    assert_eq!(
        (ev.status.clone(), ev.flaky, ev.attempt),
        (GateStatus::Finished(Terminal::Passed), true, 3)
    );
    assert_eq!(sim.summary.clone().expect("summary").counts.flaky, 1);
}

#[test]
fn retries_exhausted_timeout_is_timed_out() {
    let mut a = g("a", &[]);
    a.retries = 1;
    let plan = flat(Policy::default(), &[a]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    sim.finish(0, ExitStatus::TimedOut);
    sim.fire_timer();
    sim.finish(0, ExitStatus::TimedOut);
    assert_eq!(sim.state(0), Terminal::TimedOut);
    assert_eq!(sim.terminal(0).reason, Some("timeout"));
}

#[test]
fn backoff_is_capped() {
    let first = Duration::from_millis(200);
    assert_eq!(retry_backoff(first, 1), first);
    assert_eq!(retry_backoff(first, 2), Duration::from_millis(400));
    assert_eq!(retry_backoff(first, 20), Duration::from_secs(30));
    assert_eq!(retry_backoff(first, 400), Duration::from_secs(30));
}

#[test]
fn max_parallel_bounds_running_gates() {
    let policy = Policy {
        max_parallel: Some(2),
        ..Policy::default()
    };
    let plan = flat(
        policy,
        &(0..5).map(|i| g(&format!("g{i}"), &[])).collect::<Vec<_>>(),
    );
    let mut sim = Sim::new(fixed(), &[worker("w", 10, 64 * 1024 * MI)]);
    sim.submit(plan, false);
    assert_eq!(sim.running.len(), 2);
    sim.pass(0);
    assert_eq!(sim.running.len(), 2);
}

#[test]
fn memory_admission_throttles_instead_of_overcommitting() {
    let mut gates: Vec<G> = (0..4).map(|i| g(&format!("g{i}"), &[])).collect();
    for x in &mut gates {
        x.memory = 512 * MI;
    }
    let plan = flat(Policy::default(), &gates);
    let mut sim = Sim::new(fixed(), &[worker("w", 4, 1100 * MI)]);
    sim.submit(plan, false);
    assert_eq!(sim.running.len(), 2, "only two 512Mi gates fit in 1100Mi");
    sim.pass(0);
    assert_eq!(sim.running.len(), 2);
    sim.feed(Event::WorkerCapacity {
        worker: wk("w"),
        memory_used: 0,
        memory_available: 2000 * MI,
    });
    assert_eq!(sim.running.len(), 3, "more memory admits the next gate");
}

#[test]
fn placement_prefers_most_headroom() {
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[])]);
    let mut sim = Sim::new(
        CoreConfig::default(),
        &[worker("small", 4, 1024 * MI), worker("big", 4, 4096 * MI)],
    );
    sim.submit(plan, false);
    let workers: Vec<&str> = sim.running.iter().map(|(w, _)| w.worker.as_str()).collect();
    assert_eq!(workers, ["big", "big"]);
}

#[test]
fn gate_too_big_for_any_worker_fails_or_waits() {
    let mut big = g("big", &[]);
    big.memory = 10 * 1024 * MI;
    let plan = flat(Policy::default(), &[big, g("after", &[0])]);
    let mut sim = Sim::new(fixed(), &[worker("w", 4, 1024 * MI)]);
    sim.submit(plan.clone(), false);
    assert_eq!(sim.state(0), Terminal::Failed);
    assert_eq!(sim.terminal(0).reason, Some("unschedulable"));
    assert_eq!(sim.state(1), Terminal::Skipped);

    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 4, 1024 * MI)]);
    sim.submit(plan, false);
    let waiting: Vec<_> = sim
        .events
        .iter()
        .filter(|e| matches!(e.status, GateStatus::Waiting { .. }))
        .collect();
    assert_eq!(waiting.len(), 1);
    sim.feed(Event::WorkerJoined(worker("huge", 1, 16 * 1024 * MI)));
    assert_eq!(
        sim.running_gates(),
        vec![0],
        "a worker that fits picks it up"
    );
}

#[test]
fn stale_attempt_results_are_ignored() {
    let plan = flat(Policy::default(), &[g("a", &[])]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    let (_, attempt) = sim.running[0].clone();
    let mut stale = attempt.clone();
    stale.attempt = 7;
    let cmds = sim.feed(Event::GateFinished {
        attempt: stale,
        result: result(ExitStatus::Exited(0)),
    });
    assert!(cmds.is_empty());
    assert_eq!(sim.core.running_attempts(), 1);
    sim.pass(0);
    assert_eq!(sim.state(0), Terminal::Passed);
}

#[test]
fn cancel_stops_running_and_cancels_pending() {
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    let cmds = sim.feed(Event::Cancel {
        plan: sim.plan.clone(),
        force: false,
    });
    assert!(
        matches!(&cmds[..], [Command::CancelAttempt { grace, .. }, ..] if *grace == Duration::from_secs(5))
    );
    assert_eq!(sim.state(1), Terminal::Cancelled);
    let forced = sim.feed(Event::Cancel {
        plan: sim.plan.clone(),
        force: true,
    });
    assert!(matches!(&forced[..], [Command::CancelAttempt { grace, .. }] if grace.is_zero()));
    sim.finish(0, ExitStatus::Cancelled);
    assert_eq!(sim.state(0), Terminal::Cancelled);
    assert_eq!(
        sim.summary.clone().expect("summary").outcome,
        PlanOutcome::Cancelled
    );
}

#[test]
fn cache_hit_passes_without_dispatch_and_unblocks_dependents() {
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, true);
    assert!(sim.running.is_empty());
    assert_eq!(sim.cache_checks, vec![GateIdx(0)]);
    let entry = CacheEntry {
        result: result(ExitStatus::Exited(0)),
        producer: GateId::new("a"),
        created_unix_ms: 0,
        flaky: None,
    };
    sim.feed(Event::CacheChecked {
        plan: sim.plan.clone(),
        gate: GateIdx(0),
        key: Some(key(0)),
        hit: Some(Box::new(entry)),
    });
    assert!(sim.terminal(0).cached);
    assert_eq!(sim.cache_checks, vec![GateIdx(0), GateIdx(1)]);
    let cmds = sim.feed(Event::CacheChecked {
        plan: sim.plan.clone(),
        gate: GateIdx(1),
        key: Some(key(1)),
        hit: None,
    });
    assert!(matches!(cmds[0], Command::Dispatch { .. }));
    let cmds = sim.pass(1);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::StoreResult { gate, .. } if gate.0 == 1)),
        "a passed, executed gate is stored"
    );
    let s = sim.summary.clone().expect("summary");
    assert_eq!((s.counts.passed, s.counts.cached), (2, 1));
}

#[test]
fn failed_gates_are_not_stored() {
    let plan = flat(Policy::default(), &[g("a", &[])]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, true);
    sim.feed(Event::CacheChecked {
        plan: sim.plan.clone(),
        gate: GateIdx(0),
        key: Some(key(0)),
        hit: None,
    });
    let cmds = sim.fail(0);
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::StoreResult { .. }))
    );
}

#[test]
fn lost_worker_requeues_then_fails_after_three_losses() {
    let plan = flat(Policy::default(), &[g("a", &[])]);
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w1", 1, 4096 * MI)]);
    sim.submit(plan, false);
    for loss in 1..=3u32 {
        assert_eq!(sim.running[0].1.attempt, loss);
        sim.running.clear();
        sim.feed(Event::WorkerLost { worker: wk("w1") });
        if loss < 3 {
            sim.feed(Event::WorkerJoined(worker("w1", 1, 4096 * MI)));
        }
    }
    assert_eq!(sim.state(0), Terminal::Failed);
    assert_eq!(sim.terminal(0).reason, Some("worker_lost"));
}

#[test]
fn critical_path_runs_first() {
    // a (alone) listed first; b -> c -> d is the long chain.
    let plan = flat(
        Policy::default(),
        &[g("a", &[]), g("b", &[]), g("c", &[1]), g("d", &[2])],
    );
    let mut sim = Sim::new(fixed(), &[worker("w", 1, 64 * 1024 * MI)]);
    sim.submit(plan, false);
    assert_eq!(
        sim.running_gates(),
        vec![1],
        "head of the longest chain first"
    );
}

#[test]
fn fail_fast_ends_a_gate_in_backoff_with_its_last_failure() {
    let policy = Policy {
        fail_fast: true,
        ..Policy::default()
    };
    let mut retrying = g("retrying", &[]);
    retrying.retries = 3;
    let plan = flat(policy, &[retrying, g("bad", &[])]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    sim.finish(0, ExitStatus::TimedOut);
    assert!(sim.timers.len() == 1, "gate 0 waits to retry");
    sim.fail(1);
    let ev = sim.terminal(0);
    assert_eq!(ev.status, GateStatus::Finished(Terminal::TimedOut));
    assert_eq!(ev.attempt, 1);
    assert!(ev.result.is_some(), "the last result is reported");
    sim.fire_timer();
    assert!(sim.running.is_empty(), "a stale retry timer starts nothing");
    assert_eq!(sim.summary.clone().expect("summary").counts.timed_out, 1);
}

#[test]
fn cancel_during_backoff_and_cache_check_cancels_with_the_attempt() {
    let mut a = g("a", &[]);
    a.retries = 1;
    let plan = flat(Policy::default(), &[a, g("b", &[])]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, true);
    sim.feed(Event::CacheChecked {
        plan: sim.plan.clone(),
        gate: GateIdx(0),
        key: None,
        hit: None,
    });
    sim.fail(0);
    sim.feed(Event::Cancel {
        plan: sim.plan.clone(),
        force: false,
    });
    assert_eq!(sim.state(0), Terminal::Cancelled);
    assert_eq!(sim.terminal(0).attempt, 1);
    assert_eq!(
        sim.state(1),
        Terminal::Cancelled,
        "cancelled while its cache check ran"
    );
    let late = sim.feed(Event::CacheChecked {
        plan: sim.plan.clone(),
        gate: GateIdx(1),
        key: None,
        hit: None,
    });
    assert!(
        late.is_empty(),
        "a late cache answer for a finished plan is ignored"
    );
}

#[test]
fn skips_through_long_item_chains_stay_linear_and_complete() {
    // Three items of 2,000 gates each, stacked; one failure in the first skips the rest.
    let gates = |n: usize| (0..n).map(|i| g(&format!("g{i}"), &[])).collect::<Vec<_>>();
    let plan = items(
        Policy::default(),
        &[
            ("a", &[], gates(2000)),
            ("b", &[0], gates(2000)),
            ("c", &[1], gates(2000)),
        ],
    );
    let mut sim = Sim::new(fixed(), &[worker("w", 4000, 1 << 50)]);
    sim.submit(plan, false);
    assert_eq!(sim.running.len(), 2000);
    for g in 0..2000 {
        if g == 7 {
            sim.fail(g)
        } else {
            sim.pass(g)
        };
    }
    let s = sim.summary.clone().expect("summary");
    assert_eq!(
        (s.counts.passed, s.counts.failed, s.counts.skipped),
        (1999, 1, 4000)
    );
}

#[test]
fn losing_the_only_worker_of_a_fixed_pool_fails_instead_of_hanging() {
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    sim.running.clear();
    sim.feed(Event::WorkerLost {
        worker: wk("local-0"),
    });
    assert_eq!(sim.state(0), Terminal::Failed);
    assert_eq!(sim.terminal(0).reason, Some("unschedulable"));
    assert_eq!(sim.state(1), Terminal::Skipped);
}

#[test]
fn labels_constrain_placement_and_unmatched_gates_wait_with_a_reason() {
    let mut arm = g("arm", &[]);
    arm.labels = [("arch".to_string(), "arm64".to_string())].into();
    let mut gpu = g("gpu", &[]);
    gpu.labels = [("gpu".to_string(), "yes".to_string())].into();
    let plan = flat(Policy::default(), &[arm, gpu, g("any", &[])]);
    let mut x86 = worker("x86", 4, 4096 * MI);
    x86.labels = [("arch".to_string(), "amd64".to_string())].into();
    let mut arm64 = worker("arm64", 4, 4096 * MI);
    arm64.labels = [("arch".to_string(), "arm64".to_string())].into();
    let mut sim = Sim::new(CoreConfig::default(), &[x86, arm64]);
    sim.submit(plan, false);
    let placed: Vec<(u32, &str)> = sim
        .running
        .iter()
        .map(|(w, a)| (a.gate.0, w.worker.as_str()))
        .collect();
    assert!(placed.contains(&(0, "arm64")), "{placed:?}");
    assert!(
        !placed.iter().any(|(g, _)| *g == 1),
        "no worker has gpu=yes"
    );
    let reason = sim.events.iter().find_map(|e| match &e.status {
        GateStatus::Waiting { reason } if e.gate.0 == 1 => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        reason.as_deref(),
        Some("no live worker has the labels gpu=yes")
    );
}

#[test]
fn pressured_and_draining_workers_get_nothing_new() {
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[]), g("c", &[])]);
    let mut sim = Sim::new(
        CoreConfig::default(),
        &[worker("w1", 4, 4096 * MI), worker("w2", 4, 4096 * MI)],
    );
    sim.feed(Event::WorkerCapacity {
        worker: wk("w1"),
        memory_used: 3900 * MI,
        memory_available: 196 * MI,
    });
    sim.feed(Event::WorkerDraining { worker: wk("w2") });
    sim.submit(plan, false);
    assert!(sim.running.is_empty(), "w1 is over 90% used, w2 drains");
    sim.feed(Event::WorkerCapacity {
        worker: wk("w1"),
        memory_used: 100 * MI,
        memory_available: 3996 * MI,
    });
    assert_eq!(sim.running.len(), 3, "w1 recovered");
    assert!(sim.running.iter().all(|(w, _)| w.worker.as_str() == "w1"));
}

#[test]
fn worker_cancelled_attempts_run_again_without_using_a_retry() {
    let plan = flat(Policy::default(), &[g("a", &[])]);
    let mut sim = Sim::new(
        CoreConfig::default(),
        &[worker("w1", 1, 4096 * MI), worker("w2", 1, 4096 * MI)],
    );
    sim.submit(plan, false);
    let first = sim.running[0].0.clone();
    sim.feed(Event::WorkerDraining {
        worker: first.clone(),
    });
    sim.finish(0, ExitStatus::Cancelled);
    assert_eq!(sim.running.len(), 1, "re-queued");
    assert_ne!(sim.running[0].0, first, "not on the draining worker");
    assert_eq!(sim.running[0].1.attempt, 2);
    sim.pass(0);
    let ev = sim.terminal(0);
    assert_eq!(
        (ev.status.clone(), ev.flaky),
        (GateStatus::Finished(Terminal::Passed), false)
    );
}

#[test]
fn plans_share_workers_round_robin() {
    let many = |n: usize| (0..n).map(|i| g(&format!("g{i}"), &[])).collect::<Vec<_>>();
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 1, 4096 * MI)]);
    sim.submit(flat(Policy::default(), &many(4)), false);
    sim.plan = PlanId::new("p2");
    sim.submit(flat(Policy::default(), &many(4)), false);
    let mut order = Vec::new();
    for _ in 0..6 {
        let (_, a) = sim.running[0].clone();
        order.push(a.plan.to_string());
        sim.running.clear();
        sim.feed(Event::GateFinished {
            attempt: a,
            result: result(ExitStatus::Exited(0)),
        });
    }
    assert_eq!(order, ["p1", "p2", "p1", "p2", "p1", "p2"]);
}

#[test]
fn reports_about_unknown_gates_are_ignored_without_panicking() {
    let plan = flat(Policy::default(), &[g("a", &[])]);
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    let bogus = gatehouse_common::exec::AttemptRef {
        plan: sim.plan.clone(),
        gate: GateIdx(9_999),
        attempt: 1,
    };
    assert!(
        sim.feed(Event::GateStarted {
            attempt: bogus.clone()
        })
        .is_empty()
    );
    let finished = Event::GateFinished {
        attempt: bogus,
        result: result(ExitStatus::Exited(0)),
    };
    assert!(sim.feed(finished).is_empty());
    let cache = Event::CacheChecked {
        plan: sim.plan.clone(),
        gate: GateIdx(9_999),
        key: None,
        hit: None,
    };
    assert!(sim.feed(cache).is_empty());
}

#[test]
fn an_unplaceable_gate_does_not_block_the_gates_behind_it_and_waits_quietly() {
    // The gpu gate heads the queue (longest chain) but no worker has the label.
    let mut gpu = g("gpu", &[]);
    gpu.labels = [("gpu".to_string(), "yes".to_string())].into();
    let plan = flat(
        Policy::default(),
        &[gpu, g("after-gpu", &[0]), g("other", &[])],
    );
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 1, 4096 * MI)]);
    sim.submit(plan, false);
    assert_eq!(
        sim.running_gates(),
        vec![2],
        "the runnable gate behind it runs"
    );
    for i in 0..5 {
        sim.feed(Event::WorkerJoined(worker(
            &format!("flap{i}"),
            1,
            4096 * MI,
        )));
        sim.feed(Event::WorkerLost {
            worker: wk(&format!("flap{i}")),
        });
    }
    let waits = sim
        .events
        .iter()
        .filter(|e| matches!(e.status, GateStatus::Waiting { .. }))
        .count();
    assert_eq!(waits, 1, "the same reason is published once");
    let mut gpu_worker = worker("gpu-box", 1, 4096 * MI);
    gpu_worker.labels = [("gpu".to_string(), "yes".to_string())].into();
    sim.feed(Event::WorkerJoined(gpu_worker));
    assert!(
        sim.running_gates().contains(&0),
        "a matching worker picks it up"
    );
}

#[test]
fn a_worker_may_set_its_own_memory_pressure_threshold() {
    let plan = flat(Policy::default(), &[g("a", &[])]);
    let mut strict = worker("strict", 2, 4096 * MI);
    strict.memory_pressure = Some(0.5);
    let mut sim = Sim::new(CoreConfig::default(), &[strict]);
    sim.feed(Event::WorkerCapacity {
        worker: wk("strict"),
        memory_used: 2500 * MI,
        memory_available: 1596 * MI,
    });
    sim.submit(plan, false);
    assert!(
        sim.running.is_empty(),
        "61% used is above this worker's 50% threshold"
    );
}

/// The `queued` of each `Dispatched` event, by gate.
fn queue_waits(sim: &Sim) -> Vec<(u32, Duration)> {
    sim.events
        .iter()
        .filter(|e| e.status == GateStatus::Dispatched)
        .map(|e| {
            (
                e.gate.0,
                e.queued.expect("a dispatch says how long it queued"),
            )
        })
        .collect()
}

#[test]
fn a_dispatch_reports_the_wait_since_the_gate_became_ready() {
    // One slot, three independent gates: b and c wait for a, then c for b.
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[]), g("c", &[])]);
    let mut sim = Sim::new(fixed(), &[worker("w", 1, 64 * 1024 * MI)]);
    sim.submit(plan, false);
    assert_eq!(sim.core.gauges().queued, 2);
    assert_eq!(sim.core.gauges().running, 1);
    sim.now += Duration::from_millis(300);
    let first = sim.running_gates()[0];
    sim.pass(first);
    sim.now += Duration::from_millis(200);
    let second = sim.running_gates()[0];
    sim.pass(second);
    let third = sim.running_gates()[0];
    sim.pass(third);
    let waits = queue_waits(&sim);
    assert_eq!(
        waits.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
        vec![
            Duration::ZERO,
            Duration::from_millis(300),
            Duration::from_millis(500)
        ],
        "{waits:?}"
    );
    let gauges = sim.core.gauges();
    assert_eq!((gauges.plans, gauges.queued, gauges.running), (0, 0, 0));
}

#[test]
fn a_retry_queues_from_the_end_of_its_backoff() {
    let mut a = g("a", &[]);
    a.retries = 1;
    let plan = flat(
        Policy {
            retry_backoff: Duration::from_millis(100),
            ..Policy::default()
        },
        &[a],
    );
    let mut sim = Sim::new(fixed(), &local());
    sim.submit(plan, false);
    sim.now += Duration::from_millis(50);
    sim.fail(0);
    sim.now += Duration::from_millis(100);
    sim.fire_timer();
    sim.pass(0);
    // Both attempts were dispatched at once: the backoff is not queue time.
    assert_eq!(
        queue_waits(&sim),
        vec![(0, Duration::ZERO), (0, Duration::ZERO)]
    );
}

#[test]
fn admission_throttling_is_counted_once_per_wait() {
    // Two slots but memory for one 3 GiB gate at a time: b waits for a's memory while
    // a slot is free, through several scheduling passes (and c waits behind it: the
    // plan's queue does not skip its head).
    let mut a = g("a", &[]);
    a.memory = 3 * 1024 * MI;
    let mut b = g("b", &[]);
    b.memory = 3 * 1024 * MI;
    let plan = flat(Policy::default(), &[a, b, g("c", &[])]);
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 2, 4 * 1024 * MI)]);
    sim.submit(plan, false);
    assert_eq!(sim.running_gates().len(), 1, "only one of a and b fits");
    assert_eq!(sim.core.throttled_total(), 1);
    assert_eq!(
        sim.core.slot_use(&wk("w")),
        Some(SlotUse { used: 1, total: 2 }),
        "a slot is free: memory holds the gate back"
    );
    // Heartbeats re-run the pass: still the same wait.
    for _ in 0..3 {
        sim.feed(Event::WorkerCapacity {
            worker: wk("w"),
            memory_used: 0,
            memory_available: 4 * 1024 * MI,
        });
    }
    assert_eq!(sim.core.throttled_total(), 1);
    let first = sim.running_gates()[0];
    sim.pass(first);
    assert_eq!(
        sim.running_gates().len(),
        2,
        "the throttled gate and c run now"
    );
    for g in sim.running_gates() {
        sim.pass(g);
    }
    assert_eq!(sim.core.throttled_total(), 1);
    assert_eq!(sim.summary.clone().expect("summary").counts.passed, 3);
}

#[test]
fn the_gauges_count_workers_by_state() {
    let mut sim = Sim::new(
        CoreConfig::default(),
        &[
            worker("a", 1, 1024 * MI),
            worker("b", 1, 1024 * MI),
            worker("c", 1, 1024 * MI),
        ],
    );
    sim.feed(Event::WorkerDraining { worker: wk("b") });
    sim.feed(Event::WorkerCapacity {
        worker: wk("c"),
        memory_used: 1000 * MI,
        memory_available: 24 * MI,
    });
    let gauges = sim.core.gauges();
    assert_eq!(
        (
            gauges.workers_ready,
            gauges.workers_draining,
            gauges.workers_pressured
        ),
        (1, 1, 1)
    );
}
