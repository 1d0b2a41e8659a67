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
//! `Started` reports are remembered and announced after the next `Welcome`; results are
//! kept until acknowledged (both in [`Attempts`]). The deadlines live in [`Lifecycle`].
//! Shutdown ends the offline phase at once (the caller kills what runs).
//!
//! [`offline`] runs any future (a connect, a backoff delay, a handshake) under these
//! rules; it is one `select!` in the worker's task, and the future it runs must not
//! borrow the worker.

use std::future::Future;

use gatehouse_common::exec::FromWorker;

use crate::remote::RemoteWorkerError;
use crate::remote::attempts::Attempts;
use crate::remote::lifecycle::{Lifecycle, SessionEnd};

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

/// Runs `fut` while keeping `attempts`, their reports and the `lifecycle`'s deadlines
/// going (see the module docs).
pub(crate) async fn offline<F: Future>(
    lifecycle: &mut Lifecycle,
    attempts: &mut Attempts,
    fut: F,
) -> Result<Offline<F::Output>, RemoteWorkerError> {
    tokio::pin!(fut);
    loop {
        if lifecycle.drained_offline(attempts) {
            return Ok(Offline::Ended(SessionEnd::Drained));
        }
        let draining = lifecycle.is_draining();
        let step = tokio::select! {
            biased;
            () = lifecycle.shutdown_requested() => Step::Shutdown,
            () = lifecycle.drain_requested(), if !draining => Step::StartDrain,
            () = lifecycle.drain_due() => Step::DrainExpired,
            () = lifecycle.orphans_due() => Step::OrphansExpired,
            report = attempts.recv() => Step::Report(report),
            out = &mut fut => Step::Done(out),
        };
        match step {
            Step::Done(out) => return Ok(Offline::Done(out)),
            Step::Shutdown => return Ok(Offline::Ended(SessionEnd::Shutdown)),
            Step::StartDrain => {
                lifecycle.begin_drain(attempts);
            }
            Step::DrainExpired => lifecycle.drain_expired(attempts)?,
            Step::OrphansExpired => lifecycle.orphans_expired(attempts)?,
            Step::Report(None) => return Err(RemoteWorkerError::ExecutorStopped),
            Step::Report(Some(FromWorker::Started { attempt })) => {
                attempts.started_offline(attempt);
            }
            Step::Report(Some(FromWorker::Finished { attempt, result })) => {
                tracing::info!(?attempt, status = ?result.status,
                    "attempt finished while disconnected; result kept");
                attempts.keep_result(attempt, result);
            }
        }
    }
}
