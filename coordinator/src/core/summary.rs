//! Plan summary: counts, outcome and the merge order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use gatehouse_common::ids::ItemIdx;
use gatehouse_common::plan::Plan;

use super::plan_run::{PlanRun, Stopping};
use super::types::{Now, PlanOutcome, PlanSummary};

pub(super) fn summarize(run: &PlanRun, now: Now) -> PlanSummary {
    let c = run.counts;
    let outcome = if run.stopping == Stopping::Cancelled {
        PlanOutcome::Cancelled
    } else if c.failed + c.timed_out > 0 {
        PlanOutcome::Failed
    } else if c.cancelled > 0 {
        PlanOutcome::Cancelled
    } else {
        PlanOutcome::Passed
    };
    let merge_order = merge_order(&run.plan, |i| run.item_remaining[i.ix()] == 0);
    PlanSummary {
        plan: run.id.clone(),
        outcome,
        counts: c,
        merge_order,
        duration: now.saturating_sub(run.submitted_at) + run.earlier,
    }
}

/// Items that passed and whose deps are all in the merge order, in topological order
/// (Kahn), ties broken by plan order.
pub fn merge_order(plan: &Plan, item_passed: impl Fn(ItemIdx) -> bool) -> Vec<ItemIdx> {
    let n = plan.items.len();
    let mut indeg = vec![0u32; n];
    let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, item) in plan.items.iter().enumerate() {
        indeg[i] = item.deps.len() as u32;
        for d in &item.deps {
            dependents[d.ix()].push(i as u32);
        }
    }
    let mut heap: BinaryHeap<Reverse<u32>> = (0..n as u32)
        .filter(|&i| indeg[i as usize] == 0 && item_passed(ItemIdx(i)))
        .map(Reverse)
        .collect();
    let mut order = Vec::new();
    while let Some(Reverse(i)) = heap.pop() {
        order.push(ItemIdx(i));
        for &d in &dependents[i as usize] {
            indeg[d as usize] -= 1;
            if indeg[d as usize] == 0 && item_passed(ItemIdx(d)) {
                heap.push(Reverse(d));
            }
        }
    }
    order
}
