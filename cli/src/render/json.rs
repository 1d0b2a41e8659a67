//! `--json`: NDJSON on stdout. Exactly one terminal line per gate (`state` one of
//! passed, failed, timed_out, skipped, cancelled), non-terminal `running`, `retrying`
//! and `waiting` lines, and a last `summary` line. Nothing else is written to stdout.

use std::io::Write;

use gatehouse_common::exec::ExitStatus;
use gatehouse_common::plan::Plan;
use gatehouse_coordinator::core::{GateEvent, GateStatus, PlanSummary, Terminal};
use serde_json::{Value, json};

use super::tail_str;

/// Bytes of stderr included in a failed gate's line.
const STDERR_TAIL_BYTES: usize = 4096;

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. piped into `head`) must not abort the run.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

pub fn gate(plan: &Plan, ev: &GateEvent) {
    let state = match &ev.status {
        GateStatus::Running => "running",
        GateStatus::Retrying { .. } => "retrying",
        GateStatus::Waiting { .. } => "waiting",
        GateStatus::Finished(t) => t.as_str(),
        GateStatus::Dispatched => return,
    };
    let gate = plan.gate(ev.gate);
    let mut v = json!({
        "event": "gate",
        "gate": gate.id.as_str(),
        "item": gate.item.map(|i| plan.item(i).id.as_str()),
        "state": state,
        "attempt": ev.attempt,
        "cached": ev.cached,
        "flaky": ev.flaky,
        "exit_code": Value::Null,
        "duration_ms": Value::Null,
        "worker": ev.worker.as_ref().map(|w| w.as_str()),
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
            ExitStatus::SpawnFailed(msg) => v["error"] = json!(msg),
            ExitStatus::TimedOut | ExitStatus::Cancelled => {}
        }
        if let Some(peak) = r.peak_memory {
            v["peak_memory_bytes"] = json!(peak);
        }
        let failed = matches!(
            ev.status,
            GateStatus::Finished(Terminal::Failed | Terminal::TimedOut)
                | GateStatus::Retrying { .. }
        );
        if failed {
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
    if let Some(reason) = ev.reason {
        v["reason"] = json!(reason);
    }
    if let Some(cause) = ev.cause {
        v["cause"] = json!(plan.gate(cause).id.as_str());
    }
    match &ev.status {
        GateStatus::Retrying { backoff } => v["backoff_ms"] = json!(backoff.as_millis() as u64),
        GateStatus::Waiting { reason } => v["waiting_for"] = json!(reason),
        _ => {}
    }
    emit(&v);
}

pub fn summary(plan: &Plan, s: &PlanSummary) {
    let c = s.counts;
    let merge: Vec<&str> = s
        .merge_order
        .iter()
        .map(|i| plan.item(*i).id.as_str())
        .collect();
    emit(&json!({
        "event": "summary",
        "plan": plan.name,
        "outcome": s.outcome.as_str(),
        "gates": {
            "total": c.total,
            "passed": c.passed,
            "failed": c.failed,
            "timed_out": c.timed_out,
            "skipped": c.skipped,
            "cancelled": c.cancelled,
            "cached": c.cached,
            "flaky": c.flaky,
        },
        "merge_order": merge,
        "levels": plan.level_ids(),
        "duration_ms": s.duration.as_millis() as u64,
    }));
}
