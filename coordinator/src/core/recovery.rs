//! Resuming plans after a leader change (or a standalone coordinator's restart).
//!
//! The durable log says, per gate, whether it ended, ran, or never started
//! ([`RestoredGate`]). A restored plan gets its ended gates back silently (their events
//! are already in the log), releases what they release, and skips what depends on a
//! failure (those skips may not have reached the log). A gate that may have been
//! dispatched without a durable record (it was running, retrying, or all its
//! prerequisites had passed) is *in doubt*: a worker may still be running it.
//!
//! Workers that reconnect re-report what they kept ([`Event::AttemptsReported`]): an
//! in-doubt gate adopts a running attempt (or takes a finished result as its own);
//! anything else a worker reports is unwanted and cancelled, and only frees its slot
//! when it ends. A restored plan with gates in doubt asks for its own
//! [`Timer::RecoveryWindow`] ([`super::CoreConfig::recovery_window`], one liveness
//! timeout); when it fires, the gates still in doubt are re-queued as new attempts,
//! numbered past any attempt the log shows, so a terminal result is recorded once.
//!
//! Attempt numbers: an attempt number a worker reports is never handed out again for that
//! gate. An attempt nobody reports before the window ends cannot be known; if its worker
//! comes back later, the same attempt reference can name two executions. On the same
//! worker that is one execution (the worker runs an attempt once and answers a repeated
//! assignment with its result); from another worker than the one the core assigned it
//! to, a report is refused (a running copy is cancelled, a result ignored).

use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::cache::CacheKey;
use gatehouse_common::exec::{AttemptRef, GateResult};
use gatehouse_common::ids::{GateIdx, PlanId, SessionKey};
use gatehouse_common::plan::Plan;

use super::plan_run::{GateState, PlanRun, Stopping};
use super::transitions::{
    end_gate, fail_blocked_gates, gate_event, make_ready, propagate_pass, skip_dependents,
    stop_plan,
};
use super::{
    Command, GateStatus, Held, Now, PlanEvent, RestoredGate, RunOptions, Scheduler, Terminal, Timer,
};

impl Scheduler {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_restored(
        &mut self,
        now: Now,
        id: PlanId,
        plan: Arc<Plan>,
        options: RunOptions,
        gates: &[RestoredGate],
        cancel: Option<bool>,
        age: Duration,
        keys: Vec<Option<CacheKey>>,
    ) {
        if self.plans.contains_key(&id) {
            tracing::warn!(plan_id = %id, "plan already live; restore ignored");
            return;
        }
        let mut run = PlanRun::new(id.clone(), plan, options, now);
        run.earlier = age;
        for (gr, key) in run.gates.iter_mut().zip(keys) {
            gr.key = key;
        }
        // Nothing may become ready while the log is applied.
        run.stopping = Stopping::Restoring;
        let mut passed = Vec::new();
        let mut failed = Vec::new();
        for (i, restored) in gates.iter().enumerate().take(run.gates.len()) {
            let g = GateIdx(i as u32);
            match *restored {
                RestoredGate::NotStarted => {}
                RestoredGate::Started {
                    attempt,
                    failures,
                    open,
                } => {
                    let gr = run.gate_mut(g);
                    gr.attempt = attempt;
                    gr.failures = failures;
                    if open {
                        gr.announced = attempt;
                    }
                    let from = if open { attempt } else { attempt + 1 };
                    run.set_state(g, GateState::InDoubt { from });
                }
                RestoredGate::Done {
                    terminal,
                    cached,
                    flaky,
                } => {
                    end_gate(&mut run, &mut self.sink, g, terminal, (cached, flaky), None);
                    if terminal == Terminal::Passed {
                        passed.push(g);
                    } else {
                        failed.push((g, terminal));
                    }
                }
            }
        }
        for &g in &passed {
            propagate_pass(&mut run, &mut self.sink, g);
        }
        run.stopping = Stopping::No;
        for &(g, _) in &failed {
            skip_dependents(&mut run, &mut self.sink, g);
        }
        // Blocked items whose failures did not reach the log fail now (they never run).
        fail_blocked_gates(&mut run, &mut self.sink, &self.config);
        // Blocked -> InDoubt: neither is queued, so `set_state`'s count is unaffected.
        for gr in &mut run.gates {
            if gr.state == GateState::Blocked && gr.pending == 0 {
                gr.state = GateState::InDoubt {
                    from: gr.attempt + 1,
                };
            }
        }
        let any_failure = failed
            .iter()
            .any(|(_, t)| matches!(t, Terminal::Failed | Terminal::TimedOut));
        if run.plan.policy.fail_fast && any_failure {
            stop_plan(
                &mut run,
                &mut self.sink,
                Stopping::FailFast,
                self.config.kill_grace,
                false,
            );
        }
        if let Some(force) = cancel {
            let grace = if force {
                Duration::ZERO
            } else {
                self.config.kill_grace
            };
            stop_plan(&mut run, &mut self.sink, Stopping::Cancelled, grace, force);
        }
        if run.is_finished() {
            self.sink.finished.push(id.clone());
        }
        // Workers get one recovery window, from now, to re-report what they run.
        if run
            .gates
            .iter()
            .any(|gr| matches!(gr.state, GateState::InDoubt { .. }))
        {
            self.sink.cmds.push(Command::SetTimer {
                at: now + self.config.recovery_window,
                timer: Timer::RecoveryWindow { plan: id.clone() },
            });
        }
        self.plans.insert(id, run);
    }

    pub(super) fn on_reported(
        &mut self,
        now: Now,
        worker: &SessionKey,
        running: Vec<AttemptRef>,
        finished: Vec<(AttemptRef, GateResult)>,
    ) {
        // Every reported result is acknowledged once, after whatever it produces here
        // (the event recording it, if it counts): the worker may then forget it.
        let acked: Vec<AttemptRef> = finished.iter().map(|(a, _)| a.clone()).collect();
        if self.workers.contains_key(worker) {
            self.take_reports(now, worker, running, finished);
        }
        if !acked.is_empty() {
            self.sink.cmds.push(Command::AckResults {
                worker: worker.clone(),
                attempts: acked,
            });
        }
    }

    fn take_reports(
        &mut self,
        now: Now,
        worker: &SessionKey,
        running: Vec<AttemptRef>,
        finished: Vec<(AttemptRef, GateResult)>,
    ) {
        // A number a worker reported is never handed out again for that gate.
        for attempt in running.iter().chain(finished.iter().map(|(a, _)| a)) {
            self.raise_attempt_floor(attempt);
        }
        for attempt in running {
            if let Some(held) = self.attempts.get(&attempt) {
                if held.worker.worker == worker.worker {
                    // This worker's older session (not found lost yet) held it: the
                    // worker reconnected, and carries it on in this session.
                    self.move_hold(&attempt, worker);
                } else {
                    // The same attempt on another worker (a stale copy): stop this one.
                    self.sink.cmds.push(Command::CancelAttempt {
                        worker: worker.clone(),
                        attempt,
                        grace: self.config.kill_grace,
                    });
                }
                continue;
            }
            let adopted = self.adopt(worker, &attempt, true);
            if let Some(w) = self.workers.get_mut(worker) {
                w.free_slots = w.free_slots.saturating_sub(1);
            }
            if !adopted {
                self.attempts.insert(
                    attempt.clone(),
                    Held {
                        worker: worker.clone(),
                        memory: 0,
                        slot: true,
                        unwanted: true,
                    },
                );
                self.sink.cmds.push(Command::CancelAttempt {
                    worker: worker.clone(),
                    attempt,
                    grace: self.config.kill_grace,
                });
            }
        }
        for (attempt, result) in finished {
            let ours = match self.attempts.get(&attempt) {
                // Held by this worker, in this session or an older one.
                Some(held) => held.worker.worker == worker.worker,
                None => self.adopt(worker, &attempt, false),
            };
            if ours {
                self.on_finished(now, attempt, result);
            }
        }
    }

    /// Moves the hold of `attempt` (slot, memory, the gate's state) from an older
    /// session of the same worker to `to`.
    fn move_hold(&mut self, attempt: &AttemptRef, to: &SessionKey) {
        let Some(held) = self.attempts.get_mut(attempt) else {
            return;
        };
        let from = std::mem::replace(&mut held.worker, to.clone());
        let (slot, memory) = (u32::from(held.slot), held.memory);
        if let Some(w) = self.workers.get_mut(&from) {
            w.free_slots += slot;
            w.reserved = w.reserved.saturating_sub(memory);
        }
        if let Some(w) = self.workers.get_mut(to) {
            w.free_slots = w.free_slots.saturating_sub(slot);
            w.reserved += memory;
        }
        let Some(run) = self.plans.get_mut(&attempt.plan) else {
            return;
        };
        let g = attempt.gate;
        let moved = match run.gate(g).state.clone() {
            GateState::Running { attempt: a, .. } if a == attempt.attempt => GateState::Running {
                worker: to.clone(),
                attempt: a,
            },
            GateState::Stopping {
                attempt: a, then, ..
            } if a == attempt.attempt => GateState::Stopping {
                worker: to.clone(),
                attempt: a,
                then,
            },
            _ => return,
        };
        let stopping = matches!(moved, GateState::Stopping { .. });
        run.set_state(g, moved);
        if stopping {
            // Its cancel went to the old session.
            self.sink.cmds.push(Command::CancelAttempt {
                worker: to.clone(),
                attempt: attempt.clone(),
                grace: self.config.kill_grace,
            });
        }
    }

    /// Makes the next attempt of `attempt`'s gate numbered above it.
    fn raise_attempt_floor(&mut self, attempt: &AttemptRef) {
        if let Some(run) = self.plans.get_mut(&attempt.plan)
            && attempt.gate.ix() < run.gates.len()
            && !matches!(run.gate(attempt.gate).state, GateState::Done(_))
        {
            let gr = run.gate_mut(attempt.gate);
            gr.attempt = gr.attempt.max(attempt.attempt);
        }
    }

    /// Makes `attempt` on `worker` the current attempt of its gate if the gate is in
    /// doubt and the attempt is recent enough; `slot`: it still runs there.
    fn adopt(&mut self, worker: &SessionKey, attempt: &AttemptRef, slot: bool) -> bool {
        let Some(run) = self.plans.get_mut(&attempt.plan) else {
            return false;
        };
        if attempt.gate.ix() >= run.gates.len() {
            return false;
        }
        let g = attempt.gate;
        let GateState::InDoubt { from } = run.gate(g).state else {
            return false;
        };
        if attempt.attempt < from {
            return false;
        }
        let memory = if slot { run.plan.gate(g).memory } else { 0 };
        let gr = run.gate_mut(g);
        gr.attempt = gr.attempt.max(attempt.attempt);
        run.set_state(
            g,
            GateState::Running {
                worker: worker.clone(),
                attempt: attempt.attempt,
            },
        );
        run.running += 1;
        if slot && run.gate(g).announced != attempt.attempt {
            run.gate_mut(g).announced = attempt.attempt;
            let ev = gate_event(
                run,
                g,
                GateStatus::Running,
                attempt.attempt,
                Some(worker.clone()),
            );
            self.sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
        }
        if let Some(w) = self.workers.get_mut(worker) {
            w.reserved += memory;
        }
        self.attempts.insert(
            attempt.clone(),
            Held {
                worker: worker.clone(),
                memory,
                slot,
                unwanted: false,
            },
        );
        true
    }

    /// The recovery window of `plan` is over: its gates still in doubt run again.
    pub(super) fn on_recovery_ended(&mut self, plan: &PlanId) {
        let Some(run) = self.plans.get_mut(plan) else {
            return;
        };
        for i in 0..run.gates.len() {
            let g = GateIdx(i as u32);
            if let GateState::InDoubt { from } = run.gate(g).state {
                // The next dispatch is numbered past `from`, which may still run on
                // a worker that never came back.
                let gr = run.gate_mut(g);
                gr.attempt = gr.attempt.max(from);
                run.set_state(g, GateState::Blocked);
                make_ready(run, &mut self.sink, g);
            }
        }
    }
}
