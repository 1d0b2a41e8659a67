//! Plan summary: counts, outcome and the merge order.

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
    let merge_order = run.plan.merge_order(|i| run.item_remaining[i.ix()] == 0);
    PlanSummary {
        plan: run.id.clone(),
        outcome,
        counts: c,
        merge_order,
        duration: now.saturating_sub(run.submitted_at) + run.earlier,
    }
}
