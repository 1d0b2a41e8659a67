//! Tests of the scheduler actor through its handle, with a channel transport standing in
//! for executors and paused tokio time for the retry timers.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::cache::DiskCache;
use gatehouse_common::exec::{ExitStatus, FromWorker, ToWorker};
use gatehouse_common::ids::{PlanId, WorkerId};
use gatehouse_common::plan::Policy;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::testkit::{MI, flat, g, result, worker};
use crate::core::{GateStatus, PlanEvent, PlanOutcome, PlanSummary, RunOptions, Terminal};
use crate::scheduler::{self, SchedulerConfig, TransportError, WorkerEvent, WorkerTransport};

/// Forwards every message to the test.
struct ChanTransport(mpsc::UnboundedSender<(WorkerId, ToWorker)>);

impl WorkerTransport for ChanTransport {
    fn send(&mut self, worker: &WorkerId, msg: ToWorker) -> Result<(), TransportError> {
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
    fn send(&mut self, worker: &WorkerId, _: ToWorker) -> Result<(), TransportError> {
        Err(TransportError {
            worker: worker.clone(),
        })
    }
}

struct Harness {
    handle: scheduler::SchedulerHandle,
    task: tokio::task::JoinHandle<()>,
    to_worker: mpsc::UnboundedReceiver<(WorkerId, ToWorker)>,
    reports: mpsc::Sender<WorkerEvent>,
    shutdown: CancellationToken,
}

fn start(cache: Option<Arc<DiskCache>>) -> Harness {
    let (tx, to_worker) = mpsc::unbounded_channel();
    let (reports, reports_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let cache = cache.map(|c| c as Arc<dyn gatehouse_common::cache::ResultCache>);
    let (handle, task) = scheduler::spawn(
        SchedulerConfig::default(),
        Box::new(ChanTransport(tx)),
        reports_rx,
        cache,
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
        events: &mut mpsc::UnboundedReceiver<PlanEvent>,
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
                Some(ev) = events.recv() => {
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
        let options = RunOptions { use_cache: true };
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
    let (handle, task) = scheduler::spawn(
        SchedulerConfig::default(),
        Box::new(DeadTransport),
        reports_rx,
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
        match events.recv().await.expect("event") {
            PlanEvent::Gate(ev) => {
                if let GateStatus::Waiting { reason } = ev.status {
                    break reason;
                }
            }
            PlanEvent::Finished(s) => panic!("plan finished without a worker: {s:?}"),
        }
    };
    assert_eq!(waiting, "no live worker");
    handle
        .cancel(PlanId::new("p"), false)
        .await
        .expect("cancel");
    match events.recv().await.expect("event") {
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
    let (handle, task) = scheduler::spawn(
        config,
        Box::new(ChanTransport(tx)),
        reports_rx,
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
        if let PlanEvent::Finished(s) = events.recv().await.expect("event") {
            break s;
        }
    };
    assert_eq!(summary.outcome, PlanOutcome::Failed);
    assert_eq!((summary.counts.failed, summary.counts.skipped), (1, 1));
    shutdown.cancel();
    task.await.expect("task");
}

/// Submits the same plan twice at once; answers each assignment with `status` after
/// a delay (so the other plan's lookup of the same key happens while it runs). Returns
/// both summaries and how many attempts were dispatched.
async fn identical_plans_at_once(status: ExitStatus) -> (Vec<PlanSummary>, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(DiskCache::open(dir.path()).expect("cache"));
    let mut h = start(Some(cache));
    h.reports
        .send(WorkerEvent::Joined(worker("w", 4, 4096 * MI)))
        .await
        .expect("join");
    let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[0])]);
    let (tx, mut events) = mpsc::unbounded_channel();
    for p in ["p1", "p2"] {
        let options = RunOptions { use_cache: true };
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
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let attempt = a.attempt.clone();
                    let r = result(status.clone());
                    h.reports.send(FromWorker::Finished { attempt, result: r }.into()).await.expect("report");
                }
            }
            Some(ev) = events.recv() => {
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
    let (tx, mut to_worker) = mpsc::unbounded_channel();
    let (reports, reports_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let config = SchedulerConfig {
        executors_store: true,
        ..SchedulerConfig::default()
    };
    let (handle, task) = scheduler::spawn(
        config,
        Box::new(ChanTransport(tx)),
        reports_rx,
        Some(cache.clone() as Arc<dyn gatehouse_common::cache::ResultCache>),
        shutdown.clone(),
    );
    reports
        .send(WorkerEvent::Joined(worker("w", 1, 4096 * MI)))
        .await
        .expect("join");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let plan = flat(Policy::default(), &[g("a", &[])]);
    handle
        .submit(
            PlanId::new("p"),
            plan,
            RunOptions { use_cache: true },
            events_tx,
        )
        .await
        .expect("submit");
    let Some((_, ToWorker::Assign(a))) = to_worker.recv().await else {
        panic!("no assignment");
    };
    let key = a.cache_key.expect("the assignment carries the key");
    let attempt = a.attempt.clone();
    let r = result(ExitStatus::Exited(0));
    reports
        .send(FromWorker::Finished { attempt, result: r }.into())
        .await
        .expect("report");
    while let Some(ev) = events.recv().await {
        if matches!(ev, PlanEvent::Finished(_)) {
            break;
        }
    }
    shutdown.cancel();
    task.await.expect("scheduler");
    use gatehouse_common::cache::ResultCache;
    assert_eq!(
        cache.get(&key).await.expect("get"),
        None,
        "the executor writes, not the scheduler"
    );
}
