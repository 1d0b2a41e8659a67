//! The remote worker: a session layer between a coordinator's `WorkerService.Session`
//! stream and a [`LocalWorker`](crate::LocalWorker), which does all the executing.
//!
//! [`run`] connects to the leader coordinator, says `Hello`, waits for `Welcome`, then
//! turns `Assignment`s and `CancelAttempt`s into
//! [`ToWorker`](gatehouse_common::exec::ToWorker) messages and the executor's reports
//! into `AttemptStarted` / `AttemptFinished` frames (exactly one `Finished` per
//! assignment: an assignment that cannot be decoded is answered `SpawnFailed`, one that
//! arrives while draining is answered `Cancelled`, neither is run). It sends a
//! `Heartbeat` every `heartbeat_interval_ms` of the `Welcome`, carrying the attempts
//! assigned and not finished, `free_slots = slots - running` (0 while draining) and the
//! memory figures (see [`RemoteWorkerConfig::memory_total`]).
//!
//! **Entry point.** `run(config, listeners, shutdown, drain)` is how `gatehouse worker`
//! and the tests start a worker alike: the caller binds the sockets it serves
//! ([`WorkerListeners`]: the cache node's, with [`RemoteWorkerConfig::cache_node`], and
//! the HTTP probes'), so a port in use fails before anything starts and tests bind
//! port 0, as they do for the coordinator.
//!
//! **Workspaces.** With [`RemoteWorkerConfig::workspace`] (`--workspace DIR`), a gate's
//! relative `workdir` resolves against `DIR`, one directory shared by every attempt:
//! gates see what earlier gates left there (use it for a checkout kept on the worker).
//! Without it, every attempt runs in a fresh, empty scratch directory under the system
//! temp dir, named `gatehouse-<gate>-<random>`, which is removed once the attempt has
//! finished; nothing survives between attempts. Absolute workdirs are used as they are.
//!
//! **Finding the leader.** The configured URLs (`--coordinator`) are tried in order,
//! one after the other; after a pass in which none gave a session, the worker waits with
//! exponential backoff and jitter (`reconnect_initial` doubling up to `reconnect_max`,
//! reset once a `Welcome` arrives) and starts the next pass. A coordinator that is not
//! the leader refuses the session with `UNAVAILABLE`; when it names the leader
//! (`gatehouse-leader` metadata, see [`gatehouse_proto::leader`]) the worker connects
//! there next, at once, whether or not that URL is in the list; at most 3 redirects in
//! a row are followed before the next backoff, so coordinators that name each other
//! cannot make it spin. Without a name, the next URL is tried. A URL that cannot be
//! reached is logged at warn once, until a connect to it succeeds again (the retries in
//! between at debug).
//!
//! **Connection loss.** When a session fails or ends, running attempts are *not* killed:
//! they keep running while the worker reconnects (a new leader may take them over), for
//! at most [`RemoteWorkerConfig::orphan_grace`] (`--orphan-grace`, default 60 s). The
//! next session's `Hello` lists them in `running`; once it is welcomed they are that
//! session's. If no session is welcomed within the grace, they are cancelled with the
//! executor's kill grace. Reports produced meanwhile are kept: `AttemptStarted` is sent
//! after the next `Welcome` for attempts that still run, results as below.
//!
//! **Results until acknowledged.** Every finished attempt's result (including the
//! answers to assignments that were not run) is kept from the moment it finishes until
//! the coordinator names it in a `ResultAck`, at most 10,000 results and 256 MiB (past
//! that the oldest are dropped with a warning). During a session each
//! result is sent as `AttemptFinished` when it finishes; every new session's `Hello`
//! carries all kept results in `finished` (those that do not fit 2 MiB follow as
//! `AttemptFinished` frames right after `Welcome`). An assignment of an attempt that
//! runs here is ignored; one whose result is kept is answered with that result instead
//! of running the gate twice.
//!
//! **Drain** (the `drain` token; SIGTERM in `gatehouse worker`): the worker sends
//! `Draining { grace_ms }`, takes no new assignments, and waits for the running attempts
//! up to `drain_grace`; past it, it cancels them with the executor's kill grace and
//! reports them (`Cancelled`, which the coordinator re-queues elsewhere). Once nothing
//! runs, it closes the stream, waits (bounded) for the coordinator to close its side so
//! the last reports are delivered, and [`run`] returns `Ok`. A drain while disconnected
//! works the same way without the stream: running attempts get the drain grace, the
//! worker keeps reconnecting (a session welcomed meanwhile continues the drain and
//! delivers the results), and [`run`] returns once nothing runs and no result is left
//! unacknowledged, or nothing runs and the grace is over (at once if nothing ran).
//!
//! **Shutdown** (the `shutdown` token): every attempt is killed at once, its report
//! forwarded if a stream lives, the stream closed, and [`run`] returns `Ok`.
//!
//! **What this expects of the coordinator.** It acknowledges a result (`ResultAck`)
//! only once it is durably recorded or known to be stale, and treats a result in
//! `Hello.finished` exactly like an `AttemptFinished` (recording each at most once). It
//! adopts the attempts of `Hello.running` it still considers current and sends
//! `CancelAttempt` for the others: the worker runs what it was not told to stop. It may
//! assign an attempt only once; the worker answers a repeated assignment from its kept
//! result, but one whose result was acknowledged is forgotten and would run again.
//!
//! Concurrency: [`run`] is one task (the reconnect and session loops) plus the
//! `LocalWorker` and its attempt tasks; it owns all of its state and shares none. A
//! misbehaving coordinator can only cause log lines, `SpawnFailed` answers or a
//! reconnect, never a panic.

mod attempts;
mod cache_link;
mod config;
mod executor;
mod frames;
mod lifecycle;
mod memory;
mod offline;
mod reconnect;
mod route;
mod session;
mod unacked;
mod workspace;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_cache::{ClusterCache, Membership};
use tokio::net::TcpListener;
use tokio::sync::watch;

use tokio_util::sync::CancellationToken;

pub use config::{LabelError, RemoteWorkerConfig, parse_label, parse_labels};

use attempts::Attempts;
use cache_link::CacheLink;
use executor::Executor;
use lifecycle::Lifecycle;
use memory::MemoryProbe;
use session::Worker;
use workspace::Workspace;

use crate::metrics::{ScrapeState, WorkerMetrics};

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
    /// The cache node could not start.
    #[error(transparent)]
    CacheNode(#[from] gatehouse_cache::node::CacheNodeError),
    /// [`RemoteWorkerConfig::cache_node`] and [`WorkerListeners::cache`] were not given
    /// together.
    #[error("a cache node needs both its settings and its listener")]
    CacheListener,
}

/// The sockets a remote worker serves on, bound by its caller: the binary binds the
/// addresses of its flags, tests bind port 0 (as for the coordinator's
/// `server::run`). The worker serves them until it stops.
#[derive(Debug, Default)]
pub struct WorkerListeners {
    /// The cache node's `CacheService` (`--cache-listen`); given exactly when
    /// [`RemoteWorkerConfig::cache_node`] is set.
    pub cache: Option<TcpListener>,
    /// HTTP probes and metrics (`--http`): `/healthz`, `/readyz` (a session with the
    /// leader is welcomed and the worker is not draining) and `/metrics`.
    pub http: Option<TcpListener>,
}

/// How long a stopping worker lets its pending cache writes finish.
const CACHE_FLUSH: Duration = Duration::from_secs(2);

/// Runs the remote worker on `listeners` until a drain completes or `shutdown` fires
/// (see the module docs). Fails only on invalid configuration or an executor failure;
/// coordinators that are unreachable or misbehave are retried forever.
pub async fn run(
    cfg: RemoteWorkerConfig,
    listeners: WorkerListeners,
    shutdown: CancellationToken,
    drain: CancellationToken,
) -> Result<(), RemoteWorkerError> {
    cfg.validate()?;
    // Every configured URL is checked before anything connects.
    cfg.endpoints()?;
    if cfg.cache_node.is_some() != listeners.cache.is_some() {
        return Err(RemoteWorkerError::CacheListener);
    }
    let workspace = resolve_workspace(cfg.workspace.as_deref())?;
    let memory = MemoryProbe::new(cfg.memory_total)?;
    let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "unknown".to_owned());
    let (members, members_rx) = watch::channel(Arc::new(Membership::default()));
    let cache = Arc::new(ClusterCache::new(
        cfg.cache_client.clone(),
        members_rx.clone(),
    ));
    // The cache node outlives the sessions; it stops after the worker is done.
    let node_stop = CancellationToken::new();
    let node = match cfg.cache_node.clone().zip(listeners.cache) {
        Some((node, listener)) => Some(
            gatehouse_cache::node::start_node(
                cfg.id.to_string(),
                &hostname,
                listener,
                node,
                members_rx,
                Some(cache.clone()),
                node_stop.clone(),
            )
            .await
            .map_err(RemoteWorkerError::CacheNode)?,
        ),
        None => None,
    };
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics = WorkerMetrics::default();
    let probes = match listeners.http {
        Some(listener) => {
            let r = ready.clone();
            let ready_now: gatehouse_common::http::Readiness =
                Arc::new(move || r.load(std::sync::atomic::Ordering::Relaxed));
            let mut registry = gatehouse_common::telemetry::metrics::registry();
            metrics.register(
                &mut registry,
                ScrapeState {
                    slots: cfg.slots,
                    ready: ready.clone(),
                    cache: cache.clone(),
                    store: node.as_ref().map(|n| n.store.clone()),
                },
            );
            Some(gatehouse_common::spawn::spawn_named(
                "http",
                gatehouse_common::http::serve(
                    listener,
                    ready_now,
                    Arc::new(registry),
                    node_stop.clone(),
                ),
            ))
        }
        None => None,
    };
    let exec = Executor::start(cfg.exec.clone(), 64 + 2 * cfg.slots as usize, metrics);
    tracing::info!(worker_id = %cfg.id, slots = cfg.slots, memory_total = memory.total(),
        workspace = ?workspace.shared(), cache_url = ?node.as_ref().map(|n| &n.url),
        "remote worker starting");
    let lifecycle = Lifecycle::new(&cfg, shutdown, drain, ready);
    let link = CacheLink::new(node.as_ref().map(|n| n.url.clone()), members);
    let attempts = Attempts::new(exec, cache.clone());
    let mut worker = Worker::new(cfg, hostname, workspace, memory, attempts, lifecycle, link);
    let served = reconnect::serve(&mut worker).await;
    let finished = worker.finish().await;
    // Cache writes of the last results get a moment to reach their replicas.
    cache.close(CACHE_FLUSH).await;
    node_stop.cancel();
    if let Some(node) = node {
        let _ = node.task.await;
    }
    if let Some(probes) = probes {
        let _ = probes.await;
    }
    tracing::info!(ok = served.is_ok(), "remote worker stopped");
    served.and(finished)
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
