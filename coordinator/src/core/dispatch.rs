//! Dispatch: serving the plans' ready queues round-robin onto the workers that admit
//! their gates, and what happens to a gate no worker can take.

use std::sync::Arc;

use gatehouse_common::exec::{Assignment, AttemptRef};
use gatehouse_common::ids::{GateIdx, PlanId};

use super::plan_run::GateState;
use super::transitions::{Done, finish_gate, gate_event, gate_spec};
use super::workers::WorkerSlots;
use super::{Command, GateStatus, Held, PlanEvent, Scheduler, Terminal};

impl Scheduler {
    /// Dispatches ready gates while some plan has one that fits some worker: plans are
    /// served round-robin, one gate per plan per round.
    pub(super) fn pump(&mut self) {
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
        // The key its result is stored under by the executor: only a first attempt's
        // (a pass after a failure is flaky, and flaky passes are the core's to store).
        let cache_key = run
            .gate(g)
            .key
            .filter(|_| run.options.use_cache && run.plan.gate(g).cache)
            .filter(|_| run.gate(g).failures == 0);
        // Tests that failed before in gates of this name: the result says if they pass.
        let watch = if spec.reports.is_empty() {
            Default::default()
        } else {
            self.history.watch(spec.gate.as_str())
        };
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
                cache_key,
                traceparent: None,
                watch,
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
}
