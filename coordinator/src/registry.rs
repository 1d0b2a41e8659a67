//! The plan registry actor: the coordinator's record of every submitted plan.
//!
//! State it owns: per plan, the validated plan, its event log (every published event
//! but `Dispatched`, with a gap-free sequence number from 1), the latest event of each
//! gate, the summary once finished, and a `watch` channel announcing the newest sequence
//! number. Finished plans are kept until [`RegistryConfig::retain_finished`] newer ones
//! finished.
//!
//! Accepts [`RegistryMsg`] through [`RegistryHandle`] (mailbox bounded at
//! [`MAILBOX_CAPACITY`]) and the scheduler's events for all plans on one unbounded
//! channel (the scheduler never waits on it; it carries at most gates × (attempts + 3)
//! events per plan). It submits and cancels plans through the scheduler's handle; the
//! scheduler never calls back into the registry except through that channel, so there
//! is no cycle of waiting actors.
//!
//! Memory: the log keeps each attempt's result with stdout dropped and stderr cut to its
//! last [`RegistryConfig::stderr_tail_bytes`] (the dropped counts say how much).
//!
//! Shutdown: the loop ends when its token fires or every handle is dropped; queued
//! requests are answered with [`RegistryError::ShuttingDown`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_common::cache::unix_ms_now;
use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::PlanId;
use gatehouse_common::plan::Plan;
use gatehouse_common::spawn::spawn_named;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::{GateEvent, PlanEvent, PlanSummary, RunOptions};
use crate::scheduler::{SchedulerError, SchedulerHandle};

/// Capacity of the registry's mailbox.
pub const MAILBOX_CAPACITY: usize = 1024;
/// Most events returned by one [`RegistryHandle::events_after`] call.
pub const MAX_BATCH: usize = 1024;

/// Registry tunables.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Finished plans kept for `GetPlan`/`WatchPlan` before the oldest is forgotten.
    pub retain_finished: usize,
    /// Bytes of stderr kept per attempt result in the log.
    pub stderr_tail_bytes: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            retain_finished: 100,
            stderr_tail_bytes: 4096,
        }
    }
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No plan with this id (never submitted, or forgotten after it finished).
    #[error("no plan with id {0}")]
    NotFound(PlanId),
    /// A sequence number past the newest event of the plan.
    #[error("plan {plan} has {newest} events; cannot resume after {after}")]
    BeyondEnd {
        /// The plan.
        plan: PlanId,
        /// The sequence number asked for.
        after: u64,
        /// The newest sequence number.
        newest: u64,
    },
    /// The registry or the scheduler is shutting down.
    #[error("coordinator is shutting down")]
    ShuttingDown,
}

impl From<SchedulerError> for RegistryError {
    fn from(_: SchedulerError) -> Self {
        RegistryError::ShuttingDown
    }
}

/// Summary information of one plan.
#[derive(Clone, Debug)]
pub struct PlanInfo {
    pub id: PlanId,
    pub name: String,
    pub total_gates: u32,
    pub submitted_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub summary: Option<PlanSummary>,
    /// Gates in a terminal state so far, by state name.
    pub counts: crate::core::Counts,
}

/// A consistent view of one plan.
#[derive(Clone, Debug)]
pub struct PlanSnapshot {
    pub info: PlanInfo,
    pub plan: Arc<Plan>,
    /// The latest event of each gate (`None`: nothing happened to it yet).
    pub gates: Vec<Option<GateEvent>>,
}

/// Events after a sequence number.
pub struct EventBatch {
    pub plan: Arc<Plan>,
    /// `(seq, event)` in order, at most [`MAX_BATCH`].
    pub events: Vec<(u64, PlanEvent)>,
    /// Announces the newest sequence number of the plan.
    pub newest: watch::Receiver<u64>,
    /// The plan has finished: its log is complete.
    pub finished: bool,
}

pub(crate) enum RegistryMsg {
    Submit {
        plan: Arc<Plan>,
        options: RunOptions,
        reply: oneshot::Sender<Result<PlanId, RegistryError>>,
    },
    Get {
        id: PlanId,
        reply: oneshot::Sender<Result<PlanSnapshot, RegistryError>>,
    },
    List {
        reply: oneshot::Sender<Vec<PlanInfo>>,
    },
    EventsAfter {
        id: PlanId,
        after: u64,
        reply: oneshot::Sender<Result<EventBatch, RegistryError>>,
    },
    Cancel {
        id: PlanId,
        force: bool,
        reply: oneshot::Sender<Result<bool, RegistryError>>,
    },
}

/// Handle to the registry actor.
#[derive(Clone)]
pub struct RegistryHandle {
    tx: mpsc::Sender<RegistryMsg>,
}

impl RegistryHandle {
    /// Accepts a validated plan and starts it; returns its new id.
    pub async fn submit(
        &self,
        plan: Arc<Plan>,
        options: RunOptions,
    ) -> Result<PlanId, RegistryError> {
        self.ask(|reply| RegistryMsg::Submit {
            plan,
            options,
            reply,
        })
        .await?
    }

    /// A snapshot of one plan.
    pub async fn get(&self, id: PlanId) -> Result<PlanSnapshot, RegistryError> {
        self.ask(|reply| RegistryMsg::Get { id, reply }).await?
    }

    /// Every known plan, newest first.
    pub async fn list(&self) -> Result<Vec<PlanInfo>, RegistryError> {
        self.ask(|reply| RegistryMsg::List { reply }).await
    }

    /// Events with a sequence number greater than `after`.
    pub async fn events_after(&self, id: PlanId, after: u64) -> Result<EventBatch, RegistryError> {
        self.ask(|reply| RegistryMsg::EventsAfter { id, after, reply })
            .await?
    }

    /// Cancels a plan; `Ok(false)` if it had already finished.
    pub async fn cancel(&self, id: PlanId, force: bool) -> Result<bool, RegistryError> {
        self.ask(|reply| RegistryMsg::Cancel { id, force, reply })
            .await?
    }

    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<T>) -> RegistryMsg,
    ) -> Result<T, RegistryError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .await
            .map_err(|_| RegistryError::ShuttingDown)?;
        rx.await.map_err(|_| RegistryError::ShuttingDown)
    }
}

/// Starts the registry. `events` must be the receiver whose sender is passed to the
/// scheduler for every plan (see [`spawn`]'s caller in `server.rs`).
pub fn spawn(
    config: RegistryConfig,
    scheduler: SchedulerHandle,
    shutdown: CancellationToken,
) -> (RegistryHandle, JoinHandle<()>) {
    let (tx, mailbox) = mpsc::channel(MAILBOX_CAPACITY);
    let (events_tx, events) = mpsc::unbounded_channel();
    let actor = RegistryActor {
        config,
        scheduler,
        mailbox,
        events,
        events_tx,
        plans: HashMap::new(),
        order: VecDeque::new(),
        finished: VecDeque::new(),
        shutdown,
    };
    (
        RegistryHandle { tx },
        spawn_named("plan-registry", actor.run()),
    )
}

struct PlanRecord {
    plan: Arc<Plan>,
    submitted_unix_ms: u64,
    finished_unix_ms: Option<u64>,
    /// Event `seq` is `log[seq - 1]`.
    log: Vec<PlanEvent>,
    latest: Vec<Option<GateEvent>>,
    summary: Option<PlanSummary>,
    counts: crate::core::Counts,
    newest: watch::Sender<u64>,
}

struct RegistryActor {
    config: RegistryConfig,
    scheduler: SchedulerHandle,
    mailbox: mpsc::Receiver<RegistryMsg>,
    events: mpsc::UnboundedReceiver<PlanEvent>,
    /// Cloned into every submission.
    events_tx: mpsc::UnboundedSender<PlanEvent>,
    plans: HashMap<PlanId, PlanRecord>,
    /// Plan ids in submission order (for listing newest first).
    order: VecDeque<PlanId>,
    /// Finished plan ids, oldest first (for retention).
    finished: VecDeque<PlanId>,
    shutdown: CancellationToken,
}

impl RegistryActor {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some(event) = self.events.recv() => self.record(event),
                msg = self.mailbox.recv() => match msg {
                    Some(msg) => self.on_msg(msg).await,
                    None => break,
                },
            }
        }
        self.mailbox.close();
        while let Ok(msg) = self.mailbox.try_recv() {
            reject(msg);
        }
    }

    async fn on_msg(&mut self, msg: RegistryMsg) {
        match msg {
            RegistryMsg::Submit {
                plan,
                options,
                reply,
            } => {
                let id = new_plan_id();
                let record = PlanRecord {
                    latest: vec![None; plan.gates.len()],
                    plan: plan.clone(),
                    submitted_unix_ms: unix_ms_now(),
                    finished_unix_ms: None,
                    log: Vec::new(),
                    summary: None,
                    counts: crate::core::Counts {
                        total: plan.gates.len() as u32,
                        ..Default::default()
                    },
                    newest: watch::channel(0).0,
                };
                self.plans.insert(id.clone(), record);
                self.order.push_back(id.clone());
                let submitted = self
                    .scheduler
                    .submit(id.clone(), plan, options, self.events_tx.clone())
                    .await;
                match submitted {
                    Ok(_) => {
                        let _ = reply.send(Ok(id));
                    }
                    Err(e) => {
                        // Nothing half-submitted is kept.
                        self.plans.remove(&id);
                        self.order.retain(|x| *x != id);
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            RegistryMsg::Get { id, reply } => {
                let _ = reply.send(self.snapshot(&id));
            }
            RegistryMsg::List { reply } => {
                let list = self
                    .order
                    .iter()
                    .rev()
                    .filter_map(|id| self.info(id))
                    .collect();
                let _ = reply.send(list);
            }
            RegistryMsg::EventsAfter { id, after, reply } => {
                let batch = match self.plans.get(&id) {
                    None => Err(RegistryError::NotFound(id)),
                    Some(r) if after > r.log.len() as u64 => Err(RegistryError::BeyondEnd {
                        plan: id,
                        after,
                        newest: r.log.len() as u64,
                    }),
                    Some(r) => {
                        let start = usize::try_from(after)
                            .unwrap_or(usize::MAX)
                            .min(r.log.len());
                        let end = (start + MAX_BATCH).min(r.log.len());
                        Ok(EventBatch {
                            plan: r.plan.clone(),
                            events: (start..end)
                                .map(|i| (i as u64 + 1, r.log[i].clone()))
                                .collect(),
                            newest: r.newest.subscribe(),
                            finished: r.summary.is_some(),
                        })
                    }
                };
                let _ = reply.send(batch);
            }
            RegistryMsg::Cancel { id, force, reply } => {
                let result = match self.plans.get(&id) {
                    None => Err(RegistryError::NotFound(id)),
                    Some(r) if r.summary.is_some() => Ok(false),
                    Some(_) => self
                        .scheduler
                        .cancel(id, force)
                        .await
                        .map(|()| true)
                        .map_err(Into::into),
                };
                let _ = reply.send(result);
            }
        }
    }

    fn record(&mut self, mut event: PlanEvent) {
        let plan_id = match &event {
            PlanEvent::Gate(g) => g.plan.clone(),
            PlanEvent::Finished(s) => s.plan.clone(),
        };
        let Some(r) = self.plans.get_mut(&plan_id) else {
            return;
        };
        match &mut event {
            PlanEvent::Gate(g) => {
                if let Some(result) = &mut g.result {
                    trim(result, self.config.stderr_tail_bytes);
                }
                if let crate::core::GateStatus::Finished(t) = g.status {
                    r.counts.record(t, g.cached, g.flaky);
                }
                r.latest[g.gate.ix()] = Some(g.clone());
                if g.status == crate::core::GateStatus::Dispatched {
                    // The `Running` event follows at once; clients gain nothing from
                    // this one, and leaving it out keeps logs and streams a third smaller.
                    return;
                }
            }
            PlanEvent::Finished(s) => {
                r.summary = Some(s.clone());
                r.finished_unix_ms = Some(unix_ms_now());
                self.finished.push_back(plan_id.clone());
            }
        }
        r.log.push(event);
        r.newest.send_replace(r.log.len() as u64);
        while self.finished.len() > self.config.retain_finished {
            if let Some(old) = self.finished.pop_front() {
                self.plans.remove(&old);
                self.order.retain(|x| *x != old);
            }
        }
    }

    fn info(&self, id: &PlanId) -> Option<PlanInfo> {
        let r = self.plans.get(id)?;
        Some(PlanInfo {
            id: id.clone(),
            name: r.plan.name.clone(),
            total_gates: r.plan.gates.len() as u32,
            submitted_unix_ms: r.submitted_unix_ms,
            finished_unix_ms: r.finished_unix_ms,
            summary: r.summary.clone(),
            counts: r.counts,
        })
    }

    fn snapshot(&self, id: &PlanId) -> Result<PlanSnapshot, RegistryError> {
        let r = self
            .plans
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
        Ok(PlanSnapshot {
            info: self
                .info(id)
                .ok_or_else(|| RegistryError::NotFound(id.clone()))?,
            plan: r.plan.clone(),
            gates: r.latest.clone(),
        })
    }
}

fn reject(msg: RegistryMsg) {
    match msg {
        RegistryMsg::Submit { reply, .. } => drop(reply.send(Err(RegistryError::ShuttingDown))),
        RegistryMsg::Get { reply, .. } => drop(reply.send(Err(RegistryError::ShuttingDown))),
        RegistryMsg::List { reply } => drop(reply.send(Vec::new())),
        RegistryMsg::EventsAfter { reply, .. } => {
            drop(reply.send(Err(RegistryError::ShuttingDown)))
        }
        RegistryMsg::Cancel { reply, .. } => drop(reply.send(Err(RegistryError::ShuttingDown))),
    }
}

/// Drops stdout and keeps the last `keep` bytes of stderr, counting what was dropped.
fn trim(result: &mut GateResult, keep: usize) {
    result.stdout.dropped += result.stdout.bytes.len() as u64;
    result.stdout.bytes = Vec::new();
    let len = result.stderr.bytes.len();
    if len > keep {
        result.stderr.bytes.drain(..len - keep);
        result.stderr.dropped += (len - keep) as u64;
    }
}

/// A new plan id: `p-<unix ms in base 36>-<counter>`, unique for this coordinator.
fn new_plan_id() -> PlanId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut ms = unix_ms_now();
    let mut digits = Vec::new();
    while ms > 0 {
        let d = (ms % 36) as u8;
        digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        ms /= 36;
    }
    digits.reverse();
    PlanId::new(format!("p-{}-{n}", String::from_utf8_lossy(&digits)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ids_are_unique_and_valid() {
        let a = new_plan_id();
        let b = new_plan_id();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("p-"));
        assert!(gatehouse_common::ids::is_valid_id(a.as_str()));
    }

    #[test]
    fn trimming_keeps_the_stderr_tail_and_counts_drops() {
        let mut r = crate::core::testkit::result(gatehouse_common::exec::ExitStatus::Exited(1));
        r.stdout.bytes = vec![b'o'; 100];
        r.stderr.bytes = b"0123456789".to_vec();
        trim(&mut r, 4);
        assert!(r.stdout.bytes.is_empty());
        assert_eq!(r.stdout.dropped, 100);
        assert_eq!(r.stderr.bytes, b"6789");
        assert_eq!(r.stderr.dropped, 6);
    }
}
