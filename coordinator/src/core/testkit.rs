//! Test support: plan builders and a simulated driver for the core.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::exec::{AttemptRef, ExitStatus, GateResult, OutputTail};
use gatehouse_common::ids::{GateId, GateIdx, ItemId, ItemIdx, PlanId, SessionKey, WorkerId};
use gatehouse_common::plan::{DEFAULT_MEMORY, Gate, Item, Plan, Policy};

use super::*;

pub(crate) const MI: u64 = 1024 * 1024;

/// Session 0 of worker `id`.
pub(crate) fn wk(id: &str) -> SessionKey {
    SessionKey::new(WorkerId::new(id), 0)
}

/// A cache key made of byte `n`.
pub(crate) fn key(n: u8) -> gatehouse_common::cache::CacheKey {
    gatehouse_common::cache::CacheKey([n; 32])
}

/// A gate for [`flat`] / [`items`]: (name, needs by index, retries, memory).
#[derive(Clone, Debug)]
pub(crate) struct G {
    pub name: String,
    pub needs: Vec<u32>,
    pub retries: u32,
    pub memory: u64,
    pub labels: BTreeMap<String, String>,
}

pub(crate) fn g(name: &str, needs: &[u32]) -> G {
    G {
        name: name.into(),
        needs: needs.to_vec(),
        retries: 0,
        memory: DEFAULT_MEMORY,
        labels: BTreeMap::new(),
    }
}

fn gate(id: String, item: Option<ItemIdx>, spec: &G) -> Gate {
    Gate {
        id: GateId::new(id),
        item,
        run: format!("run {}", spec.name),
        needs: spec.needs.iter().map(|&n| GateIdx(n)).collect(),
        timeout: Duration::from_secs(60),
        retries: spec.retries,
        env: BTreeMap::new(),
        workdir_rel: ".".into(),
        workdir: PathBuf::from("/tmp"),
        inputs: vec![],
        memory: spec.memory,
        cache: true,
        labels: spec.labels.clone(),
        reports: Vec::new(),
        retry_on: Default::default(),
    }
}

/// A flat plan; `needs` are global gate indices.
pub(crate) fn flat(policy: Policy, gates: &[G]) -> Arc<Plan> {
    Arc::new(Plan {
        name: "test".into(),
        base_dir: PathBuf::from("/tmp"),
        policy,
        source: None,
        items: vec![],
        gates: gates
            .iter()
            .map(|s| gate(s.name.clone(), None, s))
            .collect(),
        levels: vec![],
        verify: None,
    })
}

/// An item plan: items given as (id, deps, gates); gate `needs` are global indices.
pub(crate) fn items(policy: Policy, spec: &[(&str, &[u32], Vec<G>)]) -> Arc<Plan> {
    let mut items = Vec::new();
    let mut gates = Vec::new();
    for (i, (id, deps, gs)) in spec.iter().enumerate() {
        let mut members = Vec::new();
        for s in gs {
            members.push(GateIdx(gates.len() as u32));
            gates.push(gate(format!("{id}/{}", s.name), Some(ItemIdx(i as u32)), s));
        }
        items.push(Item {
            id: ItemId::new(*id),
            git_ref: None,
            deps: deps.iter().map(|&d| ItemIdx(d)).collect(),
            gates: members,
            level: 0,
        });
    }
    Arc::new(Plan {
        name: "test".into(),
        base_dir: PathBuf::from("/tmp"),
        policy,
        source: None,
        items,
        gates,
        levels: vec![],
        verify: None,
    })
}

pub(crate) fn result(status: ExitStatus) -> GateResult {
    GateResult {
        status,
        duration: Duration::from_millis(5),
        peak_memory: None,
        stdout: OutputTail::default(),
        stderr: OutputTail::default(),
        tests: None,
    }
}

pub(crate) fn worker(id: &str, slots: u32, mem: u64) -> WorkerInfo {
    WorkerInfo {
        id: wk(id),
        slots,
        memory_total: mem,
        memory_available: mem,
        labels: BTreeMap::new(),
        memory_pressure: None,
    }
}

/// A simulated driver: records every command and tracks what is "running".
pub(crate) struct Sim {
    pub core: Scheduler,
    pub now: Duration,
    pub plan: PlanId,
    pub log: Vec<Command>,
    pub running: Vec<(SessionKey, AttemptRef)>,
    pub timers: Vec<(Duration, Timer)>,
    pub cache_checks: Vec<GateIdx>,
    pub events: Vec<GateEvent>,
    pub summary: Option<PlanSummary>,
    pub cancels: HashSet<AttemptRef>,
    /// Acknowledged results, with the index in `log` of the command that did it.
    pub acks: Vec<(usize, SessionKey, AttemptRef)>,
}

impl Sim {
    pub fn new(config: CoreConfig, workers: &[WorkerInfo]) -> Self {
        let mut sim = Self {
            core: Scheduler::new(config),
            now: Duration::ZERO,
            plan: PlanId::new("p1"),
            log: vec![],
            running: vec![],
            timers: vec![],
            cache_checks: vec![],
            events: vec![],
            summary: None,
            cancels: HashSet::new(),
            acks: vec![],
        };
        for w in workers {
            sim.feed(Event::WorkerJoined(w.clone()));
        }
        sim
    }

    pub fn submit(&mut self, plan: Arc<Plan>, use_cache: bool) {
        self.feed(Event::PlanSubmitted {
            id: self.plan.clone(),
            plan,
            options: RunOptions {
                use_cache,
                ..RunOptions::default()
            },
        });
    }

    pub fn feed(&mut self, event: Event) -> Vec<Command> {
        let cmds = self.core.handle(self.now, event);
        for (i, c) in cmds.iter().enumerate() {
            match c {
                Command::Dispatch {
                    worker, assignment, ..
                } => self
                    .running
                    .push((worker.clone(), assignment.attempt.clone())),
                Command::SetTimer { at, timer } => self.timers.push((*at, timer.clone())),
                Command::CheckCache { gate, .. } => self.cache_checks.push(*gate),
                Command::CancelAttempt { attempt, .. } => {
                    self.cancels.insert(attempt.clone());
                }
                Command::Emit(PlanEvent::Gate(ev)) => self.events.push(ev.clone()),
                Command::Emit(PlanEvent::Finished(s)) => self.summary = Some(s.clone()),
                Command::Emit(PlanEvent::Land { .. }) => panic!("the core never lands"),
                Command::StoreResult { .. } | Command::RecordTests(_) => {}
                Command::AckResults { worker, attempts } => {
                    let at = self.log.len() + i;
                    for a in attempts {
                        self.acks.push((at, worker.clone(), a.clone()));
                    }
                }
            }
        }
        self.log.extend(cmds.iter().cloned());
        cmds
    }

    /// Gate indices currently running, in dispatch order.
    pub fn running_gates(&self) -> Vec<u32> {
        self.running.iter().map(|(_, a)| a.gate.0).collect()
    }

    /// Finishes the running attempt of gate `g` with `status`.
    pub fn finish(&mut self, g: u32, status: ExitStatus) -> Vec<Command> {
        self.finish_with(g, result(status))
    }

    /// The assignment of the running attempt of gate `g`.
    pub fn assignment(&self, g: u32) -> &gatehouse_common::exec::Assignment {
        self.log
            .iter()
            .rev()
            .find_map(|c| match c {
                Command::Dispatch { assignment, .. } if assignment.attempt.gate.0 == g => {
                    Some(assignment)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("gate {g} was never dispatched"))
    }

    /// Finishes the running attempt of gate `g` with `result`.
    pub fn finish_with(&mut self, g: u32, result: GateResult) -> Vec<Command> {
        let pos = self
            .running
            .iter()
            .position(|(_, a)| a.gate.0 == g)
            .unwrap_or_else(|| panic!("gate {g} is not running: {:?}", self.running_gates()));
        let (_, attempt) = self.running.remove(pos);
        self.feed(Event::GateFinished { attempt, result })
    }

    pub fn pass(&mut self, g: u32) -> Vec<Command> {
        self.finish(g, ExitStatus::Exited(0))
    }

    pub fn fail(&mut self, g: u32) -> Vec<Command> {
        self.finish(g, ExitStatus::Exited(1))
    }

    /// Ends the recovery window of the plan now (its timer, if the core asked for one,
    /// fires early).
    pub fn end_recovery(&mut self) -> Vec<Command> {
        let plan = self.plan.clone();
        let window = Timer::RecoveryWindow { plan };
        self.timers.retain(|(_, t)| *t != window);
        self.feed(Event::TimerFired(window))
    }

    /// Fires the earliest timer, advancing time to it.
    pub fn fire_timer(&mut self) -> Vec<Command> {
        self.timers.sort_by_key(|(at, _)| *at);
        let (at, timer) = self.timers.remove(0);
        self.now = self.now.max(at);
        self.feed(Event::TimerFired(timer))
    }

    /// Terminal event of gate `g` (panics unless exactly one).
    pub fn terminal(&self, g: u32) -> &GateEvent {
        let evs: Vec<&GateEvent> = self
            .events
            .iter()
            .filter(|e| e.gate.0 == g && matches!(e.status, GateStatus::Finished(_)))
            .collect();
        assert_eq!(evs.len(), 1, "gate {g} terminal events: {evs:?}");
        evs[0]
    }

    pub fn state(&self, g: u32) -> Terminal {
        match self.terminal(g).status {
            GateStatus::Finished(t) => t,
            _ => unreachable!(),
        }
    }

    /// Attempts sent to each worker that were not finished yet, per worker.
    pub fn per_worker(&self) -> HashMap<SessionKey, usize> {
        let mut m = HashMap::new();
        for (w, _) in &self.running {
            *m.entry(w.clone()).or_default() += 1;
        }
        m
    }
}
