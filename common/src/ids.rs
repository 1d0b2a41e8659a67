//! Identifier newtypes. Ids that come from a plan file are validated strings; ids that
//! index into a validated plan are dense `u32` indices so the scheduler can keep
//! per-gate state in plain vectors.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps an already validated id.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// Full id of a gate: `item/gate` in the item form, `gate` in the flat form.
    GateId
);
string_id!(
    /// Id of an item (for example a pull request in a merge pyramid).
    ItemId
);
string_id!(
    /// Id of a submitted plan run (unique per coordinator).
    PlanId
);
string_id!(
    /// Id of an executor (a worker process, or `local-0` inside `gatehouse run`).
    WorkerId
);

/// One connection of a worker, as the scheduler knows it: the worker's id and the
/// session's generation (unique per coordinator process). A worker that reconnects is a
/// new session; the reports and membership changes of its older session (a reconnect
/// racing that session's cleanup) name the old generation and never touch the new one.
/// `gatehouse run`'s in-process executor is generation 0.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionKey {
    /// The worker.
    pub worker: WorkerId,
    /// Which of its sessions.
    pub generation: u64,
}

impl SessionKey {
    /// Session `generation` of `worker`.
    pub fn new(worker: WorkerId, generation: u64) -> Self {
        Self { worker, generation }
    }
}

impl fmt::Display for SessionKey {
    /// `worker#generation`, for logs (never parsed back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.worker, self.generation)
    }
}

/// Dense index of a gate inside a validated [`crate::plan::Plan`] (plan order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GateIdx(pub u32);

/// Dense index of an item inside a validated [`crate::plan::Plan`] (plan order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemIdx(pub u32);

impl GateIdx {
    /// The index as a `usize` for vector access.
    pub fn ix(self) -> usize {
        self.0 as usize
    }
}

impl ItemIdx {
    /// The index as a `usize` for vector access.
    pub fn ix(self) -> usize {
        self.0 as usize
    }
}

/// Returns whether `id` is a valid gate or item id: `[A-Za-z0-9._-]{1,128}`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_syntax() {
        assert!(is_valid_id("pr-101"));
        assert!(is_valid_id("a.b_c-D9"));
        assert!(is_valid_id(&"x".repeat(128)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"x".repeat(129)));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("é"));
    }
}
