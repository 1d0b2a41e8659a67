//! Mutable state of one plan inside the core: per-gate lifecycle, remaining
//! prerequisites, the ready queue and the counters the summary is built from.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use gatehouse_common::cache::CacheKey;
use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::{GateIdx, PlanId, SessionKey};
use gatehouse_common::plan::Plan;

use super::graph::PlanGraph;
use super::types::{Counts, Now, RunOptions, Terminal};

/// Lifecycle of one gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GateState {
    /// Some prerequisite has not passed yet.
    Blocked,
    /// Prerequisites passed; the driver is looking the gate up in the cache.
    CheckingCache,
    /// Missed the cache on a key that another gate (the flight's leader) is computing:
    /// waits for it to end. See [`super::flights`].
    AwaitingLeader,
    /// In the ready queue, waiting for a slot (and memory).
    Ready,
    /// Ready, but no live worker could ever run it; back to `Ready` when a worker joins.
    Parked,
    /// Dispatched to `worker` as `attempt` (started or not yet).
    Running { worker: SessionKey, attempt: u32 },
    /// Failed attempt; `attempt` starts when the retry timer fires.
    Backoff { attempt: u32 },
    /// A cancel was sent for the running attempt; ends as `then`.
    Stopping {
        worker: SessionKey,
        attempt: u32,
        then: Terminal,
    },
    /// Restored by a new leader: it may still run on a worker that has not re-reported
    /// yet. Attempts numbered `from` or higher are adopted when a worker reports them.
    /// See [`super::recovery`].
    InDoubt { from: u32 },
    /// Ended.
    Done(Terminal),
}

impl GateState {
    /// Prerequisites passed and waiting for a worker (`Ready` or `Parked`).
    pub(crate) fn is_queued(&self) -> bool {
        matches!(self, GateState::Ready | GateState::Parked)
    }
}

/// A single-flight leader that ended, settled by `Scheduler::settle_flights` after the
/// event that ended it.
#[derive(Debug)]
pub(crate) struct Landed {
    pub(crate) plan: PlanId,
    pub(crate) gate: GateIdx,
    pub(crate) key: CacheKey,
    /// Its pass, if it passed and its pass may be shared.
    pub(crate) passed: Option<SharedPass>,
}

/// A pass that gates waiting on the same key take as their own: the result, and for a
/// flaky pass (shared only when the plan caches flaky passes) its flaky tests.
#[derive(Clone, Debug)]
pub(crate) struct SharedPass {
    pub(crate) result: GateResult,
    /// `Some` for a flaky pass.
    pub(crate) flaky: Option<gatehouse_common::reports::TestVerdict>,
}

/// Per-gate bookkeeping.
#[derive(Clone, Debug)]
pub(crate) struct GateRun {
    pub(crate) state: GateState,
    /// Prerequisites (needs + dep items) not yet passed.
    pub(crate) pending: u32,
    /// Last attempt number handed out (0: never dispatched).
    pub(crate) attempt: u32,
    /// Failed attempts so far (counted against `retries`).
    pub(crate) failures: u32,
    /// Attempts lost with their worker (not counted against `retries`).
    pub(crate) losses: u32,
    /// Whether a "waiting" event was already published for the current wait.
    /// The reason last published in a `Waiting` event (published again only if it changes).
    pub(crate) waiting_reason: Option<String>,
    /// The attempt whose `Running` event was published (0: none), so a start reported
    /// again after a coordinator change is not published twice.
    pub(crate) announced: u32,
    /// The failed result of the last attempt while in `Backoff` (reported if the plan
    /// stops before the retry).
    pub(crate) last_failure: Option<GateResult>,
    /// When it last entered `Ready` (not counting a park and unpark): the start of its
    /// queue wait.
    pub(crate) ready_at: Now,
    /// Admission already refused it for want of memory since `ready_at` (counted once).
    pub(crate) throttled: bool,
    /// Its cache key, once its lookup answered (or restored); dependents' keys and the
    /// stored result use it.
    pub(crate) key: Option<CacheKey>,
    /// It leads the single flight of its key: it runs it for every gate that waits
    /// (those are in [`GateState::AwaitingLeader`]).
    pub(crate) leads: bool,
    /// What its earlier attempts' reports said. Boxed: most gates have none.
    pub(crate) tests: Option<Box<GateTestsSoFar>>,
}

/// What a gate's earlier attempts' reports said, for the attempts after them.
#[derive(Clone, Debug, Default)]
pub(crate) struct GateTestsSoFar {
    /// Tests that failed, so a later flip can say how it failed.
    pub(crate) failed: Vec<gatehouse_common::reports::TestCase>,
    /// Tests found flaky so far: every later event of the gate names them.
    pub(crate) flaky: Vec<gatehouse_common::reports::TestCase>,
}

/// Why a plan stops early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopping {
    /// Still running normally.
    No,
    /// A gate failed under `fail_fast`.
    FailFast,
    /// The submitter cancelled the plan.
    Cancelled,
    /// A restored plan while its log is applied: nothing becomes ready.
    Restoring,
}

/// One submitted plan.
pub(crate) struct PlanRun {
    pub(crate) id: PlanId,
    pub(crate) plan: Arc<Plan>,
    pub(crate) options: RunOptions,
    pub(crate) graph: PlanGraph,
    pub(crate) gates: Vec<GateRun>,
    /// Per item: gates of the item not yet passed.
    pub(crate) item_remaining: Vec<u32>,
    /// Per item: some gate of it can no longer pass (its dependents were already
    /// queued for skipping once, which keeps skip propagation linear).
    pub(crate) item_doomed: Vec<bool>,
    /// Ready gates by (height desc, plan order asc): O(log n) push and pop.
    pub(crate) ready: BinaryHeap<(u32, Reverse<u32>)>,
    /// Ready gates no live worker could ever run (labels, memory); they go back to the
    /// ready heap when a worker joins, so they never block the gates behind them.
    pub(crate) parked: Vec<GateIdx>,
    /// Gates in `Ready` or `Parked`: prerequisites passed, waiting for a worker.
    pub(crate) queued: u32,
    /// Attempts dispatched and not yet finished.
    pub(crate) running: u32,
    /// Gates in a terminal state.
    pub(crate) done: u32,
    pub(crate) counts: Counts,
    pub(crate) stopping: Stopping,
    pub(crate) submitted_at: Now,
    /// How long the plan had run before it was restored here (0 unless restored).
    pub(crate) earlier: std::time::Duration,
    /// `policy.quarantine.tests`, compiled once.
    pub(crate) quarantine: gatehouse_common::plan::NamedQuarantine,
}

impl PlanRun {
    pub(crate) fn new(id: PlanId, plan: Arc<Plan>, options: RunOptions, now: Now) -> Self {
        let graph = PlanGraph::new(&plan);
        let plan_quarantine = plan.policy.quarantine.named();
        let gates = graph
            .indegree
            .iter()
            .map(|&pending| GateRun {
                state: GateState::Blocked,
                pending,
                attempt: 0,
                failures: 0,
                losses: 0,
                waiting_reason: None,
                announced: 0,
                last_failure: None,
                ready_at: now,
                throttled: false,
                key: None,
                leads: false,
                tests: None,
            })
            .collect();
        let item_remaining: Vec<u32> = plan.items.iter().map(|i| i.gates.len() as u32).collect();
        let counts = Counts {
            total: plan.gates.len() as u32,
            ..Counts::default()
        };
        Self {
            id,
            plan,
            options,
            graph,
            gates,
            item_doomed: vec![false; item_remaining.len()],
            item_remaining,
            ready: BinaryHeap::new(),
            parked: Vec::new(),
            queued: 0,
            running: 0,
            done: 0,
            counts,
            stopping: Stopping::No,
            submitted_at: now,
            earlier: std::time::Duration::ZERO,
            quarantine: plan_quarantine,
        }
    }

    pub(crate) fn gate(&self, g: GateIdx) -> &GateRun {
        &self.gates[g.ix()]
    }

    pub(crate) fn gate_mut(&mut self, g: GateIdx) -> &mut GateRun {
        &mut self.gates[g.ix()]
    }

    /// Every change of a gate's state goes through here, so `queued` stays exact.
    pub(crate) fn set_state(&mut self, g: GateIdx, state: GateState) {
        let gr = &mut self.gates[g.ix()];
        let was = gr.state.is_queued();
        let is = state.is_queued();
        gr.state = state;
        match (was, is) {
            (false, true) => self.queued += 1,
            (true, false) => self.queued -= 1,
            _ => {}
        }
    }

    /// Queues `g` (from `Parked` it keeps its place in time: `ready_at` is unchanged).
    pub(crate) fn push_ready(&mut self, g: GateIdx, now: Now) {
        let gr = &mut self.gates[g.ix()];
        if !gr.state.is_queued() {
            gr.ready_at = now;
            gr.throttled = false;
        }
        self.set_state(g, GateState::Ready);
        self.ready.push((self.graph.height[g.ix()], Reverse(g.0)));
    }

    /// The highest-priority ready gate, dropping stale heap entries (a gate that left
    /// `Ready` while queued, e.g. skipped by fail-fast).
    pub(crate) fn peek_ready(&mut self) -> Option<GateIdx> {
        while let Some(&(_, Reverse(g))) = self.ready.peek() {
            if self.gates[g as usize].state == GateState::Ready {
                return Some(GateIdx(g));
            }
            self.ready.pop();
        }
        None
    }

    /// Whether the plan may start another attempt now (`max_parallel`, not stopping).
    pub(crate) fn may_dispatch(&self) -> bool {
        self.stopping == Stopping::No
            && self
                .plan
                .policy
                .max_parallel
                .is_none_or(|max| self.running < max)
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.done as usize == self.gates.len()
    }

    /// Records a terminal state in the counters.
    pub(crate) fn count(&mut self, t: Terminal, cached: bool, flaky: bool) {
        self.done += 1;
        self.counts.record(t, cached, flaky);
    }
}
