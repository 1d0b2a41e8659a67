//! The `gatehouse` command.

mod client;
mod coordinator_cmd;
mod history;
mod land;
mod plan_cmd;
mod remote_cache;
mod render;
mod run;
mod tls_opts;
mod validate;
mod worker_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse_common::telemetry::{self, Tracer, Traces, log};

/// Exit code: every gate passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit code: a gate failed or timed out.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: invalid plan or usage.
pub const EXIT_INVALID: u8 = 2;
/// Exit code: the coordinator could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: landing pushed nothing (the push was refused or failed, or the branch
/// kept moving).
pub const EXIT_NOT_LANDED: u8 = 4;
/// Exit code: interrupted (SIGINT/SIGTERM) or cancelled.
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Run gate plans: DAGs of checks over merge pyramids"
)]
struct Cli {
    /// Log level filter for diagnostics on stderr (overridden by RUST_LOG).
    #[arg(
        long,
        global = true,
        default_value = "warn",
        env = "GATEHOUSE_LOG_LEVEL"
    )]
    log_level: String,
    /// Format of those diagnostics: pretty (colored on a terminal) or json (one object
    /// per line, for log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "pretty",
        env = "GATEHOUSE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317).
    /// Unset: the standard OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT decide; neither set:
    /// no traces.
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(flatten)]
    tls: tls_opts::TlsOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a plan on this machine, in one process.
    Run(run::RunArgs),
    /// Validate a plan and print its levels and would-be merge order.
    Validate {
        /// Plan file (.yaml, .yml or .json), or - for YAML on stdin.
        plan: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a plan from a repository's branches (one item per branch not yet in BASE).
    Plan(plan_cmd::PlanArgs),
    /// Start a coordinator: accepts plans from clients and schedules them onto workers.
    Coordinator(coordinator_cmd::CoordinatorArgs),
    /// Start a worker: connects to a coordinator and runs the gates it assigns.
    Worker(worker_cmd::WorkerArgs),
    /// Submit a plan to a coordinator (prints its id; --watch follows it like `run`).
    Submit(client::SubmitArgs),
    /// Follow a submitted plan's events until it ends.
    Watch(client::WatchArgs),
    /// Show the state of a submitted plan.
    Status(client::StatusArgs),
    /// Cancel a submitted plan.
    Cancel(client::CancelArgs),
    /// List the plans a coordinator knows.
    Plans(client::PlansArgs),
    /// List the workers connected to a coordinator.
    Workers(client::WorkersArgs),
    /// List flaky tests by flake score, from the local test history or a coordinator's.
    Flakes(client::FlakesArgs),
    /// Inspect the cluster's shared result cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Hits, misses, hit rate, entries, bytes and evictions per cache node and in total.
    Stats(client::CacheStatsArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_INVALID
            } else {
                EXIT_PASSED
            });
        }
    };
    let tls = match cli.tls.load() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let service = match cli.command {
        Command::Coordinator(_) => "gatehouse-coordinator",
        Command::Worker(_) => "gatehouse-worker",
        Command::Run(_) => "gatehouse-run",
        _ => "gatehouse-cli",
    };
    let traces = match Traces::start(service, cli.otlp_endpoint.as_deref()) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let tracer: Tracer = traces.as_ref().map(Traces::tracer);
    let format = match cli.log_format {
        LogFormat::Pretty => log::LogFormat::Pretty,
        LogFormat::Json => log::LogFormat::Json,
    };
    if let Err(e) = log::init(&cli.log_level, format, tracer.clone()) {
        eprintln!("error: invalid --log-level {:?}: {e}", cli.log_level);
        return ExitCode::from(EXIT_INVALID);
    }
    let code = match cli.command {
        Command::Run(args) => run::main(args, tracer, tls),
        Command::Validate { plan, json } => validate::main(&plan, json),
        Command::Plan(args) => plan_cmd::main(args),
        Command::Coordinator(args) => coordinator_cmd::main(args, tracer, tls),
        Command::Worker(args) => worker_cmd::main(args, tls),
        Command::Submit(args) => client::submit(args, tls),
        Command::Watch(args) => client::watch(args, tls),
        Command::Status(args) => client::status(args, tls),
        Command::Cancel(args) => client::cancel(args, tls),
        Command::Plans(args) => client::plans(args, tls),
        Command::Workers(args) => client::workers(args, tls),
        Command::Flakes(args) => client::flakes(args, tls),
        Command::Cache(CacheCommand::Stats(args)) => client::cache_stats(args, tls),
    };
    if let Some(traces) = traces {
        traces.shutdown(telemetry::SHUTDOWN_TIMEOUT);
    }
    ExitCode::from(code)
}

/// Runs `fut` to completion on a new multi-threaded runtime; if the runtime cannot be
/// built, says so on stderr and returns the failure exit code instead.
pub fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, u8> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Ok(runtime.block_on(fut)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            Err(EXIT_FAILED)
        }
    }
}

/// How diagnostics are written to stderr.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines, colored when stderr is a terminal.
    Pretty,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's
    /// fields at the top level, `span` and `spans` for where it happened, and
    /// `trace_id`/`span_id` inside a traced span.
    Json,
}

/// Says at start, on stderr, when this machine's git cannot serve plans with a `source`
/// (missing, or older than the version needed, named): the process still serves every
/// other plan, and `consequence` says what happens to those.
pub async fn warn_without_git(consequence: &str) {
    if let Err(e) = gatehouse_source::Git::find().await {
        eprintln!("warning: {e}; {consequence}");
    }
}
