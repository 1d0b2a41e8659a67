//! The remote worker: a session layer between a coordinator's `WorkerService.Session`
//! stream and a [`LocalWorker`](crate::LocalWorker), which does all the executing.
//!
//! [`run`] connects to the first reachable coordinator URL, says `Hello`, waits for
//! `Welcome`, then turns `Assignment`s and `CancelAttempt`s into
//! [`ToWorker`](gatehouse_common::exec::ToWorker) messages and the executor's reports
//! into `AttemptStarted` / `AttemptFinished` frames (exactly one `Finished` per
//! assignment: an assignment that cannot be decoded is answered `SpawnFailed`, one that
//! arrives while draining is answered `Cancelled`, neither is run). It sends a
//! `Heartbeat` every `heartbeat_interval_ms` of the `Welcome`, carrying the attempts
//! assigned and not finished, `free_slots = slots - running` (0 while draining) and the
//! memory figures (see [`RemoteWorkerConfig::memory_total`]).
//!
//! **Workspaces.** With [`RemoteWorkerConfig::workspace`] (`--workspace DIR`), a gate's
//! relative `workdir` resolves against `DIR`, one directory shared by every attempt:
//! gates see what earlier gates left there (use it for a checkout kept on the worker).
//! Without it, every attempt runs in a fresh, empty scratch directory under the system
//! temp dir, named `gatehouse-<gate>-<random>`, which is removed once the attempt has
//! finished; nothing survives between attempts. Absolute workdirs are used as they are.
//!
//! **Connection loss.** When the stream fails or ends, every running attempt is killed
//! at once (the coordinator re-queues the attempts of a lost worker) and its report
//! dropped; then the worker reconnects with exponential backoff and jitter
//! (`reconnect_initial` doubling up to `reconnect_max`, reset once a `Welcome` arrives)
//! and says `Hello` again as a fresh worker. Every failed connect is logged at warn
//! with its URL.
//!
//! **Drain** (the `drain` token; SIGTERM in `gatehouse worker`): the worker sends
//! `Draining { grace_ms }`, takes no new assignments, and waits for the running attempts
//! up to `drain_grace`; past it, it cancels them with the executor's kill grace and
//! reports them (`Cancelled`, which the coordinator re-queues elsewhere). Once nothing
//! runs, it closes the stream, waits (bounded) for the coordinator to close its side so
//! the last reports are delivered, and [`run`] returns `Ok`. A drain while disconnected
//! returns at once (nothing runs then).
//!
//! **Shutdown** (the `shutdown` token): every attempt is killed at once, its report
//! forwarded if the stream still lives, the stream closed, and [`run`] returns `Ok`.
//!
//! Concurrency: [`run`] is one task (the session loop) plus the `LocalWorker` and its
//! attempt tasks; it owns all of its state and shares none. A misbehaving coordinator
//! can only cause log lines, `SpawnFailed` answers or a reconnect, never a panic.

mod backoff;
mod config;
mod executor;
mod frames;
mod memory;
mod session;
mod workspace;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

pub use config::{LabelError, RemoteWorkerConfig, parse_label, parse_labels};

use backoff::Backoff;
use executor::Executor;
use memory::MemoryProbe;
use session::{SessionEnd, Worker};
use workspace::Workspace;

/// Why the remote worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWorkerError {
    /// No coordinator URL was configured.
    #[error("no coordinator URL given")]
    NoCoordinators,
    /// A coordinator URL cannot be used.
    #[error("invalid coordinator URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `slots` is 0.
    #[error("a worker needs at least one slot")]
    NoSlots,
    /// The reconnect backoff settings are inconsistent.
    #[error(
        "invalid reconnect backoff: initial {initial:?} must be above 0 and at most max {max:?}"
    )]
    InvalidBackoff {
        /// The configured first delay.
        initial: Duration,
        /// The configured cap.
        max: Duration,
    },
    /// The configured workspace is not a usable directory.
    #[error("workspace {path} is not a usable directory: {reason}")]
    Workspace {
        /// The workspace as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The machine's memory cannot be read (use a simulated total instead).
    #[error("cannot read system memory: {0}")]
    SystemInfo(String),
    /// The executor ended while the worker still needed it.
    #[error("the executor stopped unexpectedly")]
    ExecutorStopped,
    /// The executor task panicked.
    #[error("the executor task failed: {0}")]
    ExecutorFailed(String),
}

/// Runs the remote worker until a drain completes or `shutdown` fires (see the module
/// docs). Fails only on invalid configuration or an executor failure; coordinators that
/// are unreachable or misbehave are retried forever.
pub async fn run(
    cfg: RemoteWorkerConfig,
    shutdown: CancellationToken,
    drain: CancellationToken,
) -> Result<(), RemoteWorkerError> {
    cfg.validate()?;
    let endpoints = cfg.endpoints()?;
    let workspace = resolve_workspace(cfg.workspace.as_deref())?;
    let memory = MemoryProbe::new(cfg.memory_total)?;
    let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "unknown".to_owned());
    let exec = Executor::start(cfg.exec.clone(), 64 + 2 * cfg.slots as usize);
    tracing::info!(worker_id = %cfg.id, slots = cfg.slots, memory_total = memory.total(),
        workspace = ?workspace.shared(), "remote worker starting");
    let mut worker = Worker {
        cfg,
        hostname,
        workspace,
        memory,
        exec,
        shutdown,
        drain,
    };
    let served = serve(&mut worker, &endpoints).await;
    // After an error attempts may still run; kill them so the executor ends promptly.
    let _ = worker.exec.cancel_all(Duration::ZERO);
    let finished = worker.exec.finish().await;
    tracing::info!(ok = served.is_ok(), "remote worker stopped");
    served.and(finished)
}

/// Connects, runs sessions and reconnects until a drain or shutdown ends the worker.
async fn serve(
    worker: &mut Worker,
    endpoints: &[(String, Endpoint)],
) -> Result<(), RemoteWorkerError> {
    let mut backoff = Backoff::new(worker.cfg.reconnect_initial, worker.cfg.reconnect_max);
    loop {
        let connected = tokio::select! {
            biased;
            () = worker.shutdown.cancelled() => return Ok(()),
            () = worker.drain.cancelled() => {
                tracing::info!("drain while disconnected; nothing runs");
                return Ok(());
            }
            connected = connect_any(endpoints, worker.cfg.connect_timeout) => connected,
        };
        if let Some((url, channel)) = connected {
            let span = tracing::info_span!("session", coordinator = %url);
            let end = worker.session(channel).instrument(span).await?;
            match end {
                SessionEnd::Drained | SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Lost { reason, welcomed } => {
                    tracing::warn!(coordinator = %url, %reason, "session lost");
                    if welcomed {
                        backoff.reset();
                    }
                    let bound = worker.kill_bound(Duration::ZERO);
                    worker.exec.abandon_all(bound).await?;
                }
            }
        }
        let delay = backoff.next_delay();
        tracing::debug!(?delay, "reconnecting after a delay");
        tokio::select! {
            biased;
            () = worker.shutdown.cancelled() => return Ok(()),
            () = worker.drain.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Tries each coordinator in order; `None` if none could be reached (each failure is
/// logged at warn with its URL).
async fn connect_any(
    endpoints: &[(String, Endpoint)],
    timeout: Duration,
) -> Option<(String, Channel)> {
    for (url, endpoint) in endpoints {
        match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => {
                tracing::info!(coordinator = %url, "connected");
                return Some((url.clone(), channel));
            }
            Ok(Err(error)) => {
                tracing::warn!(coordinator = %url, error = %error_chain(&error),
                    "cannot connect to the coordinator");
            }
            Err(_) => {
                tracing::warn!(coordinator = %url, ?timeout, "connecting to the coordinator timed out");
            }
        }
    }
    None
}

/// A shared workspace made absolute and checked, or scratch directories under the
/// system temp dir.
fn resolve_workspace(dir: Option<&Path>) -> Result<Workspace, RemoteWorkerError> {
    let Some(dir) = dir else {
        return Ok(Workspace::Scratch {
            root: std::env::temp_dir(),
        });
    };
    let invalid = |reason: String| RemoteWorkerError::Workspace {
        path: dir.to_path_buf(),
        reason,
    };
    let abs = std::path::absolute(dir).map_err(|e| invalid(e.to_string()))?;
    match std::fs::metadata(&abs) {
        Ok(meta) if meta.is_dir() => Ok(Workspace::Shared(abs)),
        Ok(_) => Err(invalid("not a directory".to_owned())),
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// An error and its sources, `: `-separated (tonic's transport errors say little alone).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        // hyper wraps some errors in an identical message; say it once.
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        source = e.source();
    }
    parts.join(": ")
}
