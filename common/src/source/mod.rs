//! The code a plan gates, as plain data: where it lives ([`RepoUrl`]), the plan's
//! validated `source:` block ([`PlanSource`]), and what its refs were resolved to once
//! ([`Resolution`]): every item's commit, its speculative state and tree, and what each
//! gate's cache key reads from that tree ([`GateTree`]).
//!
//! A [`Resolution`] is made once per plan, before it runs (by the `gatehouse-source`
//! crate, which drives git), and never again: a branch that moves while the plan runs
//! changes nothing. Everything downstream reads it from the plan: the scheduler core
//! fails blocked items, the cache keys gates by tree, and executors check out
//! [`Checkout`]s. Nothing here does I/O.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::GateIdx;
use crate::plan::Plan;

pub mod ids;
pub mod url;

pub use ids::{CommitId, TreeId};
pub use url::{RepoUrl, UrlError};

/// A plan's `source:` block.
#[derive(Clone, Debug)]
pub struct PlanSource {
    /// The repository (a relative path already resolved against the plan's directory).
    pub repo: RepoUrl,
    /// What the items build on, as written (`None`: the repository's `HEAD`).
    pub base: Option<String>,
    /// What the refs were resolved to; `None` until the plan is prepared.
    pub resolution: Option<Arc<Resolution>>,
}

/// Why an item cannot be built, so none of its gates runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockReason {
    /// It does not merge cleanly onto the state below it.
    MergeConflict,
    /// Its ref or the repository could not be read.
    Source,
}

impl BlockReason {
    /// The gate failure reason its gates end with.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::MergeConflict => "merge_conflict",
            BlockReason::Source => "source",
        }
    }
}

/// What one item of a source plan resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSource {
    /// The item's `ref` as written (`None`: the item has no `ref` and builds on `base`).
    pub git_ref: Option<String>,
    /// The commit its `ref` resolved to (`None`: it did not resolve, or no `ref`).
    pub commit: Option<CommitId>,
    /// Its speculative state, or why there is none.
    pub state: ItemState,
}

/// An item's speculative state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemState {
    /// Built: `base`, then `stack` merged in order, gives `commit` with `tree`.
    Ready {
        /// The commits merged onto `base`, in merge order, its own last.
        stack: Vec<CommitId>,
        /// The speculative commit.
        commit: CommitId,
        /// Its tree.
        tree: TreeId,
    },
    /// Cannot be built: its gates fail with `reason`.
    Blocked {
        /// Why.
        reason: BlockReason,
        /// What to check, for people (conflicting paths, the git error).
        message: String,
        /// For a conflict: the conflicting paths.
        paths: Vec<String>,
    },
    /// An item below it is blocked, so there is no state to build: its gates are
    /// skipped with that item's.
    BelowBlocked,
}

/// What a gate's cache key reads from its tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateTree {
    /// A gate without `inputs`: the whole tree.
    Whole(TreeId),
    /// A gate with `inputs`: the digest of the matched entries ([`inputs_digest`]).
    Inputs(#[serde(with = "hex32")] [u8; 32]),
}

/// What `base` resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// `base` as written, or `HEAD`.
    pub git_ref: String,
    /// Its commit.
    pub commit: CommitId,
    /// Its tree (what the flat form's gates run on).
    pub tree: TreeId,
}

/// The refs of a source plan, resolved once. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The base, or why it could not be read (then every gate fails with `source`).
    pub base: Result<Base, String>,
    /// Per item, in plan order (empty in the flat form).
    pub items: Vec<ItemSource>,
    /// Per gate, in plan order: what its key reads (`None`: its item has no state).
    pub gates: Vec<Option<GateTree>>,
}

/// Everything an executor needs to check a gate's tree out. The executor rebuilds
/// `commit` from `base` and `stack` when it lacks it, and runs nothing unless the
/// rebuilt commit is exactly `commit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    /// The repository.
    pub repo: RepoUrl,
    /// The base commit (`GATEHOUSE_BASE_COMMIT`).
    pub base: CommitId,
    /// The commits merged onto `base`, in merge order (empty in the flat form).
    pub stack: Vec<CommitId>,
    /// The speculative commit to check out (`GATEHOUSE_COMMIT`).
    pub commit: CommitId,
    /// The item's own commit (`GATEHOUSE_ITEM_COMMIT`; `None` in the flat form, or
    /// for an item without `ref`).
    pub item_commit: Option<CommitId>,
}

impl Resolution {
    /// The gates that must fail before anything runs, with their reason: every gate of
    /// a blocked item, or every gate when the base could not be read.
    pub fn blocked(&self, plan: &Plan) -> Vec<(GateIdx, &'static str)> {
        if self.base.is_err() {
            let all = (0..plan.gates.len() as u32).map(GateIdx);
            return all.map(|g| (g, BlockReason::Source.as_str())).collect();
        }
        let mut blocked = Vec::new();
        for (item, source) in plan.items.iter().zip(&self.items) {
            if let ItemState::Blocked { reason, .. } = &source.state {
                blocked.extend(item.gates.iter().map(|&g| (g, reason.as_str())));
            }
        }
        blocked
    }

    /// Whether this resolution was made for `plan` (one entry per item and per gate):
    /// a stored one that does not match is refused rather than trusted.
    pub fn matches(&self, plan: &Plan) -> bool {
        self.items.len() == plan.items.len() && self.gates.len() == plan.gates.len()
    }

    /// What gate `g` runs on, or `None` when its item has no state.
    pub fn checkout(&self, plan: &Plan, repo: &RepoUrl, g: GateIdx) -> Option<Checkout> {
        let base = self.base.as_ref().ok()?;
        let (stack, commit, item_commit) = match plan.gate(g).item {
            None => (Vec::new(), base.commit.clone(), None),
            Some(item) => {
                let source = self.items.get(item.ix())?;
                match &source.state {
                    ItemState::Ready { stack, commit, .. } => {
                        (stack.clone(), commit.clone(), source.commit.clone())
                    }
                    _ => return None,
                }
            }
        };
        Some(Checkout {
            repo: repo.clone(),
            base: base.commit.clone(),
            stack,
            commit,
            item_commit,
        })
    }
}

impl Plan {
    /// The resolution of a prepared source plan.
    pub fn resolution(&self) -> Option<&Resolution> {
        self.source.as_ref()?.resolution.as_deref()
    }
}

/// The digest of a gate's matched tree entries, `(path from the root, object id)` in
/// sorted path order: what a [`GateTree::Inputs`] key reads. Length-prefixed, so no two
/// lists share a digest.
pub fn inputs_digest<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("gatehouse 2026 tree inputs v1");
    for (path, oid) in entries {
        for part in [path, oid] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    *hasher.finalize().as_bytes()
}

/// `[u8; 32]` as lowercase hex in serialized forms.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if text.len() != 64 || !text.is_ascii() {
            return Err(de::Error::custom("expected 64 hex digits"));
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| de::Error::custom("expected 64 hex digits"))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_follow_paths_and_ids_and_lists_do_not_run_together() {
        let one = inputs_digest([("src/a.rs", "1")]);
        assert_eq!(one, inputs_digest([("src/a.rs", "1")]));
        assert_ne!(one, inputs_digest([("src/a.rs", "2")]), "content changed");
        assert_ne!(one, inputs_digest([("src/b.rs", "1")]), "path changed");
        assert_ne!(inputs_digest([("ab", "c")]), inputs_digest([("a", "bc")]));
        assert_ne!(one, inputs_digest([]));
    }

    #[test]
    fn resolutions_round_trip_through_json() {
        let id = |c: char| CommitId::parse(&c.to_string().repeat(40)).expect("id");
        let tree = TreeId::parse(&"e".repeat(40)).expect("tree");
        let r = Resolution {
            base: Ok(Base {
                git_ref: "main".into(),
                commit: id('a'),
                tree: tree.clone(),
            }),
            items: vec![ItemSource {
                git_ref: Some("feature".into()),
                commit: Some(id('b')),
                state: ItemState::Ready {
                    stack: vec![id('b')],
                    commit: id('b'),
                    tree: tree.clone(),
                },
            }],
            gates: vec![Some(GateTree::Inputs([9; 32])), Some(GateTree::Whole(tree))],
        };
        let text = serde_json::to_string(&r).expect("encode");
        assert_eq!(
            serde_json::from_str::<Resolution>(&text).expect("decode"),
            r
        );
    }
}
