//! The client commands: `gatehouse submit`, `watch`, `status`, `cancel`, `plans` and
//! `workers`, which talk to a coordinator over `gatehouse.v1.PlanService`.
//!
//! Every command connects to the first reachable URL of `--coordinator` ([`connect`]),
//! makes its calls, prints, and maps the result to an exit code ([`error`]). Following
//! a plan (`watch`, `submit --watch`) is [`follow`]; it renders through the same
//! [`Renderer`] as `gatehouse run`, so the output is the same. Each command runs on a
//! current-thread runtime of its own; nothing is left running when it returns.

mod connect;
mod error;
mod follow;
mod submit;
mod tables;

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use gatehouse_common::ids::PlanId;
use gatehouse_proto::v1;
use serde_json::json;

use crate::render::{Mode, PlanView, Renderer, json::emit, wire};
use crate::validate::report_invalid;
use crate::{EXIT_FAILED, EXIT_INVALID, EXIT_PASSED};
use connect::{Coordinator, CoordinatorUrls, DEFAULT_COORDINATOR, RPC_TIMEOUT, parse_urls};
use error::ClientError;
use follow::{Follower, OnInterrupt, Signals};

/// Where the coordinator is.
#[derive(clap::Args)]
pub struct CoordinatorOpts {
    /// Coordinator URL(s), comma-separated; the first one that accepts a connection is used.
    #[arg(
        long = "coordinator",
        env = "GATEHOUSE_COORDINATOR",
        default_value = DEFAULT_COORDINATOR,
        value_name = "URL[,URL...]",
        value_parser = parse_urls
    )]
    urls: CoordinatorUrls,
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

fn plan_id(id: &str) -> Result<PlanId, ClientError> {
    if id.trim().is_empty() {
        return Err(ClientError::Usage("the plan id is empty".into()));
    }
    Ok(PlanId::new(id))
}

pub fn submit(args: SubmitArgs) -> u8 {
    let doc = match submit::load(&args.plan) {
        Ok(doc) => doc,
        Err(errors) => {
            report_invalid(&errors, args.json);
            return EXIT_INVALID;
        }
    };
    block_on(async move {
        // Installed before submitting: a signal from here on cancels the plan.
        let mut signals = if args.watch {
            Some(Signals::install()?)
        } else {
            None
        };
        let urls = &args.coordinator.urls;
        let coord = Coordinator::connect(urls).await?;
        let mut client = coord.client();
        let resp = coord
            .unary(RPC_TIMEOUT, client.submit_plan(doc.request(args.no_cache)))
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
        let follower = Follower::new(coord, urls, &id, OnInterrupt::Cancel, &mut renderer);
        let result = follower.run(signals).await;
        renderer.finish();
        result
    })
}

pub fn watch(args: WatchArgs) -> u8 {
    block_on(async move {
        let id = plan_id(&args.id)?;
        let mut signals = Signals::install()?;
        let urls = &args.coordinator.urls;
        let coord = Coordinator::connect(urls).await?;
        let mut client = coord.client();
        let request = v1::GetPlanRequest {
            plan_id: id.to_string(),
        };
        let plan = coord.unary(RPC_TIMEOUT, client.get_plan(request)).await?;
        let mode = Mode::choose(args.json, args.quiet);
        let mut renderer = Renderer::new(mode, wire::plan_view(&plan));
        let follower = Follower::new(coord, urls, &id, OnInterrupt::Detach, &mut renderer);
        let result = follower.run(&mut signals).await;
        renderer.finish();
        result
    })
}

pub fn status(args: StatusArgs) -> u8 {
    block_on(async move {
        let id = plan_id(&args.id)?;
        let coord = Coordinator::connect(&args.coordinator.urls).await?;
        let mut client = coord.client();
        let request = v1::GetPlanRequest {
            plan_id: id.to_string(),
        };
        let plan = coord.unary(RPC_TIMEOUT, client.get_plan(request)).await?;
        if args.json {
            emit(&tables::status_json(&plan));
        } else {
            print_text(|out| tables::status_text(out, &plan, tables::now_unix_ms()));
        }
        Ok(EXIT_PASSED)
    })
}

pub fn cancel(args: CancelArgs) -> u8 {
    block_on(async move {
        let id = plan_id(&args.id)?;
        let coord = Coordinator::connect(&args.coordinator.urls).await?;
        let mut client = coord.client();
        let request = v1::CancelPlanRequest {
            plan_id: id.to_string(),
            force: args.force,
        };
        let resp = coord
            .unary(RPC_TIMEOUT, client.cancel_plan(request))
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

pub fn plans(args: PlansArgs) -> u8 {
    block_on(async move {
        let coord = Coordinator::connect(&args.coordinator.urls).await?;
        let mut client = coord.client();
        let resp = coord
            .unary(RPC_TIMEOUT, client.list_plans(v1::ListPlansRequest {}))
            .await?;
        if args.json {
            emit(&tables::plans_json(&resp.plans));
        } else {
            print_text(|out| tables::plans_text(out, &resp.plans, tables::now_unix_ms()));
        }
        Ok(EXIT_PASSED)
    })
}

pub fn workers(args: WorkersArgs) -> u8 {
    block_on(async move {
        let coord = Coordinator::connect(&args.coordinator.urls).await?;
        let mut client = coord.client();
        let resp = coord
            .unary(RPC_TIMEOUT, client.list_workers(v1::ListWorkersRequest {}))
            .await?;
        if args.json {
            emit(&tables::workers_json(&resp.workers));
        } else {
            print_text(|out| tables::workers_text(out, &resp.workers));
        }
        Ok(EXIT_PASSED)
    })
}
