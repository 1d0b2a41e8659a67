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
//! Durability (when given a [`StateStore`]): every accepted plan, every logged event
//! and every cancellation goes through the [`journal::Journal`] (group commit).
//! `SubmitPlan` and `CancelPlan` are answered, and workers' results acknowledged
//! ([`AckSink`]), only once durable. At start the registry takes the plans read back
//! from the store ([`restore::prepare`]): their logs are served again as they were, and
//! the unfinished ones resume in the scheduler (see `core::recovery`), which waits one
//! recovery window for workers to re-report their attempts. If the
//! store fails for good (fenced: another coordinator leads) the registry stops and its
//! task ends with the error.
//!
//! Shutdown: the loop ends when its token fires or every handle is dropped; queued
//! requests are answered with [`RegistryError::ShuttingDown`].

pub mod codec;
mod handle;
mod history;
pub mod journal;
mod landing;
mod record;
pub mod restore;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use gatehouse_common::cache::unix_ms_now;
use gatehouse_common::ids::PlanId;
use gatehouse_common::reports::history::TestRun;
use gatehouse_common::spawn::spawn_named;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::core::PlanEvent;
use crate::scheduler::{PlanOutput, RestoredPlan, SchedulerError, SchedulerHandle};
use crate::sources::Sources;
use crate::store::{StateStore, StoreOp};
use codec::PlanRecord as StoredRecord;
use history::HistoryLog;
pub use journal::{AckSink, JournalError};
use journal::{Journal, Waiter};
use landing::{LandEdges, LandJob, LandMsg, Replay};
use record::{PlanRecord, apply, failed_items, new_plan_id, new_record, round_start};
use restore::Restored;

pub(crate) use handle::RegistryMsg;
pub use handle::{EventBatch, PlanInfo, PlanSnapshot, RegistryHandle};

/// Capacity of the registry's mailbox.
pub const MAILBOX_CAPACITY: usize = 1024;
/// Most events returned by one [`RegistryHandle::events_after`] call.
pub const MAX_BATCH: usize = 1024;
/// How long shutdown waits for queued state writes.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Registry tunables.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Finished plans kept for `GetPlan`/`WatchPlan` before the oldest is forgotten.
    pub retain_finished: usize,
    /// Bytes of stderr kept per attempt result in the log.
    pub stderr_tail_bytes: usize,
    /// How long a state write waits for others to share its commit.
    pub commit_linger: std::time::Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            retain_finished: 100,
            stderr_tail_bytes: 4096,
            commit_linger: journal::DEFAULT_LINGER,
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
    /// The plan's stored record would exceed what the state store takes in one value.
    #[error(
        "the plan is too large to store: {bytes} bytes compressed, the state store takes at most {max}"
    )]
    TooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

impl From<SchedulerError> for RegistryError {
    fn from(_: SchedulerError) -> Self {
        RegistryError::ShuttingDown
    }
}

/// What the registry persists to, and what it starts from.
pub struct Durability {
    /// The store.
    pub store: Arc<dyn StateStore>,
    /// Plans read back from the store.
    pub restored: Vec<Restored>,
    /// Test-history records read back from the store, ascending.
    pub history: Vec<(u64, Vec<u8>)>,
    /// The leadership term written into log chunks (0 when standalone).
    pub term: i64,
}

/// Starts the registry (memory-only when `durability` is `None`). The task ends with
/// an error if the state store fails for good.
pub fn spawn(
    config: RegistryConfig,
    scheduler: SchedulerHandle,
    sources: Option<Arc<Sources>>,
    acks: Option<Arc<dyn AckSink>>,
    durability: Option<Durability>,
    outputs: (
        mpsc::UnboundedSender<PlanOutput>,
        mpsc::UnboundedReceiver<PlanOutput>,
    ),
    shutdown: CancellationToken,
) -> (RegistryHandle, JoinHandle<Result<(), JournalError>>) {
    let (tx, mailbox) = mpsc::channel(MAILBOX_CAPACITY);
    let (events_tx, events) = outputs;
    let (journal, restored, stored_history) = match durability {
        Some(d) => (
            Some(Journal::new(
                d.store,
                acks.clone(),
                d.term,
                config.commit_linger,
            )),
            d.restored,
            d.history,
        ),
        None => (None, Vec::new(), Vec::new()),
    };
    let (history, runs) = HistoryLog::restore(stored_history);
    let (land_tx, land_rx) = mpsc::unbounded_channel();
    let actor = RegistryActor {
        config,
        scheduler,
        sources,
        land_tx,
        land_rx,
        landings: HashMap::new(),
        jobs: JoinSet::new(),
        job_plans: HashMap::new(),
        mailbox,
        events,
        events_tx,
        plans: HashMap::new(),
        order: VecDeque::new(),
        finished: VecDeque::new(),
        journal,
        history,
        acks,
        shutdown,
    };
    let actor = (actor, restored, runs);
    (
        RegistryHandle { tx },
        spawn_named("plan-registry", async move {
            let (actor, restored, runs) = actor;
            actor.run(restored, runs).await
        }),
    )
}

struct RegistryActor {
    config: RegistryConfig,
    scheduler: SchedulerHandle,
    /// The coordinator's mirrors, for landing (`None`: plans cannot land here).
    sources: Option<Arc<Sources>>,
    /// Landing jobs' steps to log (unbounded: a job logs a handful per round).
    land_tx: mpsc::UnboundedSender<LandMsg>,
    land_rx: mpsc::UnboundedReceiver<LandMsg>,
    /// The plans landing now, and what cancels each.
    landings: HashMap<PlanId, CancellationToken>,
    /// The landing jobs (see [`landing`]), awaited here.
    jobs: JoinSet<()>,
    /// Each job's plan.
    job_plans: HashMap<tokio::task::Id, PlanId>,
    mailbox: mpsc::Receiver<RegistryMsg>,
    events: mpsc::UnboundedReceiver<PlanOutput>,
    /// Cloned into every submission.
    events_tx: mpsc::UnboundedSender<PlanOutput>,
    plans: HashMap<PlanId, PlanRecord>,
    /// Plan ids in submission order (for listing newest first).
    order: VecDeque<PlanId>,
    /// Finished plan ids, oldest first (for retention).
    finished: VecDeque<PlanId>,
    /// Group commit to the state store (`None`: memory only).
    journal: Option<Journal>,
    /// The test-history records in the store.
    history: HistoryLog,
    /// Acknowledges workers' results (after the journal made them durable).
    acks: Option<Arc<dyn AckSink>>,
    shutdown: CancellationToken,
}

impl RegistryActor {
    async fn run(
        mut self,
        restored: Vec<Restored>,
        history: Vec<TestRun>,
    ) -> Result<(), JournalError> {
        // The history first: resumed plans' results are judged against it.
        let facts = history.len();
        if self.scheduler.load_history(history).await.is_ok() && facts > 0 {
            tracing::info!(records = facts, "test history read back");
        }
        let resumed = self.restore(restored).await;
        if resumed > 0 {
            tracing::info!(
                plans = resumed,
                "resumed unfinished plans; waiting for workers to re-report their attempts"
            );
        }
        let mut outcome = Ok(());
        loop {
            let due = self.journal.as_ref().and_then(Journal::due);
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                () = linger(due) => {}
                committed = committed(&mut self.journal) => match committed {
                    Ok(marks) => self.durable(marks),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot persist plan state; the registry stops");
                        outcome = Err(e);
                        break;
                    }
                },
                Some(msg) = self.land_rx.recv() => self.landed_step(msg),
                Some(joined) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    self.job_ended(joined);
                }
                Some(output) = self.events.recv() => {
                    self.take(output);
                    // Take everything already queued into the same commit.
                    while let Ok(output) = self.events.try_recv() {
                        self.take(output);
                    }
                }
                msg = self.mailbox.recv() => match msg {
                    Some(msg) => self.on_msg(msg).await,
                    None => break,
                },
            }
            if let Some(j) = &mut self.journal {
                j.flush_if_due();
            }
        }
        self.mailbox.close();
        while let Ok(msg) = self.mailbox.try_recv() {
            reject(msg);
        }
        // Landing jobs stop with the term; a push already under way is reconciled by
        // the next leader from the log.
        for token in self.landings.values() {
            token.cancel();
        }
        self.jobs.abort_all();
        while self.jobs.join_next().await.is_some() {}
        if outcome.is_ok()
            && let Some(j) = &mut self.journal
        {
            // Shutdown: what is queued becomes durable if the store lets it in time.
            match tokio::time::timeout(DRAIN_TIMEOUT, j.drain()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "pending plan state not persisted"),
                Err(_) => {
                    tracing::warn!("pending plan state not persisted within the shutdown timeout")
                }
            }
        }
        if let Some(j) = &self.journal {
            tracing::info!(
                transactions = j.stats.transactions,
                operations = j.stats.operations,
                bytes = j.stats.bytes,
                "state store writes"
            );
        }
        outcome
    }

    /// Takes plans read back from the store; returns how many resume running.
    async fn restore(&mut self, restored: Vec<Restored>) -> usize {
        let mut resumed = 0;
        for r in restored {
            let id = r.id.clone();
            let mut record = new_record(
                r.plan.clone(),
                r.record.submitted_unix_ms,
                r.record.options.clone(),
            );
            let start = round_start(&r.log);
            for event in r.log.iter().cloned() {
                apply(&mut record, event, self.config.stderr_tail_bytes);
            }
            record.durable = record.log.len() as u64;
            record.newest.send_replace(record.durable);
            let done = record.done();
            let landing = record.summary.is_some() && !done;
            // The round's plan: a re-speculated round runs on its recorded resolution.
            let plan = record.plan.clone();
            let gates = restore::gate_states(&plan, &r.log[start..]);
            self.plans.insert(id.clone(), record);
            self.order.push_back(id.clone());
            if done {
                self.finished.push_back(id);
                continue;
            }
            if let Some(record) = self.plans.get_mut(&id) {
                record.cancel_requested = r.cancel.is_some();
            }
            if landing {
                // The gates ended; the landing did not: resume it from the log.
                let round = self.plans[&id].round;
                self.start_landing(&id, Replay::from_log(&r.log, round));
                resumed += 1;
                continue;
            }
            let age = std::time::Duration::from_millis(
                unix_ms_now().saturating_sub(r.record.submitted_unix_ms),
            );
            let mut options = r.record.options;
            options.blocked = plan
                .resolution()
                .map(|res| res.blocked(&plan))
                .unwrap_or_default();
            let resumed_ok = self
                .scheduler
                .restore(
                    RestoredPlan {
                        id: id.clone(),
                        plan,
                        options,
                        gates,
                        cancel: r.cancel,
                        age,
                    },
                    self.events_tx.clone(),
                )
                .await;
            match resumed_ok {
                Ok(()) => resumed += 1,
                Err(e) => tracing::error!(plan_id = %id, error = %e, "cannot resume plan"),
            }
        }
        self.enforce_retention();
        resumed
    }

    /// Starts the landing of plan `id`, whose summary is logged, for its current round.
    fn start_landing(&mut self, id: &PlanId, replay: Replay) {
        let Some(r) = self.plans.get(id) else { return };
        let (Some(summary), Some(spec)) = (r.summary.clone(), r.options.land.clone()) else {
            return;
        };
        let Some(sources) = self.sources.clone() else {
            tracing::warn!(plan_id = %id, "this coordinator cannot land plans");
            return;
        };
        let token = self.shutdown.child_token();
        if r.cancel_requested {
            token.cancel();
        }
        self.landings.insert(id.clone(), token.clone());
        let job = LandJob {
            id: id.clone(),
            plan: r.plan.clone(),
            failed: failed_items(&r.plan, &r.latest),
            summary,
            spec,
            round: r.round,
            replay,
            options: r.options.clone(),
        };
        let edges = LandEdges {
            scheduler: self.scheduler.clone(),
            sources,
            records: self.land_tx.clone(),
            outputs: self.events_tx.clone(),
            cancel: token,
            shutdown: self.shutdown.clone(),
        };
        let task = gatehouse_common::spawn::spawn_in(&mut self.jobs, "landing", job.run(edges));
        self.job_plans.insert(task.id(), id.clone());
    }

    /// A landing job ended. One that failed (a panic) ends its plan's landing with an
    /// error, so the plan is not left landing forever.
    fn job_ended(&mut self, joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match &joined {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let Some(plan) = self.job_plans.remove(&id) else {
            return;
        };
        let Err(e) = joined else { return };
        if e.is_cancelled() || self.shutdown.is_cancelled() {
            return;
        }
        tracing::error!(plan_id = %plan, error = %e, "a landing job failed");
        let Some(r) = self.plans.get(&plan) else {
            return;
        };
        if r.done() {
            return;
        }
        let Some(spec) = r.options.land.clone() else {
            return;
        };
        let base = r
            .plan
            .resolution()
            .and_then(|res| res.base.as_ref().ok())
            .map(|b| b.commit.clone());
        let mut lander = crate::land::Lander::empty(&spec.branch, spec.dry_run, base);
        if let crate::land::LandCommand::Finish(report) =
            lander.abort(gatehouse_common::land::LandFailure::PushFailed {
                error: format!("the landing failed on this coordinator: {e}"),
            })
        {
            let record = gatehouse_common::land::LandRecord::Finished(report);
            self.record_with(PlanEvent::Land { plan, record }, None);
        }
    }

    /// A landing job's step: logged like any event; its waiter answers once durable.
    fn landed_step(&mut self, msg: LandMsg) {
        let LandMsg {
            plan,
            record,
            durable,
        } = msg;
        self.record_with(PlanEvent::Land { plan, record }, durable);
    }

    async fn on_msg(&mut self, msg: RegistryMsg) {
        match msg {
            RegistryMsg::Submit {
                plan,
                source,
                options,
                reply,
            } => {
                let mut id = new_plan_id();
                while self.plans.contains_key(&id) {
                    id = new_plan_id();
                }
                let record = new_record(plan.clone(), unix_ms_now(), options.clone());
                let stored = self.journal.as_ref().map(|j| {
                    let bytes = codec::encode_record(&StoredRecord {
                        source,
                        options: options.clone(),
                        submitted_unix_ms: record.submitted_unix_ms,
                    });
                    (bytes, j.max_value_bytes())
                });
                if let Some((bytes, max)) = &stored
                    && bytes.len() > *max
                {
                    let _ = reply.send(Err(RegistryError::TooLarge {
                        bytes: bytes.len(),
                        max: *max,
                    }));
                    return;
                }
                self.plans.insert(id.clone(), record);
                self.order.push_back(id.clone());
                let submitted = self
                    .scheduler
                    .submit(id.clone(), plan, options, self.events_tx.clone())
                    .await;
                if let Err(e) = submitted {
                    // Nothing half-submitted is kept.
                    self.plans.remove(&id);
                    self.order.retain(|x| *x != id);
                    let _ = reply.send(Err(e.into()));
                    return;
                }
                // The plan's events reach this loop only after this handler returns, so
                // the record is queued before any of them. The answer waits until the
                // record is durable; if the registry stops first, the dropped reply
                // tells the caller the coordinator is shutting down.
                match (&mut self.journal, stored) {
                    (Some(j), Some((bytes, _))) => j.push_op(
                        StoreOp::PutPlan {
                            plan: id.clone(),
                            record: bytes,
                        },
                        Some(Waiter::Then(Box::new(move || {
                            let _ = reply.send(Ok(id));
                        }))),
                    ),
                    _ => {
                        let _ = reply.send(Ok(id));
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
                        // Only durable events are served: a watcher never sees an event
                        // that a new leader would not have.
                        let durable = usize::try_from(r.durable).unwrap_or(usize::MAX);
                        let start = usize::try_from(after).unwrap_or(usize::MAX).min(durable);
                        let end = (start + MAX_BATCH).min(durable);
                        Ok(EventBatch {
                            plan: r.plan.clone(),
                            events: (start..end)
                                .map(|i| (i as u64 + 1, r.log[i].clone()))
                                .collect(),
                            newest: r.newest.subscribe(),
                            finished: r.done() && durable == r.log.len(),
                            lands: r.options.land.is_some(),
                        })
                    }
                };
                let _ = reply.send(batch);
            }
            // The loop that answers this starts once the restore is done.
            RegistryMsg::Restored { reply } => drop(reply.send(())),
            RegistryMsg::Cancel { id, force, reply } => {
                let result = match self.plans.get_mut(&id) {
                    None => Err(RegistryError::NotFound(id.clone())),
                    Some(r) if r.done() => Ok(false),
                    Some(r) => {
                        // Sticky: a landing that starts after this (the round's gates
                        // end) starts cancelled; one under way stops before its push.
                        r.cancel_requested = true;
                        let gates_ended = r.summary.is_some();
                        if let Some(token) = self.landings.get(&id) {
                            token.cancel();
                        }
                        if gates_ended {
                            Ok(true)
                        } else {
                            self.scheduler
                                .cancel(id.clone(), force)
                                .await
                                .map(|()| true)
                                .map_err(Into::into)
                        }
                    }
                };
                if let (Ok(true), Some(j)) = (&result, &mut self.journal) {
                    j.push_op(
                        StoreOp::PutCancel { plan: id, force },
                        Some(Waiter::Then(Box::new(move || drop(reply.send(result))))),
                    );
                    return;
                }
                let _ = reply.send(result);
            }
        }
    }

    fn take(&mut self, output: PlanOutput) {
        match output {
            PlanOutput::Event(event) => self.record(event),
            // The results are recorded by events already queued: acknowledge them once
            // those are durable.
            PlanOutput::Ack { worker, attempts } => match (&mut self.journal, &self.acks) {
                (Some(j), _) => j.push_waiter(Waiter::Ack(worker, attempts)),
                (None, Some(sink)) => sink.ack(&worker, attempts),
                (None, None) => {}
            },
            // Memory only: the core's own history is all there is.
            PlanOutput::Tests(run) => {
                if let Some(j) = &mut self.journal {
                    self.history.record(&run, j);
                }
            }
        }
    }

    fn record(&mut self, event: PlanEvent) {
        self.record_with(event, None);
    }

    /// Logs `event`; `durable` answers once it is durable.
    fn record_with(&mut self, event: PlanEvent, durable: Option<oneshot::Sender<()>>) {
        let plan_id = event.plan().clone();
        let Some(r) = self.plans.get_mut(&plan_id) else {
            return;
        };
        let was_done = r.done();
        let lands = matches!(event, PlanEvent::Finished(_)) && r.options.land.is_some();
        let Some(seq) = apply(r, event, self.config.stderr_tail_bytes) else {
            return;
        };
        match &mut self.journal {
            Some(j) => {
                let logged = r.log.last().cloned().expect("apply logged an event");
                let waiter = durable.map(|tx| {
                    Waiter::Then(Box::new(move || {
                        let _ = tx.send(());
                    }))
                });
                j.push_event(&plan_id, seq, logged, waiter);
            }
            None => {
                r.durable = seq;
                r.newest.send_replace(seq);
                if let Some(tx) = durable {
                    let _ = tx.send(());
                }
            }
        }
        let done = r.done();
        if lands && !done {
            self.start_landing(&plan_id, Replay::default());
        }
        if done && !was_done {
            self.landings.remove(&plan_id);
            self.finished.push_back(plan_id);
            self.enforce_retention();
        }
    }

    /// Events up to these sequence numbers are durable: watchers may see them.
    fn durable(&mut self, marks: HashMap<PlanId, u64>) {
        for (plan, seq) in marks {
            if let Some(r) = self.plans.get_mut(&plan) {
                r.durable = r.durable.max(seq);
                r.newest.send_replace(r.durable);
            }
        }
    }

    /// Forgets the oldest finished plans beyond the retention count.
    fn enforce_retention(&mut self) {
        while self.finished.len() > self.config.retain_finished {
            if let Some(old) = self.finished.pop_front() {
                self.plans.remove(&old);
                self.order.retain(|x| *x != old);
                if let Some(j) = &mut self.journal {
                    j.push_op(StoreOp::DeletePlan { plan: old }, None);
                }
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
            land_branch: r.options.land.as_ref().map(|l| l.branch.clone()),
            land: r.land.clone(),
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

/// Sleeps until `due` (forever if `None`).
async fn linger(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn committed(journal: &mut Option<Journal>) -> Result<HashMap<PlanId, u64>, JournalError> {
    match journal {
        Some(j) => j.committed().await,
        None => std::future::pending().await,
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
        // Dropped unanswered: the caller sees the registry stop.
        RegistryMsg::Restored { reply } => drop(reply),
    }
}
