//! Preparing plans against real repositories made by the tests.

use std::path::Path;

use gatehouse_common::cache::{CacheKey, compute_tree_key};
use gatehouse_common::ids::GateIdx;
use gatehouse_common::plan::{PlanFormat, parse_plan};
use gatehouse_common::source::{ItemState, RepoUrl, Resolution};

use super::*;
use crate::git::Git;
use crate::testkit::Work;

const NET: Duration = Duration::from_secs(30);

fn plan(repo: &str, items: &str) -> Plan {
    let text =
        format!("version: 1\nname: p\nsource: {{ repo: \"{repo}\", base: main }}\nitems:\n{items}");
    parse_plan(&text, PlanFormat::Yaml, "plan.yaml", Path::new("/")).expect("valid plan")
}

/// Two gates per item: `all` keyed on the whole tree, `b` on `b.txt` alone.
fn item(id: &str, git_ref: &str, deps: &[&str]) -> String {
    format!(
        "  - id: {id}\n    ref: {git_ref}\n    deps: [{}]\n    gates:\n      - {{ id: all, run: \"true\" }}\n      - {{ id: b, run: \"true\", inputs: [b.txt] }}\n",
        deps.join(", ")
    )
}

async fn prepared(w: &Work, root: &Path, items: &str) -> (Plan, Resolution) {
    let p = plan(&format!("file://{}", w.dir.display()), items);
    let git = Git::find().await.expect("git");
    let mirror = Mirror::open(git, &root.join("cache"), w.url())
        .await
        .expect("mirror");
    let r = prepare(&p, &mirror, NET).await.expect("prepare");
    (p, r)
}

fn ready(r: &Resolution, i: usize) -> (&[CommitId], &CommitId, &TreeId) {
    match &r.items[i].state {
        ItemState::Ready {
            stack,
            commit,
            tree,
        } => (stack, commit, tree),
        other => panic!("item {i} is not ready: {other:?}"),
    }
}

/// Keys of every gate, each from its dependencies' keys, as the scheduler makes them.
fn keys(p: &Plan, r: &Resolution) -> Vec<Option<CacheKey>> {
    let mut keys: Vec<Option<CacheKey>> = vec![None; p.gates.len()];
    for item in p.merge_order(|_| true) {
        for &g in &p.item(item).gates {
            let deps: Option<Vec<CacheKey>> = p.prerequisites(g).map(|d| keys[d.ix()]).collect();
            keys[g.ix()] = match (deps, &r.gates[g.ix()]) {
                (Some(deps), Some(tree)) => Some(compute_tree_key(p, g, &deps, tree)),
                _ => None,
            };
        }
    }
    keys
}

/// The test pyramid ([`Work::pyramid`]): main with a.txt and b.txt; pr1 edits a.txt;
/// pr2 (on pr1) adds c.txt; pr3 (from main) edits b.txt; clash (from main) edits a.txt
/// differently from pr1.
fn repo(root: &Path) -> (Work, [CommitId; 5]) {
    let w = Work::new(root);
    let ids = w.pyramid();
    (w, ids)
}

#[tokio::test]
async fn stacks_merge_in_order_conflicts_block_and_what_is_above_has_no_state() {
    let root = tempfile::tempdir().expect("tempdir");
    let (w, [base, pr1, pr2, pr3, clash]) = repo(root.path());
    let items = [
        item("pr1", "pr1", &[]),
        item("pr2", "pr2", &["pr1"]),
        item("pr3", "pr3", &["pr2"]),
        item("clash", "clash", &["pr1"]),
        item("above", "pr3", &["clash"]),
        item("gone", "no-such-branch", &[]),
    ]
    .concat();
    let (p, r) = prepared(&w, root.path(), &items).await;
    assert_eq!(r.base.as_ref().map(|b| &b.commit), Ok(&base));

    let (stack, commit, _) = ready(&r, 0);
    assert_eq!((stack, commit), (&[pr1.clone()][..], &pr1));
    // A stacked branch already contains the one below: a fast-forward, no merge.
    let (stack, commit, _) = ready(&r, 1);
    assert_eq!((stack, commit), (&[pr1.clone(), pr2.clone()][..], &pr2));
    // pr3 was branched from main: merged onto pr2, a new (deterministic) commit.
    let (stack, commit, _) = ready(&r, 2);
    assert_eq!(stack, &[pr1.clone(), pr2.clone(), pr3.clone()][..]);
    assert!(![&base, &pr1, &pr2, &pr3].contains(&commit));

    match &r.items[3].state {
        ItemState::Blocked {
            reason,
            message,
            paths,
        } => {
            assert_eq!(*reason, BlockReason::MergeConflict);
            assert_eq!(paths, &["a.txt"]);
            assert!(
                message.contains("clash") && message.contains("a.txt"),
                "{message}"
            );
        }
        other => panic!("clash: {other:?}"),
    }
    assert_eq!(
        r.items[3].commit.as_ref(),
        Some(&clash),
        "its commit still shows"
    );
    assert_eq!(r.items[4].state, ItemState::BelowBlocked);
    match &r.items[5].state {
        ItemState::Blocked {
            reason, message, ..
        } => {
            assert_eq!(*reason, BlockReason::Source);
            assert!(message.contains("no-such-branch"), "{message}");
        }
        other => panic!("gone: {other:?}"),
    }
    // The core fails the blocked items' gates; the one above is skipped by the core.
    let blocked: Vec<u32> = r.blocked(&p).iter().map(|(g, _)| g.0).collect();
    assert_eq!(blocked, [6, 7, 10, 11]);
    assert!(
        r.gates[8].is_none() && r.gates[9].is_none(),
        "no state, no key"
    );

    // Checkouts carry what a worker needs to rebuild the state.
    let c = r.checkout(&p, &p.source.as_ref().expect("source").repo, GateIdx(4));
    let c = c.expect("pr3 has a checkout");
    assert_eq!(
        (&c.base, c.stack.len(), &c.item_commit),
        (&base, 3, &Some(pr3.clone()))
    );
}

#[tokio::test]
async fn a_ref_with_no_common_history_blocks_its_item_not_the_plan() {
    let root = tempfile::tempdir().expect("tempdir");
    let (w, _) = repo(root.path());
    w.git(&["checkout", "--quiet", "--orphan", "lonely"]);
    w.git(&["rm", "-rf", "--quiet", "."]);
    w.commit(&[("other.txt", "x\n")], "an unrelated root");
    w.branch("main", "main");
    let items = [item("pr1", "pr1", &[]), item("lonely", "lonely", &["pr1"])].concat();
    let (_, r) = prepared(&w, root.path(), &items).await;
    ready(&r, 0);
    match &r.items[1].state {
        ItemState::Blocked {
            reason, message, ..
        } => {
            assert_eq!(*reason, BlockReason::MergeConflict);
            assert!(message.contains("no history in common"), "{message}");
        }
        other => panic!("lonely: {other:?}"),
    }
}

#[tokio::test]
async fn keys_follow_the_tree_a_gate_reads_and_the_keys_below_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let (w, _) = repo(root.path());
    let items = [item("pr1", "pr1", &[]), item("pr2", "pr2", &["pr1"])].concat();
    let (p, r) = prepared(&w, root.path(), &items).await;
    let before = keys(&p, &r);
    assert!(before.iter().all(Option::is_some));
    // Gates 1 and 3 read b.txt only; pr2 did not change it.
    assert_eq!(r.gates[1], r.gates[3], "same inputs, same digest");
    assert_ne!(r.gates[0], r.gates[2], "whole trees differ");

    // A commit on pr1 outside b.txt: pr1/b keeps its key; pr1/all changes, and so does
    // every key above it (pr2's gates depend on pr1's).
    w.branch("pr1", "pr1");
    w.commit(&[("d.txt", "d\n")], "pr1 again");
    w.branch("pr2", "pr2");
    w.git(&["rebase", "--quiet", "pr1"]);
    let (p2, r2) = prepared(&w, root.path(), &items).await;
    let after = keys(&p2, &r2);
    assert_eq!(after[1], before[1], "change outside the inputs: key kept");
    assert_ne!(after[0], before[0], "whole tree changed");
    assert_ne!(after[2], before[2]);
    assert_ne!(after[3], before[3], "a dependency's key changed");

    // A change inside the inputs changes that gate's key.
    w.branch("pr1", "pr1");
    w.commit(&[("b.txt", "b9\n")], "pr1 edits b");
    let (p3, r3) = prepared(&w, root.path(), &[item("pr1", "pr1", &[])].concat()).await;
    assert_ne!(keys(&p3, &r3)[1], before[1]);
}

#[tokio::test]
async fn an_unreachable_repository_fails_every_gate_with_source() {
    let root = tempfile::tempdir().expect("tempdir");
    let (w, _) = repo(root.path());
    // Nothing listens on port 1: the connection is refused at once.
    let url = "git://127.0.0.1:1/repo.git";
    let p = plan(url, &item("pr1", "pr1", &[]));
    let git = Git::find().await.expect("git");
    let missing = RepoUrl::parse(url, Path::new("/")).expect("url");
    let mirror = Mirror::open(git, &root.path().join("cache"), missing)
        .await
        .expect("mirror");
    let r = prepare(&p, &mirror, NET).await.expect("prepare");
    let message = r.base.clone().expect_err("no base");
    assert!(message.contains(url), "{message}");
    assert_eq!(r.blocked(&p).len(), 2);
    assert!(matches!(
        r.items[0].state,
        ItemState::Blocked {
            reason: BlockReason::Source,
            ..
        }
    ));
    drop(w);
}
