//! Output of `gatehouse status`, `plans` and `workers`: a text table, or one JSON
//! object with `--json`. Pure formatting: values in, text or JSON out.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_common::exec::{ExitStatus, GateResult};
use gatehouse_common::units::{format_duration, format_size};
use gatehouse_proto::convert::reports::cases_from_wire;
use gatehouse_proto::v1;
use serde_json::{Value, json};

use crate::render::json::counts_value;
use crate::render::text::{counts_line, merge_order_text};
use crate::render::wire::{
    counts, gate_state_str, outcome, plan_state_str, plan_view, worker_state_str,
};

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `2m03s` since `unix_ms`, or `-` if unknown.
pub(super) fn age(now_ms: u64, unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    format_duration(Duration::from_millis(now_ms.saturating_sub(unix_ms)))
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Writes rows under a header, columns left-aligned and two spaces apart.
pub(super) fn table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&mut header.iter().copied())?;
    for row in rows {
        line(&mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// Short description of an attempt's result for the status table.
fn result_text(r: &Option<v1::AttemptResult>) -> String {
    let Some(r) = r.clone().and_then(|r| GateResult::try_from(r).ok()) else {
        return String::new();
    };
    let detail = match &r.status {
        ExitStatus::Exited(code) => format!("exit {code}"),
        ExitStatus::Signaled(sig) => format!("signal {sig}"),
        ExitStatus::TimedOut => "timed out".into(),
        ExitStatus::MemoryExceeded { .. } => "memory".into(),
        ExitStatus::Cancelled => "cancelled".into(),
        ExitStatus::SpawnFailed(_) => "could not start".into(),
        ExitStatus::SourceFailed(_) => "checkout failed".into(),
    };
    let tests = r
        .tests
        .as_deref()
        .map(crate::render::reports::counts_text)
        .unwrap_or_default();
    format!("{detail}, {}{tests}", format_duration(r.duration))
}

/// `gatehouse status` as text.
pub fn status_text(
    out: &mut impl Write,
    p: &v1::GetPlanResponse,
    now_ms: u64,
) -> std::io::Result<()> {
    let info = p.plan.clone().unwrap_or_default();
    let mut head = format!(
        "plan {} ({}): {}, submitted {} ago",
        info.plan_id,
        info.name,
        plan_state_str(info.state),
        age(now_ms, info.submitted_unix_ms)
    );
    if info.finished_unix_ms != 0 {
        head.push_str(&format!(
            ", finished {} ago",
            age(now_ms, info.finished_unix_ms)
        ));
    }
    writeln!(out, "{head}")?;
    if let Some(source) = &p.source {
        for line in crate::render::source::text_lines(source) {
            writeln!(out, "{line}")?;
        }
    }
    let rows: Vec<Vec<String>> = p
        .gates
        .iter()
        .map(|g| {
            let attempt = if g.attempt == 0 {
                "-".to_string()
            } else {
                g.attempt.to_string()
            };
            let mut cached = if g.cached { "yes" } else { "no" }.to_string();
            if g.flaky {
                cached.push_str(" (flaky)");
            }
            vec![
                g.gate_id.clone(),
                gate_state_str(g.state).to_string(),
                attempt,
                or_dash(&g.worker_id).to_string(),
                cached,
                result_text(&g.result),
            ]
        })
        .collect();
    table(
        out,
        &["GATE", "STATE", "ATTEMPT", "WORKER", "CACHED", "RESULT"],
        &rows,
    )?;
    let summary = p.summary.as_ref();
    let c = counts(
        summary
            .and_then(|s| s.counts.as_ref())
            .or(info.counts.as_ref()),
    );
    writeln!(out, "{}", counts_line(&c))?;
    let items_form = p.gates.iter().any(|g| !g.item_id.is_empty());
    if !p.land_branch.is_empty() {
        match land_report(p) {
            Some((render, report)) => {
                for line in render.report_lines(&report) {
                    writeln!(out, "{line}")?;
                }
            }
            None if summary.is_some() => {
                writeln!(out, "land: landing on {} now", p.land_branch)?;
            }
            None => writeln!(out, "land: on {}, once the gates end", p.land_branch)?,
        }
    }
    match summary {
        Some(s) => {
            if items_form {
                let order: Vec<&str> = s.merge_order.iter().map(String::as_str).collect();
                writeln!(out, "merge order: {}", merge_order_text(&order))?;
            }
            writeln!(
                out,
                "{} in {}",
                outcome(s.outcome).as_str(),
                format_duration(Duration::from_millis(s.duration_ms))
            )
        }
        None if items_form => writeln!(out, "merge order: (known when the plan ends)"),
        None => Ok(()),
    }
}

/// `gatehouse status --json`.
pub fn status_json(p: &v1::GetPlanResponse) -> Value {
    let info = p.plan.clone().unwrap_or_default();
    let view = plan_view(p);
    let summary = p.summary.as_ref();
    let gates: Vec<Value> = p
        .gates
        .iter()
        .map(|g| {
            let result = g.result.clone().and_then(|r| GateResult::try_from(r).ok());
            let exit_code = match result.as_ref().map(|r| &r.status) {
                Some(ExitStatus::Exited(code)) => Some(*code),
                _ => None,
            };
            let verdict = gatehouse_common::reports::TestVerdict {
                flaky: cases_from_wire(g.flaky_tests.clone()).unwrap_or_default(),
                quarantined: cases_from_wire(g.quarantined_tests.clone()).unwrap_or_default(),
            };
            let verdict = (!verdict.is_empty()).then_some(verdict);
            let tests = result.as_ref().and_then(|r| r.tests.as_deref());
            let mut v = json!({
                "gate": g.gate_id,
                "item": (!g.item_id.is_empty()).then_some(g.item_id.as_str()),
                "state": gate_state_str(g.state),
                "attempt": g.attempt,
                "cached": g.cached,
                "flaky": g.flaky,
                "worker": (!g.worker_id.is_empty()).then_some(g.worker_id.as_str()),
                "reason": (!g.reason.is_empty()).then_some(g.reason.as_str()),
                "exit_code": exit_code,
                "duration_ms": result.as_ref().map(|r| r.duration.as_millis() as u64),
            });
            if let Some(t) = crate::render::reports::value(tests, verdict.as_ref()) {
                v["tests"] = t;
            }
            v
        })
        .collect();
    let c = counts(
        summary
            .and_then(|s| s.counts.as_ref())
            .or(info.counts.as_ref()),
    );
    let mut v = json!({
        "plan_id": info.plan_id,
        "name": info.name,
        "state": plan_state_str(info.state),
        "submitted_unix_ms": info.submitted_unix_ms,
        "finished_unix_ms": (info.finished_unix_ms != 0).then_some(info.finished_unix_ms),
        "counts": counts_value(&c),
        "levels": view.levels,
        "merge_order": summary.map(|s| s.merge_order.clone()),
        "outcome": summary.map(|s| outcome(s.outcome).as_str()),
        "duration_ms": summary.map(|s| s.duration_ms),
        "gates": gates,
    });
    if !p.land_branch.is_empty() {
        // The `land` line of `run --json`, without its `event` key (`null` until over).
        v["land_branch"] = json!(p.land_branch);
        v["land"] = match land_report(p) {
            Some((render, report)) => {
                let mut l = render.report_value(&report);
                if let Some(map) = l.as_object_mut() {
                    map.remove("event");
                }
                l
            }
            None => Value::Null,
        };
    }
    // A source plan: what its refs resolved to (the `source` line of `run --json`,
    // without its `event` key).
    if let Some(source) = &p.source {
        let mut s = crate::render::source::json_value(source);
        if let Some(map) = s.as_object_mut() {
            map.remove("event");
        }
        v["source"] = s;
    }
    v
}

/// `gatehouse plans` as text.
pub fn plans_text(
    out: &mut impl Write,
    plans: &[v1::PlanInfo],
    now_ms: u64,
) -> std::io::Result<()> {
    if plans.is_empty() {
        return writeln!(out, "no plans");
    }
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            let c = counts(p.counts.as_ref());
            vec![
                p.plan_id.clone(),
                p.name.clone(),
                plan_state_str(p.state).to_string(),
                format!("{}/{}", c.passed, c.total),
                (c.failed + c.timed_out).to_string(),
                age(now_ms, p.submitted_unix_ms),
            ]
        })
        .collect();
    table(
        out,
        &["ID", "NAME", "STATE", "PASSED", "FAILED", "AGE"],
        &rows,
    )
}

/// `gatehouse plans --json`.
pub fn plans_json(plans: &[v1::PlanInfo]) -> Value {
    let list: Vec<Value> = plans
        .iter()
        .map(|p| {
            json!({
                "plan_id": p.plan_id,
                "name": p.name,
                "state": plan_state_str(p.state),
                "counts": counts_value(&counts(p.counts.as_ref())),
                "submitted_unix_ms": p.submitted_unix_ms,
                "finished_unix_ms": (p.finished_unix_ms != 0).then_some(p.finished_unix_ms),
            })
        })
        .collect();
    json!({ "plans": list })
}

/// `gatehouse workers` as text.
pub fn workers_text(out: &mut impl Write, workers: &[v1::WorkerStatus]) -> std::io::Result<()> {
    if workers.is_empty() {
        return writeln!(out, "no workers");
    }
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.worker_id.clone(),
                or_dash(&w.address).to_string(),
                worker_state_str(w.state).to_string(),
                format!("{}/{}", w.slots_used, w.slots_total),
                format!(
                    "{}/{}",
                    format_size(w.memory_used_bytes),
                    format_size(w.memory_total_bytes)
                ),
                format!(
                    "{} ago",
                    format_duration(Duration::from_millis(w.last_heartbeat_age_ms))
                ),
            ]
        })
        .collect();
    table(
        out,
        &["ID", "ADDRESS", "STATE", "SLOTS", "MEMORY", "HEARTBEAT"],
        &rows,
    )
}

/// `gatehouse workers --json`.
pub fn workers_json(workers: &[v1::WorkerStatus]) -> Value {
    let list: Vec<Value> = workers
        .iter()
        .map(|w| {
            json!({
                "worker_id": w.worker_id,
                "hostname": w.hostname,
                "address": w.address,
                "state": worker_state_str(w.state),
                "slots_used": w.slots_used,
                "slots_total": w.slots_total,
                "memory_used_bytes": w.memory_used_bytes,
                "memory_total_bytes": w.memory_total_bytes,
                "memory_available_bytes": w.memory_available_bytes,
                "last_heartbeat_age_ms": w.last_heartbeat_age_ms,
                "labels": w.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
                "version": w.version,
                "cache_url": w.cache_url,
            })
        })
        .collect();
    json!({ "workers": list })
}

#[cfg(test)]
#[path = "tables_tests.rs"]
mod tests;

/// A landing plan's report once over, decoded against the plan, with its renderer.
fn land_report(
    p: &v1::GetPlanResponse,
) -> Option<(
    crate::render::land::LandRenderer,
    gatehouse_common::land::LandReport,
)> {
    let report = p.land.clone()?;
    let view = plan_view(p);
    let id = gatehouse_common::ids::PlanId::new(
        p.plan
            .as_ref()
            .map(|i| i.plan_id.clone())
            .unwrap_or_default(),
    );
    let followed = crate::render::wire::Followed {
        id: &id,
        view: &view,
    };
    let decoded = gatehouse_common::land::LandReport::try_from(
        gatehouse_proto::convert::events::InPlan::new(&followed, report),
    )
    .ok()?;
    let render = crate::render::land::LandRenderer::new(
        crate::render::Mode::Plain,
        view.clone(),
        p.land_branch.clone(),
    );
    Some((render, decoded))
}
