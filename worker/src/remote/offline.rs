//! What the worker does while no session is welcomed (connecting, backing off, waiting
//! for `Welcome`): its attempts keep running, their reports are kept, and two deadlines
//! may end them.
//!
//! - **Orphan grace.** When a welcomed session is lost while attempts run, they get
//!   [`orphan_grace`](crate::remote::RemoteWorkerConfig::orphan_grace) to be taken over
//!   by a new session (a `Welcome`, whose `Hello` listed them as running). Past it they
//!   are cancelled with the executor's kill grace; their results (`Cancelled`) are kept
//!   like any other, for the next coordinator to record or ignore.
//! - **Drain.** Once the drain starts, running attempts get the drain grace; past it
//!   they are cancelled. While offline the worker keeps reconnecting so the results
//!   reach a coordinator; it stops once nothing runs and either no result is left
//!   unacknowledged or the drain grace is over (the remaining results are then lost and
//!   the coordinator re-runs those gates).
//!
//! `Started` reports are remembered and announced after the next `Welcome`; results go
//! to [`Unacked`](crate::remote::unacked::Unacked). Shutdown ends the offline phase at
//! once (the caller kills what runs).
//!
//! [`Worker::offline`] runs any future (a connect, a backoff delay, a handshake) under
//! these rules; it is one `select!` in the worker's task, and the future it runs must not
//! borrow the worker.

use std::future::Future;
use std::time::Duration;

use gatehouse_common::exec::FromWorker;
use tokio::time::Instant;

use crate::remote::RemoteWorkerError;
use crate::remote::session::{SessionEnd, Worker};

/// A moment at which something happens once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    /// When.
    pub(crate) at: Instant,
    /// Whether it already happened.
    pub(crate) fired: bool,
}

impl Deadline {
    fn new(at: Instant) -> Self {
        Self { at, fired: false }
    }

    /// When it happens, unless it already did.
    pub(crate) fn pending(self) -> Option<Instant> {
        (!self.fired).then_some(self.at)
    }
}

/// How a future run offline ended.
pub(crate) enum Offline<T> {
    /// It completed.
    Done(T),
    /// The worker stops instead: [`SessionEnd::Shutdown`] or [`SessionEnd::Drained`].
    Ended(SessionEnd),
}

/// One turn of the offline loop.
enum Step<T> {
    Done(T),
    Shutdown,
    StartDrain,
    DrainExpired,
    OrphansExpired,
    Report(Option<FromWorker>),
}

impl Worker {
    /// Runs `fut` while keeping attempts, reports and deadlines going (see the module
    /// docs).
    pub(crate) async fn offline<F: Future>(
        &mut self,
        fut: F,
    ) -> Result<Offline<F::Output>, RemoteWorkerError> {
        tokio::pin!(fut);
        loop {
            if self.drained_offline() {
                return Ok(Offline::Ended(SessionEnd::Drained));
            }
            let drain_deadline = self.draining.and_then(Deadline::pending);
            let orphan_deadline = self.orphans.and_then(Deadline::pending);
            let step = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Step::Shutdown,
                () = self.drain.cancelled(), if self.draining.is_none() => Step::StartDrain,
                () = sleep_until_some(drain_deadline) => Step::DrainExpired,
                () = sleep_until_some(orphan_deadline) => Step::OrphansExpired,
                report = self.exec.recv() => Step::Report(report),
                out = &mut fut => Step::Done(out),
            };
            match step {
                Step::Done(out) => return Ok(Offline::Done(out)),
                Step::Shutdown => return Ok(Offline::Ended(SessionEnd::Shutdown)),
                Step::StartDrain => {
                    self.begin_drain();
                }
                Step::DrainExpired => self.drain_expired()?,
                Step::OrphansExpired => self.orphans_expired()?,
                Step::Report(None) => return Err(RemoteWorkerError::ExecutorStopped),
                Step::Report(Some(FromWorker::Started { attempt })) => {
                    self.unsent_started.insert(attempt);
                }
                Step::Report(Some(FromWorker::Finished { attempt, result })) => {
                    tracing::info!(?attempt, status = ?result.status,
                        "attempt finished while disconnected; result kept");
                    self.keep_result(attempt, result);
                }
            }
        }
    }

    /// Starts the drain (once); returns the grace left before running attempts get
    /// cancelled.
    pub(crate) fn begin_drain(&mut self) -> Duration {
        if let Some(d) = self.draining {
            return d.at.saturating_duration_since(Instant::now());
        }
        let grace = self.cfg.drain_grace;
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(running = self.exec.running_count(), ?grace, "draining");
        self.draining = Some(Deadline::new(Instant::now() + grace));
        grace
    }

    /// The drain grace is over: cancel what still runs.
    pub(crate) fn drain_expired(&mut self) -> Result<(), RemoteWorkerError> {
        if let Some(d) = self.draining.as_mut() {
            d.fired = true;
        }
        if self.exec.running_count() > 0 {
            tracing::warn!(
                running = self.exec.running_count(),
                "drain grace expired; cancelling running attempts"
            );
        }
        self.exec.cancel_all(self.cfg.exec.kill_grace)
    }

    /// The orphan grace is over without a welcome: cancel what still runs.
    fn orphans_expired(&mut self) -> Result<(), RemoteWorkerError> {
        if let Some(d) = self.orphans.as_mut() {
            d.fired = true;
        }
        if self.exec.running_count() > 0 {
            tracing::warn!(running = self.exec.running_count(), grace = ?self.cfg.orphan_grace,
                "no coordinator took over the running attempts in time; cancelling them");
        }
        self.exec.cancel_all(self.cfg.exec.kill_grace)
    }

    /// A welcomed session was lost: running attempts start their orphan grace (unless
    /// an earlier loss already started it).
    pub(crate) fn session_lost(&mut self) {
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let running = self.exec.running_count();
        if running == 0 || self.orphans.is_some() {
            return;
        }
        let grace = self.cfg.orphan_grace;
        tracing::info!(
            running,
            ?grace,
            "keeping the running attempts while reconnecting"
        );
        self.orphans = Some(Deadline::new(Instant::now() + grace));
    }

    /// A session was welcomed: its `Hello` handed the running attempts over.
    pub(crate) fn welcomed(&mut self) {
        self.ready.store(
            self.draining.is_none(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if self.orphans.take().is_some() {
            tracing::info!(
                running = self.exec.running_count(),
                "running attempts handed to the new session"
            );
        }
    }

    /// Whether an offline drain is complete (see the module docs).
    fn drained_offline(&self) -> bool {
        let Some(drain) = self.draining else {
            return false;
        };
        if self.exec.running_count() > 0 {
            return false;
        }
        if self.unacked.is_empty() {
            tracing::info!("drained while disconnected");
            return true;
        }
        if drain.fired {
            tracing::warn!(
                unacknowledged = self.unacked.len(),
                "drain grace over while disconnected; stopping with results no coordinator \
                 has acknowledged (their gates are re-run)"
            );
            return true;
        }
        false
    }
}

/// Sleeps until `deadline`; forever without one.
pub(crate) async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
