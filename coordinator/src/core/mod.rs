//! The scheduler core: a deterministic, synchronous state machine.
//!
//! [`Scheduler::handle`] takes the current time and one [`Event`] and returns the
//! [`Command`]s the driver must carry out. There is no tokio, no clock, no channel and
//! no I/O in here: time, worker capacity, cache answers and gate outcomes are inputs;
//! dispatches, cancellations, cache requests, timers and published events are outputs.
//! The same core drives `gatehouse run` (in-process executors) and the coordinator
//! (gRPC workers), and property tests drive it directly.
//!
//! State it owns: every live plan ([`plan_run::PlanRun`]: per-gate lifecycle, remaining
//! prerequisites, a ready heap ordered by critical-path height), every worker's free
//! slots and reserved memory, and the attempt -> worker map. A plan is dropped from the
//! core once its summary is emitted.
//!
//! Costs: a gate becomes ready by in-degree counting when its last prerequisite passes
//! (never by rescanning), so a plan schedules in O((gates + edges) log gates); choosing
//! a worker is O(workers). Admission: a gate is dispatched only to a worker with a free
//! slot whose available memory minus what is reserved for its running gates covers the
//! gate's `memory`; when none fits, the plan's queue waits (no overcommit).

mod dispatch;
mod flakes;
mod flights;
mod graph;
mod plan_run;
mod recovery;
pub mod summary;
mod transitions;
mod types;
mod workers;

#[cfg(test)]
mod decisions_tests;
#[cfg(test)]
mod flakes_tests;
#[cfg(test)]
mod flights_proptests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::cache::{CacheEntry, CacheKey};
use gatehouse_common::exec::{AttemptRef, ExitStatus, GateResult};
use gatehouse_common::ids::{GateIdx, PlanId, SessionKey};
use gatehouse_common::plan::{Plan, RetryOn};
use gatehouse_common::reports::history::History;

use flights::Flights;
use plan_run::{GateState, Landed, PlanRun, Stopping};
pub use transitions::retry_backoff;
use transitions::{
    Done, fail_blocked_gates, finish_gate, gate_event, lose_attempt, make_ready, stop_plan,
};
pub use types::*;
use workers::WorkerSlots;
pub use workers::{WorkerState, WorkerView};

/// Tunables of the core (config, never test-only branches).
#[derive(Clone, Debug, PartialEq)]
pub struct CoreConfig {
    /// Grace between TERM and KILL when the core stops a running attempt.
    pub kill_grace: Duration,
    /// A gate that no worker could ever admit fails (`unschedulable`) instead of waiting.
    /// True for `gatehouse run`, whose single executor's capacity is fixed.
    pub fail_unschedulable: bool,
    /// Attempts of one gate lost with their worker before it fails with `worker_lost`.
    pub max_worker_losses: u32,
    /// A worker whose used memory exceeds this fraction of its total gets nothing new
    /// until it recovers.
    pub memory_pressure: f64,
    /// After a plan is restored, how long workers get to re-report its attempts before
    /// the gates in doubt run again (one liveness timeout).
    pub recovery_window: Duration,
    /// How long a single-flight leader's pass answers later misses on its key (an
    /// executor's write of it may still be on its way to the cache).
    pub recent_passes: Duration,
    /// Bytes of output tails those remembered passes hold at most (oldest go first).
    pub recent_passes_bytes: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            kill_grace: Duration::from_secs(5),
            fail_unschedulable: false,
            max_worker_losses: 3,
            memory_pressure: 0.9,
            recovery_window: Duration::from_secs(5),
            recent_passes: Duration::from_secs(60),
            recent_passes_bytes: 64 << 20,
        }
    }
}

/// What an attempt on a worker holds there.
#[derive(Clone, Debug)]
struct Held {
    worker: SessionKey,
    /// Memory reserved for it.
    memory: u64,
    /// It occupies one of the worker's slots.
    slot: bool,
    /// Not wanted (re-reported by a worker after its gate moved on): it was cancelled,
    /// and its result only frees the slot.
    unwanted: bool,
}

/// Commands produced while handling one event, plus plans that may have ended and
/// single-flight leaders that ended.
#[derive(Default)]
struct Sink {
    cmds: Vec<Command>,
    finished: Vec<PlanId>,
    landed: VecDeque<Landed>,
    /// The time of the event being handled.
    now: Now,
}

/// The scheduler state machine. See the module docs.
pub struct Scheduler {
    config: CoreConfig,
    plans: BTreeMap<PlanId, PlanRun>,
    workers: BTreeMap<SessionKey, WorkerSlots>,
    /// Attempts on workers and not finished: who runs them and what they hold.
    attempts: HashMap<AttemptRef, Held>,
    /// The plan that got the last dispatch (round-robin cursor).
    last_served: Option<PlanId>,
    /// Gates admission held back for memory (or pressure) while a slot was free.
    throttled: u64,
    /// Cache keys being computed, their leaders and waiters.
    flights: Flights,
    /// What is known of tests across attempts and plans (flake scores, watch lists).
    history: History,
    sink: Sink,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            plans: BTreeMap::new(),
            workers: BTreeMap::new(),
            attempts: HashMap::new(),
            last_served: None,
            throttled: 0,
            flights: Flights::default(),
            history: History::new(),
            sink: Sink::default(),
        }
    }

    /// Number of live (unfinished) plans.
    pub fn live_plans(&self) -> usize {
        self.plans.len()
    }

    /// Ids of the registered workers.
    pub fn worker_ids(&self) -> Vec<SessionKey> {
        self.workers.keys().cloned().collect()
    }

    /// Attempts currently dispatched and not finished.
    pub fn running_attempts(&self) -> usize {
        self.attempts.len()
    }

    /// Cache keys being computed now by a leader that others may wait for.
    pub fn flights(&self) -> usize {
        self.flights.len()
    }

    /// Whether gate `gate` of live plan `plan` waits for a cache answer
    /// ([`Event::CacheChecked`]); an answer for any other gate is ignored. The driver
    /// only uses it to skip lookups nobody waits for any more.
    pub fn awaits_cache(&self, plan: &PlanId, gate: GateIdx) -> bool {
        self.plans.get(plan).is_some_and(|run| {
            gate.ix() < run.gates.len() && run.gate(gate).state == GateState::CheckingCache
        })
    }

    /// Live plans, queued and running gates and workers by state. O(plans + workers).
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            plans: self.plans.len() as u64,
            ..Gauges::default()
        };
        for run in self.plans.values() {
            g.queued += u64::from(run.queued);
            g.running += u64::from(run.running);
        }
        for w in self.workers.values() {
            if w.draining {
                g.workers_draining += 1;
            } else if w.pressured {
                g.workers_pressured += 1;
            } else {
                g.workers_ready += 1;
            }
        }
        g
    }

    /// Gates that admission held back for memory or pressure while a slot was free,
    /// counted once per wait, since the core started.
    pub fn throttled_total(&self) -> u64 {
        self.throttled
    }

    /// A worker's slot use, if it is known.
    pub fn slot_use(&self, worker: &SessionKey) -> Option<SlotUse> {
        self.workers.get(worker).map(|w| SlotUse {
            used: w.info.slots.saturating_sub(w.free_slots),
            total: w.info.slots,
        })
    }

    /// The test history (for `gatehouse flakes` and metrics).
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The plan of a live plan run.
    pub fn plan(&self, id: &PlanId) -> Option<&Arc<Plan>> {
        self.plans.get(id).map(|r| &r.plan)
    }

    /// Handles one event at time `now` and returns the commands to carry out, in order.
    pub fn handle(&mut self, now: Now, event: Event) -> Vec<Command> {
        self.sink.now = now;
        match event {
            Event::PlanSubmitted { id, plan, options } => self.on_submit(now, id, plan, options),
            Event::WorkerJoined(info) => self.on_worker_joined(now, info),
            Event::WorkerCapacity {
                worker,
                memory_used,
                memory_available,
            } => self.on_worker_capacity(now, &worker, memory_used, memory_available),
            Event::WorkerDraining { worker } => self.on_worker_draining(&worker),
            Event::WorkerLost { worker } => self.on_worker_lost(now, &worker),
            Event::CacheChecked {
                plan,
                gate,
                key,
                hit,
            } => self.on_cache_checked(&plan, gate, key, hit),
            Event::GateStarted { attempt } => self.on_started(&attempt),
            Event::GateFinished { attempt, result } => self.on_finished(now, attempt, result),
            Event::TimerFired(Timer::Retry {
                plan,
                gate,
                attempt,
            }) => {
                if let Some(run) = self.plans.get_mut(&plan)
                    && gate.ix() < run.gates.len()
                    && run.gate(gate).state == (GateState::Backoff { attempt })
                    && run.stopping == Stopping::No
                {
                    run.push_ready(gate, now);
                }
            }
            Event::TimerFired(Timer::RecoveryWindow { plan }) => self.on_recovery_ended(&plan),
            Event::Cancel { plan, force } => self.on_cancel(&plan, force),
            Event::PlanRestored {
                id,
                plan,
                options,
                gates,
                cancel,
                age,
                keys,
            } => self.on_restored(now, id, plan, options, &gates, cancel, age, keys),
            Event::HistoryLoaded(runs) => {
                for run in &runs {
                    self.history.apply(run);
                }
            }
            Event::AttemptsReported {
                worker,
                running,
                finished,
            } => self.on_reported(now, &worker, running, finished),
        }
        // Dispatching can end leaders too (an unschedulable gate, then fail-fast): their
        // flights settle before the event is done, so no waiter is left behind.
        loop {
            self.settle_flights();
            self.pump();
            if self.sink.landed.is_empty() {
                break;
            }
        }
        self.finish_plans(now);
        std::mem::take(&mut self.sink.cmds)
    }

    fn on_submit(&mut self, now: Now, id: PlanId, plan: Arc<Plan>, options: RunOptions) {
        if self.plans.contains_key(&id) {
            tracing::warn!(plan_id = %id, "plan id already live; submission ignored");
            return;
        }
        let mut run = PlanRun::new(id.clone(), plan, options, now);
        fail_blocked_gates(&mut run, &mut self.sink, &self.config);
        for g in 0..run.gates.len() {
            if run.gates[g].pending == 0 && run.gates[g].state == GateState::Blocked {
                make_ready(&mut run, &mut self.sink, GateIdx(g as u32));
            }
        }
        if run.is_finished() {
            self.sink.finished.push(id.clone());
        }
        self.plans.insert(id, run);
    }

    fn on_cache_checked(
        &mut self,
        plan: &PlanId,
        gate: GateIdx,
        key: Option<CacheKey>,
        hit: Option<Box<CacheEntry>>,
    ) {
        let Some(run) = self.plans.get_mut(plan) else {
            return;
        };
        if gate.ix() >= run.gates.len() || run.gate(gate).state != GateState::CheckingCache {
            return;
        }
        run.gate_mut(gate).key = key;
        match (hit, key) {
            (Some(entry), _) => {
                let mut done = Done::new(Terminal::Passed, 0);
                done.cached = true;
                done.flaky = entry.flaky.is_some();
                done.verdict = entry.flaky.map(Box::new);
                done.result = Some(entry.result);
                finish_gate(run, &mut self.sink, &self.config, gate, done);
            }
            // A miss on a key it would store under: single flight decides who runs it.
            (None, Some(key)) if run.plan.gate(gate).cache => self.on_missed(plan, gate, key),
            (None, _) => run.push_ready(gate, self.sink.now),
        }
    }

    fn on_started(&mut self, attempt: &AttemptRef) {
        // Only attempts the core dispatched are looked at: a report naming anything else
        // (stale, or a gate index that does not exist) is ignored, never indexed.
        if self.attempts.get(attempt).is_none_or(|h| h.unwanted) {
            return;
        }
        let Some(run) = self.plans.get_mut(&attempt.plan) else {
            return;
        };
        if let GateState::Running { worker, attempt: a } = &run.gate(attempt.gate).state
            && *a == attempt.attempt
            && run.gate(attempt.gate).announced != *a
        {
            let a = *a;
            let worker = worker.clone();
            run.gate_mut(attempt.gate).announced = a;
            let ev = gate_event(run, attempt.gate, GateStatus::Running, a, Some(worker));
            self.sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
        }
    }

    fn on_finished(&mut self, now: Now, attempt: AttemptRef, result: GateResult) {
        match self.attempts.remove(&attempt) {
            Some(held) => {
                if let Some(w) = self.workers.get_mut(&held.worker) {
                    w.free_slots += u32::from(held.slot);
                    w.reserved = w.reserved.saturating_sub(held.memory);
                }
                if held.unwanted {
                    return;
                }
            }
            None => {
                tracing::info!(plan_id = %attempt.plan, gate = attempt.gate.0, attempt = attempt.attempt,
                    "ignoring the result of a stale attempt");
                return;
            }
        }
        let Some(run) = self.plans.get_mut(&attempt.plan) else {
            return;
        };
        let g = attempt.gate;
        let (worker, then) = match run.gate(g).state.clone() {
            GateState::Running { worker, attempt: a } if a == attempt.attempt => (worker, None),
            GateState::Stopping {
                worker,
                attempt: a,
                then,
            } if a == attempt.attempt => (worker, Some(then)),
            _ => return,
        };
        run.running -= 1;
        let a = attempt.attempt;
        // Every attempt that ran to its end is judged (a pass while the plan stops too:
        // its facts count, and a flaky one must not be cached).
        let judged = match result.status {
            ExitStatus::Cancelled => flakes::Judged::default(),
            _ => flakes::judge(&mut self.history, run, g, &result),
        };
        if let Some(fact) = judged.fact {
            self.sink.cmds.push(Command::RecordTests(Arc::new(fact)));
        }
        let gate = run.plan.gate(g);
        if result.status.passed() || (judged.quarantined && then.is_none()) {
            let key = run.gate(g).key;
            let mut done = Done::new(Terminal::Passed, a);
            done.worker = Some(worker);
            done.flaky = run.gate(g).failures > 0 || judged.flaky_in_report || judged.quarantined;
            let verdict = judged.verdict;
            // A quarantined pass is never stored; a flaky one only if the plan says so.
            let store = !judged.quarantined && (!done.flaky || run.plan.policy.cache_flaky);
            if let (true, true, true, Some(key)) = (store, run.options.use_cache, gate.cache, key) {
                self.sink.cmds.push(Command::StoreResult {
                    plan: attempt.plan.clone(),
                    gate: g,
                    key,
                    result: result.clone(),
                    flaky: done.flaky.then(|| verdict.clone()),
                });
            }
            done.share = store;
            done.verdict = (!verdict.is_empty()).then(|| Box::new(verdict));
            done.result = Some(result);
            finish_gate(run, &mut self.sink, &self.config, g, done);
            return;
        }
        if let Some(then) = then {
            let mut done = Done::new(then, a).reason("cancelled");
            done.worker = Some(worker);
            done.result = Some(result);
            finish_gate(run, &mut self.sink, &self.config, g, done);
            return;
        }
        if matches!(result.status, ExitStatus::Cancelled) {
            // The worker stopped the attempt on its own (it is draining or shutting
            // down): like a lost attempt, it runs again elsewhere without using a retry.
            let mut failed = Done::new(Terminal::Failed, a);
            failed.worker = Some(worker);
            failed.result = Some(result);
            lose_attempt(run, &mut self.sink, &self.config, g, failed);
            return;
        }
        let retries = gate.retries;
        let retry_on = gate.retry_on;
        let timeout = matches!(result.status, ExitStatus::TimedOut);
        flakes::remember(run, g, &result, &judged.verdict);
        let gr = run.gate_mut(g);
        gr.failures += 1;
        let failures = gr.failures;
        let worth_retrying = match retry_on {
            RetryOn::Any => true,
            RetryOn::Flaky => judged.only_flaky_failures,
        };
        if failures <= retries && worth_retrying && run.stopping == Stopping::No {
            let backoff = retry_backoff(run.plan.policy.retry_backoff, failures);
            run.set_state(g, GateState::Backoff { attempt: a + 1 });
            run.gate_mut(g).last_failure = Some(result.clone());
            let mut ev = gate_event(run, g, GateStatus::Retrying { backoff }, a, Some(worker));
            ev.reason = Some(result.status.reason());
            ev.result = Some(result);
            let verdict = judged.verdict;
            ev.verdict = (!verdict.is_empty()).then(|| Box::new(verdict));
            self.sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
            self.sink.cmds.push(Command::SetTimer {
                at: now + backoff,
                timer: Timer::Retry {
                    plan: attempt.plan,
                    gate: g,
                    attempt: a + 1,
                },
            });
            return;
        }
        let terminal = if timeout {
            Terminal::TimedOut
        } else {
            Terminal::Failed
        };
        let mut done = Done::new(terminal, a).reason(result.status.reason());
        done.worker = Some(worker);
        done.result = Some(result);
        let verdict = judged.verdict;
        done.verdict = (!verdict.is_empty()).then(|| Box::new(verdict));
        finish_gate(run, &mut self.sink, &self.config, g, done);
    }

    fn on_cancel(&mut self, plan: &PlanId, force: bool) {
        let Some(run) = self.plans.get_mut(plan) else {
            return;
        };
        let grace = if force {
            Duration::ZERO
        } else {
            self.config.kill_grace
        };
        if run.stopping == Stopping::Cancelled && !force {
            return;
        }
        stop_plan(run, &mut self.sink, Stopping::Cancelled, grace, force);
    }

    fn finish_plans(&mut self, now: Now) {
        for id in std::mem::take(&mut self.sink.finished) {
            let Some(run) = self.plans.get(&id) else {
                continue;
            };
            if !run.is_finished() {
                continue;
            }
            if let Some(run) = self.plans.remove(&id) {
                let summary = summary::summarize(&run, now);
                self.sink
                    .cmds
                    .push(Command::Emit(PlanEvent::Finished(summary)));
            }
        }
    }
}
