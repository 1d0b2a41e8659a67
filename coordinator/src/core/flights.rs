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
//! [`Landed`] leader, which [`Scheduler::settle_flights`] settles before the next
//! dispatch).
//!
//! State: the flights by key, and each gate's [`Role`] in `GateRun::flight`. Costs:
//! joining and landing are O(1) per gate plus the waiters served or skipped.
//!
//! A lookup that misses just *after* a leader passed starts a new flight here; the
//! driver covers that window (an executor's write still on its way) by remembering
//! recent passes in its lookups, which is a cache read, not a scheduling decision.

use std::collections::{HashMap, VecDeque};

use gatehouse_common::cache::CacheKey;
use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::{GateIdx, PlanId};

use super::plan_run::{GateState, PlanRun, Role};
use super::transitions::{Done, finish_gate};
use super::{Scheduler, Terminal};

/// The keys being computed, with their leaders and waiters.
#[derive(Debug, Default)]
pub(super) struct Flights {
    by_key: HashMap<CacheKey, Flight>,
}

#[derive(Debug)]
struct Flight {
    leader: (PlanId, GateIdx),
    /// Oldest first; entries whose gate no longer waits are skipped when reached.
    waiters: VecDeque<(PlanId, GateIdx)>,
}

impl Flights {
    /// `gate` missed `key`: it leads if nobody computes the key, else it waits.
    fn join(&mut self, key: CacheKey, gate: (PlanId, GateIdx)) -> Role {
        match self.by_key.get_mut(&key) {
            Some(flight) => {
                flight.waiters.push_back(gate);
                Role::Waiter
            }
            None => {
                self.by_key.insert(
                    key,
                    Flight {
                        leader: gate,
                        waiters: VecDeque::new(),
                    },
                );
                Role::Leader
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
    /// under: it leads the key's flight and is queued, or waits for the leader.
    pub(super) fn on_missed(&mut self, plan: &PlanId, g: GateIdx, key: CacheKey) {
        let role = self.flights.join(key, (plan.clone(), g));
        let Some(run) = self.plans.get_mut(plan) else {
            return;
        };
        run.gate_mut(g).flight = Some(role);
        match role {
            Role::Leader => run.push_ready(g, self.sink.now),
            Role::Waiter => {
                tracing::debug!(plan_id = %plan, gate = g.0, key = %key,
                    "an identical gate is running; waiting for its result");
                run.set_state(g, GateState::AwaitingLeader);
            }
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
                .is_some_and(|f| f.leader == (landed.plan.clone(), landed.gate));
            if !leads {
                continue;
            }
            let Some(flight) = self.flights.by_key.remove(&landed.key) else {
                continue;
            };
            match landed.passed {
                Some(result) => {
                    for (plan, g) in flight.waiters {
                        self.serve_waiter(&plan, g, landed.key, &result);
                    }
                }
                None => self.promote(landed.key, flight.waiters),
            }
        }
    }

    /// Ends a waiter with its leader's passing result.
    fn serve_waiter(&mut self, plan: &PlanId, g: GateIdx, key: CacheKey, result: &GateResult) {
        let Some(run) = self.plans.get_mut(plan) else {
            return;
        };
        if !awaits(run, g, key) {
            return;
        }
        tracing::debug!(plan_id = %plan, gate = g.0, key = %key, "served by an identical gate");
        run.gate_mut(g).flight = None;
        let mut done = Done::new(Terminal::Passed, 0);
        done.cached = true;
        done.result = Some(result.clone());
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
            run.gate_mut(g).flight = Some(Role::Leader);
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
