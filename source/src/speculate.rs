//! Speculative states: the commit that would exist once a stack of changes were merged.
//!
//! An item's state is its `base`, then every commit of its stack in merge order (the
//! items below it, then itself), each merged onto what came before ([`Mirror::merge`]):
//! a fast-forward where the next commit already contains the state (the usual case for
//! a stacked branch), nothing where the state already contains it, otherwise a merge
//! commit with a fixed identity and date, so the same inputs give the same commit id
//! on every machine. A conflict stops the fold and names the commit and the paths.
//!
//! [`Speculator`] remembers every step it took, so items that share a stack's prefix
//! (the usual pyramid) compute each merge once per plan, and a worker that rebuilds a
//! state gets exactly the commit the coordinator keyed.

use std::collections::HashMap;

use crate::mirror::{Merge, Mirror, MirrorError};
use gatehouse_common::source::CommitId;

/// Why a speculative state could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SpeculateError {
    /// Merging `commit` (stack position `at`) onto the state before it conflicts.
    #[error("{commit} does not merge cleanly: conflicts in {}", paths.join(", "))]
    Conflict {
        /// Its position in the stack.
        at: usize,
        /// The commit.
        commit: CommitId,
        /// The conflicting paths.
        paths: Vec<String>,
    },
    /// `commit` (stack position `at`) has no history in common with the state.
    #[error("{commit} has no history in common with the state below it")]
    Unrelated {
        /// Its position in the stack.
        at: usize,
        /// The commit.
        commit: CommitId,
    },
    /// The mirror failed.
    #[error(transparent)]
    Mirror(#[from] MirrorError),
}

/// Folds stacks onto a base, remembering every step. One per plan.
#[derive(Debug, Default)]
pub struct Speculator {
    /// (state, next) -> the state after `next`, or the merge that could not be made
    /// ([`Merge::Conflict`] or [`Merge::Unrelated`]).
    steps: HashMap<(CommitId, CommitId), Result<CommitId, Merge>>,
}

impl Speculator {
    /// A speculator that remembers nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of `stack` (in merge order, the item itself last) on `base`.
    pub async fn state(
        &mut self,
        mirror: &Mirror,
        base: &CommitId,
        stack: &[CommitId],
    ) -> Result<CommitId, SpeculateError> {
        let states = self.states(mirror, base, stack).await?;
        Ok(states.last().cloned().unwrap_or_else(|| base.clone()))
    }

    /// The state after each commit of `stack` on `base`, in order: the combinations of
    /// its prefixes (what landing verifies and pushes).
    pub async fn states(
        &mut self,
        mirror: &Mirror,
        base: &CommitId,
        stack: &[CommitId],
    ) -> Result<Vec<CommitId>, SpeculateError> {
        let mut states = Vec::with_capacity(stack.len());
        let mut state = base.clone();
        for (at, next) in stack.iter().enumerate() {
            let key = (state.clone(), next.clone());
            let step = match self.steps.get(&key) {
                Some(step) => step.clone(),
                None => {
                    let step = match mirror.merge(&state, next).await? {
                        Merge::FastForward => Ok(next.clone()),
                        Merge::AlreadyIn => Ok(state.clone()),
                        Merge::Merged(commit) => Ok(commit),
                        stopped @ (Merge::Conflict(_) | Merge::Unrelated) => Err(stopped),
                    };
                    self.steps.insert(key, step.clone());
                    step
                }
            };
            state = step.map_err(|stopped| match stopped {
                Merge::Conflict(paths) => SpeculateError::Conflict {
                    at,
                    commit: next.clone(),
                    paths,
                },
                _ => SpeculateError::Unrelated {
                    at,
                    commit: next.clone(),
                },
            })?;
            states.push(state.clone());
        }
        Ok(states)
    }

    /// Merges computed so far (for tests and logs).
    pub fn steps(&self) -> usize {
        self.steps.len()
    }
}
