//! `gatehouse coordinator`: a standalone coordinator serving the plan and worker APIs.

use gatehouse_common::telemetry::Tracer;
use gatehouse_proto::tls::Tls;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gatehouse_common::units::parse_duration;
use gatehouse_coordinator::ha::EtcdConfig;
use gatehouse_coordinator::server::{self, CoordinatorConfig, StateBackend};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{EXIT_FAILED, EXIT_PASSED};

#[derive(Args)]
pub struct CoordinatorArgs {
    /// Address for the gRPC API (plans, workers, health, reflection); port 0 picks one.
    #[arg(long, default_value = "0.0.0.0:7700", env = "GATEHOUSE_LISTEN")]
    listen: SocketAddr,
    /// Write the bound address to this file once serving (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Serve HTTP probes here: /healthz (alive) and /readyz (ready while leading);
    /// port 0 picks one [default: none].
    #[arg(long, value_name = "ADDR", env = "GATEHOUSE_HTTP")]
    http: Option<SocketAddr>,
    /// How often workers send heartbeats.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// A worker silent for this long is declared lost and its gates re-queued.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    liveness_timeout: Duration,
    /// Workers using more than this fraction of their memory get no new gates.
    #[arg(long, default_value_t = 0.9, value_parser = parse_fraction)]
    memory_pressure: f64,
    /// Grace between SIGTERM and SIGKILL when gates are cancelled.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,
    /// Finished plans kept for status and watch.
    #[arg(long, default_value_t = 100)]
    retain_plans: usize,
    /// Standalone: keep plan state in a local store in this directory (a restarted
    /// coordinator resumes its plans). Ignored with --etcd.
    #[arg(long, default_value = "gatehouse-state", env = "GATEHOUSE_STATE_DIR")]
    state_dir: PathBuf,
    /// Plans with a `source`: where this coordinator keeps its bare mirrors of their
    /// repositories, to resolve refs, build speculative states and key gates by tree
    /// (default: <state dir>/git, also with --etcd).
    #[arg(long, env = "GATEHOUSE_GIT_CACHE")]
    git_cache: Option<PathBuf>,
    /// Plans with a `source`: deadline of each git command that talks to a repository;
    /// past it the items concerned fail with reason `source`.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    fetch_timeout: Duration,
    /// High availability: etcd endpoints (URL[,URL...]); replicas elect a leader and keep
    /// plan state in etcd.
    #[arg(long, env = "GATEHOUSE_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// With --etcd: the cluster name; keys live under /gatehouse/NAME/.
    #[arg(long, default_value = "default", env = "GATEHOUSE_CLUSTER")]
    cluster: String,
    /// With --etcd: the leader's lease TTL; a leader that cannot renew it within this
    /// time stops leading, and another takes over.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// With --etcd: the URL clients and workers use to reach this coordinator, which the
    /// leader proclaims (default: http://HOSTNAME:PORT, https:// with --tls-cert, or the
    /// listen address if it is not a wildcard).
    #[arg(long, env = "GATEHOUSE_ADVERTISE")]
    advertise: Option<String>,
    /// Cache nodes (workers started with --cache-listen) that hold each cache entry.
    #[arg(long, value_name = "N", default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..=gatehouse_cache::MAX_REPLICAS as i64))]
    cache_replicas: u32,
    /// A cache lookup with no hit by then counts as a miss and the gate runs; a slow
    /// or hung cache node never holds a gate up longer.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    cache_timeout: Duration,
}

/// Parses a fraction in (0, 1].
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not in (0, 1]"))
    }
}

pub fn main(args: CoordinatorArgs, tracer: Tracer, tls: Tls) -> u8 {
    match crate::block_on(run(args, tracer, tls)) {
        Err(code) => code,
        Ok(Ok(())) => EXIT_PASSED,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}

async fn run(args: CoordinatorArgs, tracer: Tracer, tls: Tls) -> anyhow::Result<()> {
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    if let Some(advertise) = &args.advertise
        && tls.serves() != gatehouse_proto::tls::is_https(advertise)
    {
        anyhow::bail!(
            "--advertise {advertise} does not match what this coordinator serves ({}): use {}://",
            if tls.serves() {
                "TLS, with --tls-cert"
            } else {
                "plaintext, without --tls-cert"
            },
            tls.scheme()
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let http = match args.http {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            tracing::info!(address = %l.local_addr()?, "HTTP probes serving");
            Some(l)
        }
        None => None,
    };
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    if let Some(path) = &args.ready_file {
        write_atomically(path, &bound.to_string())
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }
    eprintln!("gatehouse coordinator listening on {bound}");
    crate::warn_without_git("plans with a `source` will be refused").await;
    let state = if args.etcd.is_empty() {
        StateBackend::Dir(args.state_dir.clone())
    } else {
        if args.lease_ttl < Duration::from_secs(1) {
            anyhow::bail!("--lease-ttl must be at least 1s (etcd leases have whole seconds)");
        }
        let endpoints: Vec<String> = args
            .etcd
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        StateBackend::Etcd(EtcdConfig {
            endpoints,
            cluster: args.cluster.clone(),
            lease_ttl: args.lease_ttl,
            advertise: args
                .advertise
                .clone()
                .unwrap_or_else(|| default_advertise(bound, tls.scheme())),
        })
    };
    let config = CoordinatorConfig {
        heartbeat_interval: args.heartbeat_interval,
        liveness_timeout: args.liveness_timeout,
        memory_pressure: args.memory_pressure,
        kill_grace: args.kill_grace,
        retain_finished: args.retain_plans,
        state,
        cache_replicas: args.cache_replicas as usize,
        cache_timeout: args.cache_timeout,
        tracer,
        tls,
        git_cache: args
            .git_cache
            .clone()
            .unwrap_or_else(|| args.state_dir.join("git")),
        fetch_timeout: args.fetch_timeout,
        ..CoordinatorConfig::default()
    };
    let shutdown = CancellationToken::new();
    let server = gatehouse_common::spawn::spawn_named(
        "coordinator",
        server::run(config, listener, http, shutdown.clone()),
    );
    tokio::pin!(server);
    // The server ends on its own only on a fatal error; otherwise the first signal
    // starts a graceful shutdown and a second one exits at once.
    let early = tokio::select! {
        ended = &mut server => Some(ended),
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
    };
    if let Some(ended) = early {
        ended.context("coordinator task failed")??;
        return Ok(());
    }
    eprintln!("shutting down (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        ended = &mut server => ended.context("coordinator task failed")??,
        _ = sigint.recv() => anyhow::bail!("interrupted during shutdown"),
        _ = sigterm.recv() => anyhow::bail!("interrupted during shutdown"),
    }
    Ok(())
}

/// `SCHEME://HOST:PORT` for the bound address (`https` when serving TLS); a wildcard
/// address becomes the host name.
fn default_advertise(bound: SocketAddr, scheme: &str) -> String {
    if bound.ip().is_unspecified() {
        let host = sysinfo::System::host_name().unwrap_or_else(|_| "localhost".to_string());
        format!("{scheme}://{host}:{}", bound.port())
    } else {
        format!("{scheme}://{bound}")
    }
}

/// Writes `content` to a temp file next to `path`, then renames it into place, so a
/// reader never sees a partial address.
pub fn write_atomically(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}
