//! [`LocalWorker`]: the in-process executor `gatehouse run` drives.
//!
//! State it owns: one [`CancelHandle`] per running attempt, the [`JoinSet`] of attempt
//! tasks, and its own memory monitor (started with it, stopped after the last attempt).
//!
//! Accepts [`ToWorker`] on an inbox and answers with [`FromWorker`]:
//! - `Assign`: runs the attempt in a task of the `JoinSet`; that task reports
//!   `Started` once the shell is spawned (not if the spawn failed), then exactly one
//!   `Finished`. A second `Assign` for an attempt still running is ignored with a warning.
//! - `Cancel`: cancels that attempt with the given grace; an unknown (or already
//!   finished) attempt is ignored with a debug log.
//!
//! Concurrency: the inbox is unbounded because the scheduler that sends on it must never
//! block on an executor; it is bounded in practice, since the scheduler only assigns into
//! free slots, so at most `slots` assignments plus one cancel per running attempt are
//! outstanding. Reports are sent by the attempt tasks, never by the loop, so a slow
//! reader of `reports` delays reports but never the handling of cancels.
//!
//! Shutdown: when the token fires, every running attempt is cancelled with
//! `cfg.kill_grace`; assignments still queued in the inbox are answered `Finished` with
//! `Cancelled` without being started; then the worker waits for every attempt to end and
//! report (bounded by the grace plus `cfg.pipe_drain`, since SIGKILL always follows), stops
//! its monitor and returns. If the inbox closes, the worker lets running attempts finish
//! and then returns the same way. The receiver of `reports` must be drained (or dropped)
//! until the returned task ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse_common::exec::{
    Assignment, AttemptRef, ExitStatus, FromWorker, GateResult, OutputTail, ToWorker,
};
use gatehouse_common::reports::{self as test_reports, GateTests, TestKey};
use gatehouse_common::spawn::{spawn_blocking_named, spawn_in, spawn_named};
use gatehouse_common::telemetry::{OTEL_TARGET, continue_trace};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ExecConfig;
use crate::cancel::{CancelHandle, CancelSignal, cancel_channel};
use crate::checkout::CheckoutDir;
use crate::execute::RunningGate;
use crate::monitor::{self, MemoryMonitorHandle};

/// The in-process executor. Construct it with [`LocalWorker::spawn`].
pub struct LocalWorker<R> {
    cfg: Arc<ExecConfig>,
    inbox: mpsc::UnboundedReceiver<ToWorker>,
    /// Where reports go; `R` is `FromWorker` or a richer event type built from it.
    reports: mpsc::Sender<R>,
    shutdown: CancellationToken,
    monitor: MemoryMonitorHandle,
    /// Stops the monitor once no attempt can run any more.
    monitor_cancel: CancellationToken,
    monitor_task: JoinHandle<()>,
    /// Cancel handles of the attempts whose task has not been joined yet.
    running: HashMap<AttemptRef, CancelHandle>,
    /// One task per attempt; each returns its attempt once it has reported `Finished`.
    tasks: JoinSet<AttemptRef>,
}

impl<R: From<FromWorker> + Send + 'static> LocalWorker<R> {
    /// Starts the worker; the returned task ends after shutdown (see the module docs).
    pub fn spawn(
        cfg: ExecConfig,
        inbox: mpsc::UnboundedReceiver<ToWorker>,
        reports: mpsc::Sender<R>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let monitor_cancel = CancellationToken::new();
        let (monitor, monitor_task) = monitor::spawn(cfg.monitor_interval, monitor_cancel.clone());
        let worker = Self {
            cfg: Arc::new(cfg),
            inbox,
            reports,
            shutdown,
            monitor,
            monitor_cancel,
            monitor_task,
            running: HashMap::new(),
            tasks: JoinSet::new(),
        };
        spawn_named("local-worker", worker.run())
    }

    async fn run(mut self) {
        let mut inbox_open = true;
        while inbox_open || !self.tasks.is_empty() {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.joined(joined);
                }
                msg = self.inbox.recv(), if inbox_open => match msg {
                    Some(msg) => self.handle(msg),
                    None => inbox_open = false,
                },
            }
        }
        self.shut_down().await;
    }

    fn handle(&mut self, msg: ToWorker) {
        match msg {
            ToWorker::Assign(assignment) => self.start(assignment),
            ToWorker::Cancel { attempt, grace } => match self.running.get(&attempt) {
                Some(handle) => handle.cancel(grace),
                None => tracing::debug!(?attempt, "cancel for an attempt not running; ignored"),
            },
        }
    }

    fn start(&mut self, assignment: Assignment) {
        let attempt = assignment.attempt.clone();
        if self.running.contains_key(&attempt) {
            tracing::warn!(
                ?attempt,
                "attempt assigned twice; ignoring the second assignment"
            );
            return;
        }
        let (handle, signal) = cancel_channel();
        self.running.insert(attempt.clone(), handle);
        let fut = run_attempt(
            assignment,
            Arc::clone(&self.cfg),
            self.monitor.clone(),
            signal,
            self.reports.clone(),
        );
        spawn_in(&mut self.tasks, "gate-attempt", fut);
    }

    fn joined(&mut self, joined: Result<AttemptRef, JoinError>) {
        match joined {
            Ok(attempt) => {
                self.running.remove(&attempt);
            }
            Err(error) => {
                // The task's `FinishGuard` reported for it; drop the handles whose task is gone.
                tracing::error!(%error, "gate attempt task failed");
                self.running.retain(|_, handle| !handle.is_closed());
            }
        }
    }

    async fn shut_down(mut self) {
        if self.shutdown.is_cancelled() {
            tracing::info!(running = self.running.len(), "local worker shutting down");
            for handle in self.running.values() {
                handle.cancel(self.cfg.kill_grace);
            }
            self.inbox.close();
            while let Ok(msg) = self.inbox.try_recv() {
                if let ToWorker::Assign(assignment) = msg {
                    let result = cancelled_before_start();
                    let attempt = assignment.attempt;
                    report(&self.reports, FromWorker::Finished { attempt, result }).await;
                }
            }
        }
        while let Some(joined) = self.tasks.join_next().await {
            self.joined(joined);
        }
        self.monitor_cancel.cancel();
        if let Err(error) = self.monitor_task.await {
            tracing::error!(%error, "memory monitor task failed");
        }
        tracing::debug!("local worker stopped");
    }
}

/// One attempt, start to report.
async fn run_attempt<R: From<FromWorker> + Send + 'static>(
    assignment: Assignment,
    cfg: Arc<ExecConfig>,
    monitor: MemoryMonitorHandle,
    cancel: CancelSignal,
    reports: mpsc::Sender<R>,
) -> AttemptRef {
    let Assignment {
        attempt,
        spec,
        traceparent,
        watch,
        ..
    } = assignment;
    // Traced plans: the attempt's own span, continuing the coordinator's gate span;
    // logs inside it carry its trace id.
    let span = match &traceparent {
        Some(tp) => {
            let span = tracing::info_span!(
                target: OTEL_TARGET,
                "gate.execute",
                gatehouse.plan.id = %attempt.plan,
                gatehouse.gate.id = %spec.gate,
                gatehouse.attempt = attempt.attempt,
                process.pid = tracing::field::Empty,
                process.exit.code = tracing::field::Empty,
                gatehouse.exit_reason = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            continue_trace(&span, tp);
            span
        }
        None => tracing::Span::none(),
    };
    let mut guard = FinishGuard {
        attempt: Some(attempt.clone()),
        reports: reports.clone(),
    };
    // The span ends before the result is reported: it lies within the coordinator's
    // attempt span, which ends when the result arrives.
    let run = Run {
        attempt: &attempt,
        spec: &spec,
        cfg: &cfg,
        monitor: &monitor,
        watch,
    };
    let result = execute_attempt(run, cancel, &reports)
        .instrument(span)
        .await;
    guard.attempt = None;
    let finished = FromWorker::Finished {
        attempt: attempt.clone(),
        result,
    };
    report(&reports, finished).await;
    attempt
}

/// What one attempt runs with.
struct Run<'a> {
    attempt: &'a AttemptRef,
    spec: &'a gatehouse_common::exec::GateSpec,
    cfg: &'a ExecConfig,
    monitor: &'a MemoryMonitorHandle,
    /// Tests whose passes the result lists.
    watch: Arc<[TestKey]>,
}

/// Starts and waits for one attempt (reporting `Started`), inside its span.
async fn execute_attempt<R: From<FromWorker> + Send + 'static>(
    run: Run<'_>,
    mut cancel: CancelSignal,
    reports: &mpsc::Sender<R>,
) -> GateResult {
    let (attempt, spec) = (run.attempt, run.spec);
    // A source plan's gate runs in its own checkout of its tree, removed afterwards.
    let result = match &spec.checkout {
        None => start_and_wait(&run, spec, cancel, reports).await,
        Some(wanted) => match check_out(attempt, spec, wanted, run.cfg, &mut cancel).await {
            Ok((dir, spec)) => {
                let result = start_and_wait(&run, &spec, cancel, reports).await;
                dir.remove().await;
                result
            }
            Err(status) => with_status(status),
        },
    };
    let span = tracing::Span::current();
    if let ExitStatus::Exited(code) = result.status {
        span.record("process.exit.code", i64::from(code));
    }
    span.record("gatehouse.exit_reason", result.status.reason());
    if !result.status.passed() {
        span.record("otel.status_code", "error");
    }
    tracing::info!(
        plan_id = %attempt.plan,
        gate = %spec.gate,
        attempt = attempt.attempt,
        outcome = result.status.reason(),
        duration_ms = result.duration.as_millis() as u64,
        "attempt finished"
    );
    result
}

/// Spawns the attempt's shell, reports `Started`, waits for its end, and reads the
/// test reports it declares (`spec` is the run's, with its workdir in a checkout).
async fn start_and_wait<R: From<FromWorker> + Send + 'static>(
    run: &Run<'_>,
    spec: &gatehouse_common::exec::GateSpec,
    cancel: CancelSignal,
    reports: &mpsc::Sender<R>,
) -> GateResult {
    let attempt = run.attempt;
    // Read before the spawn, by the clock file times use: what the gate writes is newer.
    let since = test_reports::collect::file_clock_now();
    match RunningGate::start(spec, attempt, run.cfg, run.monitor).await {
        Ok(running) => {
            if let Some(pid) = running.pid() {
                tracing::Span::current().record("process.pid", i64::from(pid));
            }
            let started = FromWorker::Started {
                attempt: attempt.clone(),
            };
            report(reports, started).await;
            let mut result = running.wait(cancel).await;
            if !spec.reports.is_empty() && !matches!(result.status, ExitStatus::Cancelled) {
                result.tests = read_test_reports(run, spec, since).await;
            }
            result
        }
        Err(error) => {
            tracing::info!(?attempt, %error, "gate failed to start");
            error.into_result()
        }
    }
}

/// Reads the attempt's declared reports (blocking work, off the runtime). `None` only
/// if the reading task itself failed, which is logged.
async fn read_test_reports(
    run: &Run<'_>,
    spec: &gatehouse_common::exec::GateSpec,
    since: SystemTime,
) -> Option<Box<GateTests>> {
    let workdir = spec.workdir.clone();
    let patterns = spec.reports.clone();
    let limits = run.cfg.report_limits;
    let watch: HashSet<TestKey> = run.watch.iter().copied().collect();
    let started = tokio::time::Instant::now();
    let read = spawn_blocking_named("read-reports", move || {
        test_reports::collect(&workdir, &patterns, since, &limits, &watch)
    })
    .await;
    match read {
        Ok(tests) => {
            tracing::debug!(
                attempt = ?run.attempt,
                files = tests.files,
                tests = tests.results.passed + tests.results.failed + tests.results.skipped,
                failed = tests.results.failed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reports read"
            );
            for path in &tests.missing {
                tracing::debug!(attempt = ?run.attempt, pattern = %path, "declared report not written");
            }
            for bad in &tests.unreadable {
                tracing::debug!(attempt = ?run.attempt, path = %bad.path, reason = %bad.reason, "unreadable report");
            }
            Some(Box::new(tests))
        }
        Err(error) => {
            tracing::error!(attempt = ?run.attempt, %error, "reading the reports failed");
            None
        }
    }
}

/// The attempt's checkout, and its spec with the workdir inside it and the commits in
/// its environment; or how an attempt that could not start ended: `source` when the
/// checkout failed, `cancelled` when cancelled meanwhile.
async fn check_out(
    attempt: &AttemptRef,
    spec: &gatehouse_common::exec::GateSpec,
    wanted: &gatehouse_common::source::Checkout,
    cfg: &ExecConfig,
    cancel: &mut CancelSignal,
) -> Result<(CheckoutDir, gatehouse_common::exec::GateSpec), ExitStatus> {
    let failed = |message: String| {
        tracing::info!(?attempt, error = %message, "gate checkout failed");
        Err(ExitStatus::SourceFailed(message))
    };
    let Some(checkouts) = &cfg.checkouts else {
        return failed(
            "this executor has no git cache, so it cannot run gates of plans with a source".into(),
        );
    };
    let started = tokio::time::Instant::now();
    let prepared = tokio::select! {
        prepared = checkouts.prepare(attempt, wanted) => prepared,
        Some(_) = cancel.requested() => return Err(ExitStatus::Cancelled),
    };
    let dir = match prepared {
        Ok(dir) => dir,
        Err(message) => return failed(message),
    };
    tracing::debug!(
        ?attempt,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checked out"
    );
    let mut spec = spec.clone();
    spec.workdir = dir.path().join(&spec.workdir_rel);
    spec.env
        .insert("GATEHOUSE_COMMIT".into(), wanted.commit.to_string());
    spec.env
        .insert("GATEHOUSE_BASE_COMMIT".into(), wanted.base.to_string());
    spec.env.insert(
        "GATEHOUSE_ITEM_COMMIT".into(),
        wanted
            .item_commit
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    );
    Ok((dir, spec))
}

/// The result of an attempt that never started.
fn with_status(status: ExitStatus) -> GateResult {
    GateResult {
        status,
        duration: Duration::ZERO,
        peak_memory: None,
        stdout: OutputTail::default(),
        stderr: OutputTail::default(),
        tests: None,
    }
}

/// Keeps "exactly one `Finished` per assignment" if an attempt task panics or is
/// aborted before producing its result: it then reports a `SpawnFailed` from `Drop`
/// (with `try_send`, as `Drop` cannot wait; a full channel loses it, logged).
struct FinishGuard<R: From<FromWorker>> {
    /// `Some` until the task has its result.
    attempt: Option<AttemptRef>,
    reports: mpsc::Sender<R>,
}

impl<R: From<FromWorker>> Drop for FinishGuard<R> {
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            let result = not_run("executor task ended without a result".to_owned());
            let msg = FromWorker::Finished {
                attempt: attempt.clone(),
                result,
            };
            if let Err(error) = self.reports.try_send(R::from(msg)) {
                tracing::error!(?attempt, %error, "failed to report an attempt whose task failed");
            }
        }
    }
}

async fn report<R: From<FromWorker>>(reports: &mpsc::Sender<R>, msg: FromWorker) {
    if reports.send(R::from(msg)).await.is_err() {
        tracing::debug!("report receiver dropped; report discarded");
    }
}

fn not_run(reason: String) -> GateResult {
    with_status(ExitStatus::SpawnFailed(reason))
}

fn cancelled_before_start() -> GateResult {
    with_status(ExitStatus::Cancelled)
}
