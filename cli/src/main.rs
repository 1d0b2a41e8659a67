//! The `gatehouse` command.

mod render;
mod run;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: every gate passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit code: a gate failed or timed out.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: invalid plan or usage.
pub const EXIT_INVALID: u8 = 2;
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
    init_logging(&cli.log_level);
    let code = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Validate { plan, json } => validate::main(&plan, json),
    };
    ExitCode::from(code)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
