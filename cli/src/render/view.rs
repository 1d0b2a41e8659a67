//! What the renderer needs to know about a plan and its events, independent of where they
//! come from: a local [`Plan`] (`gatehouse run`), or a coordinator's `GetPlanResponse`
//! (`gatehouse submit --watch`, `watch`; see [`super::wire`]). The events are the
//! scheduler core's [`GateEvent`]s and [`PlanSummary`]s either way: a coordinator's wire
//! events decode into them. Both kinds of plan convert into the same [`PlanView`], and
//! events into [`GateUpdate`] and [`SummaryView`], so every output mode is written once.
//!
//! Gates and items are addressed by their index in plan order, as in [`Plan`]; a view
//! built from a `Plan` uses exactly the plan's indices, and a view built from a
//! coordinator's description has the same ones, so events convert without a lookup. A
//! [`GateUpdate`] borrows from the event it was made from (a result can carry up to
//! 2 MiB of output tails).

use std::collections::HashMap;
use std::time::Duration;

use gatehouse_common::events::{Counts, GateEvent, GateStatus, PlanOutcome, PlanSummary, Terminal};
use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::{GateId, ItemId, WorkerId};
use gatehouse_common::plan::{Plan, PlanForm};

/// One gate, as shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateView {
    /// Full id (`item/gate`, or `gate` in the flat form).
    pub id: GateId,
    /// Index of its item in [`PlanView::items`] (item form only).
    pub item: Option<usize>,
}

/// One item, as shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemView {
    /// The item's id.
    pub id: ItemId,
    /// Merge-pyramid level.
    pub level: u32,
    /// Indices of its gates in [`PlanView::gates`], in plan order.
    pub gates: Vec<usize>,
}

/// The shape of a plan: names, gates, items and levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanView {
    /// The plan's `name`.
    pub name: String,
    /// Every gate in plan order.
    pub gates: Vec<GateView>,
    /// Items in plan order (empty in the flat form).
    pub items: Vec<ItemView>,
    /// Levels of the merge pyramid: item ids per level (gate ids in the flat form).
    pub levels: Vec<Vec<String>>,
    /// Gate index by id, to resolve wire events (which name gates by id).
    index: HashMap<GateId, usize>,
    /// Item index by id, to resolve wire summaries (which name items by id).
    item_index: HashMap<ItemId, usize>,
}

impl PlanView {
    /// A view from its parts; the indices by id are derived from `gates` and `items`.
    pub fn new(
        name: String,
        gates: Vec<GateView>,
        items: Vec<ItemView>,
        levels: Vec<Vec<String>>,
    ) -> Self {
        let index = gates
            .iter()
            .enumerate()
            .map(|(i, g)| (g.id.clone(), i))
            .collect();
        let item_index = items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.id.clone(), i))
            .collect();
        Self {
            name,
            gates,
            items,
            levels,
            index,
            item_index,
        }
    }

    /// The view of a validated local plan (same indices as the plan).
    pub fn from_plan(plan: &Plan) -> Self {
        let gates = plan
            .gates
            .iter()
            .map(|g| GateView {
                id: g.id.clone(),
                item: g.item.map(|i| i.ix()),
            })
            .collect();
        let items = plan
            .items
            .iter()
            .map(|i| ItemView {
                id: i.id.clone(),
                level: i.level,
                gates: i.gates.iter().map(|g| g.ix()).collect(),
            })
            .collect();
        Self::new(plan.name.clone(), gates, items, plan.level_ids())
    }

    /// Items form or flat form.
    pub fn form(&self) -> PlanForm {
        if self.items.is_empty() {
            PlanForm::Flat
        } else {
            PlanForm::Items
        }
    }

    /// Index of the gate with this id.
    pub fn gate_index(&self, id: &GateId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Index of the item with this id.
    pub fn item_index(&self, id: &ItemId) -> Option<usize> {
        self.item_index.get(id).copied()
    }

    /// The id of gate `g`.
    pub fn gate_id(&self, g: usize) -> &str {
        self.gates.get(g).map_or("?", |gate| gate.id.as_str())
    }

    /// The id of the item of gate `g`, if it has one.
    pub fn item_of(&self, g: usize) -> Option<&str> {
        let item = self.gates.get(g)?.item?;
        self.items.get(item).map(|i| i.id.as_str())
    }
}

/// What happened to a gate. Events that are not shown (a dispatch, a pending gate) are
/// not converted at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// The attempt's process started.
    Running,
    /// The attempt failed; the next one starts after `backoff`.
    Retrying {
        /// Delay before the next attempt.
        backoff: Duration,
    },
    /// Ready, but no worker can run it.
    Waiting {
        /// Why.
        reason: &'a str,
    },
    /// The gate ended.
    Finished(Terminal),
}

/// One shown change of one gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateUpdate<'a> {
    /// Index of the gate in [`PlanView::gates`].
    pub gate: usize,
    /// What happened.
    pub change: Change<'a>,
    /// Attempt number (0: never ran, or answered from the cache).
    pub attempt: u32,
    /// The worker involved, if any.
    pub worker: Option<&'a str>,
    /// The result came from the cache.
    pub cached: bool,
    /// Passed after at least one failed attempt.
    pub flaky: bool,
    /// Result of the attempt (finished and retrying events of executed or cached gates).
    pub result: Option<&'a GateResult>,
    /// Machine-readable reason (`exit_code`, `dependency_failed`, ...).
    pub reason: Option<&'a str>,
    /// For a skipped gate: index of the failed gate that caused it.
    pub cause: Option<usize>,
    /// Its flaky and quarantined tests.
    pub verdict: Option<&'a gatehouse_common::reports::TestVerdict>,
}

impl<'a> GateUpdate<'a> {
    /// The update for a core event, or `None` for events that are not shown
    /// (dispatches). Indices are the plan's, so the view must come from the same plan.
    pub fn from_core(ev: &'a GateEvent) -> Option<Self> {
        let change = match &ev.status {
            GateStatus::Dispatched => return None,
            GateStatus::Running => Change::Running,
            GateStatus::Retrying { backoff } => Change::Retrying { backoff: *backoff },
            GateStatus::Waiting { reason } => Change::Waiting {
                reason: reason.as_str(),
            },
            GateStatus::Finished(t) => Change::Finished(*t),
        };
        Some(Self {
            gate: ev.gate.ix(),
            change,
            attempt: ev.attempt,
            worker: ev.worker.as_ref().map(WorkerId::as_str),
            cached: ev.cached,
            flaky: ev.flaky,
            result: ev.result.as_ref(),
            reason: ev.reason,
            cause: ev.cause.map(|c| c.ix()),
            verdict: ev.verdict.as_deref(),
        })
    }

    /// Whether this update counts as a failure (failed, timed out, or retrying after one).
    pub fn is_failure(&self) -> bool {
        matches!(
            self.change,
            Change::Finished(Terminal::Failed | Terminal::TimedOut) | Change::Retrying { .. }
        )
    }
}

/// The end of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryView {
    /// How it ended.
    pub outcome: PlanOutcome,
    /// Gate counts.
    pub counts: Counts,
    /// Items that may merge, in merge order (flat form: empty).
    pub merge_order: Vec<ItemId>,
    /// Time from submission to the last gate's end.
    pub duration: Duration,
}

impl SummaryView {
    /// The summary of a core plan summary; `view` must come from the same plan.
    pub fn from_core(view: &PlanView, s: &PlanSummary) -> Self {
        let merge_order = s
            .merge_order
            .iter()
            .filter_map(|i| view.items.get(i.ix()).map(|item| item.id.clone()))
            .collect();
        Self {
            outcome: s.outcome,
            counts: s.counts,
            merge_order,
            duration: s.duration,
        }
    }
}
