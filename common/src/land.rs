//! Landing's bisection, as a plain state machine: when the combination of every
//! landable item fails its `verify` gates, find the longest prefix of the merge order
//! whose combination passes, and the item whose addition fails (the culprit).
//!
//! [`Bisection`] decides only which prefix to try next; whoever owns it runs the
//! `verify` gates on that prefix's combined tip (a normal, cached run) and records the
//! outcome. The search is binary over prefix lengths, so `n` items need at most
//! `ceil(log2 n)` runs. It assumes what a merge queue assumes: once a prefix fails, every
//! longer one fails too (a flaky gate is retried as any gate is, before its outcome is
//! recorded).
//!
//! Also the plain records of a landing that are published and stored with a plan's
//! events ([`LandRecord`], [`LandReport`]); the decisions live in the coordinator's
//! `land` module.

use serde::{Deserialize, Serialize};

use crate::ids::ItemIdx;
use crate::source::{CommitId, Resolution};

/// Why an item did not land.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum LeftOut {
    /// One of its gates failed.
    Failed,
    /// Its gates did not all run: an item below it did not pass, or the plan stopped.
    Skipped,
    /// Its change does not merge onto the state below it (`merge_conflict`).
    Conflict {
        /// The conflicting paths.
        paths: Vec<String>,
    },
    /// Its ref or the repository could not be read.
    Source,
    /// It merges onto its own stack but not onto the items before it in the merge
    /// order (another stack of the same plan).
    CombinationConflict {
        /// The conflicting paths (empty: no common history).
        paths: Vec<String>,
    },
    /// It is stacked on an item that was left out while combining.
    Below {
        /// That item.
        item: ItemIdx,
    },
    /// The combination up to it fails `verify` while the one before it passes.
    Culprit,
    /// It comes after the culprit in the merge order, so its combination was not
    /// verified without it: it lands on a later run.
    AfterCulprit {
        /// The culprit.
        culprit: ItemIdx,
    },
    /// Nothing was pushed (see [`LandReport::error`]).
    NotPushed,
}

impl LeftOut {
    /// The reason as a word, for events and `--json`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LeftOut::Failed => "failed",
            LeftOut::Skipped => "skipped",
            LeftOut::Conflict { .. } => "conflict",
            LeftOut::Source => "source",
            LeftOut::CombinationConflict { .. } => "combination_conflict",
            LeftOut::Below { .. } => "below_left_out",
            LeftOut::Culprit => "culprit",
            LeftOut::AfterCulprit { .. } => "after_culprit",
            LeftOut::NotPushed => "not_pushed",
        }
    }
}

/// Why a landing ended without pushing what it would have landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandFailure {
    /// The branch kept moving: it moved on the last allowed attempt too.
    BaseMoved {
        /// Where it points now (`None`: it is gone).
        now: Option<CommitId>,
    },
    /// The repository refused the push.
    Refused {
        /// What it said.
        reason: String,
    },
    /// The push could not be made.
    PushFailed {
        /// The error.
        error: String,
    },
    /// The plan was cancelled before its push.
    Cancelled,
}

impl std::fmt::Display for LandFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LandFailure::BaseMoved { now: Some(now) } => write!(
                f,
                "the target branch moved (now at {now}) and no retries are left; run again to land on it"
            ),
            LandFailure::BaseMoved { now: None } => f.write_str(
                "the target branch does not exist (`source.base` must name a branch to land on)",
            ),
            LandFailure::Refused { reason } => write!(f, "the push was refused: {reason}"),
            LandFailure::PushFailed { error } => write!(f, "the push failed: {error}"),
            LandFailure::Cancelled => f.write_str("cancelled before the push"),
        }
    }
}

/// What a landing did (or, with `dry_run`, would do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandReport {
    /// The branch it lands on.
    pub branch: String,
    /// The commit the target branch pointed at (the base the plan was resolved on).
    pub base: CommitId,
    /// The commit the branch now points at (`None`: nothing landed).
    pub tip: Option<CommitId>,
    /// Items that landed, in merge order, each with the combination it landed as.
    pub landed: Vec<(ItemIdx, CommitId)>,
    /// Items that did not land, in plan order, and why.
    pub left_out: Vec<(ItemIdx, LeftOut)>,
    /// Runs of the `verify` gates this attempt asked for.
    pub verify_runs: u32,
    /// Nothing was written.
    pub dry_run: bool,
    /// Why nothing was pushed, when that is why.
    pub error: Option<LandFailure>,
}

impl LandReport {
    /// Every item landed (or would land, with `dry_run`).
    pub fn all_landed(&self) -> bool {
        self.error.is_none() && self.left_out.is_empty()
    }
}

/// Landing asked of a plan (`--land`, `--dry-run`, `policy.land`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandSpec {
    /// The branch it lands on ([`target_branch`] of `source.base`).
    pub branch: String,
    /// Compute and verify, push nothing.
    pub dry_run: bool,
    /// Times the plan runs again on the branch's new tip when it moved before the push.
    pub retries: u32,
}

/// Default of [`LandSpec::retries`].
pub const DEFAULT_LAND_RETRIES: u32 = 3;
/// Most [`LandSpec::retries`] accepted (each one may run the whole plan again).
pub const MAX_LAND_RETRIES: u32 = 20;

/// The branch a plan lands on: its `source.base`, which must name a branch (`main` or
/// `refs/heads/main`), not a tag, a commit or `HEAD`.
pub fn target_branch(base: Option<&str>) -> Result<String, String> {
    let Some(base) = base else {
        return Err(
            "landing needs `source.base` to name the branch to land on (e.g. `base: main`)".into(),
        );
    };
    let branch = base.strip_prefix("refs/heads/").unwrap_or(base);
    // What ref resolution takes as a commit id rather than a name (see `sources.md`):
    // a full SHA-1 or SHA-256 id. A shorter hex name (`cafe123`) is a branch name.
    let is_commit =
        matches!(branch.len(), 40 | 64) && branch.chars().all(|c| c.is_ascii_hexdigit());
    if branch == "HEAD" || branch.starts_with("refs/") || is_commit {
        return Err(format!(
            "landing needs `source.base` to name a branch, not {base:?}; use e.g. `base: main`"
        ));
    }
    Ok(branch.to_string())
}

/// One step of a plan's landing, as published after its summary and stored in its log
/// (a cluster replays them after a failover).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandRecord {
    /// The `verify` gates ran on the combination of the first `prefix` candidates.
    Verified {
        /// The landing attempt (0, then one more each time the branch moved).
        round: u32,
        /// How many candidates.
        prefix: u32,
        /// Those candidates, in merge order.
        items: Vec<ItemIdx>,
        /// Their combination.
        commit: CommitId,
        /// All passed.
        passed: bool,
    },
    /// A push of `commit` (leased on `expected`) is about to be made: durable before it
    /// is, so a new leader knows it may have happened and reads the branch first.
    Pushing {
        /// The landing attempt.
        round: u32,
        /// The new tip.
        commit: CommitId,
        /// Where the branch must still point.
        expected: CommitId,
        /// The report if the push lands (what a new leader that finds the branch
        /// holding `commit` reports; `None` when read from the wire).
        report: Option<Box<LandReport>>,
    },
    /// The branch moved to `now` before the push: the plan runs again on it, resolved
    /// as `resolution`, as landing attempt `round`.
    Respeculated {
        /// The new attempt.
        round: u32,
        /// Where the branch pointed.
        now: CommitId,
        /// The retries allowed in all.
        retries: u32,
        /// The plan's refs resolved again (`None` when read from the wire).
        resolution: Option<Box<Resolution>>,
    },
    /// The landing is over.
    Finished(LandReport),
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Verify the combination of the first `n` items of the merge order.
    Probe(usize),
    /// Land the first `land` items; item `culprit` (0-based, in merge order) is the
    /// first whose addition fails.
    Done {
        /// How many items land.
        land: usize,
        /// The first item whose addition fails.
        culprit: usize,
    },
}

/// A bisection over the prefixes of `n` items. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bisection {
    /// The longest prefix known to pass (0, the base alone, passes by definition).
    passes: usize,
    /// The shortest prefix known to fail.
    fails: usize,
}

impl Bisection {
    /// A search over `items` items whose whole combination failed (`items` ≥ 1).
    pub fn new(items: usize) -> Self {
        Self {
            passes: 0,
            fails: items.max(1),
        }
    }

    /// The next prefix to verify, or the answer.
    pub fn next(&self) -> Step {
        if self.fails - self.passes <= 1 {
            Step::Done {
                land: self.passes,
                culprit: self.fails - 1,
            }
        } else {
            Step::Probe(self.passes + (self.fails - self.passes) / 2)
        }
    }

    /// Records that the first `prefix` items' combination passed or failed. An outcome
    /// that says nothing new (outside the open range, or a repeat) changes nothing.
    pub fn record(&mut self, prefix: usize, passed: bool) {
        if prefix <= self.passes || prefix >= self.fails {
            return;
        }
        if passed {
            self.passes = prefix;
        } else {
            self.fails = prefix;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn only_branches_can_be_landed_on() {
        assert_eq!(target_branch(Some("main")).as_deref(), Ok("main"));
        assert_eq!(
            target_branch(Some("refs/heads/release/1.x")).as_deref(),
            Ok("release/1.x")
        );
        // A short hex name is a branch name; a full id is a commit.
        assert_eq!(target_branch(Some("cafe123")).as_deref(), Ok("cafe123"));
        for bad in [
            None,
            Some("HEAD"),
            Some("refs/tags/v1"),
            Some(&"a".repeat(40)[..]),
        ] {
            assert!(target_branch(bad).is_err(), "{bad:?}");
        }
    }

    /// Runs a bisection where prefixes longer than `culprit` fail; returns the answer
    /// and how many prefixes were verified.
    fn search(items: usize, culprit: usize) -> (Step, usize) {
        let mut b = Bisection::new(items);
        let mut probes = 0;
        loop {
            match b.next() {
                Step::Probe(n) => {
                    probes += 1;
                    assert!(probes <= 64, "the search ends");
                    b.record(n, n <= culprit);
                }
                done => return (done, probes),
            }
        }
    }

    #[test]
    fn a_single_item_is_its_own_culprit_without_a_probe() {
        assert_eq!(
            search(1, 0),
            (
                Step::Done {
                    land: 0,
                    culprit: 0
                },
                0
            )
        );
    }

    #[test]
    fn stale_and_repeated_outcomes_change_nothing() {
        let mut b = Bisection::new(8);
        assert_eq!(b.next(), Step::Probe(4));
        b.record(4, true);
        let before = b.clone();
        b.record(2, false);
        b.record(4, false);
        b.record(9, true);
        assert_eq!(b, before);
    }

    proptest! {
        #[test]
        fn it_finds_the_longest_passing_prefix_in_log_steps(items in 1usize..200, at in 0usize..200) {
            let culprit = at % items;
            let (step, probes) = search(items, culprit);
            prop_assert_eq!(step, Step::Done { land: culprit, culprit });
            let bound = (usize::BITS - (items.max(2) - 1).leading_zeros()) as usize;
            prop_assert!(probes <= bound, "{} probes for {} items", probes, items);
        }
    }
}
