//! The Prometheus registry a role fills and `--http` serves at `/metrics`.
//!
//! Metrics are `prometheus-client` types registered under the `gatehouse_` prefix. Like
//! the official clients, `/metrics` negotiates the format: the OpenMetrics text format
//! for scrapers that accept it (Prometheus does), else the classic Prometheus text
//! format 0.0.4 ([`to_text_format`]), which `curl` and `promtool` read. Every metric has
//! help text, and names follow the conventions: base units, `_total` for counters,
//! `_seconds` and `_bytes` suffixes.

use std::sync::Arc;

use prometheus_client::registry::Registry;

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of [`to_text_format`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn accepts_openmetrics(accept: &str) -> bool {
    accept.contains("application/openmetrics-text")
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4: a counter's family is
/// named with its `_total` suffix (as its samples are), and `# UNIT` and `# EOF` lines
/// go (the older format has neither). Samples are the same in both formats.
pub fn to_text_format(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut counters = std::collections::HashSet::new();
    for line in &lines {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in lines {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A registry with the `gatehouse` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("gatehouse")
}

/// A registry shared with the HTTP server once filled.
pub type SharedRegistry = Arc<Registry>;

/// Renders the registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; a collector that fails leaves its part out.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    out
}

/// Seconds as a histogram observation.
pub fn seconds(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

/// Histogram buckets for durations from 1 ms to about 1 h (factor 4).
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 4.0, 12)
}

/// Histogram buckets for fast operations, 100 µs to about 6.5 s (factor 4).
pub fn fast_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 4.0, 9)
}
