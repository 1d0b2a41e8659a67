//! The client side of the wire (`gatehouse.v1`): a `GetPlanResponse` becomes a
//! [`PlanView`]; wire gate events and summaries decode into the core's events through
//! the one conversion per message of [`gatehouse_proto::convert::events`], with what is
//! this client's own: which malformed parts it drops to still show a change (see
//! [`gate_event`]), and that an unknown outcome reads as failed. Also the names of wire
//! states, for `gatehouse status`, `plans` and `workers`.

use std::collections::HashMap;

use gatehouse_common::events::{Counts, GateEvent, PlanOutcome, PlanSummary};
use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::{GateId, GateIdx, ItemId, ItemIdx, PlanId};
use gatehouse_proto::convert::WireError;
use gatehouse_proto::convert::events::{InPlan, PlanIndex};
use gatehouse_proto::v1;

use super::view::{GateView, ItemView, PlanView};

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

/// The plan a watch follows, as decoding its wire events needs it: its id (wire gate
/// events do not repeat it) and its view (gates and items by id).
pub struct Followed<'a> {
    /// The plan's id.
    pub id: &'a PlanId,
    /// The plan as shown.
    pub view: &'a PlanView,
}

impl PlanIndex for Followed<'_> {
    fn plan_id(&self) -> &PlanId {
        self.id
    }

    fn gate_index(&self, id: &str) -> Option<GateIdx> {
        let g = self.view.gate_index(&GateId::new(id))?;
        u32::try_from(g).ok().map(GateIdx)
    }

    fn item_index(&self, id: &str) -> Option<ItemIdx> {
        let i = self.view.item_index(&ItemId::new(id))?;
        u32::try_from(i).ok().map(ItemIdx)
    }
}

/// The core event a wire gate event encodes, as this client shows it. A client shows
/// what it can: `Ok(None)` for a state it does not know (a newer coordinator's), which
/// is not shown; an attempt result that does not decode and a cause that names no gate
/// of the plan are dropped rather than losing the change they annotate. Anything else
/// malformed (no gate, or one the plan does not have) is an error the caller reports
/// and skips.
pub fn gate_event(
    plan: &Followed<'_>,
    mut ev: v1::GateEvent,
) -> Result<Option<GateEvent>, WireError> {
    let result = ev.result.take().and_then(|r| GateResult::try_from(r).ok());
    if !ev.cause.is_empty() && plan.gate_index(&ev.cause).is_none() {
        ev.cause.clear();
    }
    match GateEvent::try_from(InPlan::new(plan, ev)) {
        Ok(decoded) => Ok(Some(GateEvent { result, ..decoded })),
        Err(WireError::Missing("state") | WireError::Invalid { field: "state", .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The core summary a wire summary encodes. An outcome this client does not know reads
/// as failed ([`outcome`]), so an unknown ending never exits 0.
pub fn summary(plan: &Followed<'_>, mut s: v1::PlanSummary) -> Result<PlanSummary, WireError> {
    s.outcome = v1::PlanOutcome::from(outcome(s.outcome)) as i32;
    PlanSummary::try_from(InPlan::new(plan, s))
}

/// The outcome of a wire outcome; an unspecified or unknown one reads as failed, so an
/// unknown ending never exits 0.
pub fn outcome(o: i32) -> PlanOutcome {
    v1::PlanOutcome::try_from(o)
        .ok()
        .and_then(|o| PlanOutcome::try_from(o).ok())
        .unwrap_or(PlanOutcome::Failed)
}

/// Counts from the wire (absent: zero).
pub fn counts(c: Option<&v1::Counts>) -> Counts {
    c.cloned().map(Counts::from).unwrap_or_default()
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
