//! The client commands: `gatehouse submit`, `watch`, `status`, `cancel`, `plans` and
//! `workers`, which talk to a coordinator over `gatehouse.v1.PlanService`.
//!
//! Every command finds the leader among the `--coordinator` URLs and makes its call
//! there ([`leader`]: redirects, retries while no leader is reachable, up to
//! `--failover-timeout`), prints, and maps the result to an exit code ([`error`]). Following
//! a plan (`watch`, `submit --watch`) is [`follow`]; it renders through the same
//! [`Renderer`] as `gatehouse run`, so the output is the same. Each command runs on a
//! current-thread runtime of its own; nothing is left running when it returns.

mod cache_stats;
mod connect;
mod error;
#[cfg(test)]
mod fake_plans;
mod flakes;
mod follow;
mod leader;
mod submit;
mod tables;

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tracing::Instrument;

pub use cache_stats::{CacheStatsArgs, cache_stats};

use gatehouse_common::ids::PlanId;
use gatehouse_common::units::parse_duration;
use gatehouse_proto::v1;
use gatehouse_proto::v1::plan_service_client::PlanServiceClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::render::{Mode, PlanView, Renderer, json::emit, wire};
use crate::validate::report_invalid;
use crate::{EXIT_FAILED, EXIT_INVALID, EXIT_PASSED};
use connect::{Coordinator, CoordinatorUrls, DEFAULT_COORDINATOR, RPC_TIMEOUT, parse_urls};
use error::ClientError;
pub use flakes::{FlakesArgs, flakes};
use follow::{Follower, OnInterrupt, Signals};
use gatehouse_proto::tls::Tls;
use leader::{Cluster, FAILOVER_TIMEOUT, Resend};

/// Where the coordinator is.
#[derive(clap::Args)]
pub struct CoordinatorOpts {
    /// Coordinator URL(s), comma-separated (every replica, for HA): tried in order until
    /// the leader answers; a follower's answer naming the leader is followed.
    #[arg(
        long = "coordinator",
        env = "GATEHOUSE_COORDINATOR",
        default_value = DEFAULT_COORDINATOR,
        value_name = "URL[,URL...]",
        value_parser = parse_urls
    )]
    urls: CoordinatorUrls,
    /// How long to keep looking for the leader (URLs not reachable, an election in
    /// progress) before giving up; also how long a broken watch is resumed [default: 30s].
    #[arg(
        long,
        env = "GATEHOUSE_FAILOVER_TIMEOUT",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    failover_timeout: Option<Duration>,
}

impl CoordinatorOpts {
    fn cluster(&self, tls: &Tls) -> Cluster {
        cluster_of(self.urls.clone(), self.failover_timeout, tls)
    }
}

/// The coordinators at `urls`, looked for the leader for `failover_timeout` (default
/// [`FAILOVER_TIMEOUT`]).
fn cluster_of(urls: CoordinatorUrls, failover_timeout: Option<Duration>, tls: &Tls) -> Cluster {
    Cluster::new(
        urls,
        failover_timeout.unwrap_or(FAILOVER_TIMEOUT),
        tls.clone(),
    )
}

/// Makes an idempotent call (a read, a cancel) on the leader, re-sent on any failover.
async fn read<T, F, Fut>(cluster: &Cluster, rpc: F) -> Result<(Coordinator, T), ClientError>
where
    F: FnMut(PlanServiceClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    cluster
        .call(Resend::Idempotent, None, cluster.budget, RPC_TIMEOUT, rpc)
        .await
}

#[derive(clap::Args)]
pub struct SubmitArgs {
    /// Plan file (.yaml, .yml or .json), or - for YAML on stdin.
    plan: PathBuf,
    /// Follow the plan like `gatehouse run` until it ends; exit with its status.
    #[arg(long)]
    watch: bool,
    /// JSON output: `{"event":"submitted",...}`, then with --watch the NDJSON of `gatehouse run --json`.
    #[arg(long)]
    json: bool,
    /// Neither read nor write the result cache for this plan.
    #[arg(long)]
    no_cache: bool,
    /// With --watch: print only the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Plans with a `source`: land the items that passed on the `source.base` branch when
    /// the gates end (also `policy.land`). See docs/landing.md.
    #[arg(long)]
    land: bool,
    /// Compute and verify what would land, push nothing (implies --land).
    #[arg(long)]
    dry_run: bool,
    /// Times the plan runs again on the branch's new tip when it moved before the push
    /// (default 3).
    #[arg(long, value_name = "N")]
    land_retries: Option<u32>,
    #[command(flatten)]
    coordinator: CoordinatorOpts,
}

#[derive(clap::Args)]
pub struct WatchArgs {
    /// Plan id (as printed by `gatehouse submit`).
    id: String,
    /// Print NDJSON events on stdout, as `gatehouse run --json`.
    #[arg(long)]
    json: bool,
    /// Print only the summary.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    coordinator: CoordinatorOpts,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Plan id.
    id: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    coordinator: CoordinatorOpts,
}

#[derive(clap::Args)]
pub struct CancelArgs {
    /// Plan id.
    id: String,
    /// Kill running gates at once instead of SIGTERM, grace period, SIGKILL.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    coordinator: CoordinatorOpts,
}

#[derive(clap::Args)]
pub struct PlansArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    coordinator: CoordinatorOpts,
}

#[derive(clap::Args)]
pub struct WorkersArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    coordinator: CoordinatorOpts,
}

/// Runs a command's body on a runtime of its own; prints its error, if any, as one line.
fn block_on(body: impl Future<Output = Result<u8, ClientError>>) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    match runtime.block_on(body) {
        Ok(code) => code,
        Err(e) => {
            e.report();
            e.exit_code()
        }
    }
}

/// Prints text on stdout; a closed stdout (`| head`) is not an error.
fn print_text(write: impl FnOnce(&mut std::io::StdoutLock<'_>) -> std::io::Result<()>) {
    let mut out = std::io::stdout().lock();
    let _ = write(&mut out);
    let _ = out.flush();
}

fn get_plan(id: &PlanId) -> v1::GetPlanRequest {
    v1::GetPlanRequest {
        plan_id: id.to_string(),
    }
}

/// The client span of a submission and the `traceparent` the request carries: the
/// span's when traces are exported, else `TRACEPARENT` from the environment (so a CI
/// job's trace reaches the plan even when this process exports nothing).
fn submit_span() -> (tracing::Span, Option<String>) {
    use gatehouse_common::telemetry::{OTEL_TARGET, continue_trace, current_traceparent};
    let inherited = std::env::var("TRACEPARENT").ok().filter(|t| !t.is_empty());
    let span = tracing::info_span!(
        target: OTEL_TARGET,
        "gatehouse.v1.PlanService/SubmitPlan",
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "gatehouse.v1.PlanService",
        rpc.method = "SubmitPlan",
    );
    if let Some(tp) = &inherited {
        continue_trace(&span, tp);
    }
    let own = span.in_scope(current_traceparent);
    (span, own.or(inherited))
}

fn plan_id(id: &str) -> Result<PlanId, ClientError> {
    if id.trim().is_empty() {
        return Err(ClientError::Usage("the plan id is empty".into()));
    }
    Ok(PlanId::new(id))
}

pub fn submit(args: SubmitArgs, tls: Tls) -> u8 {
    let doc = match submit::load(&args.plan) {
        Ok(doc) => doc,
        Err(errors) => {
            report_invalid(&errors, args.json);
            return EXIT_INVALID;
        }
    };
    // The branch it lands on, checked here as the coordinator will.
    let landing = if args.land || args.dry_run || doc.plan.policy.land {
        let base = doc.plan.source.as_ref().map(|s| s.base.as_deref());
        match base.map(crate::land::target_branch) {
            Some(Ok(branch)) => Some(branch),
            Some(Err(e)) => {
                eprintln!("error: {}: {e}", args.plan.display());
                return EXIT_INVALID;
            }
            None => {
                eprintln!(
                    "error: --land needs a plan with `source`: only items that are git changes can land"
                );
                return EXIT_INVALID;
            }
        }
    } else {
        None
    };
    block_on(async move {
        // Installed before submitting: a signal from here on cancels the plan.
        let mut signals = if args.watch {
            Some(Signals::install()?)
        } else {
            None
        };
        let cluster = args.coordinator.cluster(&tls);
        let mut request = doc.request(args.no_cache);
        request.land = args.land;
        request.dry_run = args.dry_run;
        request.land_retries = args.land_retries;
        let (span, traceparent) = submit_span();
        // Re-sent only when the coordinator cannot have accepted it (see `leader`).
        let (coord, resp) = cluster
            .call(
                Resend::IfNotAccepted,
                None,
                cluster.budget,
                RPC_TIMEOUT,
                |mut client| {
                    let mut request = tonic::Request::new(request.clone());
                    if let Some(tp) = traceparent.as_deref().and_then(|t| t.parse().ok()) {
                        request.metadata_mut().insert("traceparent", tp);
                    }
                    async move { client.submit_plan(request).await }
                },
            )
            .instrument(span)
            .await?;
        let id = PlanId::new(resp.plan_id);
        let mode = Mode::choose(args.json, args.quiet);
        if args.json {
            emit(&json!({"event": "submitted", "plan_id": id.as_str()}));
        } else if !args.watch {
            print_text(|out| writeln!(out, "{id}"));
        } else if mode != Mode::Quiet {
            eprintln!("submitted plan {id} to {}", coord.url);
        }
        let Some(signals) = signals.as_mut() else {
            return Ok(EXIT_PASSED);
        };
        let mut renderer = Renderer::new(mode, PlanView::from_plan(&doc.plan));
        // A source plan's refs were resolved by the coordinator: show what to.
        if doc.plan.source.is_some() {
            let (_, described) = read(&cluster, |mut client| {
                let request = get_plan(&id);
                async move { client.get_plan(request).await }
            })
            .await?;
            renderer.source(described.source.as_ref());
        }
        let mut follower = Follower::new(coord, &cluster, &id, OnInterrupt::Cancel, &mut renderer);
        if let Some(branch) = landing {
            follower = follower.landing(branch);
        }
        let result = follower.run(signals).await;
        renderer.finish();
        result
    })
}

pub fn watch(args: WatchArgs, tls: Tls) -> u8 {
    block_on(async move {
        let id = plan_id(&args.id)?;
        let mut signals = Signals::install()?;
        let cluster = args.coordinator.cluster(&tls);
        let (coord, plan) = read(&cluster, |mut client| {
            let request = get_plan(&id);
            async move { client.get_plan(request).await }
        })
        .await?;
        let mode = Mode::choose(args.json, args.quiet);
        let mut renderer = Renderer::new(mode, wire::plan_view(&plan));
        renderer.source(plan.source.as_ref());
        let mut follower = Follower::new(coord, &cluster, &id, OnInterrupt::Detach, &mut renderer);
        if !plan.land_branch.is_empty() {
            follower = follower.landing(plan.land_branch.clone());
        }
        let result = follower.run(&mut signals).await;
        renderer.finish();
        result
    })
}

pub fn status(args: StatusArgs, tls: Tls) -> u8 {
    block_on(async move {
        let id = plan_id(&args.id)?;
        let (_, plan) = read(&args.coordinator.cluster(&tls), |mut client| {
            let request = get_plan(&id);
            async move { client.get_plan(request).await }
        })
        .await?;
        if args.json {
            emit(&tables::status_json(&plan));
        } else {
            print_text(|out| tables::status_text(out, &plan, tables::now_unix_ms()));
        }
        Ok(EXIT_PASSED)
    })
}

pub fn cancel(args: CancelArgs, tls: Tls) -> u8 {
    block_on(async move {
        let id = plan_id(&args.id)?;
        let request = v1::CancelPlanRequest {
            plan_id: id.to_string(),
            force: args.force,
        };
        // Cancelling twice is harmless: the second answer says it had already finished.
        let (_, resp) = read(&args.coordinator.cluster(&tls), |mut client| {
            let request = request.clone();
            async move { client.cancel_plan(request).await }
        })
        .await?;
        let line = match (resp.cancelled, args.force) {
            (true, false) => format!("cancelling plan {id}"),
            (true, true) => format!("cancelling plan {id}; its running gates are killed now"),
            (false, _) => format!("plan {id} had already finished; nothing to cancel"),
        };
        print_text(|out| writeln!(out, "{line}"));
        Ok(EXIT_PASSED)
    })
}

pub fn plans(args: PlansArgs, tls: Tls) -> u8 {
    block_on(async move {
        let (_, resp) = read(&args.coordinator.cluster(&tls), |mut client| async move {
            client.list_plans(v1::ListPlansRequest {}).await
        })
        .await?;
        if args.json {
            emit(&tables::plans_json(&resp.plans));
        } else {
            print_text(|out| tables::plans_text(out, &resp.plans, tables::now_unix_ms()));
        }
        Ok(EXIT_PASSED)
    })
}

pub fn workers(args: WorkersArgs, tls: Tls) -> u8 {
    block_on(async move {
        let (_, resp) = read(&args.coordinator.cluster(&tls), |mut client| async move {
            client.list_workers(v1::ListWorkersRequest {}).await
        })
        .await?;
        if args.json {
            emit(&tables::workers_json(&resp.workers));
        } else {
            print_text(|out| tables::workers_text(out, &resp.workers));
        }
        Ok(EXIT_PASSED)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        coordinator: CoordinatorOpts,
    }

    fn cluster(argv: &[&str]) -> Cluster {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))
            .expect("valid flags");
        cli.coordinator.cluster(&Default::default())
    }

    #[test]
    fn the_failover_timeout_defaults_and_can_be_shortened() {
        let default = cluster(&["--coordinator=http://a:1,b:2"]);
        assert_eq!(default.budget, FAILOVER_TIMEOUT);
        assert_eq!(default.urls.as_slice(), ["http://a:1", "http://b:2"]);
        let short = cluster(&["--failover-timeout=0s"]);
        assert_eq!(short.budget, Duration::ZERO);
        assert!(Cli::try_parse_from(["x", "--failover-timeout=5"]).is_err());
    }
}
