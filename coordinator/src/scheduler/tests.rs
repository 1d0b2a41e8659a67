//! Tests of the scheduler actor through its handle, with a channel transport standing in
//! for executors and paused tokio time for the retry timers.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::cache::DiskCache;
use gatehouse_common::exec::{ExitStatus, FromWorker, ToWorker};
use gatehouse_common::ids::{PlanId, SessionKey};
use gatehouse_common::plan::Policy;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::testkit::{MI, flat, g, result, worker};
use crate::core::{GateStatus, PlanEvent, PlanOutcome, PlanSummary, RunOptions, Terminal};
use crate::scheduler::{
    self, PlanOutput, RestoredPlan, SchedulerConfig, TransportError, WorkerEvent, WorkerTransport,
};

/// The next published event of a subscriber (acknowledgements are skipped).
async fn next_event(rx: &mut mpsc::UnboundedReceiver<PlanOutput>) -> Option<PlanEvent> {
    loop {
        match rx.recv().await? {
            PlanOutput::Event(ev) => return Some(ev),
            PlanOutput::Ack { .. } | PlanOutput::Tests(_) => continue,
        }
    }
}

/// Forwards every message to the test.
struct ChanTransport(mpsc::UnboundedSender<(SessionKey, ToWorker)>);

impl WorkerTransport for ChanTransport {
    fn send(&mut self, worker: &SessionKey, msg: ToWorker) -> Result<(), TransportError> {
        self.0
            .send((worker.clone(), msg))
            .map_err(|_| TransportError {
                worker: worker.clone(),
            })
    }
}

/// A transport whose worker is always unreachable.
struct DeadTransport;

impl WorkerTransport for DeadTransport {
    fn send(&mut self, worker: &SessionKey, _: ToWorker) -> Result<(), TransportError> {
        Err(TransportError {
            worker: worker.clone(),
        })
    }
}

struct Harness {
    handle: scheduler::SchedulerHandle,
    task: tokio::task::JoinHandle<()>,
    to_worker: mpsc::UnboundedReceiver<(SessionKey, ToWorker)>,
    reports: mpsc::Sender<WorkerEvent>,
    shutdown: CancellationToken,
}

fn start(cache: Option<Arc<DiskCache>>) -> Harness {
    let cache = cache.map(|c| c as Arc<dyn gatehouse_common::cache::ResultCache>);
    start_with(SchedulerConfig::default(), cache)
}

fn start_with(
    config: SchedulerConfig,
    cache: Option<Arc<dyn gatehouse_common::cache::ResultCache>>,
) -> Harness {
    let (tx, to_worker) = mpsc::unbounded_channel();
    let (reports, reports_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let (handle, _workers, task) = scheduler::spawn(
        config,
        Box::new(ChanTransport(tx)),
        reports_rx,
        cache,
        None,
        shutdown.clone(),
    );
    Harness {
        handle,
        task,
        to_worker,
        reports,
        shutdown,
    }
}

impl Harness {
    /// Answers every assignment with `status` until the plan's summary arrives.
    async fn serve(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<PlanOutput>,
        mut status: impl FnMut(u32) -> ExitStatus,
    ) -> (Vec<PlanEvent>, usize) {
        let mut seen = Vec::new();
        let mut dispatched = 0;
        loop {
            tokio::select! {
                Some((_, msg)) = self.to_worker.recv() => {
                    if let ToWorker::Assign(a) = msg {
                        dispatched += 1;
                        let attempt = a.attempt.clone();
                        self.reports.send(FromWorker::Started { attempt: attempt.clone() }.into()).await.expect("report");
                        let r = result(status(attempt.attempt));
                        self.reports.send(FromWorker::Finished { attempt, result: r }.into()).await.expect("report");
                    }
                }
                Some(ev) = next_event(events) => {
                    let last = matches!(ev, PlanEvent::Finished(_));
                    seen.push(ev);
                    if last {
                        return (seen, dispatched);
                    }
                }
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("scheduler task");
    }
}

fn summary(events: &[PlanEvent]) -> &PlanSummary {
    match events.last() {
        Some(PlanEvent::Finished(s)) => s,
        other => panic!("last event is not the summary: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retry_waits_for_the_backoff_timer_then_passes_flaky() {
    let mut h = start(None);
    h.reports
        .send(WorkerEvent::Joined(worker("w", 2, 4096 * MI)))
        .await
        .expect("join");
    let policy = Policy {
        retry_backoff: Duration::from_secs(10),
        ..Policy::default()
    };
    let mut a = g("a", &[]);
    a.retries = 1;
    let (tx, mut events) = mpsc::unbounded_channel();
    let started = tokio::time::Instant::now();
    h.handle
        .submit(
            PlanId::new("p"),
            flat(policy, &[a]),
            RunOptions::default(),
            tx,
        )
        .await
        .expect("submit");
    let (seen, dispatched) = h
        .serve(&mut events, |attempt| {
            if attempt == 1 {
                ExitStatus::Exited(1)
            } else {
                ExitStatus::Exited(0)
            }
        })
        .await;
    assert_eq!(dispatched, 2);
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "second attempt waited for the backoff"
    );
    let s = summary(&seen);
    assert_eq!((s.outcome, s.counts.flaky), (PlanOutcome::Passed, 1));
    assert!(seen.iter().any(
        |e| matches!(e, PlanEvent::Gate(g) if matches!(g.status, GateStatus::Retrying { .. }))
    ));
    h.stop().await;
}

#[tokio::test]
async fn second_run_is_served_from_the_cache_without_dispatching() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(DiskCache::open(dir.path()).expect("cache"));
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    for (run, expect_dispatch) in [(1, 2), (2, 0)] {
        let mut h = start(Some(cache.clone()));
        h.reports
            .send(WorkerEvent::Joined(worker("w", 2, 4096 * MI)))
            .await
            .expect("join");
        let (tx, mut events) = mpsc::unbounded_channel();
        let options = RunOptions {
            use_cache: true,
            ..RunOptions::default()
        };
        h.handle
            .submit(PlanId::new(format!("p{run}")), plan.clone(), options, tx)
            .await
            .expect("submit");
        let (seen, dispatched) = h.serve(&mut events, |_| ExitStatus::Exited(0)).await;
        assert_eq!(dispatched, expect_dispatch, "run {run}");
        assert_eq!(
            summary(&seen).counts.cached,
            2 - expect_dispatch as u32,
            "run {run}"
        );
        // Stopping flushes the cache writes of run 1 before run 2 starts.
        h.stop().await;
    }
}

#[tokio::test]
async fn unreachable_worker_is_lost_and_gates_wait_with_a_reason() {
    let (reports, reports_rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let (handle, _workers, task) = scheduler::spawn(
        SchedulerConfig::default(),
        Box::new(DeadTransport),
        reports_rx,
        None,
        None,
        shutdown.clone(),
    );
    reports
        .send(WorkerEvent::Joined(worker("w", 1, 4096 * MI)))
        .await
        .expect("join");
    let (tx, mut events) = mpsc::unbounded_channel();
    handle
        .submit(
            PlanId::new("p"),
            flat(Policy::default(), &[g("a", &[])]),
            RunOptions::default(),
            tx,
        )
        .await
        .expect("submit");
    let waiting = loop {
        match next_event(&mut events).await.expect("event") {
            PlanEvent::Gate(ev) => {
                if let GateStatus::Waiting { reason } = ev.status {
                    break reason;
                }
            }
            PlanEvent::Finished(s) => panic!("plan finished without a worker: {s:?}"),
            PlanEvent::Land { .. } => panic!("the scheduler never lands"),
        }
    };
    assert_eq!(waiting, "no live worker");
    handle
        .cancel(PlanId::new("p"), false)
        .await
        .expect("cancel");
    match next_event(&mut events).await.expect("event") {
        PlanEvent::Gate(ev) => assert_eq!(ev.status, GateStatus::Finished(Terminal::Cancelled)),
        other => panic!("unexpected {other:?}"),
    }
    shutdown.cancel();
    task.await.expect("task");
}

#[tokio::test]
async fn duplicate_plan_ids_are_rejected_and_shutdown_refuses_new_plans() {
    let mut h = start(None);
    let (tx, _events) = mpsc::unbounded_channel();
    let plan = flat(Policy::default(), &[g("a", &[])]);
    h.handle
        .submit(
            PlanId::new("p"),
            plan.clone(),
            RunOptions::default(),
            tx.clone(),
        )
        .await
        .expect("first");
    let dup = h
        .handle
        .submit(
            PlanId::new("p"),
            plan.clone(),
            RunOptions::default(),
            tx.clone(),
        )
        .await;
    assert!(matches!(
        dup,
        Err(scheduler::SchedulerError::DuplicatePlan(_))
    ));
    let handle = h.handle.clone();
    h.to_worker.close();
    h.stop().await;
    let after = handle
        .submit(PlanId::new("q"), plan, RunOptions::default(), tx)
        .await;
    assert!(matches!(
        after,
        Err(scheduler::SchedulerError::ShuttingDown)
    ));
}

#[tokio::test]
async fn executor_gone_fails_the_plan_instead_of_hanging() {
    let (tx, mut to_worker) = mpsc::unbounded_channel();
    let (reports, reports_rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let mut config = SchedulerConfig::default();
    config.core.fail_unschedulable = true;
    let (handle, _workers, task) = scheduler::spawn(
        config,
        Box::new(ChanTransport(tx)),
        reports_rx,
        None,
        None,
        shutdown.clone(),
    );
    reports
        .send(WorkerEvent::Joined(worker("local-0", 1, 4096 * MI)))
        .await
        .expect("join");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    handle
        .submit(PlanId::new("p"), plan, RunOptions::default(), events_tx)
        .await
        .expect("submit");
    assert!(matches!(
        to_worker.recv().await,
        Some((_, ToWorker::Assign(_)))
    ));
    // The executor dies: its report channel closes with the attempt still running.
    drop(reports);
    let summary = loop {
        if let PlanEvent::Finished(s) = next_event(&mut events).await.expect("event") {
            break s;
        }
    };
    assert_eq!(summary.outcome, PlanOutcome::Failed);
    assert_eq!((summary.counts.failed, summary.counts.skipped), (1, 1));
    shutdown.cancel();
    task.await.expect("task");
}

/// A disk cache that announces every lookup it has answered.
struct Announcing(
    DiskCache,
    mpsc::UnboundedSender<gatehouse_common::cache::CacheKey>,
);

#[async_trait::async_trait]
impl gatehouse_common::cache::ResultCache for Announcing {
    async fn get(
        &self,
        key: &gatehouse_common::cache::CacheKey,
    ) -> Result<Option<gatehouse_common::cache::CacheEntry>, gatehouse_common::cache::CacheError>
    {
        let got = self.0.get(key).await;
        let _ = self.1.send(*key);
        got
    }

    async fn put(
        &self,
        key: &gatehouse_common::cache::CacheKey,
        entry: &gatehouse_common::cache::CacheEntry,
    ) -> Result<(), gatehouse_common::cache::CacheError> {
        self.0.put(key, entry).await
    }
}

/// Submits the same plan twice at once; answers the first assignment with `status` only
/// once both plans' lookups of its key have been answered (so the other plan's gate
/// misses while it runs), and every later one at once. Returns both summaries and how
/// many attempts were dispatched.
async fn identical_plans_at_once(status: ExitStatus) -> (Vec<PlanSummary>, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (looked_up, mut lookups) = mpsc::unbounded_channel();
    let cache = Arc::new(Announcing(
        DiskCache::open(dir.path()).expect("cache"),
        looked_up,
    ));
    let mut h = start_with(SchedulerConfig::default(), Some(cache));
    h.reports
        .send(WorkerEvent::Joined(worker("w", 4, 4096 * MI)))
        .await
        .expect("join");
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    let (tx, mut events) = mpsc::unbounded_channel();
    for p in ["p1", "p2"] {
        let options = RunOptions {
            use_cache: true,
            ..RunOptions::default()
        };
        h.handle
            .submit(PlanId::new(p), plan.clone(), options, tx.clone())
            .await
            .expect("submit");
    }
    let (mut summaries, mut dispatched) = (Vec::new(), 0);
    while summaries.len() < 2 {
        tokio::select! {
            Some((_, msg)) = h.to_worker.recv() => {
                if let ToWorker::Assign(a) = msg {
                    dispatched += 1;
                    if dispatched == 1 {
                        let key = a.cache_key.expect("a cacheable gate's assignment has its key");
                        let mut answered = 0;
                        while answered < 2 {
                            if lookups.recv().await.expect("lookups") == key {
                                answered += 1;
                            }
                        }
                    }
                    let attempt = a.attempt.clone();
                    let r = result(status.clone());
                    h.reports.send(FromWorker::Finished { attempt, result: r }.into()).await.expect("report");
                }
            }
            Some(ev) = next_event(&mut events) => {
                if let PlanEvent::Finished(s) = ev {
                    summaries.push(s);
                }
            }
        }
    }
    h.stop().await;
    (summaries, dispatched)
}

#[tokio::test]
async fn identical_gates_of_concurrent_plans_run_once() {
    let (summaries, dispatched) = identical_plans_at_once(ExitStatus::Exited(0)).await;
    assert_eq!(dispatched, 2, "each of the two gates ran once");
    let cached: u32 = summaries.iter().map(|s| s.counts.cached).sum();
    assert_eq!(
        cached, 2,
        "the other plan's two gates were served from the first"
    );
    assert!(summaries.iter().all(|s| s.outcome == PlanOutcome::Passed));
}

#[tokio::test]
async fn a_failed_leader_lets_the_waiting_gate_run_itself() {
    let (summaries, dispatched) = identical_plans_at_once(ExitStatus::Exited(1)).await;
    // `a` failed in the first plan; the second ran its own `a` rather than reuse a
    // failure; `b` was skipped in both.
    assert_eq!(dispatched, 2);
    assert!(summaries.iter().all(|s| s.outcome == PlanOutcome::Failed));
    assert!(summaries.iter().all(|s| s.counts.cached == 0));
}

#[tokio::test]
async fn with_executors_storing_assignments_carry_the_key_and_nothing_is_written_here() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(DiskCache::open(dir.path()).expect("cache"));
    let config = SchedulerConfig {
        executors_store: true,
        ..SchedulerConfig::default()
    };
    let mut h = start_with(config, Some(cache.clone()));
    h.reports
        .send(WorkerEvent::Joined(worker("w", 1, 4096 * MI)))
        .await
        .expect("join");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let plan = flat(Policy::default(), &[g("a", &[])]);
    h.handle
        .submit(
            PlanId::new("p"),
            plan,
            RunOptions {
                use_cache: true,
                ..RunOptions::default()
            },
            events_tx,
        )
        .await
        .expect("submit");
    let Some((_, ToWorker::Assign(a))) = h.to_worker.recv().await else {
        panic!("no assignment");
    };
    let key = a.cache_key.expect("the assignment carries the key");
    let attempt = a.attempt.clone();
    let r = result(ExitStatus::Exited(0));
    h.reports
        .send(FromWorker::Finished { attempt, result: r }.into())
        .await
        .expect("report");
    while let Some(ev) = next_event(&mut events).await {
        if matches!(ev, PlanEvent::Finished(_)) {
            break;
        }
    }
    h.stop().await;
    use gatehouse_common::cache::ResultCache;
    assert_eq!(
        cache.get(&key).await.expect("get"),
        None,
        "the executor writes, not the scheduler"
    );
}

/// A cache that answers every lookup with a miss, after a delay for one key; each
/// lookup of that key is announced on the channel when it starts (`true`) and when it
/// answers (`false`).
struct SlowMissFor(
    gatehouse_common::cache::CacheKey,
    Duration,
    mpsc::UnboundedSender<bool>,
);

#[async_trait::async_trait]
impl gatehouse_common::cache::ResultCache for SlowMissFor {
    async fn get(
        &self,
        key: &gatehouse_common::cache::CacheKey,
    ) -> Result<Option<gatehouse_common::cache::CacheEntry>, gatehouse_common::cache::CacheError>
    {
        if *key == self.0 {
            let _ = self.2.send(true);
            tokio::time::sleep(self.1).await;
            let _ = self.2.send(false);
        }
        Ok(None)
    }

    async fn put(
        &self,
        _: &gatehouse_common::cache::CacheKey,
        _: &gatehouse_common::cache::CacheEntry,
    ) -> Result<(), gatehouse_common::cache::CacheError> {
        Ok(())
    }
}

/// A scheduler whose cache misses everything, slowly (300 ms) for the key of `plan`'s
/// first gate, with one worker of `slots` slots; the receiver hears of every start
/// (`true`) and answer (`false`) of a slow lookup.
async fn start_slow_for_first_gate(
    plan: &Arc<gatehouse_common::plan::Plan>,
    slots: u32,
) -> (Harness, mpsc::UnboundedReceiver<bool>) {
    let key = gatehouse_common::cache::compute_key(
        plan,
        gatehouse_common::ids::GateIdx(0),
        &[],
        &Default::default(),
    )
    .expect("key");
    let (started_tx, started) = mpsc::unbounded_channel();
    let slow = Arc::new(SlowMissFor(key, Duration::from_millis(300), started_tx));
    let h = start_with(SchedulerConfig::default(), Some(slow));
    h.reports
        .send(WorkerEvent::Joined(worker("w", slots, 4096 * MI)))
        .await
        .expect("join");
    (h, started)
}

#[tokio::test]
async fn a_gate_cancelled_during_its_lookup_never_holds_its_key() {
    // Gate `a` (no dependencies) has the same key in every plan below; its lookups are
    // slow, everything else answers at once.
    let p1 = flat(Policy::default(), &[g("a", &[])]);
    let (mut h, mut started) = start_slow_for_first_gate(&p1, 8).await;
    let on = || RunOptions {
        use_cache: true,
        ..RunOptions::default()
    };
    let (events_tx, _events) = mpsc::unbounded_channel();
    let finish = |a: &gatehouse_common::exec::Assignment, status: ExitStatus| {
        WorkerEvent::from(FromWorker::Finished {
            attempt: a.attempt.clone(),
            result: result(status),
        })
    };
    // p1's `a` leads the key and runs (held).
    h.handle
        .submit(PlanId::new("p1"), p1.clone(), on(), events_tx.clone())
        .await
        .expect("submit p1");
    let a1 = next_assignment(&mut h.to_worker)
        .await
        .expect("p1's a runs");
    // p2: `x` and `y` run at once; `a` is still being looked up when p2 is cancelled,
    // and p2 stays live until `x` and `y` have stopped.
    let p2 = flat(Policy::default(), &[g("x", &[]), g("y", &[]), g("a", &[])]);
    h.handle
        .submit(PlanId::new("p2"), p2, on(), events_tx.clone())
        .await
        .expect("submit p2");
    let x = next_assignment(&mut h.to_worker).await.expect("x or y");
    let y = next_assignment(&mut h.to_worker).await.expect("x or y");
    // p1's lookup of `a` (started and answered: `a` runs), then p2's start.
    for expected in [true, false, true] {
        let seen = started.recv().await.expect("a lookup of a's key");
        assert_eq!(seen, expected, "lookups of a's key: start, answer, start");
    }
    h.handle
        .cancel(PlanId::new("p2"), false)
        .await
        .expect("cancel");
    // `a`'s lookup comes back (a miss, at 300 ms) while p2 waits for `x` and `y` to
    // stop: the core ignores an answer for a gate that no longer waits, so it never
    // joins the key's flight, whichever of the answer and the stops it sees first.
    assert!(
        !started.recv().await.expect("p2's lookup answers"),
        "p2's lookup of a's key answered"
    );
    for stopped in [&x, &y] {
        h.reports
            .send(finish(stopped, ExitStatus::Cancelled))
            .await
            .expect("report");
    }
    // p1's `a` fails: nothing may be left waiting on, or leading, its key.
    h.reports
        .send(finish(&a1, ExitStatus::Exited(1)))
        .await
        .expect("report");
    // A third plan with the same gate must run it.
    h.handle
        .submit(PlanId::new("p3"), p1, on(), events_tx)
        .await
        .expect("submit p3");
    let a3 = next_assignment(&mut h.to_worker).await;
    assert!(
        a3.is_some_and(|a| a.attempt.plan == PlanId::new("p3")),
        "p3's gate never ran: a gate that ended kept the key"
    );
    h.stop().await;
}

/// The next assignment sent to the executor (cancellations are skipped), or `None` if
/// none comes within 5 s.
async fn next_assignment(
    rx: &mut mpsc::UnboundedReceiver<(SessionKey, ToWorker)>,
) -> Option<gatehouse_common::exec::Assignment> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((_, ToWorker::Assign(a)))) => return Some(a),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_restored_plan_keys_gates_that_depend_on_gates_passed_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(DiskCache::open(dir.path()).expect("cache"));
    let mut config = SchedulerConfig {
        executors_store: true,
        hash_inputs: false,
        ..SchedulerConfig::default()
    };
    // `b` may have been dispatched without a record: it runs once the window is over.
    config.core.recovery_window = Duration::ZERO;
    let mut h = start_with(config, Some(cache));
    h.reports
        .send(WorkerEvent::Joined(worker("w", 1, 4096 * MI)))
        .await
        .expect("join");
    // `a` passed under the previous leader; `b` needs it and has not started.
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    let (events_tx, _events) = mpsc::unbounded_channel();
    let gates = vec![
        crate::core::RestoredGate::Done {
            terminal: Terminal::Passed,
            cached: false,
            flaky: false,
        },
        crate::core::RestoredGate::NotStarted,
    ];
    let restored = RestoredPlan {
        id: PlanId::new("p"),
        plan,
        options: RunOptions {
            use_cache: true,
            ..RunOptions::default()
        },
        gates,
        cancel: None,
        age: Duration::ZERO,
    };
    h.handle
        .restore(restored, events_tx)
        .await
        .expect("restore");
    let b = next_assignment(&mut h.to_worker).await.expect("b runs");
    assert_eq!(b.spec.gate.as_str(), "b");
    assert!(
        b.cache_key.is_some(),
        "b's key needs a's, which was computed before the failover"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_lookup_that_misses_just_after_an_identical_gate_passed_reuses_its_result() {
    // The cache never has the entry (as if the executor's write had not landed yet).
    let p = flat(Policy::default(), &[g("a", &[])]);
    let (mut h, mut started) = start_slow_for_first_gate(&p, 4).await;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let on = || RunOptions {
        use_cache: true,
        ..RunOptions::default()
    };
    h.handle
        .submit(PlanId::new("p1"), p.clone(), on(), events_tx.clone())
        .await
        .expect("submit p1");
    let a1 = next_assignment(&mut h.to_worker)
        .await
        .expect("p1's a runs");
    // p2's lookup of the same key starts while p1's `a` runs and ends after it passed.
    h.handle
        .submit(PlanId::new("p2"), p, on(), events_tx)
        .await
        .expect("submit p2");
    // p1's lookup, then p2's: p2's is in flight (300 ms) when p1's `a` passes.
    for expected in [true, false, true] {
        let seen = started.recv().await.expect("a lookup of a's key");
        assert_eq!(seen, expected, "lookups of a's key: start, answer, start");
    }
    h.reports
        .send(
            FromWorker::Finished {
                attempt: a1.attempt.clone(),
                result: result(ExitStatus::Exited(0)),
            }
            .into(),
        )
        .await
        .expect("report");
    let mut cached = 0;
    let mut finished = 0;
    while finished < 2 {
        match tokio::time::timeout(Duration::from_secs(5), next_event(&mut events)).await {
            Ok(Some(PlanEvent::Finished(s))) => {
                finished += 1;
                cached += s.counts.cached;
            }
            Ok(Some(_)) => {}
            _ => panic!("a plan did not finish"),
        }
    }
    assert_eq!(cached, 1, "p2's `a` reused p1's pass");
    assert!(
        h.to_worker.try_recv().is_err(),
        "p2's `a` was dispatched again"
    );
    h.stop().await;
}

#[tokio::test]
async fn acks_follow_the_events_that_record_them_and_late_ones_take_the_late_path() {
    let (tx, mut to_worker) = mpsc::unbounded_channel();
    let (reports, reports_rx) = mpsc::channel(16);
    let (late_tx, mut late) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let (handle, _workers, task) = scheduler::spawn(
        SchedulerConfig::default(),
        Box::new(ChanTransport(tx)),
        reports_rx,
        None,
        Some(late_tx),
        shutdown.clone(),
    );
    let remote = worker("w", 1, 4096 * MI);
    let session = remote.id.clone();
    reports
        .send(WorkerEvent::Joined(remote))
        .await
        .expect("join");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    handle
        .submit(
            PlanId::new("p"),
            flat(Policy::default(), &[g("a", &[])]),
            RunOptions::default(),
            events_tx,
        )
        .await
        .expect("submit");
    let Some((_, ToWorker::Assign(a))) = to_worker.recv().await else {
        panic!("no assignment");
    };
    let reported = || WorkerEvent::Reported {
        worker: session.clone(),
        running: vec![],
        finished: vec![(a.attempt.clone(), result(ExitStatus::Exited(0)))],
    };
    reports.send(reported()).await.expect("report");
    let mut seen = Vec::new();
    while let Some(out) = events.recv().await {
        let last = matches!(out, PlanOutput::Event(PlanEvent::Finished(_)));
        seen.push(match out {
            PlanOutput::Event(PlanEvent::Gate(e)) if e.result.is_some() => "recorded".to_string(),
            PlanOutput::Event(PlanEvent::Gate(_)) => "event".to_string(),
            PlanOutput::Event(PlanEvent::Finished(_)) => "summary".to_string(),
            PlanOutput::Event(PlanEvent::Land { .. }) => "land".to_string(),
            PlanOutput::Tests(_) => "tests".to_string(),
            PlanOutput::Ack { worker, attempts } => {
                assert_eq!(
                    (worker, attempts),
                    (session.clone(), vec![a.attempt.clone()])
                );
                "ack".to_string()
            }
        });
        if last {
            break;
        }
    }
    assert_eq!(
        seen[seen.len() - 3..],
        ["recorded", "ack", "summary"],
        "the ack comes after the event recording the result: {seen:?}"
    );
    // The worker did not see the ack (its session dropped) and reports the result again:
    // the plan is gone, so the ack takes the late path, behind everything sent before.
    reports.send(reported()).await.expect("report again");
    match late.recv().await {
        Some(PlanOutput::Ack { worker, attempts }) => {
            assert_eq!((worker, attempts), (session, vec![a.attempt.clone()]));
        }
        other => panic!("expected a late ack, got {other:?}"),
    }
    shutdown.cancel();
    task.await.expect("task");
}
