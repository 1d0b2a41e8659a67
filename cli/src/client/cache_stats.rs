//! `gatehouse cache stats`: every cache node's counters and the cluster's totals.
//!
//! The nodes come from the coordinator's worker list (their `cache_url`), or, with
//! `--cache URL`, from the membership that node last received. Each node is asked
//! for its `Stats` at once, with a 5 s deadline; a node that does not answer is listed
//! as unreachable and left out of the totals.

use std::io::Write;
use std::time::Duration;

use gatehouse_common::units::format_size;
use gatehouse_proto::tls::Tls;
use gatehouse_proto::v1;
use serde_json::{Value, json};

use super::error::ClientError;
use super::{CoordinatorOpts, block_on, print_text, read, tables::table};
use crate::render::json::emit;
use crate::{EXIT_PASSED, EXIT_UNREACHABLE};

/// Deadline of one node's `Stats`.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct CacheStatsArgs {
    #[command(flatten)]
    coordinator: CoordinatorOpts,
    /// Ask this cache node (http://host:port or https://) for the member list instead of the
    /// coordinator.
    #[arg(long, value_name = "URL")]
    cache: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// One node's answer.
struct NodeRow {
    url: String,
    stats: Result<v1::CacheNodeStats, String>,
}

pub fn cache_stats(args: CacheStatsArgs, tls: Tls) -> u8 {
    block_on(async move {
        let (urls, replicas) = match &args.cache {
            Some(url) => {
                let answer =
                    node_stats(url, &tls)
                        .await
                        .map_err(|reason| ClientError::Unreachable {
                            urls: vec![url.clone()],
                            reason,
                            after: STATS_TIMEOUT,
                        })?;
                let members = answer.members.unwrap_or_default();
                let mut urls: Vec<String> = members.nodes.into_iter().map(|n| n.url).collect();
                if urls.is_empty() {
                    urls.push(url.clone());
                }
                (urls, Some(members.replicas))
            }
            None => {
                let (_, resp) = read(&args.coordinator.cluster(&tls), |mut client| async move {
                    client.list_workers(v1::ListWorkersRequest {}).await
                })
                .await?;
                let urls = resp
                    .workers
                    .into_iter()
                    .map(|w| w.cache_url)
                    .filter(|u| !u.is_empty())
                    .collect();
                (urls, None)
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (i, url) in urls.iter().enumerate() {
            let (url, tls) = (url.clone(), tls.clone());
            tasks.spawn(async move { (i, node_stats(&url, &tls).await) });
        }
        let mut rows: Vec<NodeRow> = urls
            .iter()
            .map(|url| NodeRow {
                url: url.clone(),
                stats: Err("no answer".into()),
            })
            .collect();
        let mut replicas = replicas;
        while let Some(done) = tasks.join_next().await {
            let Ok((i, answer)) = done else { continue };
            rows[i].stats = answer.map(|a| {
                if let Some(m) = &a.members {
                    replicas.get_or_insert(m.replicas);
                }
                a.node.unwrap_or_default()
            });
        }
        if args.json {
            emit(&stats_json(&rows, replicas));
        } else {
            print_text(|out| stats_text(out, &rows, replicas));
        }
        let answered = rows.iter().any(|r| r.stats.is_ok());
        Ok(if answered || rows.is_empty() {
            EXIT_PASSED
        } else {
            EXIT_UNREACHABLE
        })
    })
}

async fn node_stats(url: &str, tls: &Tls) -> Result<v1::StatsResponse, String> {
    gatehouse_cache::node_stats(url, STATS_TIMEOUT, tls).await
}

/// Hits / (hits + misses), as a percentage with one decimal, or "-".
fn hit_rate(hits: u64, misses: u64) -> String {
    match hits + misses {
        0 => "-".into(),
        n => format!("{:.1}%", hits as f64 * 100.0 / n as f64),
    }
}

fn totals(rows: &[NodeRow]) -> v1::CacheNodeStats {
    let mut t = v1::CacheNodeStats::default();
    for s in rows.iter().filter_map(|r| r.stats.as_ref().ok()) {
        t.hits += s.hits;
        t.misses += s.misses;
        t.memory_entries += s.memory_entries;
        t.memory_bytes += s.memory_bytes;
        t.disk_entries += s.disk_entries;
        t.disk_bytes += s.disk_bytes;
        t.evictions += s.evictions;
        t.expirations += s.expirations;
        t.puts += s.puts;
        t.rejected += s.rejected;
        t.memory_capacity_bytes += s.memory_capacity_bytes;
        t.disk_capacity_bytes += s.disk_capacity_bytes;
        t.replica_write_failures += s.replica_write_failures;
    }
    t
}

fn row(name: &str, s: &v1::CacheNodeStats) -> Vec<String> {
    vec![
        name.to_owned(),
        s.hits.to_string(),
        s.misses.to_string(),
        hit_rate(s.hits, s.misses),
        s.memory_entries.to_string(),
        format!(
            "{}/{}",
            format_size(s.memory_bytes),
            format_size(s.memory_capacity_bytes)
        ),
        match s.disk_capacity_bytes {
            0 => "-".into(),
            cap => format!(
                "{} in {}/{}",
                s.disk_entries,
                format_size(s.disk_bytes),
                format_size(cap)
            ),
        },
        s.evictions.to_string(),
        s.replica_write_failures.to_string(),
    ]
}

fn stats_text(
    out: &mut impl Write,
    rows: &[NodeRow],
    replicas: Option<u32>,
) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "no cache nodes (start workers with --cache-listen)");
    }
    let mut lines: Vec<Vec<String>> = Vec::new();
    for r in rows {
        match &r.stats {
            Ok(s) => lines.push(row(&format!("{} {}", s.node_id, r.url), s)),
            Err(e) => {
                let mut cells = vec![format!("{} (unreachable: {e})", r.url)];
                cells.extend(std::iter::repeat_n("-".to_string(), 8));
                lines.push(cells);
            }
        }
    }
    lines.push(row("total", &totals(rows)));
    table(
        out,
        &[
            "NODE",
            "HITS",
            "MISSES",
            "HIT RATE",
            "ENTRIES",
            "MEMORY",
            "DISK",
            "EVICTED",
            "WRITE FAILURES",
        ],
        &lines,
    )?;
    if let Some(r) = replicas {
        writeln!(
            out,
            "every entry is held by {r} nodes; lookups ask all of them, so hits and misses count replica answers"
        )?;
    }
    Ok(())
}

fn node_json(s: &v1::CacheNodeStats) -> Value {
    json!({
        "hits": s.hits,
        "misses": s.misses,
        "hit_rate": match s.hits + s.misses { 0 => Value::Null, n => json!(s.hits as f64 / n as f64) },
        "memory_entries": s.memory_entries,
        "memory_bytes": s.memory_bytes,
        "memory_capacity_bytes": s.memory_capacity_bytes,
        "disk_entries": s.disk_entries,
        "disk_bytes": s.disk_bytes,
        "disk_capacity_bytes": s.disk_capacity_bytes,
        "evictions": s.evictions,
        "expirations": s.expirations,
        "puts": s.puts,
        "rejected": s.rejected,
        "replica_write_failures": s.replica_write_failures,
    })
}

fn stats_json(rows: &[NodeRow], replicas: Option<u32>) -> Value {
    let nodes: Vec<Value> = rows
        .iter()
        .map(|r| match &r.stats {
            Ok(s) => {
                let mut v = node_json(s);
                v["node_id"] = json!(s.node_id);
                v["url"] = json!(r.url);
                v["ttl_ms"] = json!(s.ttl_ms);
                v
            }
            Err(e) => json!({ "url": r.url, "error": e }),
        })
        .collect();
    json!({
        "replicas": replicas,
        "nodes": nodes,
        "total": node_json(&totals(rows)),
    })
}
