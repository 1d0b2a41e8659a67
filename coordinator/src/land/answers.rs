//! The drivers' answers from git's: how a fold through the mirror and a
//! compare-and-swap push read as [`LandEvent`]s, the same for `gatehouse run` and a
//! coordinator. Pure conversions; the I/O is the drivers'.

use gatehouse_common::source::CommitId;
use gatehouse_source::land::BranchUpdate;
use gatehouse_source::{MirrorError, SpeculateError};

use super::{CombineConflict, LandEvent, PushOutcome};

/// The answer to a [`super::LandCommand::Combine`], from the fold's result; `Err` when
/// the mirror itself failed (not an answer: the driver ends the landing).
pub fn combined(folded: Result<Vec<CommitId>, SpeculateError>) -> Result<LandEvent, MirrorError> {
    Ok(LandEvent::Combined(match folded {
        Ok(states) => Ok(states),
        Err(SpeculateError::Conflict { at, paths, .. }) => Err(CombineConflict { at, paths }),
        Err(SpeculateError::Unrelated { at, .. }) => Err(CombineConflict {
            at,
            paths: Vec::new(),
        }),
        Err(SpeculateError::Mirror(e)) => return Err(e),
    }))
}

/// How a push ended, from [`gatehouse_source::Mirror::update_branch`]'s answer.
pub fn pushed(update: Result<BranchUpdate, MirrorError>) -> PushOutcome {
    match update {
        Ok(BranchUpdate::Updated) => PushOutcome::Updated,
        Ok(BranchUpdate::Moved { now }) => PushOutcome::Moved { now },
        Ok(BranchUpdate::Refused { reason }) => PushOutcome::Refused { reason },
        Err(e) => PushOutcome::Failed {
            error: e.to_string(),
        },
    }
}
