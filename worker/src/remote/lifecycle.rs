//! [`Lifecycle`]: whether the worker serves, drains or stops, and the two deadlines that
//! cancel its running attempts when no coordinator can take them; and how a session
//! ends ([`SessionEnd`]).
//!
//! State it owns: the `shutdown` and `drain` tokens given to [`run`](crate::remote::run),
//! the drain deadline (set once the drain starts), the orphan deadline (set while a lost
//! session's attempts wait to be taken over), and the readiness flag `/readyz` reads.
//!
//! - **Drain.** [`Lifecycle::begin_drain`] starts it once: the worker is no longer
//!   ready and running attempts get [`drain_grace`](RemoteWorkerConfig::drain_grace);
//!   past it, [`Lifecycle::drain_expired`] cancels them with the executor's kill grace.
//! - **Orphans.** [`Lifecycle::session_lost`] gives the attempts of a lost welcomed
//!   session [`orphan_grace`](RemoteWorkerConfig::orphan_grace) to be handed to a new
//!   session ([`Lifecycle::welcomed`] clears it); past it,
//!   [`Lifecycle::orphans_expired`] cancels them the same way.
//! - **Ready** while a session is welcomed and the worker is not draining.
//!
//! Each deadline fires once. Plain data plus the tokens, owned by the worker's task; the
//! deadlines are awaited in the session and offline loops' `select!`s
//! ([`Lifecycle::drain_due`], [`Lifecycle::orphans_due`]), which are cancel-safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::remote::attempts::Attempts;
use crate::remote::{RemoteWorkerConfig, RemoteWorkerError};

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// Connection or protocol failure; `welcomed` says whether the session got as far
    /// as `Welcome` (the reconnect backoff restarts then).
    Lost { reason: String, welcomed: bool },
    /// The coordinator answered that it is not the leader; `leader` is the URL it named.
    NotLeader {
        leader: Option<String>,
        reason: String,
    },
    /// The drain completed.
    Drained,
    /// The shutdown token fired.
    Shutdown,
}

impl SessionEnd {
    pub(crate) fn lost(reason: impl Into<String>) -> Self {
        Self::Lost {
            reason: reason.into(),
            welcomed: true,
        }
    }
}

/// A moment at which something happens once.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    /// When.
    at: Instant,
    /// Whether it already happened.
    fired: bool,
}

impl Deadline {
    fn new(at: Instant) -> Self {
        Self { at, fired: false }
    }

    /// When it happens, unless it already did.
    fn pending(self) -> Option<Instant> {
        (!self.fired).then_some(self.at)
    }
}

/// The worker's drain, shutdown, orphan deadline and readiness (see the module docs).
pub(crate) struct Lifecycle {
    /// Fires to stop at once, killing what runs.
    shutdown: CancellationToken,
    /// Fires to start the drain.
    drain: CancellationToken,
    /// Set once the drain started: when running attempts get cancelled.
    draining: Option<Deadline>,
    /// Set when a welcomed session was lost with attempts running: when they get
    /// cancelled unless a session is welcomed first.
    orphans: Option<Deadline>,
    /// What `/readyz` says (shared with the HTTP probe server).
    ready: Arc<AtomicBool>,
    /// How long a drain waits for running attempts.
    drain_grace: Duration,
    /// How long a lost session's attempts wait for a new session.
    orphan_grace: Duration,
    /// The kill grace of attempts cancelled when a deadline passes.
    kill_grace: Duration,
}

impl Lifecycle {
    /// Not draining, no orphans, not ready; the graces come from `cfg`.
    pub(crate) fn new(
        cfg: &RemoteWorkerConfig,
        shutdown: CancellationToken,
        drain: CancellationToken,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            shutdown,
            drain,
            draining: None,
            orphans: None,
            ready,
            drain_grace: cfg.drain_grace,
            orphan_grace: cfg.orphan_grace,
            kill_grace: cfg.exec.kill_grace,
        }
    }

    /// Completes once shutdown is requested.
    pub(crate) fn shutdown_requested(&self) -> WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// Completes once a drain is requested (at once if it already was).
    pub(crate) fn drain_requested(&self) -> WaitForCancellationFuture<'_> {
        self.drain.cancelled()
    }

    /// Whether the drain started.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    /// Completes when the drain grace is over; never if it is not pending.
    pub(crate) async fn drain_due(&self) {
        sleep_until_some(self.draining.and_then(Deadline::pending)).await;
    }

    /// Completes when the orphan grace is over; never if it is not pending.
    pub(crate) async fn orphans_due(&self) {
        sleep_until_some(self.orphans.and_then(Deadline::pending)).await;
    }

    /// Starts the drain (once); returns the grace left before running attempts get
    /// cancelled.
    pub(crate) fn begin_drain(&mut self, attempts: &Attempts) -> Duration {
        if let Some(d) = self.draining {
            return d.at.saturating_duration_since(Instant::now());
        }
        let grace = self.drain_grace;
        self.ready.store(false, Ordering::Relaxed);
        tracing::info!(running = attempts.running_count(), ?grace, "draining");
        self.draining = Some(Deadline::new(Instant::now() + grace));
        grace
    }

    /// The drain grace is over: cancel what still runs.
    pub(crate) fn drain_expired(&mut self, attempts: &Attempts) -> Result<(), RemoteWorkerError> {
        if let Some(d) = self.draining.as_mut() {
            d.fired = true;
        }
        if attempts.running_count() > 0 {
            tracing::warn!(
                running = attempts.running_count(),
                "drain grace expired; cancelling running attempts"
            );
        }
        attempts.cancel_all(self.kill_grace)
    }

    /// The orphan grace is over without a welcome: cancel what still runs.
    pub(crate) fn orphans_expired(&mut self, attempts: &Attempts) -> Result<(), RemoteWorkerError> {
        if let Some(d) = self.orphans.as_mut() {
            d.fired = true;
        }
        if attempts.running_count() > 0 {
            tracing::warn!(running = attempts.running_count(), grace = ?self.orphan_grace,
                "no coordinator took over the running attempts in time; cancelling them");
        }
        attempts.cancel_all(self.kill_grace)
    }

    /// A welcomed session was lost: running attempts start their orphan grace (unless
    /// an earlier loss already started it).
    pub(crate) fn session_lost(&mut self, attempts: &Attempts) {
        self.ready.store(false, Ordering::Relaxed);
        let running = attempts.running_count();
        if running == 0 || self.orphans.is_some() {
            return;
        }
        let grace = self.orphan_grace;
        tracing::info!(
            running,
            ?grace,
            "keeping the running attempts while reconnecting"
        );
        self.orphans = Some(Deadline::new(Instant::now() + grace));
    }

    /// A session was welcomed: its `Hello` handed the running attempts over.
    pub(crate) fn welcomed(&mut self, attempts: &Attempts) {
        self.ready.store(self.draining.is_none(), Ordering::Relaxed);
        if self.orphans.take().is_some() {
            tracing::info!(
                running = attempts.running_count(),
                "running attempts handed to the new session"
            );
        }
    }

    /// Whether a drain without a session is complete: nothing runs, and either every
    /// result was acknowledged or the drain grace is over.
    pub(crate) fn drained_offline(&self, attempts: &Attempts) -> bool {
        let Some(drain) = self.draining else {
            return false;
        };
        if attempts.running_count() > 0 {
            return false;
        }
        if attempts.unacked_count() == 0 {
            tracing::info!("drained while disconnected");
            return true;
        }
        if drain.fired {
            tracing::warn!(
                unacknowledged = attempts.unacked_count(),
                "drain grace over while disconnected; stopping with results no coordinator \
                 has acknowledged (their gates are re-run)"
            );
            return true;
        }
        false
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
