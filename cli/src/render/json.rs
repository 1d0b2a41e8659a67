//! `--json`: NDJSON on stdout. Exactly one terminal line per gate (`state` one of
//! passed, failed, timed_out, skipped, cancelled), non-terminal `running`, `retrying`
//! and `waiting` lines, and a last `summary` line. Nothing else is written to stdout
//! (a plan with a `source` starts with one `source` line, see [`super::source`]; the
//! client commands may add one `submitted` line first, see docs/cli.md).
//!
//! Lines are built as [`Value`]s from the view types, so a local run and a remote watch
//! of the same events print the same bytes.

use std::io::Write;

use gatehouse_common::events::Counts;
use gatehouse_common::exec::ExitStatus;
use serde_json::{Value, json};

use super::tail_str;
use super::view::{Change, GateUpdate, PlanView, SummaryView};

/// Bytes of stderr included in a failed gate's line.
const STDERR_TAIL_BYTES: usize = 4096;

/// Writes one line on stdout. A closed stdout (e.g. piped into `head`) must not abort
/// the run, so write errors are ignored.
pub fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The line for a gate update.
pub fn gate_value(view: &PlanView, ev: &GateUpdate<'_>) -> Value {
    let state = match &ev.change {
        Change::Running => "running",
        Change::Retrying { .. } => "retrying",
        Change::Waiting { .. } => "waiting",
        Change::Finished(t) => t.as_str(),
    };
    let mut v = json!({
        "event": "gate",
        "gate": view.gate_id(ev.gate),
        "item": view.item_of(ev.gate),
        "state": state,
        "attempt": ev.attempt,
        "cached": ev.cached,
        "flaky": ev.flaky,
        "exit_code": Value::Null,
        "duration_ms": Value::Null,
        "worker": ev.worker,
    });
    if let Some(r) = &ev.result {
        v["duration_ms"] = json!(r.duration.as_millis() as u64);
        match &r.status {
            ExitStatus::Exited(code) => v["exit_code"] = json!(code),
            ExitStatus::Signaled(sig) => v["signal"] = json!(sig),
            ExitStatus::MemoryExceeded { peak, limit } => {
                v["peak_memory_bytes"] = json!(peak);
                v["memory_limit_bytes"] = json!(limit);
            }
            ExitStatus::SpawnFailed(msg) | ExitStatus::SourceFailed(msg) => v["error"] = json!(msg),
            ExitStatus::TimedOut | ExitStatus::Cancelled => {}
        }
        if let Some(peak) = r.peak_memory {
            v["peak_memory_bytes"] = json!(peak);
        }
        if ev.is_failure() {
            v["stderr_tail"] = json!(tail_str(&r.stderr.bytes, STDERR_TAIL_BYTES));
        }
        // Output beyond the executor's tail limit is dropped from the start; say so.
        if r.stdout.dropped > 0 {
            v["stdout_dropped_bytes"] = json!(r.stdout.dropped);
        }
        if r.stderr.dropped > 0 {
            v["stderr_dropped_bytes"] = json!(r.stderr.dropped);
        }
    }
    let tests = ev.result.and_then(|r| r.tests.as_deref());
    if let Some(tests) = super::reports::value(tests, ev.verdict) {
        v["tests"] = tests;
    }
    if let Some(reason) = &ev.reason {
        v["reason"] = json!(reason);
    }
    if let Some(cause) = ev.cause {
        v["cause"] = json!(view.gate_id(cause));
    }
    match &ev.change {
        Change::Retrying { backoff } => v["backoff_ms"] = json!(backoff.as_millis() as u64),
        Change::Waiting { reason } => v["waiting_for"] = json!(reason),
        _ => {}
    }
    v
}

/// The last line.
pub fn summary_value(view: &PlanView, s: &SummaryView) -> Value {
    let c = s.counts;
    let merge: Vec<&str> = s.merge_order.iter().map(|i| i.as_str()).collect();
    json!({
        "event": "summary",
        "plan": view.name,
        "outcome": s.outcome.as_str(),
        "gates": counts_value(&c),
        "merge_order": merge,
        "levels": view.levels,
        "duration_ms": s.duration.as_millis() as u64,
    })
}

/// Gate counts as in the summary line's `gates` object.
pub fn counts_value(c: &Counts) -> Value {
    json!({
        "total": c.total,
        "passed": c.passed,
        "failed": c.failed,
        "timed_out": c.timed_out,
        "skipped": c.skipped,
        "cancelled": c.cancelled,
        "cached": c.cached,
        "flaky": c.flaky,
    })
}
