//! Single flight on cache keys: two gates with the same key never run at once.
//!
//! The first gate that misses the cache on a key (any live plan) *leads* it: it runs.
//! Gates that miss the same key while the leader has not ended *wait*
//! ([`GateState::AwaitingLeader`]) instead of running the same command again. When the
//! leader ends:
//! - passed: every waiter ends `passed` and `cached`, with the leader's result, as if
//!   the cache had answered it;
//! - anything else (failed, timed out, skipped, cancelled): the oldest waiter that
//!   still waits leads from now on and runs; the others keep waiting for it.
//!
//! A waiter that ends by itself (its plan is cancelled or fails fast) simply stops
//! waiting: queues are cleaned lazily, and a queue entry counts only while its gate
//! still waits for that key. A leader's retries, lost attempts and re-queues do not end
//! its flight; only its terminal state does ([`super::transitions::end_gate`] records a
//! [`Landed`](super::plan_run::Landed) leader, which [`Scheduler::settle_flights`]
//! settles before the event is done: after the event's handler and again after each
//! round of dispatching, which can end leaders too).
//!
//! State: the flights by key, and which gates lead one (`GateRun::leads`). Costs:
//! joining and landing are O(1) per gate plus the waiters served or skipped.
//!
//! A lookup can miss just *after* a leader passed: the executor's write of the result
//! may still be on its way to the cache. So a leader's pass is also remembered for
//! [`CoreConfig::recent_passes`] (a minute by default, bounded by
//! [`CoreConfig::recent_passes_bytes`] of output tails, oldest forgotten first), and a
//! miss on a remembered key is served from it like a waiter.
//!
//! [`CoreConfig::recent_passes`]: super::CoreConfig::recent_passes
//! [`CoreConfig::recent_passes_bytes`]: super::CoreConfig::recent_passes_bytes

use std::collections::{HashMap, VecDeque};

use gatehouse_common::cache::CacheKey;
use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::{GateIdx, PlanId};

use super::plan_run::{GateState, PlanRun, SharedPass};
use super::transitions::{Done, finish_gate};
use super::{Now, Scheduler, Terminal};

/// The keys being computed, with their leaders and waiters, and the recent passes.
#[derive(Debug, Default)]
pub(super) struct Flights {
    by_key: HashMap<CacheKey, Flight>,
    recent: RecentPasses,
}

/// Passes of leaders, by key, oldest first, bounded by age and by bytes.
#[derive(Debug, Default)]
struct RecentPasses {
    by_key: HashMap<CacheKey, (Now, SharedPass)>,
    /// Insertion order (a key passed again has a newer entry; the older is skipped).
    order: VecDeque<(Now, CacheKey)>,
    /// Weight of what `by_key` holds.
    bytes: u64,
}

/// What a remembered pass weighs: its output tails plus a fixed overhead.
fn weight(result: &GateResult) -> u64 {
    let tests = result.tests.as_ref().map_or(0, |t| t.approx_bytes());
    (result.stdout.bytes.len() + result.stderr.bytes.len() + tests + 256) as u64
}

/// What a remembered pass weighs, its flaky tests included.
fn pass_weight(pass: &SharedPass) -> u64 {
    let flaky = pass.flaky.as_ref().map_or(0, |v| {
        v.flaky
            .iter()
            .chain(&v.quarantined)
            .map(|c| c.approx_bytes())
            .sum::<usize>()
    });
    weight(&pass.result) + flaky as u64
}

impl RecentPasses {
    fn insert(&mut self, now: Now, key: CacheKey, pass: SharedPass, max_bytes: u64) {
        self.bytes += pass_weight(&pass);
        if let Some((_, old)) = self.by_key.insert(key, (now, pass)) {
            self.bytes -= pass_weight(&old);
        }
        self.order.push_back((now, key));
        while self.bytes > max_bytes && self.pop_oldest() {}
    }

    /// The pass of `key` if remembered and younger than `keep` at `now`.
    fn get(&mut self, now: Now, keep: std::time::Duration, key: &CacheKey) -> Option<&SharedPass> {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > keep)
        {
            self.pop_oldest();
        }
        self.by_key.get(key).map(|(_, r)| r)
    }

    /// Forgets the oldest entry; false if there was none.
    fn pop_oldest(&mut self) -> bool {
        let Some((at, key)) = self.order.pop_front() else {
            return false;
        };
        if self.by_key.get(&key).is_some_and(|(t, _)| *t == at)
            && let Some((_, old)) = self.by_key.remove(&key)
        {
            self.bytes -= pass_weight(&old);
        }
        true
    }
}

#[derive(Debug)]
struct Flight {
    leader: (PlanId, GateIdx),
    /// Oldest first; entries whose gate no longer waits are skipped when reached.
    waiters: VecDeque<(PlanId, GateIdx)>,
}

impl Flights {
    /// `gate` missed `key`: it leads (true) if nobody computes the key, else it waits.
    fn join(&mut self, key: CacheKey, gate: (PlanId, GateIdx)) -> bool {
        match self.by_key.get_mut(&key) {
            Some(flight) => {
                flight.waiters.push_back(gate);
                false
            }
            None => {
                self.by_key.insert(
                    key,
                    Flight {
                        leader: gate,
                        waiters: VecDeque::new(),
                    },
                );
                true
            }
        }
    }

    /// Keys being computed now.
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// Whether `g` of `run` still waits for the flight of `key`.
fn awaits(run: &PlanRun, g: GateIdx, key: CacheKey) -> bool {
    g.ix() < run.gates.len()
        && run.gate(g).state == GateState::AwaitingLeader
        && run.gate(g).key == Some(key)
}

impl Scheduler {
    /// Gate `g` of `plan` (checking the cache) missed on `key`, which it may store
    /// under: it takes a pass of the key seen here recently, or leads the key's flight
    /// and is queued, or waits for the leader.
    pub(super) fn on_missed(&mut self, plan: &PlanId, g: GateIdx, key: CacheKey) {
        let (now, keep) = (self.sink.now, self.config.recent_passes);
        if let Some(pass) = self.flights.recent.get(now, keep, &key).cloned() {
            tracing::debug!(plan_id = %plan, gate = g.0, key = %key,
                "an identical gate passed moments ago; using its result");
            self.serve(plan, g, pass);
            return;
        }
        let leads = self.flights.join(key, (plan.clone(), g));
        let Some(run) = self.plans.get_mut(plan) else {
            return;
        };
        run.gate_mut(g).leads = leads;
        if leads {
            run.push_ready(g, self.sink.now);
        } else {
            tracing::debug!(plan_id = %plan, gate = g.0, key = %key,
                "an identical gate is running; waiting for its result");
            run.set_state(g, GateState::AwaitingLeader);
        }
    }

    /// Settles the flights whose leaders ended while handling the current event (and
    /// those that end as a result). Runs before dispatching.
    pub(super) fn settle_flights(&mut self) {
        while let Some(landed) = self.sink.landed.pop_front() {
            let leads = self
                .flights
                .by_key
                .get(&landed.key)
                .is_some_and(|f| f.leader.0 == landed.plan && f.leader.1 == landed.gate);
            if !leads {
                continue;
            }
            let Some(flight) = self.flights.by_key.remove(&landed.key) else {
                continue;
            };
            match landed.passed {
                Some(pass) => {
                    for (plan, g) in flight.waiters {
                        self.serve_waiter(&plan, g, landed.key, &pass);
                    }
                    let max_bytes = self.config.recent_passes_bytes;
                    let now = self.sink.now;
                    (self.flights.recent).insert(now, landed.key, pass, max_bytes);
                }
                None => self.promote(landed.key, flight.waiters),
            }
        }
    }

    /// Ends a waiter with its leader's passing result.
    fn serve_waiter(&mut self, plan: &PlanId, g: GateIdx, key: CacheKey, pass: &SharedPass) {
        let Some(run) = self.plans.get_mut(plan) else {
            return;
        };
        if !awaits(run, g, key) {
            return;
        }
        tracing::debug!(plan_id = %plan, gate = g.0, key = %key, "served by an identical gate");
        self.serve(plan, g, pass.clone());
    }

    /// Ends `g` as passed from the cache with an identical gate's pass (flaky, with its
    /// flaky tests, if that pass was).
    fn serve(&mut self, plan: &PlanId, g: GateIdx, pass: SharedPass) {
        let Some(run) = self.plans.get_mut(plan) else {
            return;
        };
        let mut done = Done::new(Terminal::Passed, 0);
        done.cached = true;
        done.flaky = pass.flaky.is_some();
        done.verdict = pass.flaky.filter(|v| !v.is_empty()).map(Box::new);
        done.result = Some(pass.result);
        finish_gate(run, &mut self.sink, &self.config, g, done);
    }

    /// The leader of `key` ended without passing: the oldest waiter that still waits
    /// leads from now on (and runs); the rest wait for it.
    fn promote(&mut self, key: CacheKey, mut waiters: VecDeque<(PlanId, GateIdx)>) {
        while let Some((plan, g)) = waiters.pop_front() {
            let Some(run) = self.plans.get_mut(&plan) else {
                continue;
            };
            if !awaits(run, g, key) {
                continue;
            }
            tracing::debug!(plan_id = %plan, gate = g.0, key = %key,
                "the identical gate did not pass; running it here");
            run.gate_mut(g).leads = true;
            run.push_ready(g, self.sink.now);
            self.flights.by_key.insert(
                key,
                Flight {
                    leader: (plan, g),
                    waiters,
                },
            );
            return;
        }
    }
}
