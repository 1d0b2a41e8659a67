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

mod graph;
mod plan_run;
mod recovery;
pub mod summary;
mod transitions;
mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::exec::{Assignment, AttemptRef, ExitStatus, GateResult};
use gatehouse_common::ids::{GateIdx, PlanId, WorkerId};
use gatehouse_common::plan::Plan;

use plan_run::{GateState, PlanRun, Stopping};
pub use transitions::retry_backoff;
use transitions::{Done, finish_gate, gate_event, gate_spec, lose_attempt, make_ready, stop_plan};
pub use types::*;

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
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            kill_grace: Duration::from_secs(5),
            fail_unschedulable: false,
            max_worker_losses: 3,
            memory_pressure: 0.9,
        }
    }
}

/// A worker as the core sees it.
#[derive(Debug)]
struct WorkerSlots {
    info: WorkerInfo,
    free_slots: u32,
    /// Sum of the memory requests of attempts assigned to it and not finished.
    reserved: u64,
    /// Draining: takes nothing new.
    draining: bool,
    /// Above the memory-pressure threshold at its last heartbeat: takes nothing new.
    pressured: bool,
}

impl WorkerSlots {
    fn headroom(&self) -> u64 {
        self.info.memory_available.saturating_sub(self.reserved)
    }

    /// Whether the worker has every label the gate requires.
    fn has_labels(&self, wanted: &std::collections::BTreeMap<String, String>) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.info.labels.get(k) == Some(v))
    }

    /// Whether it may take a gate with this request now.
    fn admits(&self, memory: u64, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.free_slots > 0
            && !self.draining
            && !self.pressured
            && self.headroom() >= memory
            && self.has_labels(labels)
    }
}

/// What an attempt on a worker holds there.
#[derive(Clone, Debug)]
struct Held {
    worker: WorkerId,
    /// Memory reserved for it.
    memory: u64,
    /// It occupies one of the worker's slots.
    slot: bool,
    /// Not wanted (re-reported by a worker after its gate moved on): it was cancelled,
    /// and its result only frees the slot.
    unwanted: bool,
}

/// Commands produced while handling one event, plus plans that may have ended.
#[derive(Default)]
struct Sink {
    cmds: Vec<Command>,
    finished: Vec<PlanId>,
    /// The time of the event being handled.
    now: Now,
}

/// The scheduler state machine. See the module docs.
pub struct Scheduler {
    config: CoreConfig,
    plans: BTreeMap<PlanId, PlanRun>,
    workers: BTreeMap<WorkerId, WorkerSlots>,
    /// Attempts on workers and not finished: who runs them and what they hold.
    attempts: HashMap<AttemptRef, Held>,
    /// The plan that got the last dispatch (round-robin cursor).
    last_served: Option<PlanId>,
    /// Gates admission held back for memory (or pressure) while a slot was free.
    throttled: u64,
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
            sink: Sink::default(),
        }
    }

    /// Number of live (unfinished) plans.
    pub fn live_plans(&self) -> usize {
        self.plans.len()
    }

    /// Ids of the registered workers.
    pub fn worker_ids(&self) -> Vec<WorkerId> {
        self.workers.keys().cloned().collect()
    }

    /// Attempts currently dispatched and not finished.
    pub fn running_attempts(&self) -> usize {
        self.attempts.len()
    }

    /// Whether gate `gate` of live plan `plan` waits for a cache answer
    /// ([`Event::CacheChecked`]); an answer for any other gate is ignored.
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
    pub fn slot_use(&self, worker: &WorkerId) -> Option<SlotUse> {
        self.workers.get(worker).map(|w| SlotUse {
            used: w.info.slots.saturating_sub(w.free_slots),
            total: w.info.slots,
        })
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
            } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.info.memory_available = memory_available;
                    let total = w.info.memory_total.max(1) as f64;
                    let threshold = w
                        .info
                        .memory_pressure
                        .unwrap_or(self.config.memory_pressure);
                    w.pressured = memory_used as f64 / total > threshold;
                }
            }
            Event::WorkerDraining { worker } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.draining = true;
                }
            }
            Event::WorkerLost { worker } => self.on_worker_lost(now, &worker),
            Event::CacheChecked { plan, gate, hit } => self.on_cache_checked(now, &plan, gate, hit),
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
            Event::TimerFired(Timer::RecoveryWindow) => self.on_recovery_ended(),
            Event::Cancel { plan, force } => self.on_cancel(&plan, force),
            Event::PlanRestored {
                id,
                plan,
                options,
                gates,
                cancel,
                age,
            } => self.on_restored(now, id, plan, options, &gates, cancel, age),
            Event::AttemptsReported {
                worker,
                running,
                finished,
            } => self.on_reported(now, &worker, running, finished),
            Event::RecoveryEnded => self.on_recovery_ended(),
        }
        self.pump();
        self.finish_plans(now);
        std::mem::take(&mut self.sink.cmds)
    }

    fn on_submit(&mut self, now: Now, id: PlanId, plan: Arc<Plan>, options: RunOptions) {
        if self.plans.contains_key(&id) {
            tracing::warn!(plan_id = %id, "plan id already live; submission ignored");
            return;
        }
        let mut run = PlanRun::new(id.clone(), plan, options, now);
        for g in 0..run.gates.len() {
            if run.gates[g].pending == 0 {
                make_ready(&mut run, &mut self.sink, GateIdx(g as u32));
            }
        }
        if run.is_finished() {
            self.sink.finished.push(id.clone());
        }
        self.plans.insert(id, run);
    }

    fn on_worker_joined(&mut self, now: Now, info: WorkerInfo) {
        if self.workers.contains_key(&info.id) {
            // A worker that comes back is a fresh worker: forget its old attempts.
            self.on_worker_lost(now, &info.id.clone());
        }
        // A new worker may run what no worker could: parked gates are ready again.
        for run in self.plans.values_mut() {
            for g in std::mem::take(&mut run.parked) {
                if run.gate(g).state == GateState::Parked {
                    run.push_ready(g, self.sink.now);
                }
            }
        }
        let slots = WorkerSlots {
            free_slots: info.slots,
            reserved: 0,
            draining: false,
            pressured: false,
            info,
        };
        self.workers.insert(slots.info.id.clone(), slots);
    }

    fn on_worker_lost(&mut self, _now: Now, worker: &WorkerId) {
        if self.workers.remove(worker).is_none() {
            return;
        }
        let mut lost: Vec<AttemptRef> = self
            .attempts
            .iter()
            .filter(|(_, held)| held.worker == *worker)
            .map(|(a, _)| a.clone())
            .collect();
        // `attempts` is a hash map: sort so the outcome never depends on its order.
        lost.sort();
        for attempt in lost {
            if self.attempts.remove(&attempt).is_some_and(|h| h.unwanted) {
                continue;
            }
            let Some(run) = self.plans.get_mut(&attempt.plan) else {
                continue;
            };
            let g = attempt.gate;
            match run.gate(g).state.clone() {
                GateState::Running { attempt: a, .. } if a == attempt.attempt => {
                    run.running -= 1;
                    lose_attempt(
                        run,
                        &mut self.sink,
                        &self.config,
                        g,
                        Done::new(Terminal::Failed, a),
                    );
                }
                GateState::Stopping {
                    attempt: a, then, ..
                } if a == attempt.attempt => {
                    run.running -= 1;
                    let done = Done::new(then, a).reason("worker_lost");
                    finish_gate(run, &mut self.sink, &self.config, g, done);
                }
                _ => {}
            }
        }
    }

    fn on_cache_checked(
        &mut self,
        _now: Now,
        plan: &PlanId,
        gate: GateIdx,
        hit: Option<Box<gatehouse_common::cache::CacheEntry>>,
    ) {
        let Some(run) = self.plans.get_mut(plan) else {
            return;
        };
        if gate.ix() >= run.gates.len() || run.gate(gate).state != GateState::CheckingCache {
            return;
        }
        match hit {
            Some(entry) => {
                let mut done = Done::new(Terminal::Passed, 0);
                done.cached = true;
                done.result = Some(entry.result);
                finish_gate(run, &mut self.sink, &self.config, gate, done);
            }
            None => run.push_ready(gate, self.sink.now),
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
        let gate = run.plan.gate(g);
        if result.status.passed() {
            let store = run.options.use_cache && gate.cache;
            let mut done = Done::new(Terminal::Passed, a);
            done.worker = Some(worker);
            done.flaky = run.gate(g).failures > 0;
            if store {
                self.sink.cmds.push(Command::StoreResult {
                    plan: attempt.plan.clone(),
                    gate: g,
                    result: result.clone(),
                });
            }
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
        let timeout = matches!(result.status, ExitStatus::TimedOut);
        let gr = run.gate_mut(g);
        gr.failures += 1;
        let failures = gr.failures;
        if failures <= retries && run.stopping == Stopping::No {
            let backoff = retry_backoff(run.plan.policy.retry_backoff, failures);
            run.set_state(g, GateState::Backoff { attempt: a + 1 });
            run.gate_mut(g).last_failure = Some(result.clone());
            let mut ev = gate_event(run, g, GateStatus::Retrying { backoff }, a, Some(worker));
            ev.reason = Some(result.status.reason());
            ev.result = Some(result);
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

    /// Dispatches ready gates while some plan has one that fits some worker: plans are
    /// served round-robin, one gate per plan per round.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            // Start after the plan served last, so a freed slot does not always go to
            // the plan with the smallest id.
            let (after, upto): (Vec<_>, Vec<_>) = self
                .plans
                .iter()
                .filter(|(_, r)| !r.ready.is_empty() && r.may_dispatch())
                .map(|(id, _)| id.clone())
                .partition(|id| self.last_served.as_ref().is_some_and(|last| id > last));
            for id in after.into_iter().chain(upto) {
                if self.dispatch_one(&id) {
                    progressed = true;
                    self.last_served = Some(id);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Tries to dispatch the best ready gate of plan `id`; true if the plan changed.
    fn dispatch_one(&mut self, id: &PlanId) -> bool {
        let Some(run) = self.plans.get_mut(id) else {
            return false;
        };
        if !run.may_dispatch() {
            return false;
        }
        let Some(g) = run.peek_ready() else {
            return false;
        };
        let memory = run.plan.gate(g).memory;
        let labels = &run.plan.gate(g).labels;
        let best = self
            .workers
            .values_mut()
            .filter(|w| w.admits(memory, labels))
            .max_by(|a, b| {
                a.headroom()
                    .cmp(&b.headroom())
                    .then(b.info.id.cmp(&a.info.id))
            });
        let Some(worker) = best else {
            return self.cannot_place(id, g, memory);
        };
        worker.free_slots -= 1;
        worker.reserved += memory;
        let worker_id = worker.info.id.clone();
        run.ready.pop();
        let gr = run.gate_mut(g);
        gr.attempt += 1;
        gr.last_failure = None;
        let attempt = gr.attempt;
        let queued = self.sink.now.saturating_sub(gr.ready_at);
        run.set_state(
            g,
            GateState::Running {
                worker: worker_id.clone(),
                attempt,
            },
        );
        run.running += 1;
        let aref = AttemptRef {
            plan: id.clone(),
            gate: g,
            attempt,
        };
        self.attempts.insert(
            aref.clone(),
            Held {
                worker: worker_id.clone(),
                memory,
                slot: true,
                unwanted: false,
            },
        );
        let spec = gate_spec(&run.plan, g);
        let mut ev = gate_event(
            run,
            g,
            GateStatus::Dispatched,
            attempt,
            Some(worker_id.clone()),
        );
        ev.queued = Some(queued);
        self.sink.cmds.push(Command::Dispatch {
            worker: worker_id,
            assignment: Assignment {
                attempt: aref,
                spec: Arc::new(spec),
                cache_key: None,
                traceparent: None,
            },
            queued,
        });
        self.sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
        true
    }

    /// No worker can take gate `g` now. If none ever could, fail it (fixed-capacity
    /// executors) or publish once why it waits; otherwise it simply waits for capacity.
    fn cannot_place(&mut self, id: &PlanId, g: GateIdx, memory: u64) -> bool {
        let Some(run) = self.plans.get_mut(id) else {
            return false;
        };
        let labels = &run.plan.gate(g).labels;
        let live: Vec<&WorkerSlots> = self.workers.values().filter(|w| !w.draining).collect();
        let fitting: Vec<&&WorkerSlots> = live.iter().filter(|w| w.has_labels(labels)).collect();
        let largest = fitting.iter().map(|w| w.info.memory_total).max();
        if largest.is_some_and(|m| m >= memory) {
            // Throttled: capacity frees up when a running gate ends. It counts as
            // admission throttling when a slot was free but memory or pressure said no.
            let slot_free = self
                .workers
                .values()
                .any(|w| w.free_slots > 0 && !w.draining && w.has_labels(labels));
            if slot_free && !run.gate(g).throttled {
                run.gate_mut(g).throttled = true;
                self.throttled += 1;
            }
            return false;
        }
        let reason = if live.is_empty() {
            "no live worker".to_string()
        } else if fitting.is_empty() {
            let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("no live worker has the labels {}", wanted.join(","))
        } else {
            format!(
                "needs {} of memory but the largest worker that could run it has {}",
                gatehouse_common::units::format_size(memory),
                gatehouse_common::units::format_size(largest.unwrap_or(0))
            )
        };
        run.ready.pop();
        if self.config.fail_unschedulable {
            let done = Done::new(Terminal::Failed, 0).reason("unschedulable");
            finish_gate(run, &mut self.sink, &self.config, g, done);
            return true;
        }
        // Park it so the gates behind it in the queue still run; publish the reason once
        // (again only if it changes).
        run.set_state(g, GateState::Parked);
        run.parked.push(g);
        if run.gate(g).waiting_reason.as_deref() != Some(reason.as_str()) {
            run.gate_mut(g).waiting_reason = Some(reason.clone());
            let ev = gate_event(run, g, GateStatus::Waiting { reason }, 0, None);
            self.sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
        }
        true
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
