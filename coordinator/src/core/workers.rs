//! Workers as the core sees them: slots, memory headroom, labels, draining and memory
//! pressure, and what happens to their attempts when they leave. The core is the one
//! owner of this state; [`Scheduler::worker_views`] is what others read (the driver
//! publishes it for `ListWorkers`).

use gatehouse_common::exec::AttemptRef;
use gatehouse_common::ids::SessionKey;

use super::plan_run::GateState;
use super::transitions::{Done, finish_gate, lose_attempt};
use super::{Now, Scheduler, Terminal, WorkerInfo};

/// A worker as the core sees it.
#[derive(Debug)]
pub(super) struct WorkerSlots {
    pub(super) info: WorkerInfo,
    pub(super) free_slots: u32,
    /// Sum of the memory requests of attempts assigned to it and not finished.
    pub(super) reserved: u64,
    /// Draining: takes nothing new.
    pub(super) draining: bool,
    /// Above the memory-pressure threshold at its last heartbeat: takes nothing new.
    pub(super) pressured: bool,
    /// Memory in use on its machine at its last heartbeat, in bytes.
    pub(super) memory_used: u64,
    /// When it joined or last sent a heartbeat.
    pub(super) last_heartbeat: Now,
}

/// Whether a worker takes new gates, as the core decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// It takes gates that fit.
    Ready,
    /// Above its memory-pressure threshold: nothing new until it recovers.
    Pressured,
    /// Draining: it finishes what it runs and takes nothing new.
    Draining,
}

/// A worker as the core accounts it, for display (`ListWorkers`).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerView {
    /// What it declared when it joined.
    pub info: WorkerInfo,
    /// Slots taken by attempts.
    pub slots_used: u32,
    /// Memory in use on its machine at its last heartbeat, in bytes.
    pub memory_used: u64,
    /// Memory reserved for the attempts assigned to it, in bytes.
    pub memory_reserved: u64,
    /// Whether it takes new gates.
    pub state: WorkerState,
    /// When it joined or last sent a heartbeat (core time).
    pub last_heartbeat: Now,
}

impl WorkerSlots {
    pub(super) fn headroom(&self) -> u64 {
        self.info.memory_available.saturating_sub(self.reserved)
    }

    /// Whether the worker has every label the gate requires.
    pub(super) fn has_labels(&self, wanted: &std::collections::BTreeMap<String, String>) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.info.labels.get(k) == Some(v))
    }

    /// Whether it may take a gate with this request now.
    pub(super) fn admits(
        &self,
        memory: u64,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.free_slots > 0
            && !self.draining
            && !self.pressured
            && self.headroom() >= memory
            && self.has_labels(labels)
    }
}

impl Scheduler {
    pub(super) fn on_worker_joined(&mut self, now: Now, info: WorkerInfo) {
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
            memory_used: info.memory_total.saturating_sub(info.memory_available),
            last_heartbeat: now,
            info,
        };
        self.workers.insert(slots.info.id.clone(), slots);
    }

    pub(super) fn on_worker_lost(&mut self, _now: Now, worker: &SessionKey) {
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

    /// A heartbeat: the worker's available memory, and whether it is above its
    /// memory-pressure threshold (then it takes nothing new).
    pub(super) fn on_worker_capacity(
        &mut self,
        now: Now,
        worker: &SessionKey,
        memory_used: u64,
        memory_available: u64,
    ) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.info.memory_available = memory_available;
            w.memory_used = memory_used;
            w.last_heartbeat = now;
            let total = w.info.memory_total.max(1) as f64;
            let threshold = w
                .info
                .memory_pressure
                .unwrap_or(self.config.memory_pressure);
            w.pressured = memory_used as f64 / total > threshold;
        }
    }

    /// The worker finishes what it runs and takes nothing new.
    pub(super) fn on_worker_draining(&mut self, worker: &SessionKey) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.draining = true;
        }
    }

    /// Every registered worker as the core accounts it, sorted by session. O(workers).
    pub fn worker_views(&self) -> Vec<WorkerView> {
        self.workers
            .values()
            .map(|w| WorkerView {
                info: w.info.clone(),
                slots_used: w.info.slots.saturating_sub(w.free_slots),
                memory_used: w.memory_used,
                memory_reserved: w.reserved,
                state: if w.draining {
                    WorkerState::Draining
                } else if w.pressured {
                    WorkerState::Pressured
                } else {
                    WorkerState::Ready
                },
                last_heartbeat: w.last_heartbeat,
            })
            .collect()
    }
}
