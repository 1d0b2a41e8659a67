//! Wire (`gatehouse.v1`) to view conversions for the client commands: a
//! `GetPlanResponse` becomes a [`PlanView`], a `GateEvent` a [`GateUpdate`], a
//! `PlanSummary` a [`SummaryView`]. Decoding never trusts the coordinator: unknown enum
//! values read as unspecified, a gate id the plan does not have is an error the caller
//! reports and skips, an undecodable attempt result is dropped rather than failing the
//! whole watch.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::{GateId, ItemId};
use gatehouse_coordinator::core::{Counts, PlanOutcome, Terminal};
use gatehouse_proto::v1;

use super::view::{Change, GateUpdate, GateView, ItemView, PlanView, SummaryView};

/// A wire event that cannot be shown.
#[derive(Debug, PartialEq, Eq)]
pub enum WireViewError {
    /// The event names a gate that is not in the plan.
    UnknownGate(String),
}

impl std::fmt::Display for WireViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireViewError::UnknownGate(id) => write!(f, "event for unknown gate {id:?}"),
        }
    }
}

/// The view of a plan as the coordinator describes it. Items are the distinct `item_id`s
/// of the gates, in order of first appearance (gates come in plan order, item by item);
/// an item's level is the index of the level that lists it.
pub fn plan_view(resp: &v1::GetPlanResponse) -> PlanView {
    let name = resp
        .plan
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let levels: Vec<Vec<String>> = resp.levels.iter().map(|l| l.ids.clone()).collect();
    let level_of: HashMap<&str, u32> = levels
        .iter()
        .enumerate()
        .flat_map(|(k, ids)| ids.iter().map(move |id| (id.as_str(), k as u32)))
        .collect();
    let mut items: Vec<ItemView> = Vec::new();
    let mut item_index: HashMap<&str, usize> = HashMap::new();
    let mut gates = Vec::with_capacity(resp.gates.len());
    for (g, status) in resp.gates.iter().enumerate() {
        let item = (!status.item_id.is_empty()).then(|| {
            let ix = *item_index
                .entry(status.item_id.as_str())
                .or_insert_with(|| {
                    items.push(ItemView {
                        id: ItemId::new(status.item_id.clone()),
                        level: level_of.get(status.item_id.as_str()).copied().unwrap_or(0),
                        gates: Vec::new(),
                    });
                    items.len() - 1
                });
            items[ix].gates.push(g);
            ix
        });
        gates.push(GateView {
            id: GateId::new(status.gate_id.clone()),
            item,
        });
    }
    PlanView::new(name, gates, items, levels)
}

/// The update for a wire gate event: `Ok(None)` for states that are not shown
/// (pending, unspecified).
pub fn gate_update(
    view: &PlanView,
    ev: v1::GateEvent,
) -> Result<Option<GateUpdate<'static>>, WireViewError> {
    let state = v1::GateState::try_from(ev.state).unwrap_or(v1::GateState::Unspecified);
    let change = match state {
        v1::GateState::Unspecified | v1::GateState::Pending => return Ok(None),
        v1::GateState::Running => Change::Running,
        v1::GateState::Retrying => Change::Retrying {
            backoff: Duration::from_millis(ev.backoff_ms),
        },
        v1::GateState::Waiting => Change::Waiting {
            reason: Cow::Owned(ev.waiting_for),
        },
        v1::GateState::Passed => Change::Finished(Terminal::Passed),
        v1::GateState::Failed => Change::Finished(Terminal::Failed),
        v1::GateState::TimedOut => Change::Finished(Terminal::TimedOut),
        v1::GateState::Skipped => Change::Finished(Terminal::Skipped),
        v1::GateState::Cancelled => Change::Finished(Terminal::Cancelled),
    };
    let gate_id = GateId::new(ev.gate_id);
    let gate = view
        .gate_index(&gate_id)
        .ok_or_else(|| WireViewError::UnknownGate(gate_id.to_string()))?;
    let cause = (!ev.cause.is_empty())
        .then(|| view.gate_index(&GateId::new(ev.cause)))
        .flatten();
    Ok(Some(GateUpdate {
        gate,
        change,
        attempt: ev.attempt,
        worker: non_empty(ev.worker_id),
        cached: ev.cached,
        flaky: ev.flaky,
        result: ev
            .result
            .and_then(|r| GateResult::try_from(r).ok())
            .map(Cow::Owned),
        reason: non_empty(ev.reason),
        cause,
    }))
}

fn non_empty(s: String) -> Option<Cow<'static, str>> {
    (!s.is_empty()).then_some(Cow::Owned(s))
}

/// The outcome of a wire outcome; an unspecified one reads as failed, so an unknown
/// ending never exits 0.
pub fn outcome(o: i32) -> PlanOutcome {
    match v1::PlanOutcome::try_from(o).unwrap_or(v1::PlanOutcome::Unspecified) {
        v1::PlanOutcome::Passed => PlanOutcome::Passed,
        v1::PlanOutcome::Cancelled => PlanOutcome::Cancelled,
        v1::PlanOutcome::Failed | v1::PlanOutcome::Unspecified => PlanOutcome::Failed,
    }
}

/// Counts from the wire (absent: zero).
pub fn counts(c: Option<&v1::Counts>) -> Counts {
    let c = c.cloned().unwrap_or_default();
    Counts {
        total: c.total,
        passed: c.passed,
        failed: c.failed,
        timed_out: c.timed_out,
        skipped: c.skipped,
        cancelled: c.cancelled,
        cached: c.cached,
        flaky: c.flaky,
    }
}

/// The summary of a wire plan summary.
pub fn summary_view(s: &v1::PlanSummary) -> SummaryView {
    SummaryView {
        outcome: outcome(s.outcome),
        counts: counts(s.counts.as_ref()),
        merge_order: s.merge_order.iter().cloned().map(ItemId::new).collect(),
        duration: Duration::from_millis(s.duration_ms),
    }
}

/// The lowercase name of a wire gate state, as in `--json` (`unknown` if unspecified).
pub fn gate_state_str(state: i32) -> &'static str {
    match v1::GateState::try_from(state).unwrap_or(v1::GateState::Unspecified) {
        v1::GateState::Unspecified => "unknown",
        v1::GateState::Pending => "pending",
        v1::GateState::Running => "running",
        v1::GateState::Retrying => "retrying",
        v1::GateState::Waiting => "waiting",
        v1::GateState::Passed => "passed",
        v1::GateState::Failed => "failed",
        v1::GateState::TimedOut => "timed_out",
        v1::GateState::Skipped => "skipped",
        v1::GateState::Cancelled => "cancelled",
    }
}

/// The lowercase name of a wire plan state (`unknown` if unspecified).
pub fn plan_state_str(state: i32) -> &'static str {
    match v1::PlanState::try_from(state).unwrap_or(v1::PlanState::Unspecified) {
        v1::PlanState::Unspecified => "unknown",
        v1::PlanState::Running => "running",
        v1::PlanState::Passed => "passed",
        v1::PlanState::Failed => "failed",
        v1::PlanState::Cancelled => "cancelled",
    }
}

/// The lowercase name of a wire worker state (`unknown` if unspecified).
pub fn worker_state_str(state: i32) -> &'static str {
    match v1::WorkerState::try_from(state).unwrap_or(v1::WorkerState::Unspecified) {
        v1::WorkerState::Unspecified => "unknown",
        v1::WorkerState::Ready => "ready",
        v1::WorkerState::Draining => "draining",
        v1::WorkerState::Pressured => "pressured",
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
