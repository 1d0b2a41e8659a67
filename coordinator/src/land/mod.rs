//! Landing, as a plain state machine: once a source plan's gates end, which of its
//! items go onto the target branch, in which combination, after which `verify` runs,
//! and what to do when the branch moved.
//!
//! [`Lander`] decides; its driver only carries [`LandCommand`]s out (folding commits
//! through the mirror, running the `verify` plan on a tip, pushing) and feeds the
//! answers back as [`LandEvent`]s. No git, no clock, no scheduler in here, so the same
//! decisions serve `gatehouse run --land` and a coordinator, and a test drives every
//! path directly.
//!
//! One landing attempt, on the base the plan was resolved against:
//! 1. The candidates are the items that passed, with their whole stack, in merge order
//!    (the plan summary's `merge_order`). Every other item is left out with its reason.
//! 2. [`LandCommand::Combine`]: the candidates' commits are folded onto the base with
//!    the same deterministic merges as the speculative states, giving the combination
//!    of every prefix. A candidate that merges with its own stack but not with what
//!    comes before it in the merge order is left out (`combination_conflict`), with
//!    every candidate stacked on it, and the rest is combined again.
//! 3. A prefix whose combination is exactly a tested speculative state (a single stack)
//!    is already verified. Otherwise, when the plan has `verify` gates, they run on the
//!    whole combination ([`LandCommand::Verify`]); if that fails, a [`Bisection`] finds
//!    the longest prefix that passes and the culprit, the first item whose addition
//!    fails. The culprit and everything after it are left out.
//! 4. [`LandCommand::Push`]: the branch moves to the landed prefix's tip only if it
//!    still points at the base. If it moved, [`LandCommand::Respeculate`] asks for the
//!    whole plan again on the new base (its unchanged trees are cache hits), up to the
//!    retries given; a refusal ends the landing with nothing changed.
//!
//! With `dry_run` everything but the push happens, and the report says what would land.

pub mod answers;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use gatehouse_common::ids::ItemIdx;
use gatehouse_common::land::{Bisection, Step};
pub use gatehouse_common::land::{LandFailure, LandReport, LeftOut};
use gatehouse_common::plan::Plan;
use gatehouse_common::source::{BlockReason, CommitId, ItemState, Resolution};

/// How a compare-and-swap push ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The branch now points at the pushed commit.
    Updated,
    /// The branch no longer pointed at the base; nothing changed. `now`: where it
    /// points (`None`: it is gone).
    Moved {
        /// Where it points now.
        now: Option<CommitId>,
    },
    /// The repository refused the update (rights, a protected branch, a hook).
    Refused {
        /// What it said.
        reason: String,
    },
    /// The push could not be made (the repository unreachable, a timeout).
    Failed {
        /// The error.
        error: String,
    },
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LandCommand {
    /// Fold `commits` onto the base in order; answer [`LandEvent::Combined`] with the
    /// state after each.
    Combine {
        /// The candidates' commits, in merge order.
        commits: Vec<CommitId>,
    },
    /// Run the `verify` gates on the combination of the first `prefix` candidates;
    /// answer [`LandEvent::Verified`].
    Verify {
        /// How many candidates.
        prefix: usize,
        /// Those candidates, in merge order.
        items: Vec<ItemIdx>,
        /// Their commits, in merge order (what an executor folds onto the base).
        stack: Vec<CommitId>,
        /// The combination.
        commit: CommitId,
    },
    /// Move the target branch to `commit` if it still points at `expected`; answer
    /// [`LandEvent::Pushed`].
    Push {
        /// The new tip.
        commit: CommitId,
        /// Where the branch must still point.
        expected: CommitId,
        /// The items it lands, in merge order, with the combination each lands as.
        landing: Vec<(ItemIdx, CommitId)>,
    },
    /// The branch moved: run the whole plan again on its new tip, then land again with
    /// one retry less. This attempt is over.
    Respeculate {
        /// Where the branch points now.
        now: CommitId,
    },
    /// The landing is over.
    Finish(LandReport),
}

/// Answers of the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LandEvent {
    /// The states after each commit of [`LandCommand::Combine`], or where the fold
    /// stopped.
    Combined(Result<Vec<CommitId>, CombineConflict>),
    /// The `verify` gates on a prefix's combination passed or not.
    Verified {
        /// The prefix of the [`LandCommand::Verify`].
        prefix: usize,
        /// All passed.
        passed: bool,
    },
    /// How the push went.
    Pushed(PushOutcome),
}

/// The fold stopped: commit `at` (an index into [`LandCommand::Combine`]'s commits)
/// does not merge onto the state before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CombineConflict {
    /// Its index.
    pub at: usize,
    /// The conflicting paths (empty: no common history).
    pub paths: Vec<String>,
}

/// Errors of setting a landing up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LandError {
    /// The plan has no resolved source.
    #[error("only a plan with `source` can land")]
    NoSource,
    /// The base could not be read, so nothing was tested on it.
    #[error("nothing can land: the base could not be read ({0})")]
    NoBase(String),
}

/// Landing options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LandOptions {
    /// The branch it lands on (for the report; the driver pushes to it).
    pub branch: String,
    /// Compute and verify, push nothing.
    pub dry_run: bool,
    /// How many more times the plan may run again when the branch moved.
    pub retries_left: u32,
}

/// One candidate: an item that passed, with its whole stack.
#[derive(Clone, Debug)]
struct Candidate {
    item: ItemIdx,
    /// Its own commit (`None`: it has no `ref` and adds nothing).
    commit: Option<CommitId>,
    /// Every item it transitively depends on.
    below: Vec<ItemIdx>,
}

/// Where a landing attempt is.
#[derive(Clone, Debug)]
enum Phase {
    Combining,
    /// The whole combination is being verified.
    Verifying,
    Bisecting(Bisection),
    Pushing {
        landing: Vec<(ItemIdx, CommitId)>,
        tip: CommitId,
    },
    Done,
}

/// One landing attempt. See the module docs.
#[derive(Debug)]
pub struct Lander {
    options: LandOptions,
    base: CommitId,
    candidates: Vec<Candidate>,
    /// Commits of tested speculative states (every candidate's): a prefix combined
    /// into one of them is verified already.
    tested: HashSet<CommitId>,
    /// The combination after each candidate (same length as `candidates` once combined).
    tips: Vec<CommitId>,
    left_out: Vec<(ItemIdx, LeftOut)>,
    /// The plan has `verify` gates.
    verify: bool,
    verify_runs: u32,
    phase: Phase,
}

impl Lander {
    /// A landing of `plan` (prepared, with its source resolved) whose gates ended:
    /// `merge_order` is its summary's (the items that passed with their whole stack),
    /// `failed[i]` whether a gate of item `i` failed.
    pub fn new(
        plan: &Plan,
        merge_order: &[ItemIdx],
        failed: &[bool],
        options: LandOptions,
    ) -> Result<Self, LandError> {
        let resolution: &Resolution = plan.resolution().ok_or(LandError::NoSource)?;
        let base = match &resolution.base {
            Ok(base) => base.commit.clone(),
            Err(e) => return Err(LandError::NoBase(e.clone())),
        };
        let passing: HashSet<ItemIdx> = merge_order.iter().copied().collect();
        let mut tested = HashSet::new();
        let mut candidates = Vec::with_capacity(merge_order.len());
        for &item in merge_order {
            let Some(source) = resolution.items.get(item.ix()) else {
                continue;
            };
            if let ItemState::Ready { commit, .. } = &source.state {
                tested.insert(commit.clone());
            }
            candidates.push(Candidate {
                item,
                commit: source.git_ref.as_ref().and(source.commit.clone()),
                below: plan.ancestors(item),
            });
        }
        let mut left_out = Vec::new();
        for (i, source) in resolution.items.iter().enumerate() {
            let item = ItemIdx(i as u32);
            if passing.contains(&item) {
                continue;
            }
            let reason = match &source.state {
                ItemState::Blocked {
                    reason: BlockReason::MergeConflict,
                    paths,
                    ..
                } => LeftOut::Conflict {
                    paths: paths.clone(),
                },
                ItemState::Blocked {
                    reason: BlockReason::Source,
                    ..
                } => LeftOut::Source,
                _ if failed.get(i).copied().unwrap_or(false) => LeftOut::Failed,
                _ => LeftOut::Skipped,
            };
            left_out.push((item, reason));
        }
        Ok(Self {
            options,
            base,
            candidates,
            tested,
            tips: Vec::new(),
            left_out,
            verify: plan.verify.is_some(),
            verify_runs: 0,
            phase: Phase::Combining,
        })
    }

    /// The first command.
    pub fn start(&mut self) -> LandCommand {
        self.combine()
    }

    /// The next command after `event`.
    pub fn handle(&mut self, event: LandEvent) -> LandCommand {
        match (std::mem::replace(&mut self.phase, Phase::Done), event) {
            (Phase::Combining, LandEvent::Combined(Ok(states))) => self.on_combined(&states),
            (Phase::Combining, LandEvent::Combined(Err(conflict))) => {
                self.drop_conflicting(conflict);
                self.combine()
            }
            (Phase::Verifying, LandEvent::Verified { prefix, passed })
                if prefix == self.candidates.len() =>
            {
                if passed {
                    self.push(prefix)
                } else {
                    self.bisect(Bisection::new(prefix))
                }
            }
            (Phase::Bisecting(mut b), LandEvent::Verified { prefix, passed }) => {
                b.record(prefix, passed);
                self.bisect(b)
            }
            (Phase::Pushing { landing, tip }, LandEvent::Pushed(outcome)) => {
                self.on_pushed(landing, tip, outcome)
            }
            (phase, event) => {
                // An answer to a command this attempt did not give: a driver bug. Keep
                // the state and ask again rather than guess.
                tracing::warn!(?event, "landing ignored an answer it did not ask for");
                self.phase = phase;
                self.repeat()
            }
        }
    }

    /// A landing that cannot start or go on (its plan cannot land, or it stopped
    /// between two rounds): only [`Lander::abort`] is of use. Its report names `base`
    /// (forty zeros when unknown) and no item.
    pub fn empty(branch: &str, dry_run: bool, base: Option<CommitId>) -> Self {
        Self {
            options: LandOptions {
                branch: branch.to_string(),
                dry_run,
                retries_left: 0,
            },
            base: base.unwrap_or_else(|| {
                CommitId::parse(&"0".repeat(40)).expect("forty zeros are a commit id")
            }),
            candidates: Vec::new(),
            tested: HashSet::new(),
            tips: Vec::new(),
            left_out: Vec::new(),
            verify: false,
            verify_runs: 0,
            phase: Phase::Done,
        }
    }

    /// The landing ends here for `why` (cancelled, or the driver cannot go on): nothing
    /// more is pushed (a push already made stays made) and every candidate is left out.
    pub fn abort(&mut self, why: LandFailure) -> LandCommand {
        let remaining: Vec<ItemIdx> = self.candidates.iter().map(|c| c.item).collect();
        for item in remaining {
            if !self.left_out.iter().any(|(i, _)| *i == item) {
                self.left_out.push((item, LeftOut::NotPushed));
            }
        }
        self.candidates.clear();
        self.finish(Vec::new(), None, Some(why))
    }

    /// The command of the current phase, again.
    fn repeat(&mut self) -> LandCommand {
        match self.phase.clone() {
            Phase::Combining => self.combine(),
            Phase::Verifying => self.verify_prefix(self.candidates.len(), Phase::Verifying),
            Phase::Bisecting(b) => self.bisect(b),
            Phase::Pushing { landing, tip } => self.ask_push(landing, tip),
            Phase::Done => self.finish(Vec::new(), None, None),
        }
    }

    fn combine(&mut self) -> LandCommand {
        if self.candidates.is_empty() {
            return self.finish(Vec::new(), None, None);
        }
        self.phase = Phase::Combining;
        LandCommand::Combine {
            commits: self.commits(self.candidates.len()),
        }
    }

    /// The commits of the first `prefix` candidates, in merge order.
    fn commits(&self, prefix: usize) -> Vec<CommitId> {
        self.candidates[..prefix]
            .iter()
            .filter_map(|c| c.commit.clone())
            .collect()
    }

    fn on_combined(&mut self, states: &[CommitId]) -> LandCommand {
        let mut tips = Vec::with_capacity(self.candidates.len());
        let mut tip = self.base.clone();
        let mut next = states.iter();
        for c in &self.candidates {
            if c.commit.is_some() {
                match next.next() {
                    Some(state) => tip = state.clone(),
                    None => {
                        // Fewer states than commits: a driver bug; fold again.
                        tracing::warn!("landing got fewer combined states than commits");
                        return self.combine();
                    }
                }
            }
            tips.push(tip.clone());
        }
        self.tips = tips;
        let n = self.candidates.len();
        if self.is_verified(n) {
            self.push(n)
        } else {
            self.verify_prefix(n, Phase::Verifying)
        }
    }

    /// Leaves the candidate owning commit `at` out, and every candidate stacked on it.
    fn drop_conflicting(&mut self, conflict: CombineConflict) {
        let owner = self
            .candidates
            .iter()
            .filter(|c| c.commit.is_some())
            .nth(conflict.at)
            .map(|c| c.item);
        let Some(owner) = owner else {
            // An index outside the fold: a driver bug; nothing can be trusted.
            tracing::warn!(at = conflict.at, "landing got a conflict outside the fold");
            for c in self.candidates.drain(..) {
                self.left_out.push((c.item, LeftOut::NotPushed));
            }
            return;
        };
        let mut kept = Vec::with_capacity(self.candidates.len());
        for c in std::mem::take(&mut self.candidates) {
            if c.item == owner {
                let paths = conflict.paths.clone();
                self.left_out
                    .push((c.item, LeftOut::CombinationConflict { paths }));
            } else if c.below.contains(&owner) {
                self.left_out.push((c.item, LeftOut::Below { item: owner }));
            } else {
                kept.push(c);
            }
        }
        self.candidates = kept;
    }

    /// The combination of the first `prefix` candidates needs no `verify` run: there
    /// are no `verify` gates, or it is a state the items' own gates passed on.
    fn is_verified(&self, prefix: usize) -> bool {
        !self.verify || prefix == 0 || self.tested.contains(&self.tips[prefix - 1])
    }

    fn verify_prefix(&mut self, prefix: usize, phase: Phase) -> LandCommand {
        self.verify_runs += 1;
        self.phase = phase;
        LandCommand::Verify {
            prefix,
            items: self.candidates[..prefix].iter().map(|c| c.item).collect(),
            stack: self.commits(prefix),
            commit: self.tips[prefix - 1].clone(),
        }
    }

    fn bisect(&mut self, mut b: Bisection) -> LandCommand {
        loop {
            match b.next() {
                Step::Probe(k) if self.is_verified(k) => b.record(k, true),
                Step::Probe(k) => return self.verify_prefix(k, Phase::Bisecting(b)),
                Step::Done { land, culprit } => {
                    let culprit_item = self.candidates[culprit].item;
                    for (i, c) in self.candidates.iter().enumerate().skip(culprit) {
                        let reason = if i == culprit {
                            LeftOut::Culprit
                        } else {
                            LeftOut::AfterCulprit {
                                culprit: culprit_item,
                            }
                        };
                        self.left_out.push((c.item, reason));
                    }
                    self.candidates.truncate(land);
                    return self.push(land);
                }
            }
        }
    }

    /// Lands the first `prefix` candidates.
    fn push(&mut self, prefix: usize) -> LandCommand {
        if prefix == 0 {
            return self.finish(Vec::new(), None, None);
        }
        let landing: Vec<(ItemIdx, CommitId)> = self.candidates[..prefix]
            .iter()
            .zip(&self.tips)
            .map(|(c, tip)| (c.item, tip.clone()))
            .collect();
        let tip = self.tips[prefix - 1].clone();
        if self.options.dry_run || tip == self.base {
            // Nothing to write: a dry run, or every change is already in the base.
            return self.finish(landing, Some(tip), None);
        }
        self.ask_push(landing, tip)
    }

    /// Asks for the push of `tip`, landing `landing`, leased on the base.
    fn ask_push(&mut self, landing: Vec<(ItemIdx, CommitId)>, tip: CommitId) -> LandCommand {
        self.phase = Phase::Pushing {
            landing: landing.clone(),
            tip: tip.clone(),
        };
        LandCommand::Push {
            commit: tip,
            expected: self.base.clone(),
            landing,
        }
    }

    fn on_pushed(
        &mut self,
        landing: Vec<(ItemIdx, CommitId)>,
        tip: CommitId,
        outcome: PushOutcome,
    ) -> LandCommand {
        let failure = match outcome {
            PushOutcome::Updated => return self.finish(landing, Some(tip), None),
            PushOutcome::Moved { now: Some(now) } if self.options.retries_left > 0 => {
                self.phase = Phase::Done;
                return LandCommand::Respeculate { now };
            }
            PushOutcome::Moved { now } => LandFailure::BaseMoved { now },
            PushOutcome::Refused { reason } => LandFailure::Refused { reason },
            PushOutcome::Failed { error } => LandFailure::PushFailed { error },
        };
        for (item, _) in landing {
            self.left_out.push((item, LeftOut::NotPushed));
        }
        self.finish(Vec::new(), None, Some(failure))
    }

    /// While a push is asked for: the report if it lands (logged before the push, so a
    /// new leader that finds the branch holding it can report without pushing again).
    pub fn report_if_pushed(&self) -> Option<LandReport> {
        let Phase::Pushing { landing, tip } = &self.phase else {
            return None;
        };
        let mut left_out = self.left_out.clone();
        left_out.sort_by_key(|(item, _)| *item);
        Some(LandReport {
            branch: self.options.branch.clone(),
            base: self.base.clone(),
            tip: Some(tip.clone()),
            landed: landing.clone(),
            left_out,
            verify_runs: self.verify_runs,
            dry_run: self.options.dry_run,
            error: None,
        })
    }

    fn finish(
        &mut self,
        landed: Vec<(ItemIdx, CommitId)>,
        tip: Option<CommitId>,
        error: Option<LandFailure>,
    ) -> LandCommand {
        self.phase = Phase::Done;
        let mut left_out = std::mem::take(&mut self.left_out);
        left_out.sort_by_key(|(item, _)| *item);
        LandCommand::Finish(LandReport {
            branch: self.options.branch.clone(),
            base: self.base.clone(),
            tip,
            landed,
            left_out,
            verify_runs: self.verify_runs,
            dry_run: self.options.dry_run,
            error,
        })
    }
}
