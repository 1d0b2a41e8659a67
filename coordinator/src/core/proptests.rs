//! Property tests: random DAGs, random workers and random outcome sequences driven
//! through the core, checking the scheduling invariants after every run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use gatehouse_common::cache::CacheEntry;
use gatehouse_common::exec::{AttemptRef, ExitStatus, GateResult};
use gatehouse_common::ids::{GateId, GateIdx};
use gatehouse_common::plan::{Plan, Policy};
use proptest::prelude::*;
use proptest::test_runner::TestRng;

use super::testkit::*;
use super::*;

/// A deterministic random source from a proptest-drawn seed.
pub(super) fn rng_from(seed: u64) -> TestRng {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &s)
}

/// A random plan: items with deps on earlier items (in a shuffled plan order), gates with
/// needs on earlier gates of the same item or of dep items.
/// One random item: (index, deps, gates).
pub(super) type ItemSpec = (u32, Vec<u32>, Vec<G>);

pub(super) fn arb_plan() -> impl Strategy<Value = (Policy, bool, Vec<ItemSpec>)> {
    (
        1usize..8,
        any::<u64>(),
        any::<bool>(),
        0u32..3,
        prop::option::of(1u32..4),
        any::<bool>(),
    )
        .prop_map(
            |(n_items, seed, fail_fast, retries, max_parallel, flat_form)| {
                let mut rng = rng_from(seed);
                let policy = Policy {
                    fail_fast,
                    retries,
                    max_parallel,
                    // Flaky passes shared through single flight, or run again.
                    cache_flaky: seed % 2 == 0,
                    ..Policy::default()
                };
                let mut spec = Vec::new();
                let mut next_gate = 0u32;
                for i in 0..n_items as u32 {
                    let deps: Vec<u32> = (0..i).filter(|_| rng.random_bool(0.3)).collect();
                    let n_gates = rng.random_range(1..5u32);
                    let first = next_gate;
                    let mut gates = Vec::new();
                    for k in 0..n_gates {
                        let needs: Vec<u32> = (first..first + k)
                            .filter(|_| rng.random_bool(0.4))
                            .collect();
                        let mut gate = g(&format!("g{k}"), &needs);
                        gate.retries = if rng.random_bool(0.3) {
                            rng.random_range(0..3)
                        } else {
                            retries
                        };
                        gate.memory = rng.random_range(1..5u64) * 256 * MI;
                        gates.push(gate);
                    }
                    next_gate += n_gates;
                    spec.push((i, deps, gates));
                }
                (policy, flat_form, spec)
            },
        )
}

pub(super) fn build(
    policy: Policy,
    flat_form: bool,
    spec: &[(u32, Vec<u32>, Vec<G>)],
) -> std::sync::Arc<Plan> {
    if flat_form {
        let gates: Vec<G> = spec
            .iter()
            .flat_map(|(_, _, gs)| gs.iter().cloned())
            .collect();
        let mut gates = gates;
        for (i, gate) in gates.iter_mut().enumerate() {
            gate.name = format!("g{i}");
        }
        flat(policy, &gates)
    } else {
        let names: Vec<String> = spec.iter().map(|(i, _, _)| format!("item{i}")).collect();
        let items_spec: Vec<(&str, &[u32], Vec<G>)> = spec
            .iter()
            .zip(&names)
            .map(|((_, deps, gates), name)| (name.as_str(), deps.as_slice(), gates.clone()))
            .collect();
        items(policy, &items_spec)
    }
}

/// Direct prerequisites of every gate (needs + all gates of dep items).
pub(super) fn prerequisites(plan: &Plan) -> Vec<Vec<GateIdx>> {
    (0..plan.gates.len() as u32)
        .map(|g| plan.prerequisites(GateIdx(g)).collect())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_runs_keep_the_invariants(
        (policy, flat_form, spec) in arb_plan(),
        use_cache in any::<bool>(),
        n_workers in 1usize..4,
        seed in any::<u64>(),
        cancel_at in prop::option::of(0usize..40),
    ) {
        let plan = build(policy.clone(), flat_form, &spec);
        let workers: Vec<WorkerInfo> = (0..n_workers)
            .map(|i| worker(&format!("w{i}"), 1 + i as u32, (2 + i as u64) * 1024 * MI))
            .collect();
        let mut sim = Sim::new(CoreConfig { fail_unschedulable: true, ..CoreConfig::default() }, &workers);
        let mut rng = rng_from(seed);
        let prereq = prerequisites(&plan);
        let mut passed: HashSet<u32> = HashSet::new();
        let mut pending_checks: Vec<GateIdx> = Vec::new();
        let mut seen_checks = 0;
        let mut steps = 0usize;
        let mut cancelled = false;
        sim.submit(plan.clone(), use_cache);
        let mut checked_dispatches = 0;
        while sim.summary.is_none() {
            steps += 1;
            prop_assert!(steps < 10_000, "no progress");
            // Invariant: nothing dispatched before its prerequisites passed.
            for cmd in &sim.log[checked_dispatches..] {
                if let Command::Dispatch { assignment, .. } = cmd {
                    for p in &prereq[assignment.attempt.gate.ix()] {
                        prop_assert!(passed.contains(&p.0), "gate {} dispatched before {}", assignment.attempt.gate.0, p.0);
                    }
                }
            }
            checked_dispatches = sim.log.len();
            // Invariant: the queued count (the ready-gates gauge) matches the states.
            for run in sim.core.plans.values() {
                let queued = run.gates.iter().filter(|g| g.state.is_queued()).count() as u32;
                prop_assert_eq!(run.queued, queued, "queued count drifted from the gate states");
            }
            // Invariants: slots and max_parallel.
            for (w, n) in sim.per_worker() {
                let slots = workers.iter().find(|x| x.id == w).map(|x| x.slots).unwrap_or(0);
                prop_assert!(n as u32 <= slots, "worker {w} over its slots");
            }
            if let Some(max) = policy.max_parallel {
                prop_assert!(sim.running.len() as u32 <= max, "over max_parallel");
            }
            pending_checks.extend(sim.cache_checks[seen_checks..].iter().copied());
            seen_checks = sim.cache_checks.len();
            if cancel_at == Some(steps) && !cancelled {
                cancelled = true;
                sim.feed(Event::Cancel { plan: sim.plan.clone(), force: false });
                continue;
            }
            let choice = rng.random_range(0..10u32);
            if !pending_checks.is_empty() && (choice < 3 || sim.running.is_empty()) {
                let i = rng.random_range(0..pending_checks.len());
                let gate = pending_checks.swap_remove(i);
                let hit = rng.random_bool(0.3).then(|| Box::new(CacheEntry {
                    result: result(ExitStatus::Exited(0)),
                    producer: GateId::new("x"),
                    created_unix_ms: 0, flaky: None, }));
                sim.feed(Event::CacheChecked { plan: sim.plan.clone(), gate, key: None, hit });
            } else if !sim.running.is_empty() && choice < 9 {
                let i = rng.random_range(0..sim.running.len());
                let g = sim.running[i].1.gate.0;
                let status = if sim.cancels.contains(&sim.running[i].1) {
                    ExitStatus::Cancelled
                } else {
                    match rng.random_range(0..10u32) {
                        0..=6 => ExitStatus::Exited(0),
                        7 => ExitStatus::TimedOut,
                        _ => ExitStatus::Exited(1),
                    }
                };
                sim.finish(g, status);
            } else if !sim.timers.is_empty() {
                sim.fire_timer();
            } else if !sim.running.is_empty() && rng.random_bool(0.5) {
                // Lose a worker that runs something, then let it rejoin.
                let (w, _) = sim.running[0].clone();
                sim.running.retain(|(x, _)| *x != w);
                sim.feed(Event::WorkerLost { worker: w.clone() });
                let info = workers.iter().find(|x| x.id == w).cloned().expect("known worker");
                sim.feed(Event::WorkerJoined(info));
            } else if !sim.running.is_empty() {
                let g = sim.running[0].1.gate.0;
                sim.pass(g);
            } else if !pending_checks.is_empty() {
                continue;
            } else {
                prop_assert!(false, "stuck: nothing running, no timers, no checks, no summary");
            }
            for ev in &sim.events {
                if ev.status == GateStatus::Finished(Terminal::Passed) {
                    passed.insert(ev.gate.0);
                }
            }
        }
        let summary = sim.summary.clone().expect("summary");
        // The gauges are back to zero once the only plan ended.
        let gauges = sim.core.gauges();
        prop_assert_eq!((gauges.plans, gauges.queued, gauges.running), (0, 0, 0));
        // Every gate ends in exactly one terminal state, and counts match.
        let mut per_state: HashMap<Terminal, u32> = HashMap::new();
        for i in 0..plan.gates.len() as u32 {
            *per_state.entry(sim.state(i)).or_default() += 1;
        }
        let c = summary.counts;
        prop_assert_eq!(c.total as usize, plan.gates.len());
        prop_assert_eq!(per_state.get(&Terminal::Passed).copied().unwrap_or(0), c.passed);
        prop_assert_eq!(per_state.get(&Terminal::Failed).copied().unwrap_or(0), c.failed);
        prop_assert_eq!(per_state.get(&Terminal::Skipped).copied().unwrap_or(0), c.skipped);
        prop_assert_eq!(c.passed + c.failed + c.timed_out + c.skipped + c.cancelled, c.total);
        // A skipped gate has a failed ancestor (without fail-fast or cancel).
        let failed_like = |g: u32| matches!(sim.state(g), Terminal::Failed | Terminal::TimedOut | Terminal::Cancelled);
        for i in 0..plan.gates.len() as u32 {
            if sim.state(i) != Terminal::Skipped {
                continue;
            }
            if policy.fail_fast {
                prop_assert!(c.failed + c.timed_out > 0, "fail-fast skip without a failure");
                continue;
            }
            let mut stack = vec![GateIdx(i)];
            let mut seen = HashSet::new();
            let mut found = false;
            while let Some(g) = stack.pop() {
                for p in &prereq[g.ix()] {
                    if failed_like(p.0) { found = true; }
                    if seen.insert(*p) { stack.push(*p); }
                }
            }
            prop_assert!(found, "skipped gate {} has no failed ancestor", i);
        }
        // Merge order: exactly the items whose gates all passed, in topological order.
        let order = &summary.merge_order;
        let pos: HashMap<u32, usize> = order.iter().enumerate().map(|(k, i)| (i.0, k)).collect();
        for (i, item) in plan.items.iter().enumerate() {
            let all_passed = item.gates.iter().all(|g| sim.state(g.0) == Terminal::Passed);
            prop_assert_eq!(pos.contains_key(&(i as u32)), all_passed);
            if let Some(&k) = pos.get(&(i as u32)) {
                for d in &item.deps {
                    prop_assert!(pos.get(&d.0).is_some_and(|&dk| dk < k), "dep after dependent in merge order");
                }
            }
        }
        prop_assert!(sim.core.running_attempts() == 0);
        let _ = (wk("unused"), Duration::ZERO);
    }
}

/// Finishes, fires and re-reports at random until the plan's summary is out.
fn drive_to_end(sim: &mut Sim, rng: &mut TestRng) -> Result<(), TestCaseError> {
    let mut steps = 0;
    while sim.summary.is_none() {
        steps += 1;
        prop_assert!(steps < 10_000, "no progress");
        if !sim.running.is_empty() && (sim.timers.is_empty() || rng.random_bool(0.8)) {
            let i = rng.random_range(0..sim.running.len());
            let (_, attempt) = sim.running.remove(i);
            let status = if sim.cancels.contains(&attempt) {
                ExitStatus::Cancelled
            } else {
                match rng.random_range(0..10u32) {
                    0..=6 => ExitStatus::Exited(0),
                    7 => ExitStatus::TimedOut,
                    _ => ExitStatus::Exited(1),
                }
            };
            sim.feed(Event::GateFinished {
                attempt,
                result: result(status),
            });
        } else if !sim.timers.is_empty() {
            sim.fire_timer();
        } else {
            prop_assert!(false, "stuck: nothing running, no timers, no summary");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// A new leader restores a plan from any durable prefix of its log, with any subset
    /// of the attempts still running re-reported; every gate still ends exactly once
    /// (in the log or after the restore) and the invariants hold.
    #[test]
    fn a_plan_restored_from_any_log_prefix_ends_once_per_gate(
        (policy, flat_form, spec) in arb_plan(),
        seed in any::<u64>(),
        cut_steps in 0usize..30,
        durable_fraction in 0.0f64..=1.0,
        window_first in any::<bool>(),
    ) {
        let plan = build(policy.clone(), flat_form, &spec);
        let workers = [worker("w0", 3, 64 * 1024 * MI)];
        let mut rng = rng_from(seed);
        // The old leader runs part of the plan.
        let mut old = Sim::new(CoreConfig::default(), &workers);
        old.submit(plan.clone(), false);
        let mut old_results: Vec<(AttemptRef, ExitStatus)> = Vec::new();
        let mut started: HashSet<AttemptRef> = HashSet::new();
        for _ in 0..cut_steps {
            // Workers report every attempt started (so the log has `Running` events).
            for (_, a) in old.running.clone() {
                if started.insert(a.clone()) {
                    old.feed(Event::GateStarted { attempt: a });
                }
            }
            if old.summary.is_some() || old.running.is_empty() {
                if !old.timers.is_empty() { old.fire_timer(); continue; }
                break;
            }
            let i = rng.random_range(0..old.running.len());
            let (_, attempt) = old.running.remove(i);
            let status = if rng.random_bool(0.75) { ExitStatus::Exited(0) } else { ExitStatus::Exited(1) };
            old_results.push((attempt.clone(), status.clone()));
            old.feed(Event::GateFinished { attempt, result: result(status) });
        }
        prop_assume!(old.summary.is_none());
        // What reached the log: a prefix of the published events (Dispatched is not logged).
        let log: Vec<PlanEvent> = old.events.iter()
            .filter(|e| e.status != GateStatus::Dispatched)
            .cloned()
            .map(PlanEvent::Gate)
            .collect();
        let durable = ((log.len() as f64) * durable_fraction) as usize;
        let log = &log[..durable.min(log.len())];
        let gates = crate::registry::restore::gate_states(&plan, log);
        // The new leader restores it; the worker re-reports some of what it still runs.
        let mut new = Sim::new(CoreConfig::default(), &workers);
        new.feed(Event::PlanRestored {
            id: new.plan.clone(),
            plan: plan.clone(),
            options: RunOptions { use_cache: false, ..RunOptions::default() },
            gates,
            cancel: None,
            age: Duration::ZERO,
            keys: vec![],
        });
        if window_first {
            new.end_recovery();
        }
        let reported: Vec<AttemptRef> = old.running.iter()
            .filter(|_| rng.random_bool(0.7))
            .map(|(_, a)| a.clone())
            .collect();
        // Results the worker had not seen acknowledged are sent again.
        let resent: Vec<(AttemptRef, GateResult)> = old_results.iter()
            .filter(|_| rng.random_bool(0.5))
            .map(|(a, st)| (a.clone(), result(st.clone())))
            .collect();
        let known: Vec<AttemptRef> = reported.iter().cloned()
            .chain(resent.iter().map(|(a, _)| a.clone()))
            .collect();
        new.feed(Event::AttemptsReported {
            worker: wk("w0"),
            running: reported.clone(),
            finished: resent,
        });
        for a in reported {
            new.running.push((wk("w0"), a));
        }
        if !window_first {
            new.end_recovery();
        }
        drive_to_end(&mut new, &mut rng)?;
        // Every gate ends exactly once across the durable log and the new leader.
        let mut ends = vec![0u32; plan.gates.len()];
        let mut state = vec![None; plan.gates.len()];
        for e in log.iter().filter_map(|e| match e { PlanEvent::Gate(g) => Some(g), _ => None })
            .chain(new.events.iter())
        {
            if let GateStatus::Finished(t) = e.status {
                ends[e.gate.ix()] += 1;
                state[e.gate.ix()] = Some(t);
            }
        }
        for (g, n) in ends.iter().enumerate() {
            prop_assert_eq!(*n, 1, "gate {} ended {} times", g, n);
        }
        let summary = new.summary.clone().expect("summary");
        let passed = state.iter().filter(|s| **s == Some(Terminal::Passed)).count() as u32;
        prop_assert_eq!(summary.counts.passed, passed);
        prop_assert_eq!(summary.counts.total as usize, plan.gates.len());
        // No attempt number is handed out twice when workers re-report within the
        // window: the new leader numbers past every attempt the log shows or a worker
        // reported. (A report after the window may name a number handed out since; the
        // same attempt on the same worker is one execution, which the worker answers
        // once, and on another worker it is refused — see `core::recovery`.)
        let old_max: HashMap<u32, u32> = log.iter()
            .filter_map(|e| match e { PlanEvent::Gate(g) => Some((g.gate.0, g.attempt)), _ => None })
            .chain(known.iter().map(|a| (a.gate.0, a.attempt)))
            .fold(HashMap::new(), |mut m, (g, a)| { let e = m.entry(g).or_insert(0); *e = (*e).max(a); m });
        for cmd in new.log.iter().filter(|_| !window_first) {
            if let Command::Dispatch { assignment, .. } = cmd {
                let a = &assignment.attempt;
                prop_assert!(a.attempt > old_max.get(&a.gate.0).copied().unwrap_or(0),
                    "gate {} attempt {} reuses a number of the old leader; log {:?}; known {:?}; new events {:?}",
                    a.gate.0, a.attempt,
                    log.iter().filter_map(|e| match e { PlanEvent::Gate(g) if g.gate.0 == a.gate.0 => Some((g.status.clone(), g.attempt)), _ => None }).collect::<Vec<_>>(),
                    known.iter().filter(|k| k.gate == a.gate).collect::<Vec<_>>(),
                    new.events.iter().filter(|g| g.gate == a.gate).map(|g| (g.status.clone(), g.attempt)).collect::<Vec<_>>());
            }
        }
        // Nothing ran before its prerequisites passed, before or after the restore.
        let prereq = prerequisites(&plan);
        for cmd in &new.log {
            if let Command::Dispatch { assignment, .. } = cmd {
                for p in &prereq[assignment.attempt.gate.ix()] {
                    prop_assert_eq!(state[p.ix()], Some(Terminal::Passed));
                }
            }
        }
        // Unwanted attempts (cancelled when re-reported) may end after the summary; once
        // they have, nothing is held on the worker.
        for (_, attempt) in std::mem::take(&mut new.running) {
            new.feed(Event::GateFinished { attempt, result: result(ExitStatus::Cancelled) });
        }
        prop_assert!(new.core.running_attempts() == 0);
    }
}
