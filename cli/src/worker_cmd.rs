//! `gatehouse worker`: runs the gates a coordinator assigns, on this machine, through
//! [`gatehouse_worker::remote::run`], on the `--cache-listen` and `--http` listeners it
//! binds first (a port in use exits 1 before anything starts).
//!
//! Signals: the first SIGTERM or SIGINT starts a drain (no new work, running gates get
//! `--drain-grace` to finish, then are cancelled and re-queued by the coordinator) and
//! the command exits 0 once it is done; a second one kills the running gates at once and
//! exits 130. Invalid flags exit 2; a fatal error exits 1 with a one-line message.
//!
//! When the connection to the coordinator is lost, running gates keep running for
//! `--orphan-grace` while the worker reconnects, following a not-leader answer to the
//! leader it names (see [`gatehouse_worker::remote`]).
//!
//! `--memory-pressure` is sent in the worker's hello; the coordinator applies it to the
//! used/total memory the worker reports in its heartbeats (its own default otherwise).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_cache::node::{CacheNodeConfig, StoreConfig};
use gatehouse_common::ids::{WorkerId, is_valid_id};
use gatehouse_common::units::{parse_duration, parse_size};
use gatehouse_proto::tls::Tls;
use gatehouse_worker::ExecConfig;
use gatehouse_worker::checkout::Checkouts;
use gatehouse_worker::remote::{
    self, RemoteWorkerConfig, RemoteWorkerError, WorkerListeners, parse_labels,
};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_PASSED};

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Coordinator URLs, tried in this order on every (re)connect.
    #[arg(
        long = "coordinator",
        value_name = "URL[,URL...]",
        env = "GATEHOUSE_COORDINATOR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7700"
    )]
    coordinators: Vec<String>,
    /// Worker id, unique among the coordinator's workers [default: <hostname>-<pid>].
    #[arg(long)]
    id: Option<String>,
    /// Gates run at once [default: number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    slots: Option<u32>,
    /// Labels advertised to the coordinator, as k=v (comma-separated or repeated);
    /// gates that require labels only run on workers that have all of them.
    #[arg(long, value_name = "K=V[,K=V...]")]
    labels: Vec<String>,
    /// Simulated total memory (e.g. 8Gi): advertised and reported as available instead
    /// of the machine's figures; the coordinator subtracts the gates it assigned.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Take no new gates while more than this fraction of memory is in use (0 < F <= 1)
    /// [default: the coordinator's --memory-pressure].
    #[arg(long, value_name = "F", value_parser = crate::coordinator_cmd::parse_fraction)]
    memory_pressure: Option<f64>,
    /// Shared directory that relative gate workdirs resolve against [default: a fresh
    /// scratch directory per attempt, removed after it].
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Gates of plans with a `source`: where this worker keeps its bare mirrors of their
    /// repositories (fetching only the commits it lacks); each attempt runs in a fresh
    /// checkout made under DIR/.checkouts and removed after it
    /// [default: <workspace>/.gatehouse-git, or <temp dir>/gatehouse-git].
    #[arg(long, value_name = "DIR", env = "GATEHOUSE_GIT_CACHE")]
    git_cache: Option<PathBuf>,
    /// Gates of plans with a `source`: deadline of each fetch; past it the attempt fails
    /// with reason `source`.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    fetch_timeout: Duration,
    /// How long a drain (first SIGTERM/SIGINT) waits for running gates before
    /// cancelling them.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    drain_grace: Duration,
    /// How long running gates keep running after the connection to the coordinator was
    /// lost, while the worker reconnects (a new leader can take them over); past it
    /// without a new session they are cancelled and their results kept for the next
    /// coordinator.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    orphan_grace: Duration,
    /// Time between SIGTERM and SIGKILL when a gate times out or a drain cancels it
    /// (cancellations from the coordinator carry their own grace).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,
    /// Serve part of the cluster's shared result cache on this address (port 0 picks a
    /// free port) [default: not a cache node]. Every worker writes passed results to
    /// the cache nodes either way.
    #[arg(long, value_name = "ADDR")]
    cache_listen: Option<std::net::SocketAddr>,
    /// The URL other processes reach this cache node at [default: http://<listen
    /// address>, with the host name for 0.0.0.0 or ::].
    #[arg(long, value_name = "URL", requires = "cache_listen")]
    cache_advertise: Option<String>,
    /// Bytes of cache entries this node keeps in memory.
    #[arg(long, value_name = "SIZE", default_value = "256Mi", value_parser = parse_size)]
    cache_memory: u64,
    /// Also keep cache entries on disk in this directory (they survive restarts).
    #[arg(long, value_name = "DIR", requires = "cache_listen")]
    cache_dir: Option<PathBuf>,
    /// Bytes of cache entries kept in --cache-dir.
    #[arg(long, value_name = "SIZE", default_value = "10Gi", value_parser = parse_size)]
    cache_disk: u64,
    /// Cache entries older than this are dropped (counted from when they were written).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    cache_ttl: Duration,
    /// Serve HTTP probes here: /healthz (alive) and /readyz (connected to the leader and
    /// not draining); port 0 picks one [default: none].
    #[arg(long, value_name = "ADDR", env = "GATEHOUSE_HTTP")]
    http: Option<std::net::SocketAddr>,
}

/// Runs the worker until it drained (0), was stopped by a second signal (130), got
/// invalid flags (2) or failed (1).
pub fn main(args: WorkerArgs, tls: Tls) -> u8 {
    let listen = Listen {
        cache: args.cache_listen,
        http: args.http,
    };
    let cfg = match config(args, tls) {
        Ok(cfg) => cfg,
        Err(message) => {
            eprintln!("error: {message}");
            return EXIT_INVALID;
        }
    };
    crate::block_on(serve(cfg, listen)).unwrap_or_else(|code| code)
}

/// The addresses the worker serves on (`--cache-listen`, `--http`).
struct Listen {
    cache: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

impl Listen {
    /// Binds every address; the error says which one failed.
    async fn bind(&self) -> Result<WorkerListeners, String> {
        let cache = match self.cache {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen for the cache on {addr}: {e}"))?,
            ),
            None => None,
        };
        let http = match self.http {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen for HTTP on {addr}: {e}"))?;
                if let Ok(bound) = l.local_addr() {
                    tracing::info!(address = %bound, "HTTP probes serving");
                }
                Some(l)
            }
            None => None,
        };
        Ok(WorkerListeners { cache, http })
    }
}

/// Validates the flags into a worker configuration.
fn config(args: WorkerArgs, tls: Tls) -> Result<RemoteWorkerConfig, String> {
    let id = match args.id {
        Some(id) if is_valid_id(&id) => id,
        Some(id) => {
            return Err(format!(
                "invalid --id {id:?}: use 1 to 128 letters, digits, '.', '_' or '-'"
            ));
        }
        None => default_id(),
    };
    let labels = parse_labels(args.labels.iter().map(String::as_str))
        .map_err(|e| format!("invalid --labels: {e}"))?;
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let mut cfg = RemoteWorkerConfig::new(args.coordinators, WorkerId::new(id));
    cfg.slots = slots;
    cfg.labels = labels;
    cfg.memory_total = args.memory;
    cfg.memory_pressure = args.memory_pressure;
    let git_cache = match (&args.git_cache, &args.workspace) {
        (Some(dir), _) => dir.clone(),
        (None, Some(workspace)) => workspace.join(".gatehouse-git"),
        (None, None) => std::env::temp_dir().join("gatehouse-git"),
    };
    let checkouts = Checkouts::new(
        git_cache.clone(),
        git_cache.join(".checkouts"),
        args.fetch_timeout,
    );
    cfg.workspace = args.workspace;
    cfg.drain_grace = args.drain_grace;
    cfg.orphan_grace = args.orphan_grace;
    cfg.exec = ExecConfig {
        kill_grace: args.kill_grace,
        checkouts: Some(std::sync::Arc::new(checkouts)),
        ..ExecConfig::default()
    };
    if args.cache_ttl.is_zero() {
        return Err("invalid --cache-ttl: must be above 0".into());
    }
    cfg.cache_node = args.cache_listen.map(|_| CacheNodeConfig {
        advertise: args.cache_advertise,
        store: StoreConfig {
            memory_bytes: args.cache_memory,
            disk: args.cache_dir.map(|dir| (dir, args.cache_disk)),
            ttl: args.cache_ttl,
        },
        tls: tls.clone(),
    });
    cfg.cache_client.tls = tls.clone();
    cfg.tls = tls;
    Ok(cfg)
}

/// `<hostname>-<pid>`, with anything an id may not contain in the hostname replaced.
fn default_id() -> String {
    let host = sysinfo::System::host_name().unwrap_or_else(|_| "worker".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    format!("{host}-{}", std::process::id())
}

async fn serve(cfg: RemoteWorkerConfig, listen: Listen) -> u8 {
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot install the signal handlers: {e}");
            return EXIT_FAILED;
        }
    };
    let listeners = match listen.bind().await {
        Ok(listeners) => listeners,
        Err(message) => {
            eprintln!("error: {message}");
            return EXIT_FAILED;
        }
    };
    crate::warn_without_git("gates of plans with a `source` will fail with reason `source`").await;
    let shutdown = CancellationToken::new();
    let drain = CancellationToken::new();
    let worker = remote::run(cfg, listeners, shutdown.clone(), drain.clone());
    tokio::pin!(worker);
    let result = loop {
        tokio::select! {
            result = &mut worker => break result,
            _ = sigterm.recv() => on_signal(&drain, &shutdown),
            _ = sigint.recv() => on_signal(&drain, &shutdown),
        }
    };
    match result {
        Ok(()) if shutdown.is_cancelled() => EXIT_INTERRUPTED,
        Ok(()) => EXIT_PASSED,
        Err(e) => {
            eprintln!("error: {e}");
            if is_usage_error(&e) {
                EXIT_INVALID
            } else {
                EXIT_FAILED
            }
        }
    }
}

/// First signal: drain; any later one: stop at once.
fn on_signal(drain: &CancellationToken, shutdown: &CancellationToken) {
    if drain.is_cancelled() {
        tracing::warn!("second signal: killing running gates and stopping");
        shutdown.cancel();
    } else {
        tracing::warn!("signal received: draining (send another to stop at once)");
        drain.cancel();
    }
}

/// Errors caused by the flags rather than by the machine or the executor.
fn is_usage_error(e: &RemoteWorkerError) -> bool {
    matches!(
        e,
        RemoteWorkerError::NoCoordinators
            | RemoteWorkerError::InvalidUrl { .. }
            | RemoteWorkerError::NoSlots
            | RemoteWorkerError::InvalidBackoff { .. }
            | RemoteWorkerError::Workspace { .. }
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WorkerArgs,
    }

    fn parse(argv: &[&str]) -> Result<RemoteWorkerConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("worker").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        config(cli.args, Default::default())
    }

    #[test]
    fn flags_build_the_worker_config() {
        let cfg = parse(&[
            "--coordinator=http://a:1,http://b:2",
            "--id=w-7",
            "--slots=3",
            "--labels=arch=arm64,gpu=1",
            "--labels=zone=eu",
            "--memory=2Gi",
            "--workspace=/srv/ws",
            "--drain-grace=1m",
            "--orphan-grace=90s",
            "--kill-grace=2s",
        ])
        .expect("valid flags");
        assert_eq!(cfg.coordinators, ["http://a:1", "http://b:2"]);
        assert_eq!((cfg.id.as_str(), cfg.slots), ("w-7", 3));
        assert_eq!(cfg.labels.len(), 3);
        assert_eq!(cfg.memory_total, Some(2 << 30));
        assert_eq!(cfg.workspace, Some(PathBuf::from("/srv/ws")));
        assert_eq!(cfg.drain_grace, Duration::from_secs(60));
        assert_eq!(cfg.orphan_grace, Duration::from_secs(90));
        assert_eq!(cfg.exec.kill_grace, Duration::from_secs(2));
    }

    #[test]
    fn defaults_and_bad_flags() {
        let cfg = parse(&["--coordinator=http://c:7700"]).expect("defaults");
        assert!(cfg.slots >= 1);
        assert!(
            cfg.id
                .as_str()
                .ends_with(&format!("-{}", std::process::id()))
        );
        assert!(is_valid_id(cfg.id.as_str()), "{}", cfg.id);
        assert_eq!(cfg.drain_grace, Duration::from_secs(30));
        assert_eq!(cfg.orphan_grace, Duration::from_secs(60));
        assert!(cfg.workspace.is_none() && cfg.memory_total.is_none());
        assert!(parse(&["--slots=0"]).is_err());
        assert!(parse(&["--id=a b"]).is_err());
        assert!(parse(&["--labels=nokey"]).is_err());
        assert!(parse(&["--labels=a=1,a=2"]).is_err());
        assert!(parse(&["--memory=lots"]).is_err());
        assert!(parse(&["--drain-grace=30"]).is_err());
        assert!(parse(&["--orphan-grace=soon"]).is_err());
    }
}
