//! Property tests: random DAGs, random workers and random outcome sequences driven
//! through the core, checking the scheduling invariants after every run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use gatehouse_common::cache::CacheEntry;
use gatehouse_common::exec::ExitStatus;
use gatehouse_common::ids::{GateId, GateIdx, WorkerId};
use gatehouse_common::plan::{Plan, Policy};
use proptest::prelude::*;
use proptest::test_runner::TestRng;

use super::testkit::*;
use super::*;

/// A random plan: items with deps on earlier items (in a shuffled plan order), gates with
/// needs on earlier gates of the same item or of dep items.
/// One random item: (index, deps, gates).
type ItemSpec = (u32, Vec<u32>, Vec<G>);

fn arb_plan() -> impl Strategy<Value = (Policy, bool, Vec<ItemSpec>)> {
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
                let mut rng = TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &{
                    let mut s = [0u8; 32];
                    s[..8].copy_from_slice(&seed.to_le_bytes());
                    s
                });
                let policy = Policy {
                    fail_fast,
                    retries,
                    max_parallel,
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

fn build(
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
fn prerequisites(plan: &Plan) -> Vec<Vec<GateIdx>> {
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
        let mut rng = TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &{
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&seed.to_le_bytes());
            s
        });
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
                    created_unix_ms: 0,
                }));
                sim.feed(Event::CacheChecked { plan: sim.plan.clone(), gate, hit });
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
        let _ = (WorkerId::new("unused"), Duration::ZERO);
    }
}
