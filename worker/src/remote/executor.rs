//! [`Executor`]: the remote worker's view of its [`LocalWorker`], which outlives
//! sessions (one executor per worker process, however often it reconnects).
//!
//! State it owns: the inbox sender and report receiver of the `LocalWorker`, its task,
//! the attempts assigned and not finished (with their memory request and scratch
//! directory), and the blocking tasks that remove finished scratch directories.
//!
//! Attempts outlive sessions: a lost session leaves them running (see
//! [`offline`](crate::remote::offline)). Only reports about attempts in `running` come
//! out of [`Executor::recv`] (the `LocalWorker` reports each assignment exactly once, so
//! nothing else should arrive; anything else is dropped). `recv` is cancel-safe (its
//! only await is the channel's `recv`), so it can sit in a `select!`.
//!
//! Shutdown ([`Executor::finish`]): closes the inbox, so the `LocalWorker` ends once its
//! attempts have (cancel them first to make that quick), drops the remaining reports,
//! joins the task and waits for the scratch removals.

use std::collections::BTreeMap;
use std::time::Duration;

use gatehouse_common::exec::{AttemptRef, FromWorker, ToWorker};
use gatehouse_common::spawn::spawn_blocking_in;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;
use crate::remote::RemoteWorkerError;
use crate::remote::frames::Prepared;
use crate::{ExecConfig, LocalWorker};

/// What the worker tracks about an attempt it was assigned.
#[derive(Debug)]
struct Running {
    /// Memory request, counted against a simulated total.
    memory: u64,
    /// Scratch directory removed once the attempt finished.
    scratch: Option<TempDir>,
}

/// The executor and the attempts it runs.
pub(crate) struct Executor {
    /// `None` once [`Executor::finish`] closed it.
    inbox: Option<mpsc::UnboundedSender<ToWorker>>,
    reports: mpsc::Receiver<FromWorker>,
    task: JoinHandle<()>,
    /// Assigned and not finished, ordered for stable heartbeats.
    running: BTreeMap<AttemptRef, Running>,
    /// Scratch directory removals (blocking I/O).
    cleanups: JoinSet<()>,
    metrics: WorkerMetrics,
}

impl Executor {
    /// Starts the `LocalWorker`; `report_capacity` bounds reports not yet forwarded.
    pub(crate) fn start(cfg: ExecConfig, report_capacity: usize, metrics: WorkerMetrics) -> Self {
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports) = mpsc::channel(report_capacity);
        // Not tied to the worker's shutdown token: shutdown cancels attempts with zero
        // grace through the inbox instead, so they are killed at once and still report.
        let task = LocalWorker::spawn(cfg, inbox_rx, reports_tx, CancellationToken::new());
        Self {
            inbox: Some(inbox),
            reports,
            task,
            running: BTreeMap::new(),
            cleanups: JoinSet::new(),
            metrics,
        }
    }

    /// Attempts assigned and not finished.
    pub(crate) fn running(&self) -> impl Iterator<Item = &AttemptRef> {
        self.running.keys()
    }

    pub(crate) fn running_count(&self) -> usize {
        self.running.len()
    }

    pub(crate) fn is_running(&self, attempt: &AttemptRef) -> bool {
        self.running.contains_key(attempt)
    }

    /// Sum of the memory requests of the running attempts.
    pub(crate) fn requested_memory(&self) -> u64 {
        self.running
            .values()
            .map(|r| r.memory)
            .fold(0, u64::saturating_add)
    }

    /// Starts an attempt that is not running yet.
    pub(crate) fn assign(&mut self, prepared: Prepared) -> Result<(), RemoteWorkerError> {
        let Prepared {
            assignment,
            memory,
            scratch,
        } = prepared;
        let attempt = assignment.attempt.clone();
        self.send(ToWorker::Assign(assignment))?;
        self.running.insert(attempt, Running { memory, scratch });
        self.metrics.set_running(self.running.len());
        Ok(())
    }

    /// Cancels one running attempt; it still reports `Finished`.
    pub(crate) fn cancel(
        &self,
        attempt: AttemptRef,
        grace: Duration,
    ) -> Result<(), RemoteWorkerError> {
        self.send(ToWorker::Cancel { attempt, grace })
    }

    /// Cancels every running attempt.
    pub(crate) fn cancel_all(&self, grace: Duration) -> Result<(), RemoteWorkerError> {
        for attempt in self.running.keys() {
            self.send(ToWorker::Cancel {
                attempt: attempt.clone(),
                grace,
            })?;
        }
        Ok(())
    }

    fn send(&self, msg: ToWorker) -> Result<(), RemoteWorkerError> {
        self.inbox
            .as_ref()
            .ok_or(RemoteWorkerError::ExecutorStopped)?
            .send(msg)
            .map_err(|_| RemoteWorkerError::ExecutorStopped)
    }

    /// The next report about a running attempt; `None` if the executor ended.
    pub(crate) async fn recv(&mut self) -> Option<FromWorker> {
        loop {
            let report = self.reports.recv().await?;
            let attempt = match &report {
                FromWorker::Started { attempt } | FromWorker::Finished { attempt, .. } => attempt,
            };
            if !self.running.contains_key(attempt) {
                tracing::debug!(?attempt, "report for an attempt no longer tracked; dropped");
                continue;
            }
            if let FromWorker::Finished { attempt, result } = &report {
                self.metrics
                    .attempt_finished(&result.status, result.duration);
                self.finished(attempt);
            }
            return Some(report);
        }
    }

    fn finished(&mut self, attempt: &AttemptRef) {
        while self.cleanups.try_join_next().is_some() {}
        let removed = self.running.remove(attempt);
        self.metrics.set_running(self.running.len());
        let Some(Running {
            scratch: Some(dir), ..
        }) = removed
        else {
            return;
        };
        let attempt = attempt.clone();
        spawn_blocking_in(&mut self.cleanups, "scratch-cleanup", move || {
            let path = dir.path().to_path_buf();
            if let Err(error) = dir.close() {
                tracing::warn!(?attempt, path = %path.display(), %error,
                    "failed to remove the scratch directory");
            }
        });
    }

    /// Stops the executor (see the module docs).
    pub(crate) async fn finish(mut self) -> Result<(), RemoteWorkerError> {
        self.inbox = None;
        while let Some(report) = self.reports.recv().await {
            if let FromWorker::Finished { attempt, .. } = report {
                self.finished(&attempt);
            }
        }
        let joined = self.task.await;
        // Every attempt has reported by now; anything left never will.
        for (_, running) in std::mem::take(&mut self.running) {
            if let Some(dir) = running.scratch {
                spawn_blocking_in(&mut self.cleanups, "scratch-cleanup", move || drop(dir));
            }
        }
        while self.cleanups.join_next().await.is_some() {}
        joined.map_err(|e| RemoteWorkerError::ExecutorFailed(e.to_string()))
    }
}
