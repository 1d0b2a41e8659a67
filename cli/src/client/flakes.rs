//! `gatehouse flakes`: the tests of a test history by flake score, from `gatehouse
//! run`'s local history (next to its cache) or from a cluster's coordinator.

use std::path::PathBuf;
use std::time::Duration;

use gatehouse_common::reports::history::{FlakeFilter, FlakeRow, History};
use gatehouse_common::units::parse_duration;
use gatehouse_proto::tls::Tls;
use gatehouse_proto::v1;
use serde_json::{Value, json};

use super::connect::{CoordinatorUrls, parse_urls};
use super::tables::{age, now_unix_ms, table};
use super::{ClientError, block_on, cluster_of, emit, print_text, read};
use crate::{EXIT_FAILED, EXIT_PASSED};

#[derive(clap::Args)]
pub struct FlakesArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Only tests last run in this gate (its full id, or its name without the item).
    #[arg(long, value_name = "GATE")]
    gate: Option<String>,
    /// Only tests run within this long (e.g. 7d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    since: Option<Duration>,
    /// Also list tests that failed but never flipped (broken, not flaky).
    #[arg(long)]
    all: bool,
    /// At most this many tests.
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: usize,
    /// A cluster's coordinator URL(s), comma-separated: list its history. Without it,
    /// the local history of `gatehouse run` is read.
    #[arg(
        long = "coordinator",
        env = "GATEHOUSE_COORDINATOR",
        value_name = "URL[,URL...]",
        value_parser = parse_urls
    )]
    coordinator: Option<CoordinatorUrls>,
    /// How long to keep looking for the leader [default: 30s].
    #[arg(
        long,
        env = "GATEHOUSE_FAILOVER_TIMEOUT",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    failover_timeout: Option<Duration>,
    /// The local history's cache directory (default: .gatehouse/cache, where
    /// `gatehouse run` keeps it for a plan in this directory).
    #[arg(long, env = "GATEHOUSE_CACHE_DIR", conflicts_with = "coordinator")]
    cache_dir: Option<PathBuf>,
}

pub fn flakes(args: FlakesArgs, tls: Tls) -> u8 {
    let now = now_unix_ms();
    let filter = FlakeFilter {
        gate: args.gate.clone(),
        since_unix_ms: args
            .since
            .map_or(0, |d| now.saturating_sub(d.as_millis() as u64)),
        all: args.all,
        limit: args.limit,
    };
    let rows = match &args.coordinator {
        Some(urls) => {
            let cluster = cluster_of(urls.clone(), args.failover_timeout, &tls);
            let request = v1::ListFlakesRequest {
                gate: filter.gate.clone().unwrap_or_default(),
                since_unix_ms: filter.since_unix_ms,
                all: filter.all,
                limit: u32::try_from(filter.limit).unwrap_or(u32::MAX),
            };
            let remote = block_on(async move {
                let (_, resp) = read(&cluster, |mut client| {
                    let request = request.clone();
                    async move { client.list_flakes(request).await }
                })
                .await?;
                let rows: Vec<FlakeRow> = resp.tests.into_iter().map(FlakeRow::from).collect();
                show(&args, &rows, now);
                Ok::<u8, ClientError>(EXIT_PASSED)
            });
            return remote;
        }
        None => {
            let dir = args
                .cache_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".gatehouse").join("cache"));
            let path = crate::history::path_in(&dir);
            match crate::history::read(&path) {
                Ok(runs) => {
                    let mut history = History::new();
                    for run in &runs {
                        history.apply(run);
                    }
                    filter.apply(history.rows())
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return EXIT_FAILED;
                }
            }
        }
    };
    show(&args, &rows, now);
    EXIT_PASSED
}

fn show(args: &FlakesArgs, rows: &[FlakeRow], now: u64) {
    if args.json {
        emit(&json!({ "tests": rows.iter().map(row_value).collect::<Vec<Value>>() }));
        return;
    }
    if rows.is_empty() {
        let what = if args.all {
            "no tests in the history"
        } else {
            "no flaky tests"
        };
        println!("{what}");
        return;
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{:.2}", r.score),
                r.test.name_for_humans(),
                r.gate.clone(),
                format!("{}/{}", r.fails, r.runs),
                r.last_flip_unix_ms
                    .map_or("-".to_string(), |ms| age(now, ms)),
                if r.quarantined { "yes" } else { "-" }.to_string(),
            ]
        })
        .collect();
    print_text(|out| {
        table(
            out,
            &[
                "SCORE",
                "TEST",
                "GATE",
                "FAILS/RUNS",
                "LAST FLIP",
                "QUARANTINED",
            ],
            &table_rows,
        )
    });
}

fn row_value(r: &FlakeRow) -> Value {
    json!({
        "test": r.test.name_for_humans(),
        "suite": r.test.suite,
        "class": r.test.class,
        "name": r.test.name,
        "gate": r.gate,
        "score": (r.score * 1000.0).round() / 1000.0,
        "fails": r.fails,
        "runs": r.runs,
        "flips": r.flips,
        "last_flip_unix_ms": r.last_flip_unix_ms,
        "last_run_unix_ms": r.last_run_unix_ms,
        "message": r.message,
        "quarantined": r.quarantined,
    })
}
