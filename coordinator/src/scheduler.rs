//! The scheduler actor: the driver around the sans-IO [`crate::core::Scheduler`].
//!
//! It owns the core, the timers the core asked for, the per-plan driver state (event
//! subscriber, cache keys) and the in-flight cache lookups and writes. Inputs: its
//! mailbox ([`SchedulerMsg`], bounded at [`MAILBOX_CAPACITY`]: submissions and cancels)
//! and one ordered channel of [`WorkerEvent`]s (executor reports and membership).
//! Outputs: [`ToWorker`] messages through a [`WorkerTransport`], and [`PlanEvent`]s to
//! each plan's subscriber.
//!
//! Concurrency contract: handlers never block. Cache key computation (file hashing)
//! runs in `spawn_blocking`, lookups and writes in child tasks owned by `JoinSet`s,
//! at most [`SchedulerConfig::max_cache_lookups`] lookups at once; their answers come
//! back through the run loop. The actor never awaits another actor: transports and
//! subscribers take messages without waiting (see [`WorkerTransport`], and subscribers
//! are unbounded because one plan publishes at most gates × (attempts + 3) events).
//!
//! Shutdown: when the token fires or every handle is dropped the loop ends, queued
//! submissions are answered with [`SchedulerError::ShuttingDown`], and pending cache
//! writes get [`SchedulerConfig::drain_timeout`] to finish.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::cache::CacheEntry;
use gatehouse_common::cache::{
    CacheError, CacheKey, FileHashes, ResultCache, compute_key, unix_ms_now,
};
use gatehouse_common::exec::{FromWorker, GateResult, ToWorker};
use gatehouse_common::ids::{GateIdx, PlanId, WorkerId};
use gatehouse_common::plan::Plan;
use gatehouse_common::spawn::{spawn_in, spawn_named};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::core::{
    Command, CoreConfig, Event, PlanEvent, RestoredGate, RunOptions, Scheduler, Timer, WorkerInfo,
};
use crate::metrics::CacheResult;
use crate::observe::Observer;

/// Capacity of the scheduler's mailbox.
pub const MAILBOX_CAPACITY: usize = 1024;

/// Driver configuration.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Core tunables.
    pub core: CoreConfig,
    /// Cache lookups (key computation + get) in flight at once.
    pub max_cache_lookups: usize,
    /// How long shutdown waits for pending cache writes.
    pub drain_timeout: Duration,
    /// Executors write passed results to the cache themselves (the cluster's workers):
    /// assignments carry the gate's cache key and the scheduler writes nothing.
    pub executors_store: bool,
    /// Whether gates' `inputs` files are visible here and can be hashed into keys. In
    /// the cluster they are not (they live on the workers): a gate with `inputs` then
    /// runs uncached, and so do the gates that depend on it.
    pub hash_inputs: bool,
    /// Metrics the driver updates (registered by the caller, if exported).
    pub metrics: crate::metrics::Metrics,
    /// Tracer of the plan and gate spans (`None`: no spans).
    pub tracer: gatehouse_common::telemetry::Tracer,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            core: CoreConfig::default(),
            max_cache_lookups: 32,
            drain_timeout: Duration::from_secs(10),
            executors_store: false,
            hash_inputs: true,
            metrics: crate::metrics::Metrics::default(),
            tracer: None,
        }
    }
}

/// Errors of the scheduler actor.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The actor has stopped (shutdown) and takes no more requests.
    #[error("scheduler is shutting down")]
    ShuttingDown,
    /// A plan with this id is already live.
    #[error("plan {0} is already running")]
    DuplicatePlan(PlanId),
}

/// A transport could not deliver to a worker; the core treats the worker as lost.
#[derive(Debug, thiserror::Error)]
#[error("worker {worker} is unreachable")]
pub struct TransportError {
    /// The unreachable worker.
    pub worker: WorkerId,
}

/// Carries [`ToWorker`] messages to executors. `send` must not block or await: an
/// implementation queues the message (in-process channel, a gRPC stream's outbox).
pub trait WorkerTransport: Send + 'static {
    /// Queues `msg` for `worker`.
    fn send(&mut self, worker: &WorkerId, msg: ToWorker) -> Result<(), TransportError>;

    /// Tells `worker` it may forget these results: they were stale and are ignored
    /// (results that count are acknowledged once durable, by the registry). Executors
    /// that keep no results need nothing.
    fn ack_ignored(
        &mut self,
        _worker: &WorkerId,
        _attempts: Vec<gatehouse_common::exec::AttemptRef>,
    ) {
    }
}

/// In-process transport to one local executor (used by `gatehouse run`). The channel is
/// unbounded because the scheduler must never wait on it; it holds at most one message
/// per slot plus cancellations, which the core bounds.
pub struct LocalTransport {
    tx: mpsc::UnboundedSender<ToWorker>,
}

impl LocalTransport {
    /// Wraps the local executor's inbox.
    pub fn new(tx: mpsc::UnboundedSender<ToWorker>) -> Self {
        Self { tx }
    }
}

impl WorkerTransport for LocalTransport {
    fn send(&mut self, worker: &WorkerId, msg: ToWorker) -> Result<(), TransportError> {
        self.tx.send(msg).map_err(|_| TransportError {
            worker: worker.clone(),
        })
    }
}

/// What executors and their sessions tell the scheduler, on one ordered channel: a
/// worker's reports and its membership changes must be seen in the order they happened
/// (a result sent just before a worker leaves must count before it is declared lost).
#[derive(Debug)]
pub enum WorkerEvent {
    /// An attempt report.
    Report(FromWorker),
    /// An executor joined (or rejoined as a fresh worker).
    Joined(WorkerInfo),
    /// A heartbeat's memory figures.
    Capacity {
        worker: WorkerId,
        memory_used: u64,
        memory_available: u64,
    },
    /// The executor is draining: nothing new for it.
    Draining(WorkerId),
    /// The executor is gone; its attempts are re-queued.
    Lost(WorkerId),
    /// A reconnected executor re-reported attempts kept from an earlier session (sent
    /// right after its `Joined`).
    Reported {
        worker: WorkerId,
        running: Vec<gatehouse_common::exec::AttemptRef>,
        finished: Vec<(gatehouse_common::exec::AttemptRef, GateResult)>,
    },
}

impl From<FromWorker> for WorkerEvent {
    fn from(report: FromWorker) -> Self {
        WorkerEvent::Report(report)
    }
}

/// Messages to the scheduler actor.
pub(crate) enum SchedulerMsg {
    Submit {
        id: PlanId,
        plan: Arc<Plan>,
        options: RunOptions,
        events: mpsc::UnboundedSender<PlanEvent>,
        reply: oneshot::Sender<Result<PlanId, SchedulerError>>,
    },
    Cancel {
        plan: PlanId,
        force: bool,
    },
    Restore {
        id: PlanId,
        plan: Arc<Plan>,
        options: RunOptions,
        gates: Vec<RestoredGate>,
        cancel: Option<bool>,
        age: Duration,
        events: mpsc::UnboundedSender<PlanEvent>,
        reply: oneshot::Sender<Result<(), SchedulerError>>,
    },
    EndRecoveryAfter(Duration),
}

/// Handle to the scheduler actor.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<SchedulerMsg>,
}

impl SchedulerHandle {
    /// Submits a validated plan under `id`; its events go to `events`, ending with
    /// [`PlanEvent::Finished`].
    pub async fn submit(
        &self,
        id: PlanId,
        plan: Arc<Plan>,
        options: RunOptions,
        events: mpsc::UnboundedSender<PlanEvent>,
    ) -> Result<PlanId, SchedulerError> {
        self.ask(|reply| SchedulerMsg::Submit {
            id,
            plan,
            options,
            events,
            reply,
        })
        .await
    }

    /// Cancels a plan (`force`: kill running gates without a grace period).
    pub async fn cancel(&self, plan: PlanId, force: bool) -> Result<(), SchedulerError> {
        self.send(SchedulerMsg::Cancel { plan, force }).await
    }

    /// Resumes a plan restored from the durable log (see `core::recovery`).
    #[allow(clippy::too_many_arguments)]
    pub async fn restore(
        &self,
        id: PlanId,
        plan: Arc<Plan>,
        options: RunOptions,
        gates: Vec<RestoredGate>,
        cancel: Option<bool>,
        age: Duration,
        events: mpsc::UnboundedSender<PlanEvent>,
    ) -> Result<(), SchedulerError> {
        self.ask(|reply| SchedulerMsg::Restore {
            id,
            plan,
            options,
            gates,
            cancel,
            age,
            events,
            reply,
        })
        .await
    }

    /// Gates of restored plans still in doubt after `window` run again.
    pub async fn end_recovery_after(&self, window: Duration) -> Result<(), SchedulerError> {
        self.send(SchedulerMsg::EndRecoveryAfter(window)).await
    }

    /// Sends a request and waits for its answer.
    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T, SchedulerError>>) -> SchedulerMsg,
    ) -> Result<T, SchedulerError> {
        let (reply, rx) = oneshot::channel();
        self.send(msg(reply)).await?;
        rx.await.map_err(|_| SchedulerError::ShuttingDown)?
    }

    async fn send(&self, msg: SchedulerMsg) -> Result<(), SchedulerError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| SchedulerError::ShuttingDown)
    }
}

/// Starts the scheduler actor.
pub fn spawn(
    config: SchedulerConfig,
    transport: Box<dyn WorkerTransport>,
    reports: mpsc::Receiver<WorkerEvent>,
    cache: Option<Arc<dyn ResultCache>>,
    shutdown: CancellationToken,
) -> (SchedulerHandle, JoinHandle<()>) {
    let (tx, mailbox) = mpsc::channel(MAILBOX_CAPACITY);
    let actor = SchedulerActor {
        core: Scheduler::new(config.core.clone()),
        observer: Observer::new(config.metrics.clone(), config.tracer.clone()),
        config,
        epoch: Instant::now(),
        transport,
        cache,
        mailbox,
        reports: Some(reports),
        timers: DelayQueue::new(),
        plans: HashMap::new(),
        lookup_queue: VecDeque::new(),
        lookups: JoinSet::new(),
        lookup_ids: HashMap::new(),
        stores: JoinSet::new(),
        flights: Flights::default(),
        recorded: None,
        shutdown,
    };
    let task = spawn_named("scheduler", actor.run());
    (SchedulerHandle { tx }, task)
}

/// Driver-side state of one live plan.
struct PlanDriver {
    plan: Arc<Plan>,
    events: mpsc::UnboundedSender<PlanEvent>,
    /// Cache keys of gates that went through a cache check (`None`: not computed, or
    /// an input could not be read).
    keys: Vec<Option<CacheKey>>,
    /// Input file hashes memoised for this run.
    files: Arc<FileHashes>,
    /// Whether the plan runs with the cache.
    use_cache: bool,
}

/// Outcome of one lookup task.
struct Lookup {
    plan: PlanId,
    gate: GateIdx,
    key: Option<CacheKey>,
    hit: Option<Box<CacheEntry>>,
    /// How the cache answered (`None`: not asked).
    answer: Option<CacheResult>,
}

struct SchedulerActor {
    core: Scheduler,
    /// Metrics and spans.
    observer: Observer,
    config: SchedulerConfig,
    /// Core time is `Instant::now() - epoch`.
    epoch: Instant,
    transport: Box<dyn WorkerTransport>,
    cache: Option<Arc<dyn ResultCache>>,
    mailbox: mpsc::Receiver<SchedulerMsg>,
    /// `None` once every executor report sender is gone.
    reports: Option<mpsc::Receiver<WorkerEvent>>,
    timers: DelayQueue<Timer>,
    plans: HashMap<PlanId, PlanDriver>,
    /// Cache checks waiting for a lookup slot.
    lookup_queue: VecDeque<(PlanId, GateIdx)>,
    lookups: JoinSet<Lookup>,
    /// Which gate each lookup task serves, so a task that fails still answers.
    lookup_ids: HashMap<tokio::task::Id, (PlanId, GateIdx)>,
    stores: JoinSet<Result<(), CacheError>>,
    /// Keys being computed by a running gate, and the gates waiting for their result.
    flights: Flights,
    /// While a worker's report is handled (and only then): the attempts whose results
    /// produced an event.
    recorded: Option<std::collections::HashSet<gatehouse_common::exec::AttemptRef>>,
    shutdown: CancellationToken,
}

impl SchedulerActor {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                // Worker events before new requests: they free capacity, and a worker that
                // registered before a plan was submitted is known when the plan starts.
                report = recv_opt(&mut self.reports) => match report {
                    Some(event) => self.on_worker_event(event),
                    None => {
                        // Every executor is gone: nothing it ran will report back.
                        self.reports = None;
                        for worker in self.core.worker_ids() {
                            self.feed(Event::WorkerLost { worker });
                        }
                    }
                },
                msg = self.mailbox.recv() => match msg {
                    Some(msg) => self.on_msg(msg),
                    None => break,
                },
                Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)),
                    if !self.timers.is_empty() => self.feed(Event::TimerFired(expired.into_inner())),
                Some(done) = self.lookups.join_next_with_id(), if !self.lookups.is_empty() => {
                    match done {
                        Ok((id, lookup)) => {
                            self.lookup_ids.remove(&id);
                            self.on_lookup(lookup);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cache lookup task failed; treating it as a miss");
                            if let Some((plan, gate)) = self.lookup_ids.remove(&e.id()) {
                                let answer = Some(CacheResult::Error);
                                self.on_lookup(Lookup { plan, gate, key: None, hit: None, answer });
                            }
                        }
                    }
                    self.start_lookups();
                }
                Some(stored) = self.stores.join_next(), if !self.stores.is_empty() => log_store(stored),
            }
        }
        self.drain().await;
    }

    async fn drain(&mut self) {
        self.observer.interrupt_all();
        self.mailbox.close();
        while let Ok(msg) = self.mailbox.try_recv() {
            if let SchedulerMsg::Submit { reply, .. } = msg {
                let _ = reply.send(Err(SchedulerError::ShuttingDown));
            }
        }
        self.lookups.abort_all();
        let deadline = tokio::time::sleep(self.config.drain_timeout);
        tokio::pin!(deadline);
        while !self.stores.is_empty() {
            tokio::select! {
                () = &mut deadline => {
                    tracing::warn!(pending = self.stores.len(), "cache writes did not finish before shutdown");
                    self.stores.abort_all();
                    break;
                }
                Some(stored) = self.stores.join_next() => log_store(stored),
            }
        }
    }

    fn on_worker_event(&mut self, event: WorkerEvent) {
        let metrics = &self.observer.metrics;
        match &event {
            WorkerEvent::Joined(info) => metrics.worker_memory(
                info.id.as_str(),
                None,
                Some(info.memory_available),
                Some(info.memory_total),
            ),
            WorkerEvent::Capacity {
                worker,
                memory_used,
                memory_available,
            } => metrics.worker_memory(
                worker.as_str(),
                Some(*memory_used),
                Some(*memory_available),
                None,
            ),
            WorkerEvent::Lost(worker) => metrics.worker_gone(worker.as_str()),
            _ => {}
        }
        // Slot use also changes without a gate event (lost or adopted attempts, a
        // drain): each heartbeat refreshes the worker's figures.
        let refresh = match &event {
            WorkerEvent::Joined(info) => Some(info.id.clone()),
            WorkerEvent::Capacity { worker, .. } => Some(worker.clone()),
            _ => None,
        };
        self.feed_worker_event(event);
        if let Some(w) = refresh {
            self.refresh_slots(&w);
        }
    }

    /// Exports a worker's slot use as the core accounts it.
    fn refresh_slots(&self, worker: &WorkerId) {
        if !self.observer.metrics.exported() {
            return;
        }
        if let Some(slots) = self.core.slot_use(worker) {
            self.observer.metrics.worker_slots(worker.as_str(), slots);
        }
    }

    fn feed_worker_event(&mut self, event: WorkerEvent) {
        let event = match event {
            WorkerEvent::Report(FromWorker::Started { attempt }) => Event::GateStarted { attempt },
            WorkerEvent::Report(FromWorker::Finished { attempt, result }) => {
                Event::GateFinished { attempt, result }
            }
            WorkerEvent::Joined(info) => Event::WorkerJoined(info),
            WorkerEvent::Capacity {
                worker,
                memory_used,
                memory_available,
            } => Event::WorkerCapacity {
                worker,
                memory_used,
                memory_available,
            },
            WorkerEvent::Draining(worker) => Event::WorkerDraining { worker },
            WorkerEvent::Lost(worker) => Event::WorkerLost { worker },
            WorkerEvent::Reported {
                worker,
                running,
                finished,
            } => {
                let reported: Vec<_> = finished.iter().map(|(a, _)| a.clone()).collect();
                self.recorded = Some(std::collections::HashSet::new());
                self.feed(Event::AttemptsReported {
                    worker: worker.clone(),
                    running,
                    finished,
                });
                let recorded = self.recorded.take().unwrap_or_default();
                // A result that produced no event was stale: the worker may forget it.
                let ignored: Vec<_> = reported
                    .into_iter()
                    .filter(|a| !recorded.contains(a))
                    .collect();
                if !ignored.is_empty() {
                    self.transport.ack_ignored(&worker, ignored);
                }
                return;
            }
        };
        self.feed(event);
    }

    fn on_msg(&mut self, msg: SchedulerMsg) {
        match msg {
            SchedulerMsg::Submit {
                id,
                plan,
                options,
                events,
                reply,
            } => {
                let Some(options) = self.register(&id, &plan, options, events, false) else {
                    let _ = reply.send(Err(SchedulerError::DuplicatePlan(id)));
                    return;
                };
                let _ = reply.send(Ok(id.clone()));
                self.feed(Event::PlanSubmitted { id, plan, options });
            }
            SchedulerMsg::Cancel { plan, force } => self.feed(Event::Cancel { plan, force }),
            SchedulerMsg::Restore {
                id,
                plan,
                options,
                gates,
                cancel,
                age,
                events,
                reply,
            } => {
                let Some(options) = self.register(&id, &plan, options, events, true) else {
                    let _ = reply.send(Err(SchedulerError::DuplicatePlan(id)));
                    return;
                };
                let _ = reply.send(Ok(()));
                if options.use_cache {
                    self.restore_keys(&id);
                }
                self.feed(Event::PlanRestored {
                    id,
                    plan,
                    options,
                    gates,
                    cancel,
                    age,
                });
            }
            SchedulerMsg::EndRecoveryAfter(window) => {
                self.timers
                    .insert_at(Timer::RecoveryWindow, Instant::now() + window);
            }
        }
    }

    /// Sets up the driver's state of a new live plan; `None` if the id is live already.
    /// Returns the options the core gets (no cache without one).
    fn register(
        &mut self,
        id: &PlanId,
        plan: &Arc<Plan>,
        options: RunOptions,
        events: mpsc::UnboundedSender<PlanEvent>,
        resumed: bool,
    ) -> Option<RunOptions> {
        if self.plans.contains_key(id) {
            return None;
        }
        self.observer
            .plan_started(id, plan, options.trace_parent.as_deref(), resumed);
        self.plans.insert(
            id.clone(),
            PlanDriver {
                keys: vec![None; plan.gates.len()],
                plan: plan.clone(),
                events,
                files: Arc::new(FileHashes::default()),
                use_cache: options.use_cache && self.cache.is_some(),
            },
        );
        Some(RunOptions {
            use_cache: options.use_cache && self.cache.is_some(),
            trace_parent: options.trace_parent,
        })
    }

    /// Runs one event through the core and carries out the commands (which may feed
    /// further events, e.g. a worker found unreachable).
    fn feed(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let now = self.epoch.elapsed();
            for cmd in self.core.handle(now, event) {
                self.execute(cmd, &mut queue);
            }
        }
        if self.observer.metrics.exported() {
            self.observer
                .core_state(&self.core.gauges(), self.core.throttled_total());
        }
        self.start_lookups();
    }

    fn execute(&mut self, cmd: Command, queue: &mut VecDeque<Event>) {
        match cmd {
            Command::Dispatch {
                worker,
                mut assignment,
                queued,
            } => {
                if self.config.executors_store {
                    assignment.cache_key = self.cacheable_key(&assignment.attempt);
                }
                let a = &assignment.attempt;
                if let Some(driver) = self.plans.get(&a.plan) {
                    assignment.traceparent =
                        self.observer
                            .dispatching(&driver.plan, &a.plan, a.gate, Some(queued));
                }
                self.refresh_slots(&worker);
                if let Err(e) = self.transport.send(&worker, ToWorker::Assign(assignment)) {
                    tracing::warn!(worker_id = %e.worker, "dispatch failed; declaring the worker lost");
                    queue.push_back(Event::WorkerLost { worker: e.worker });
                }
            }
            Command::CancelAttempt {
                worker,
                attempt,
                grace,
            } => {
                if let Err(e) = self
                    .transport
                    .send(&worker, ToWorker::Cancel { attempt, grace })
                {
                    queue.push_back(Event::WorkerLost { worker: e.worker });
                }
            }
            Command::CheckCache { plan, gate } => {
                if let Some(driver) = self.plans.get(&plan) {
                    self.observer.lookup_started(&driver.plan, &plan, gate);
                }
                self.lookup_queue.push_back((plan, gate))
            }
            Command::StoreResult { plan, gate, result } => {
                if !self.config.executors_store {
                    self.store(&plan, gate, result);
                }
            }
            Command::SetTimer { at, timer } => {
                self.timers.insert_at(timer, self.epoch + at);
            }
            Command::Emit(event) => {
                if let (Some(recorded), PlanEvent::Gate(g)) = (&mut self.recorded, &event)
                    && g.result.is_some()
                {
                    recorded.insert(gatehouse_common::exec::AttemptRef {
                        plan: g.plan.clone(),
                        gate: g.gate,
                        attempt: g.attempt,
                    });
                }
                if let PlanEvent::Gate(g) = &event
                    && let crate::core::GateStatus::Finished(terminal) = g.status
                {
                    self.land(&g.plan, g.gate, terminal, g.result.as_ref(), queue);
                }
                match &event {
                    PlanEvent::Gate(g) => {
                        self.observer.gate_event(g);
                        if let (Some(w), true) = (&g.worker, g.result.is_some()) {
                            self.refresh_slots(w);
                        }
                    }
                    PlanEvent::Finished(s) => self.observer.plan_finished(s),
                }
                let (plan, last) = match &event {
                    PlanEvent::Gate(g) => (g.plan.clone(), false),
                    PlanEvent::Finished(s) => (s.plan.clone(), true),
                };
                if let Some(driver) = self.plans.get(&plan) {
                    // A subscriber that went away just stops receiving.
                    let _ = driver.events.send(event);
                }
                if last {
                    self.plans.remove(&plan);
                }
            }
        }
    }

    /// Computes every key of a restored plan up front: gates that passed before the
    /// failover are never looked up again, and without their keys every gate that
    /// depends on them would run uncached. Only when keys do not hash files (the
    /// coordinator), so this is pure hashing, in dependency order.
    fn restore_keys(&mut self, id: &PlanId) {
        if self.config.hash_inputs {
            return;
        }
        let Some(driver) = self.plans.get_mut(id) else {
            return;
        };
        let plan = driver.plan.clone();
        let n = plan.gates.len();
        let mut dependents: Vec<Vec<GateIdx>> = vec![Vec::new(); n];
        let mut blocking = vec![0usize; n];
        for g in (0..n as u32).map(GateIdx) {
            for d in plan.prerequisites(g) {
                dependents[d.ix()].push(g);
                blocking[g.ix()] += 1;
            }
        }
        let mut ready: VecDeque<GateIdx> = (0..n as u32)
            .map(GateIdx)
            .filter(|g| blocking[g.ix()] == 0)
            .collect();
        while let Some(g) = ready.pop_front() {
            driver.keys[g.ix()] = dependency_keys(&plan, g, &driver.keys, false)
                .and_then(|deps| compute_key(&plan, g, &deps, &driver.files).ok());
            for &d in &dependents[g.ix()] {
                blocking[d.ix()] -= 1;
                if blocking[d.ix()] == 0 {
                    ready.push_back(d);
                }
            }
        }
    }

    /// Starts queued cache lookups while below the concurrency limit.
    fn start_lookups(&mut self) {
        while self.lookups.len() < self.config.max_cache_lookups {
            let Some((plan_id, gate)) = self.lookup_queue.pop_front() else {
                return;
            };
            let Some(driver) = self.plans.get(&plan_id) else {
                self.observer.lookup_done(&plan_id, gate, None);
                continue;
            };
            // A gate that stopped waiting (its plan was cancelled) needs no lookup.
            if !self.core.awaits_cache(&plan_id, gate) {
                self.observer.lookup_done(&plan_id, gate, None);
                continue;
            }
            let plan = driver.plan.clone();
            let deps = dependency_keys(&plan, gate, &driver.keys, self.config.hash_inputs);
            let files = driver.files.clone();
            let cache = self.cache.clone();
            let served = (plan_id.clone(), gate);
            let task = spawn_in(&mut self.lookups, "cache-lookup", async move {
                let key = match deps {
                    Some(deps) => {
                        let p = plan.clone();
                        tokio::task::spawn_blocking(move || compute_key(&p, gate, &deps, &files))
                            .await
                            .map_err(|e| tracing::error!(error = %e, "cache key task failed"))
                            .ok()
                            .and_then(|r| {
                                r.map_err(|e| tracing::warn!(error = %e, "cannot compute cache key; gate runs uncached"))
                                    .ok()
                            })
                    }
                    None => None,
                };
                let mut hit = None;
                let mut answer = None;
                if let (Some(key), Some(cache), true) = (key, cache, plan.gate(gate).cache) {
                    match cache.get(&key).await {
                        Ok(entry) => {
                            answer = Some(match entry {
                                Some(_) => CacheResult::Hit,
                                None => CacheResult::Miss,
                            });
                            hit = entry.map(Box::new);
                        }
                        Err(e) => {
                            answer = Some(CacheResult::Error);
                            tracing::warn!(error = %e, "cache lookup failed; treating as a miss")
                        }
                    }
                }
                Lookup {
                    plan: plan_id,
                    gate,
                    key,
                    hit,
                    answer,
                }
            });
            self.lookup_ids.insert(task.id(), served);
        }
    }

    fn on_lookup(&mut self, lookup: Lookup) {
        self.observer
            .lookup_done(&lookup.plan, lookup.gate, lookup.answer);
        let Some(driver) = self.plans.get_mut(&lookup.plan) else {
            return;
        };
        driver.keys[lookup.gate.ix()] = lookup.key;
        let cacheable = driver.plan.gate(lookup.gate).cache;
        // Only a gate that still waits may lead or join a flight: one that ended while
        // its lookup ran (cancel, fail-fast) would never land and would hold the key.
        if !self.core.awaits_cache(&lookup.plan, lookup.gate) {
            return;
        }
        // A gate with this key passed moments ago here; its result may not have
        // reached the cache yet (executors write it in the background).
        let mut lookup = lookup;
        if let (None, Some(key), true) = (&lookup.hit, lookup.key, cacheable) {
            lookup.hit = self.flights.recent.get(&key).map(Box::new);
        }
        // Single flight: a miss on a key that a running gate is computing waits for
        // that gate instead of running the same thing again.
        if let (None, Some(key), true) = (&lookup.hit, lookup.key, cacheable)
            && !self.flights.join(key, (lookup.plan.clone(), lookup.gate))
        {
            tracing::debug!(plan_id = %lookup.plan, gate = lookup.gate.0, key = %key,
                "an identical gate is running; waiting for its result");
            return;
        }
        self.feed(Event::CacheChecked {
            plan: lookup.plan,
            gate: lookup.gate,
            hit: lookup.hit,
        });
    }

    /// A gate ended: if it was computing a key others wait for, a pass answers them as
    /// cache hits; anything else lets the next waiter run it.
    fn land(
        &mut self,
        plan: &PlanId,
        gate: GateIdx,
        terminal: crate::core::Terminal,
        result: Option<&GateResult>,
        queue: &mut VecDeque<Event>,
    ) {
        let passed = match (terminal, result) {
            (crate::core::Terminal::Passed, Some(result)) => Some(result),
            _ => None,
        };
        let core = &self.core;
        let waiting = |g: &(PlanId, GateIdx)| core.awaits_cache(&g.0, g.1);
        let Some((key, waiters)) = self.flights.land(plan, gate, passed.is_some(), waiting) else {
            return;
        };
        let producer = self.plans.get(plan).map(|d| d.plan.gate(gate).id.clone());
        if let (Some(result), Some(producer)) = (passed, &producer) {
            let entry = CacheEntry {
                result: result.clone(),
                producer: producer.clone(),
                created_unix_ms: unix_ms_now(),
            };
            self.flights.recent.insert(key, entry);
        }
        for (plan, gate) in waiters {
            let hit = passed.zip(producer.clone()).map(|(result, producer)| {
                Box::new(CacheEntry {
                    result: result.clone(),
                    producer,
                    created_unix_ms: unix_ms_now(),
                })
            });
            tracing::debug!(plan_id = %plan, gate = gate.0, key = %key, hit = hit.is_some(),
                "identical gate ended");
            queue.push_back(Event::CacheChecked { plan, gate, hit });
        }
    }

    /// The key an assignment's result is cached under by its executor, if any.
    fn cacheable_key(&self, attempt: &gatehouse_common::exec::AttemptRef) -> Option<CacheKey> {
        let driver = self.plans.get(&attempt.plan)?;
        let cached = driver.use_cache && driver.plan.gate(attempt.gate).cache;
        cached.then(|| driver.keys[attempt.gate.ix()]).flatten()
    }

    fn store(&mut self, plan: &PlanId, gate: GateIdx, result: GateResult) {
        let (Some(driver), Some(cache)) = (self.plans.get(plan), self.cache.clone()) else {
            return;
        };
        let Some(key) = driver.keys[gate.ix()] else {
            return;
        };
        let entry = CacheEntry {
            result,
            producer: driver.plan.gate(gate).id.clone(),
            created_unix_ms: unix_ms_now(),
        };
        spawn_in(&mut self.stores, "cache-store", async move {
            cache.put(&key, &entry).await
        });
    }
}

/// Keys of the gates `gate` directly depends on (needs + every gate of its item's deps);
/// `None` if one is unknown (then the gate cannot be keyed and runs uncached).
/// Also `None` for a gate with `inputs` unless they can be hashed here (`hash_inputs`).
fn dependency_keys(
    plan: &Plan,
    gate: GateIdx,
    keys: &[Option<CacheKey>],
    hash_inputs: bool,
) -> Option<Vec<CacheKey>> {
    if !hash_inputs && !plan.gate(gate).inputs.is_empty() {
        return None;
    }
    plan.prerequisites(gate).map(|d| keys[d.ix()]).collect()
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn log_store(stored: Result<Result<(), CacheError>, tokio::task::JoinError>) {
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cache write failed"),
        Err(e) => tracing::warn!(error = %e, "cache write task failed"),
    }
}

/// How long a passed result stays in [`Flights::recent`].
const RECENT_FOR: Duration = Duration::from_secs(60);
/// Bytes of output tails [`Flights::recent`] holds at most.
const RECENT_BYTES: u64 = 64 << 20;

/// Single flight on cache keys: the gate that missed a key first runs it (the leader);
/// others that miss the same key meanwhile wait for the leader to end. A leader's
/// pass is also kept for a minute (bounded by bytes), so a gate whose lookup started
/// before the pass and missed — the executor's write was still on its way — does not
/// run it again.
struct Flights {
    recent: moka::sync::Cache<CacheKey, CacheEntry>,
    /// Key -> the gates waiting for its leader, oldest first.
    waiting: HashMap<CacheKey, VecDeque<(PlanId, GateIdx)>>,
    /// Leader gate -> the key it computes.
    leaders: HashMap<(PlanId, GateIdx), CacheKey>,
    /// Waiting gate -> the key it waits for.
    waiters: HashMap<(PlanId, GateIdx), CacheKey>,
}

impl Default for Flights {
    fn default() -> Self {
        Self {
            recent: moka::sync::Cache::builder()
                .max_capacity(RECENT_BYTES)
                .weigher(|_, e: &CacheEntry| {
                    let tails = e.result.stdout.bytes.len() + e.result.stderr.bytes.len();
                    u32::try_from(tails + 256).unwrap_or(u32::MAX)
                })
                .time_to_live(RECENT_FOR)
                .build(),
            waiting: HashMap::new(),
            leaders: HashMap::new(),
            waiters: HashMap::new(),
        }
    }
}

impl Flights {
    /// `gate` missed `key`: `true` if it leads (runs it now), `false` if it waits.
    fn join(&mut self, key: CacheKey, gate: (PlanId, GateIdx)) -> bool {
        match self.waiting.get_mut(&key) {
            Some(queue) => {
                self.waiters.insert(gate.clone(), key);
                queue.push_back(gate);
                false
            }
            None => {
                self.waiting.insert(key, VecDeque::new());
                self.leaders.insert(gate, key);
                true
            }
        }
    }

    /// `gate` ended (`passed` or not). If it led a key: its waiters to answer (all of
    /// them after a pass; otherwise the oldest, which leads from now on). A waiter that
    /// ended by itself (its plan was cancelled) just leaves the queue.
    /// Waiters for which `waiting` is false are dropped (never promoted).
    fn land(
        &mut self,
        plan: &PlanId,
        gate: GateIdx,
        passed: bool,
        waiting: impl Fn(&(PlanId, GateIdx)) -> bool,
    ) -> Option<(CacheKey, Vec<(PlanId, GateIdx)>)> {
        if self.leaders.is_empty() {
            // Nothing is in flight (the usual case): no gate can lead or wait.
            return None;
        }
        let id = (plan.clone(), gate);
        if let Some(key) = self.waiters.remove(&id) {
            if let Some(queue) = self.waiting.get_mut(&key) {
                queue.retain(|g| *g != id);
            }
            return None;
        }
        let key = self.leaders.remove(&id)?;
        let mut queue = self.waiting.remove(&key).unwrap_or_default();
        for g in &queue {
            self.waiters.remove(g);
        }
        queue.retain(&waiting);
        if passed {
            return Some((key, queue.into()));
        }
        let next = queue.pop_front()?;
        self.leaders.insert(next.clone(), key);
        for g in &queue {
            self.waiters.insert(g.clone(), key);
        }
        self.waiting.insert(key, queue);
        Some((key, vec![next]))
    }
}

#[cfg(test)]
mod flight_tests {
    use super::*;

    fn gate(plan: &str, g: u32) -> (PlanId, GateIdx) {
        (PlanId::new(plan), GateIdx(g))
    }

    #[test]
    fn waiters_get_the_pass_or_take_over_in_order_and_can_leave() {
        let key = CacheKey([1; 32]);
        let mut f = Flights::default();
        assert!(f.join(key, gate("p1", 0)), "the first miss leads");
        assert!(!f.join(key, gate("p2", 0)));
        assert!(!f.join(key, gate("p3", 0)));
        assert!(!f.join(key, gate("p4", 0)));
        // p3's plan was cancelled while it waited: it just leaves.
        assert_eq!(
            f.land(&PlanId::new("p3"), GateIdx(0), false, |_| true),
            None
        );
        // The leader failed: the oldest waiter runs it now.
        assert_eq!(
            f.land(&PlanId::new("p1"), GateIdx(0), false, |_| true),
            Some((key, vec![gate("p2", 0)]))
        );
        // A gate that neither leads nor waits changes nothing.
        assert_eq!(f.land(&PlanId::new("p9"), GateIdx(0), true, |_| true), None);
        // The new leader passed: everyone left gets its result.
        assert_eq!(
            f.land(&PlanId::new("p2"), GateIdx(0), true, |_| true),
            Some((key, vec![gate("p4", 0)]))
        );
        assert!(f.waiting.is_empty() && f.leaders.is_empty() && f.waiters.is_empty());
        assert!(f.join(key, gate("p5", 0)), "a later miss leads again");
    }

    #[test]
    fn a_waiter_that_stopped_waiting_is_never_promoted() {
        let key = CacheKey([2; 32]);
        let mut f = Flights::default();
        assert!(f.join(key, gate("p1", 0)));
        assert!(!f.join(key, gate("p2", 0)));
        assert!(!f.join(key, gate("p3", 0)));
        // p2 no longer waits (its plan ended without a terminal event reaching us).
        let waiting = |g: &(PlanId, GateIdx)| g.0 != PlanId::new("p2");
        assert_eq!(
            f.land(&PlanId::new("p1"), GateIdx(0), false, waiting),
            Some((key, vec![gate("p3", 0)]))
        );
        assert_eq!(
            f.land(&PlanId::new("p3"), GateIdx(0), true, |_| true),
            Some((key, vec![]))
        );
        assert!(f.waiting.is_empty() && f.leaders.is_empty() && f.waiters.is_empty());
    }
}
