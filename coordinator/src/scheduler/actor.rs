//! The scheduler actor's run loop: events in, the core's commands carried out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use gatehouse_common::cache::{FileHashes, ResultCache};
use gatehouse_common::exec::{AttemptRef, FromWorker, ToWorker};
use gatehouse_common::ids::{PlanId, SessionKey};
use gatehouse_common::plan::Plan;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::handle::{RestoredPlan, SchedulerMsg};
use super::lookups::{CacheIo, LookupDone, LookupRequest, entry};
use super::{
    PlanOutput, SchedulerConfig, SchedulerError, WorkerEvent, WorkerSnapshot, WorkerTransport,
};
use crate::core::{Command, Event, PlanEvent, RunOptions, Scheduler, Timer};
use crate::observe::Observer;

/// Driver-side state of one live plan.
struct PlanDriver {
    plan: Arc<Plan>,
    /// Its subscriber.
    events: mpsc::UnboundedSender<PlanOutput>,
    /// Input file hashes memoised for this run.
    files: Arc<FileHashes>,
}

pub(super) struct SchedulerActor {
    core: Scheduler,
    /// Metrics and spans.
    observer: Observer,
    config: SchedulerConfig,
    /// Core time is `Instant::now() - epoch`.
    epoch: Instant,
    transport: Box<dyn WorkerTransport>,
    cache: CacheIo,
    mailbox: mpsc::Receiver<SchedulerMsg>,
    /// `None` once every executor report sender is gone.
    reports: Option<mpsc::Receiver<WorkerEvent>>,
    timers: DelayQueue<Timer>,
    plans: HashMap<PlanId, PlanDriver>,
    /// Where the workers as the core accounts them are published.
    workers: watch::Sender<Arc<WorkerSnapshot>>,
    /// Acknowledgements of plans not live here (see [`super::spawn`]).
    late_acks: Option<mpsc::UnboundedSender<PlanOutput>>,
    shutdown: CancellationToken,
}

/// The actor's edges, as `spawn` wires them.
pub(super) struct Edges {
    pub(super) transport: Box<dyn WorkerTransport>,
    pub(super) reports: mpsc::Receiver<WorkerEvent>,
    pub(super) cache: Option<Arc<dyn ResultCache>>,
    pub(super) late_acks: Option<mpsc::UnboundedSender<PlanOutput>>,
    pub(super) mailbox: mpsc::Receiver<SchedulerMsg>,
    pub(super) workers: watch::Sender<Arc<WorkerSnapshot>>,
}

impl SchedulerActor {
    /// An actor whose core time counts from `epoch`.
    pub(super) fn new(
        config: SchedulerConfig,
        edges: Edges,
        epoch: Instant,
        shutdown: CancellationToken,
    ) -> Self {
        let Edges {
            transport,
            reports,
            cache,
            late_acks,
            mailbox,
            workers,
        } = edges;
        Self {
            core: Scheduler::new(config.core.clone()),
            observer: Observer::new(config.metrics.clone(), config.tracer.clone()),
            cache: CacheIo::new(cache, config.max_cache_lookups, config.hash_inputs),
            config,
            epoch,
            transport,
            mailbox,
            reports: Some(reports),
            timers: DelayQueue::new(),
            plans: HashMap::new(),
            workers,
            late_acks,
            shutdown,
        }
    }

    pub(super) async fn run(mut self) {
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
                done = self.cache.next() => self.on_lookup(done),
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
        self.cache.drain(self.config.drain_timeout).await;
    }

    fn on_worker_event(&mut self, event: WorkerEvent) {
        let metrics = &self.observer.metrics;
        match &event {
            WorkerEvent::Joined(info) => metrics.worker_memory(
                info.id.worker.as_str(),
                None,
                Some(info.memory_available),
                Some(info.memory_total),
            ),
            WorkerEvent::Capacity {
                worker,
                memory_used,
                memory_available,
            } => metrics.worker_memory(
                worker.worker.as_str(),
                Some(*memory_used),
                Some(*memory_available),
                None,
            ),
            _ => {}
        }
        // Slot use changes with results, and without a gate event too (lost or adopted
        // attempts, a drain): each report and heartbeat refreshes the worker's figures.
        let refresh = match &event {
            _ if !self.observer.metrics.exported() => Vec::new(),
            WorkerEvent::Joined(info) => vec![info.id.clone()],
            WorkerEvent::Capacity { worker, .. } | WorkerEvent::Reported { worker, .. } => {
                vec![worker.clone()]
            }
            // Only an in-process executor reports results this way, and it is the only
            // worker there (`gatehouse run`); a start changes no slot.
            WorkerEvent::Report(FromWorker::Finished { .. }) => self.core.worker_ids(),
            _ => Vec::new(),
        };
        let membership = !matches!(event, WorkerEvent::Report(_) | WorkerEvent::Reported { .. });
        let lost = match &event {
            WorkerEvent::Lost(worker) => Some(worker.worker.clone()),
            _ => None,
        };
        self.feed(core_event(event));
        // A worker's series go with its last session (a reconnect may have replaced it).
        if let Some(w) = lost
            && !self.core.worker_ids().iter().any(|k| k.worker == w)
        {
            self.observer.metrics.worker_gone(w.as_str());
        }
        for w in refresh {
            self.refresh_slots(&w);
        }
        if membership {
            self.publish_workers();
        }
    }

    /// Publishes the workers as the core accounts them (on membership changes and
    /// heartbeats, so at most once per worker per heartbeat interval).
    fn publish_workers(&self) {
        let snapshot = WorkerSnapshot {
            epoch: self.epoch,
            workers: self.core.worker_views(),
        };
        self.workers.send_replace(Arc::new(snapshot));
    }

    /// Exports a worker's slot use as the core accounts it.
    fn refresh_slots(&self, worker: &SessionKey) {
        if !self.observer.metrics.exported() {
            return;
        }
        if let Some(slots) = self.core.slot_use(worker) {
            self.observer
                .metrics
                .worker_slots(worker.worker.as_str(), slots);
        }
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
            SchedulerMsg::LoadHistory { runs, reply } => {
                self.feed(Event::HistoryLoaded(runs));
                let _ = reply.send(Ok(()));
            }
            SchedulerMsg::Flakes { reply } => {
                let _ = reply.send(Ok(self.core.history().rows()));
            }
            SchedulerMsg::Restore {
                restored,
                events,
                reply,
            } => {
                let RestoredPlan {
                    id,
                    plan,
                    options,
                    gates,
                    cancel,
                    age,
                } = restored;
                let Some(options) = self.register(&id, &plan, options, events, true) else {
                    let _ = reply.send(Err(SchedulerError::DuplicatePlan(id)));
                    return;
                };
                let _ = reply.send(Ok(()));
                let keys = match (options.use_cache, self.plans.get(&id)) {
                    (true, Some(driver)) => self.cache.restored_keys(&plan, &driver.files),
                    _ => Vec::new(),
                };
                self.feed(Event::PlanRestored {
                    id,
                    plan,
                    options,
                    gates,
                    cancel,
                    age,
                    keys,
                });
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
        events: mpsc::UnboundedSender<PlanOutput>,
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
                plan: plan.clone(),
                events,
                files: Arc::new(FileHashes::default()),
            },
        );
        Some(RunOptions {
            use_cache: options.use_cache && self.cache.enabled(),
            ..options
        })
    }

    fn on_lookup(&mut self, done: LookupDone) {
        self.observer
            .lookup_done(&done.plan, done.gate, done.answer);
        self.feed(done.into_event());
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
        let core = &self.core;
        for (plan, gate) in self.cache.start(|p, g| core.awaits_cache(p, g)) {
            // Its plan stopped (cancel, fail-fast) before the lookup could start.
            self.observer.lookup_done(&plan, gate, None);
        }
    }

    fn execute(&mut self, cmd: Command, queue: &mut VecDeque<Event>) {
        match cmd {
            Command::Dispatch {
                worker,
                mut assignment,
                queued,
            } => {
                let a = &assignment.attempt;
                if let Some(driver) = self.plans.get(&a.plan) {
                    assignment.traceparent = self.observer.dispatching(
                        &driver.plan,
                        &a.plan,
                        a.gate,
                        Some(queued),
                        &worker,
                    );
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
            Command::CheckCache { plan, gate, deps } => {
                let Some(driver) = self.plans.get(&plan) else {
                    return;
                };
                self.observer.lookup_started(&driver.plan, &plan, gate);
                self.cache.queue(LookupRequest {
                    plan_id: plan,
                    gate,
                    plan: driver.plan.clone(),
                    deps,
                    files: driver.files.clone(),
                });
            }
            Command::StoreResult {
                plan,
                gate,
                key,
                result,
                flaky,
            } => {
                // In the cluster the executor that ran the gate writes a clean pass; a
                // flaky one (stored under `policy.cache_flaky`) is written here.
                let here = !self.config.executors_store || flaky.is_some();
                if let (true, Some(driver)) = (here, self.plans.get(&plan)) {
                    let producer = driver.plan.gate(gate).id.clone();
                    let mut entry = entry(result, producer);
                    entry.flaky = flaky;
                    self.cache.store(key, entry);
                }
            }
            Command::RecordTests(run) => {
                let plan = PlanId::new(run.plan.clone());
                // The plan's reader records it durably (the registry), or keeps it in
                // the local history (`gatehouse run`).
                match (self.plans.get(&plan), &self.late_acks) {
                    (Some(driver), _) => drop(driver.events.send(PlanOutput::Tests(run))),
                    (None, Some(late)) => drop(late.send(PlanOutput::Tests(run))),
                    (None, None) => {}
                }
            }
            Command::SetTimer { at, timer } => {
                self.timers.insert_at(timer, self.epoch + at);
            }
            Command::AckResults { worker, attempts } => self.ack(worker, attempts),
            Command::Emit(event) => self.emit(event),
        }
    }

    /// Acknowledgements follow the events of their plan through its subscriber, which
    /// delivers them once those events are durable. Those of a plan not live here (it
    /// finished, and its last events may still be on their way to the store) take the
    /// late path behind every event sent so far; without one (`gatehouse run`, whose
    /// executor keeps no results) there is nothing to acknowledge.
    fn ack(&mut self, worker: SessionKey, mut attempts: Vec<AttemptRef>) {
        attempts.sort_by(|a, b| a.plan.cmp(&b.plan));
        for of_plan in attempts.chunk_by(|a, b| a.plan == b.plan) {
            let ack = PlanOutput::Ack {
                worker: worker.clone(),
                attempts: of_plan.to_vec(),
            };
            // A reader that went away (a subscriber, or the registry as the term ends)
            // keeps nothing durable: the worker reports the results again.
            match (self.plans.get(&of_plan[0].plan), &self.late_acks) {
                (Some(driver), _) => drop(driver.events.send(ack)),
                (None, Some(late)) => drop(late.send(ack)),
                (None, None) => {}
            }
        }
    }

    fn emit(&mut self, event: PlanEvent) {
        match &event {
            PlanEvent::Gate(g) => self.observer.gate_event(g),
            PlanEvent::Finished(s) => self.observer.plan_finished(s),
            // The core never emits one: landing is the registry's.
            PlanEvent::Land { .. } => {}
        }
        let plan = event.plan().clone();
        let last = matches!(event, PlanEvent::Finished(_));
        if let Some(driver) = self.plans.get(&plan) {
            // A subscriber that went away just stops receiving.
            let _ = driver.events.send(PlanOutput::Event(event));
        }
        if last {
            self.plans.remove(&plan);
        }
    }
}

/// The core's event for an executor's report or membership change.
fn core_event(event: WorkerEvent) -> Event {
    match event {
        WorkerEvent::Report(FromWorker::Started { attempt }) => Event::GateStarted { attempt },
        WorkerEvent::Report(FromWorker::Finished {
            attempt,
            mut result,
        }) => {
            stamp(&mut result);
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
            mut finished,
        } => {
            for (_, result) in &mut finished {
                stamp(result);
            }
            Event::AttemptsReported {
                worker,
                running,
                finished,
            }
        }
    }
}

/// Times a result's test facts by this coordinator's clock, as it receives them: the
/// test history's retention and a quarantine's end date then never depend on a
/// worker's clock.
fn stamp(result: &mut gatehouse_common::exec::GateResult) {
    if let Some(tests) = result.tests.as_mut() {
        tests.read_unix_ms = gatehouse_common::cache::unix_ms_now();
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
