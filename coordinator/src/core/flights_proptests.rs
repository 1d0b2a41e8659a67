//! Property tests of single flight and acknowledgements: several plans with shared
//! cache keys, random cache answers, results reported directly or by remote workers.

use std::collections::{HashMap, HashSet};

use gatehouse_common::cache::{CacheEntry, CacheKey};
use gatehouse_common::exec::{AttemptRef, ExitStatus, GateResult};
use gatehouse_common::ids::{GateId, GateIdx, PlanId, SessionKey};
use proptest::prelude::*;

use super::proptests::{arb_plan, build, prerequisites, rng_from};
use super::testkit::*;
use super::*;

fn hit() -> Box<CacheEntry> {
    Box::new(CacheEntry {
        result: result(ExitStatus::Exited(0)),
        producer: GateId::new("x"),
        created_unix_ms: 0,
        flaky: None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Up to three copies of one random plan run at once (so every gate has twins with
    /// its key), and unrelated gates share keys too (each gate's key is drawn from a
    /// small pool), and some gates can never be placed (they fail as they are
    /// dispatched). Lookups hit, miss, or yield no key at random; results arrive as an
    /// in-process executor's or as a remote worker's reports; workers are lost, and
    /// rejoin or not; a plan may be cancelled. Then:
    /// - every gate of every plan ends exactly once, and no gate runs before its
    ///   prerequisites passed;
    /// - two attempts of gates with the same key never run at once;
    /// - no gate runs once an attempt with its key passed: a gate that missed while the
    ///   leader ran waited and took its result, and one that missed later took the
    ///   remembered pass;
    /// - every result a remote worker reported is acknowledged exactly once, and after
    ///   the event that records it.
    #[test]
    fn shared_keys_run_once_and_results_are_acked_after_they_are_recorded(
        (policy, flat_form, spec) in arb_plan(),
        n_plans in 1usize..4,
        n_keys in 1u8..5,
        seed in any::<u64>(),
        cancel_at in prop::option::of((0usize..60, 0usize..3)),
    ) {
        let mut rng = rng_from(seed);
        // Some gates no worker could ever run: they fail when dispatched.
        let mut plan = (*build(policy.clone(), flat_form, &spec)).clone();
        for gate in plan.gates.iter_mut().filter(|_| rng.random_bool(0.1)) {
            gate.memory = 8192 * MI;
        }
        let plan = std::sync::Arc::new(plan);
        let n = plan.gates.len();
        let key_of: Vec<CacheKey> = (0..n).map(|_| key(rng.random_range(0..n_keys))).collect();
        let workers: Vec<WorkerInfo> = (0..2)
            .map(|i| worker(&format!("w{i}"), 2 + i as u32, 4096 * MI))
            .collect();
        // Passes are remembered for longer than any run here lasts (core time only moves
        // with retry timers), so no gate may run once an identical one passed.
        let config = CoreConfig {
            fail_unschedulable: true,
            recent_passes: std::time::Duration::from_secs(3600),
            ..CoreConfig::default()
        };
        let mut sim = Sim::new(config, &workers);
        let plans: Vec<PlanId> = (0..n_plans).map(|i| PlanId::new(format!("p{i}"))).collect();
        // Some items cannot be built (their code does not merge).
        let blocked: Vec<(GateIdx, &'static str)> = (0..plan.items.len())
            .filter(|_| rng.random_bool(0.15))
            .flat_map(|i| plan.item(gatehouse_common::ids::ItemIdx(i as u32)).gates.clone())
            .map(|g| (g, "merge_conflict"))
            .collect();
        for id in &plans {
            sim.feed(Event::PlanSubmitted {
                id: id.clone(),
                plan: plan.clone(),
                options: RunOptions {
                    use_cache: true,
                    blocked: blocked.clone(),
                    ..RunOptions::default()
                },
            });
        }
        let prereq = prerequisites(&plan);
        // What the simulated driver answered, and when (index into `sim.log`).
        let mut answered_key: HashMap<(PlanId, GateIdx), CacheKey> = HashMap::new();
        let mut reported: Vec<(usize, SessionKey, AttemptRef)> = Vec::new();
        let mut pending: Vec<(PlanId, GateIdx)> = Vec::new();
        let mut seen = 0;
        let mut steps = 0usize;
        let mut summaries = 0usize;
        while summaries < n_plans {
            steps += 1;
            prop_assert!(steps < 20_000, "no progress");
            for cmd in &sim.log[seen..] {
                match cmd {
                    Command::CheckCache { plan, gate, .. } => pending.push((plan.clone(), *gate)),
                    Command::Emit(PlanEvent::Finished(_)) => summaries += 1,
                    _ => {}
                }
            }
            seen = sim.log.len();
            if summaries == n_plans {
                break;
            }
            // Invariant: no two running attempts of gates with one key.
            let mut running_keys = HashSet::new();
            for (_, a) in &sim.running {
                if let Some(k) = answered_key.get(&(a.plan.clone(), a.gate)) {
                    prop_assert!(running_keys.insert(*k), "two gates with key {k} run at once");
                }
            }
            if let Some((at, which)) = cancel_at
                && at == steps
            {
                let id = plans[which % n_plans].clone();
                sim.feed(Event::Cancel { plan: id, force: false });
                continue;
            }
            let choice = rng.random_range(0..10u32);
            if !pending.is_empty() && (choice < 4 || sim.running.is_empty()) {
                let (id, gate) = pending.swap_remove(rng.random_range(0..pending.len()));
                let key = (!rng.random_bool(0.1)).then_some(key_of[gate.ix()]);
                let hit = rng.random_bool(0.2).then(hit);
                if let Some(k) = key {
                    answered_key.insert((id.clone(), gate), k);
                }
                sim.feed(Event::CacheChecked { plan: id, gate, key, hit });
            } else if !sim.running.is_empty() && choice < 9 {
                let (w, attempt) = sim.running.remove(rng.random_range(0..sim.running.len()));
                let status = if sim.cancels.contains(&attempt) {
                    ExitStatus::Cancelled
                } else {
                    match rng.random_range(0..10u32) {
                        0..=6 => ExitStatus::Exited(0),
                        7 => ExitStatus::TimedOut,
                        _ => ExitStatus::Exited(1),
                    }
                };
                let r: GateResult = result(status);
                if rng.random_bool(0.5) {
                    reported.push((sim.log.len(), w.clone(), attempt.clone()));
                    sim.feed(Event::AttemptsReported { worker: w, running: vec![], finished: vec![(attempt, r)] });
                } else {
                    sim.feed(Event::GateFinished { attempt, result: r });
                }
            } else if !sim.timers.is_empty() {
                sim.fire_timer();
            } else if !sim.running.is_empty() {
                // Lose a worker that runs something; it may rejoin, or be gone for good.
                let (w, _) = sim.running[0].clone();
                sim.running.retain(|(x, _)| *x != w);
                sim.feed(Event::WorkerLost { worker: w.clone() });
                if rng.random_bool(0.7) {
                    let info = workers.iter().find(|x| x.id == w).cloned().expect("known worker");
                    sim.feed(Event::WorkerJoined(info));
                }
            } else {
                prop_assert!(false, "stuck: nothing running, no timers, no checks");
            }
        }
        // Every gate of every plan ends exactly once.
        let mut ends: HashMap<(PlanId, GateIdx), u32> = HashMap::new();
        for e in &sim.events {
            if let GateStatus::Finished(_) = e.status {
                *ends.entry((e.plan.clone(), e.gate)).or_default() += 1;
            }
        }
        for id in &plans {
            for g in 0..n as u32 {
                let count = ends.get(&(id.clone(), GateIdx(g))).copied().unwrap_or(0);
                prop_assert_eq!(count, 1, "gate {} of {} ended {} times", g, id, count);
            }
        }
        // A blocked item's gates fail with its reason and never run.
        for &(g, reason) in &blocked {
            for e in sim.events.iter().filter(|e| e.gate == g) {
                prop_assert!(e.status != GateStatus::Dispatched, "a blocked gate ran");
                if let GateStatus::Finished(t) = e.status {
                    prop_assert!(t == Terminal::Failed && e.reason == Some(reason),
                        "blocked gate ended {:?} ({:?})", t, e.reason);
                }
            }
        }
        // Dispatches: prerequisites passed first; never once the gate's key passed (a
        // flaky pass is not shared unless the plan caches flaky passes: it runs again).
        let mut passed: HashSet<(PlanId, GateIdx)> = HashSet::new();
        let mut executed_passes: HashSet<CacheKey> = HashSet::new();
        for cmd in &sim.log {
            match cmd {
                Command::Emit(PlanEvent::Gate(e)) if e.status == GateStatus::Finished(Terminal::Passed) => {
                    passed.insert((e.plan.clone(), e.gate));
                    let shared = !e.flaky || policy.cache_flaky;
                    if let (false, true, Some(k)) = (e.cached, shared, answered_key.get(&(e.plan.clone(), e.gate))) {
                        executed_passes.insert(*k);
                    }
                }
                Command::Dispatch { assignment, .. } => {
                    let a = &assignment.attempt;
                    for p in &prereq[a.gate.ix()] {
                        prop_assert!(passed.contains(&(a.plan.clone(), *p)),
                            "gate {} of {} dispatched before {}", a.gate.0, a.plan, p.0);
                    }
                    if let Some(k) = answered_key.get(&(a.plan.clone(), a.gate)) {
                        prop_assert!(!executed_passes.contains(k),
                            "gate {} of {} ran after an identical gate passed", a.gate.0, a.plan);
                    }
                }
                _ => {}
            }
        }
        // Acknowledgements: one per reported result, after the event recording it.
        let mut acked: HashMap<(SessionKey, AttemptRef), Vec<usize>> = HashMap::new();
        for (at, w, a) in &sim.acks {
            acked.entry((w.clone(), a.clone())).or_default().push(*at);
        }
        prop_assert_eq!(acked.len(), reported.len(), "acks for results nobody reported");
        for (fed_at, w, a) in &reported {
            let ats = acked.get(&(w.clone(), a.clone())).cloned().unwrap_or_default();
            prop_assert_eq!(ats.len(), 1, "result {:?} acknowledged {} times", a, ats.len());
            let ack_at = ats[0];
            prop_assert!(ack_at >= *fed_at, "acknowledged before it was reported");
            // The event that records it (a later one may carry it again: a gate that
            // was waiting to retry ends with its last failure).
            let recorded = sim.log.iter().enumerate().skip(*fed_at).find(|(_, cmd)| {
                matches!(cmd, Command::Emit(PlanEvent::Gate(e))
                    if e.result.is_some() && e.plan == a.plan && e.gate == a.gate && e.attempt == a.attempt)
            });
            if let Some((i, _)) = recorded {
                prop_assert!(i < ack_at, "result {:?} acknowledged before its event", a);
            }
        }
        prop_assert_eq!(sim.core.running_attempts(), 0);
        prop_assert_eq!(sim.core.flights(), 0, "a flight outlived every plan");
    }
}
