//! Preparing a source plan: its refs resolved once, every item's speculative state
//! built, and what every gate's cache key reads from its tree, as one [`Resolution`].
//!
//! Steps, all through one [`Mirror`]:
//! 1. One `ls-remote` resolves `base` (or `HEAD`) and every item's `ref`; the commits the
//!    mirror lacks are fetched (by id, falling back to the refs' names). If the
//!    repository cannot be read, or `base` does not exist, every gate fails with
//!    `source`; a `ref` that does not exist or cannot be fetched fails its item alone.
//! 2. Items are taken in merge order ([`Plan::merge_order`]). An item's stack is every
//!    item it transitively depends on, then itself, in that order (items without a
//!    `ref` add nothing); its state is `base` with the stack merged in order
//!    ([`Speculator`], which computes each shared step once). A conflict blocks the item
//!    (`merge_conflict`, naming the paths); an item above a blocked one has no state and
//!    is skipped with it.
//! 3. Gates: a gate without `inputs` is keyed on its item's whole tree; a gate with
//!    `inputs` on the digest of the tree entries its globs match (read with `ls-tree`
//!    limited to the globs' literal directories, once per tree and set of directories,
//!    never from a checkout).
//!
//! Nothing here decides scheduling: the core fails [`Resolution::blocked`] gates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::ids::ItemIdx;
use gatehouse_common::plan::{Gate, Plan};
use gatehouse_common::source::{
    Base, BlockReason, CommitId, GateTree, ItemSource, ItemState, Resolution, TreeId, inputs_digest,
};

use crate::inputs;
use crate::mirror::{Mirror, MirrorError, TreeEntry};
use crate::mirrors::Mirrors;
use crate::speculate::{SpeculateError, Speculator};

/// `plan` with its resolution attached, prepared through the mirror of its repository
/// in `mirrors` (unchanged without a `source`); logs how long it took. What
/// `gatehouse run` and a coordinator both do before a source plan runs.
pub async fn prepare_plan(
    mut plan: Plan,
    mirrors: &Mirrors,
    timeout: Duration,
) -> Result<Plan, PrepareError> {
    let Some(source) = plan.source.as_ref() else {
        return Ok(plan);
    };
    mirrors.git().await.map_err(PrepareError::Git)?;
    let mirror = mirrors
        .get(&source.repo)
        .await
        .map_err(PrepareError::Mirror)?;
    let started = std::time::Instant::now();
    let resolution = prepare(&plan, &mirror, timeout)
        .await
        .map_err(|e| PrepareError::Mirror(e.to_string()))?;
    tracing::info!(
        repo = %source.repo,
        items = plan.items.len(),
        blocked = resolution.blocked(&plan).len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "source prepared"
    );
    if let Some(source) = plan.source.as_mut() {
        source.resolution = Some(Arc::new(resolution));
    }
    Ok(plan)
}

/// Why a plan could not be prepared: this machine's git or mirror, never the
/// repository's refs (those end up as blocked items).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// No usable git.
    #[error("{0}")]
    Git(String),
    /// The mirror failed (the disk, a local git command).
    #[error("cannot prepare the plan's code: {0}")]
    Mirror(String),
}

/// Resolves and speculates `plan` (which must have a `source`) through `mirror`.
/// `timeout` bounds each command that touches the network. Errors of the repository
/// or of a ref end up in the [`Resolution`] (as blocked items or a failed base); an
/// `Err` is the mirror itself failing (a local git command, the disk).
pub async fn prepare(
    plan: &Plan,
    mirror: &Mirror,
    timeout: Duration,
) -> Result<Resolution, MirrorError> {
    let base_ref = plan
        .source
        .as_ref()
        .and_then(|s| s.base.clone())
        .unwrap_or_else(|| "HEAD".to_string());
    let n_items = plan.items.len();
    let failed = |message: String| Resolution {
        base: Err(message.clone()),
        items: plan
            .items
            .iter()
            .map(|item| ItemSource {
                git_ref: item.git_ref.clone(),
                commit: None,
                state: blocked(BlockReason::Source, message.clone(), Vec::new()),
            })
            .collect(),
        gates: vec![None; plan.gates.len()],
    };

    // 1. Resolution.
    let refs = match mirror.refs(timeout).await {
        Ok(refs) => refs,
        Err(e) if is_remote(&e) => return Ok(failed(e.to_string())),
        Err(e) => return Err(e),
    };
    let base = match mirror.lookup(&refs, &base_ref) {
        Ok(id) => id,
        Err(e) => return Ok(failed(format!("base: {e}"))),
    };
    match mirror
        .fetch(
            std::slice::from_ref(&base),
            std::slice::from_ref(&base_ref),
            timeout,
        )
        .await
    {
        Ok(()) => {}
        Err(e) if is_remote(&e) => return Ok(failed(format!("base: {e}"))),
        Err(e) => return Err(e),
    }
    let mut commits: Vec<Result<Option<CommitId>, String>> = plan
        .items
        .iter()
        .map(|item| match &item.git_ref {
            None => Ok(None),
            Some(name) => mirror
                .lookup(&refs, name)
                .map(Some)
                .map_err(|e| e.to_string()),
        })
        .collect();
    fetch_items(plan, mirror, &mut commits, timeout).await?;
    let base_tree = mirror.tree(&base).await?;

    // 2. Speculative states, in merge order.
    let order = plan.merge_order(|_| true);
    let position: HashMap<ItemIdx, usize> =
        order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut states: Vec<Option<ItemState>> = vec![None; n_items];
    let mut speculator = Speculator::new();
    for &item in &order {
        let state = match &commits[item.ix()] {
            Err(message) => blocked(BlockReason::Source, message.clone(), Vec::new()),
            Ok(_) => {
                let below = plan.ancestors(item);
                let below_blocked = below
                    .iter()
                    .any(|d| !matches!(states[d.ix()], Some(ItemState::Ready { .. })));
                if below_blocked {
                    ItemState::BelowBlocked
                } else {
                    let mut stack_items = below;
                    stack_items.push(item);
                    stack_items.sort_by_key(|i| position[i]);
                    // The commits to merge, each with the item it comes from.
                    let (owners, stack): (Vec<ItemIdx>, Vec<CommitId>) = stack_items
                        .iter()
                        .filter_map(|&i| Some((i, commits[i.ix()].clone().ok()??)))
                        .unzip();
                    speculate(plan, mirror, &mut speculator, &base, &stack, &owners).await?
                }
            }
        };
        states[item.ix()] = Some(state);
    }

    // 3. What each gate's key reads.
    let gates = gate_trees(plan, mirror, |gate| match gate.item {
        None => Some(&base_tree),
        Some(item) => match &states[item.ix()] {
            Some(ItemState::Ready { tree, .. }) => Some(tree),
            _ => None,
        },
    })
    .await?;

    let items = plan
        .items
        .iter()
        .zip(commits)
        .zip(states)
        .map(|((item, commit), state)| ItemSource {
            git_ref: item.git_ref.clone(),
            commit: commit.ok().flatten(),
            state: state.unwrap_or(ItemState::BelowBlocked),
        })
        .collect();
    Ok(Resolution {
        base: Ok(Base {
            git_ref: base_ref,
            commit: base,
            tree: base_tree,
        }),
        items,
        gates,
    })
}

/// What each gate's cache key reads from the tree `tree_of` gives it (`None`: the gate
/// has no state, or its inputs cannot be read, so it runs uncached).
async fn gate_trees<'a>(
    plan: &Plan,
    mirror: &Mirror,
    tree_of: impl Fn(&Gate) -> Option<&'a TreeId>,
) -> Result<Vec<Option<GateTree>>, MirrorError> {
    let mut entries: HashMap<(TreeId, Option<Vec<String>>), Vec<TreeEntry>> = HashMap::new();
    let mut gates = Vec::with_capacity(plan.gates.len());
    for gate in &plan.gates {
        let Some(tree) = tree_of(gate) else {
            gates.push(None);
            continue;
        };
        if gate.inputs.is_empty() {
            gates.push(Some(GateTree::Whole(tree.clone())));
            continue;
        }
        // Only the directories the globs can reach are listed (the whole tree when a
        // glob starts with a pattern); listings are shared by gates with the same ones.
        let under = match inputs::literal_prefixes(&gate.workdir_rel, &gate.inputs) {
            Ok(under) => under,
            Err(e) => {
                tracing::warn!(gate = %gate.id, error = %e, "cannot read a gate's inputs from its tree; it runs uncached");
                gates.push(None);
                continue;
            }
        };
        let listing = (tree.clone(), under);
        if !entries.contains_key(&listing) {
            let listed = mirror.entries_under(tree, listing.1.as_deref()).await?;
            entries.insert(listing.clone(), listed);
        }
        let listed = &entries[&listing];
        match inputs::matching(listed, &gate.workdir_rel, &gate.inputs) {
            Ok(matched) => {
                let pairs = matched.iter().map(|e| (e.path.as_str(), e.oid.as_str()));
                gates.push(Some(GateTree::Inputs(inputs_digest(pairs))));
            }
            Err(e) => {
                // Validation rejects such globs; a gate without a key runs uncached.
                tracing::warn!(gate = %gate.id, error = %e, "cannot read a gate's inputs from its tree; it runs uncached");
                gates.push(None);
            }
        }
    }
    Ok(gates)
}

/// A plan's `verify` plan (see [`Plan::verify`]) prepared to run on the combination of
/// `stack` on `base`, whose state is `commit` (made by a [`Speculator`] on the same
/// mirror): its one item is that state, so every `verify` gate runs in a checkout of
/// it, keyed by its tree, and an executor without the commit rebuilds it from `base`
/// and `stack`.
pub async fn prepare_verify(
    verify: &Plan,
    mirror: &Mirror,
    base: &Base,
    stack: Vec<CommitId>,
    commit: CommitId,
) -> Result<Plan, MirrorError> {
    let tree = mirror.tree(&commit).await?;
    let gates = gate_trees(verify, mirror, |_| Some(&tree)).await?;
    let resolution = Resolution {
        base: Ok(base.clone()),
        items: vec![ItemSource {
            git_ref: None,
            commit: None,
            state: ItemState::Ready {
                stack,
                commit,
                tree: tree.clone(),
            },
        }],
        gates,
    };
    let mut plan = verify.clone();
    if let Some(source) = plan.source.as_mut() {
        source.resolution = Some(Arc::new(resolution));
    }
    Ok(plan)
}

/// Fetches every resolved item commit the mirror lacks, together; if that fails, one
/// by one, so only the items whose commit cannot be fetched fail.
async fn fetch_items(
    plan: &Plan,
    mirror: &Mirror,
    commits: &mut [Result<Option<CommitId>, String>],
    timeout: Duration,
) -> Result<(), MirrorError> {
    let wanted: Vec<(usize, CommitId, String)> = commits
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let commit = c.as_ref().ok()?.as_ref()?;
            let name = plan.items[i].git_ref.clone()?;
            Some((i, commit.clone(), name))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let ids: Vec<CommitId> = wanted.iter().map(|(_, c, _)| c.clone()).collect();
    let names: Vec<String> = wanted.iter().map(|(_, _, n)| n.clone()).collect();
    match mirror.fetch(&ids, &names, timeout).await {
        Ok(()) => return Ok(()),
        Err(e) if is_remote(&e) => {}
        Err(e) => return Err(e),
    }
    for (i, commit, name) in wanted {
        match mirror
            .fetch(
                std::slice::from_ref(&commit),
                std::slice::from_ref(&name),
                timeout,
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_remote(&e) => commits[i] = Err(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The state of `stack` on `base`, or the item blocked by a conflict. `owners[i]` is
/// the item `stack[i]` comes from.
async fn speculate(
    plan: &Plan,
    mirror: &Mirror,
    speculator: &mut Speculator,
    base: &CommitId,
    stack: &[CommitId],
    owners: &[ItemIdx],
) -> Result<ItemState, MirrorError> {
    match speculator.state(mirror, base, stack).await {
        Ok(commit) => {
            let tree = mirror.tree(&commit).await?;
            Ok(ItemState::Ready {
                stack: stack.to_vec(),
                commit,
                tree,
            })
        }
        Err(SpeculateError::Conflict { at, commit, paths }) => {
            // The commit that did not merge may be an item's below this one.
            let culprit = owners
                .get(at)
                .map(|i| plan.item(*i).id.as_str())
                .unwrap_or("?");
            let message = format!(
                "item {culprit:?} ({commit}) does not merge cleanly onto the items below it: conflicts in {}",
                paths.join(", ")
            );
            Ok(blocked(BlockReason::MergeConflict, message, paths))
        }
        // A commit with no history in common with the state (an orphan branch,
        // another repository's commit) cannot be merged: a conflict of its item.
        Err(SpeculateError::Unrelated { .. }) => {
            let message = "a commit of its stack has no history in common with the items below it (an orphan branch, or another repository's?)".to_string();
            Ok(blocked(BlockReason::MergeConflict, message, Vec::new()))
        }
        // Any other git failure on one item's merge blocks that item, never the plan.
        Err(SpeculateError::Mirror(e)) => Ok(blocked(
            BlockReason::Source,
            format!("cannot merge its stack: {e}"),
            Vec::new(),
        )),
    }
}

fn blocked(reason: BlockReason, message: String, paths: Vec<String>) -> ItemState {
    ItemState::Blocked {
        reason,
        message,
        paths,
    }
}

/// Whether a mirror error is the repository's (unreachable, no such ref, not served):
/// what fails items, as opposed to this machine's git or disk failing.
fn is_remote(e: &MirrorError) -> bool {
    matches!(
        e,
        MirrorError::Unreachable { .. } | MirrorError::NoSuchRef { .. } | MirrorError::Fetch { .. }
    )
}

#[cfg(test)]
#[path = "prepare_tests.rs"]
mod tests;
