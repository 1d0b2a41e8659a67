//! Compare-and-swap branch updates against real repositories made by the tests.

use std::path::Path;

use gatehouse_common::source::RepoUrl;

use super::*;
use crate::git::Git;
use crate::testkit::Work;

const NET: Duration = Duration::from_secs(30);

async fn mirror_of(root: &Path, url: RepoUrl) -> Mirror {
    let git = Git::find().await.expect("git");
    Mirror::open(git, &root.join("cache"), url)
        .await
        .expect("mirror")
}

/// A bare repository `remote.git` with `main` and `next` (one commit above `main`),
/// pushed from a working repository; returns (work, bare dir, main, next).
fn remote(root: &Path) -> (Work, std::path::PathBuf, CommitId, CommitId) {
    let w = Work::new(root);
    let base = w.commit(&[("a.txt", "a\n")], "base");
    w.branch("next", "main");
    let next = w.commit(&[("b.txt", "b\n")], "next");
    let bare = root.join("remote.git");
    w.git(&["init", "--quiet", "--bare", bare.to_str().expect("utf-8")]);
    w.git(&[
        "push",
        "--quiet",
        bare.to_str().expect("utf-8"),
        "main",
        "next",
    ]);
    (w, bare, base, next)
}

/// [`remote`], and a mirror of it (as a `file://` URL) that has `main` and `next`;
/// returns (work, bare dir, main, next, mirror).
async fn served(root: &Path) -> (Work, std::path::PathBuf, CommitId, CommitId, Mirror) {
    let (w, bare, base, next) = remote(root);
    let url = RepoUrl::parse(&format!("file://{}", bare.display()), Path::new("/")).expect("url");
    let m = mirror_of(root, url).await;
    m.resolve(&["main".into(), "next".into()], NET)
        .await
        .expect("resolve");
    (w, bare, base, next, m)
}

fn tip(dir: &Path, branch: &str) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(["rev-parse", &format!("refs/heads/{branch}")])
        .output()
        .expect("git");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_push_lands_only_while_the_branch_is_where_it_was_resolved() {
    let root = tempfile::tempdir().expect("tempdir");
    let (w, bare, base, next, m) = served(root.path()).await;

    assert_eq!(
        m.update_branch("main", &base, &next, NET)
            .await
            .expect("push"),
        BranchUpdate::Updated
    );
    assert_eq!(tip(&bare, "main"), next.as_str());
    // The same push again (a retry after an answer that was lost): the lease fails,
    // but the branch holds the commit, so it is landed.
    assert_eq!(
        m.update_branch("main", &base, &next, NET)
            .await
            .expect("push"),
        BranchUpdate::Updated
    );

    // Someone else moves main: a push that expects the old tip changes nothing.
    w.branch("main", "main");
    let theirs = w.commit(&[("c.txt", "c\n")], "theirs");
    w.git(&[
        "push",
        "--quiet",
        "--force",
        bare.to_str().expect("utf-8"),
        "main",
    ]);
    let again = m
        .update_branch("main", &base, &next, NET)
        .await
        .expect("push");
    assert_eq!(
        again,
        BranchUpdate::Moved {
            now: Some(theirs.clone())
        }
    );
    assert_eq!(
        tip(&bare, "main"),
        theirs.as_str(),
        "nothing forced past the lease"
    );
}

#[tokio::test]
async fn a_refused_push_says_why_and_a_local_repository_moves_its_ref_atomically() {
    let root = tempfile::tempdir().expect("tempdir");
    let (w, _, base, next) = remote(root.path());
    // Pushing to the checked-out branch of a working repository is refused by git.
    let url = RepoUrl::parse(&format!("file://{}", w.dir.display()), Path::new("/")).expect("url");
    let m = mirror_of(root.path(), url).await;
    m.resolve(&["main".into(), "next".into()], NET)
        .await
        .expect("resolve");
    w.branch("main", "main");
    match m
        .update_branch("main", &base, &next, NET)
        .await
        .expect("push")
    {
        BranchUpdate::Refused { reason } => assert!(reason.contains("checked out"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(tip(&w.dir, "main"), base.as_str());

    // The same repository given as a path: the ref moves, compare-and-swap, and the
    // clean working tree of the checked-out branch moves with it.
    let path = RepoUrl::parse(&w.dir.display().to_string(), Path::new("/")).expect("path");
    let local = mirror_of(&root.path().join("local"), path).await;
    local
        .resolve(&["main".into(), "next".into()], NET)
        .await
        .expect("resolve");
    assert_eq!(
        local
            .update_branch("main", &base, &next, NET)
            .await
            .expect("update"),
        BranchUpdate::Updated
    );
    assert_eq!(tip(&w.dir, "main"), next.as_str());
    assert!(w.dir.join("b.txt").exists(), "the working tree followed");
    assert_eq!(w.git(&["status", "--porcelain"]), "", "and is clean");
    // A stale lease (main is no longer at `base`) with a commit main does not hold.
    let side = {
        w.git(&["checkout", "--quiet", "-B", "side", base.as_str()]);
        let side = w.commit(&[("s.txt", "s\n")], "side");
        w.git(&["checkout", "--quiet", "main"]);
        side
    };
    local.resolve(&["side".into()], NET).await.expect("resolve");
    let stale = local
        .update_branch("main", &base, &side, NET)
        .await
        .expect("update");
    assert_eq!(
        stale,
        BranchUpdate::Moved {
            now: Some(next.clone())
        }
    );
    assert_eq!(tip(&w.dir, "main"), next.as_str());

    // A dirty working tree on the branch refuses the push: nothing moves under it.
    let more = {
        w.branch("more", "main");
        let more = w.commit(&[("c.txt", "c\n")], "more");
        w.git(&["checkout", "--quiet", "main"]);
        more
    };
    local.resolve(&["more".into()], NET).await.expect("resolve");
    std::fs::write(w.dir.join("a.txt"), "edited\n").expect("edit");
    match local
        .update_branch("main", &next, &more, NET)
        .await
        .expect("update")
    {
        BranchUpdate::Refused { reason } => assert!(reason.contains("unstaged"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(tip(&w.dir, "main"), next.as_str());
}

#[tokio::test]
async fn a_branch_holds_a_commit_it_points_at_or_descends_from() {
    let root = tempfile::tempdir().expect("tempdir");
    let (w, bare, base, next, m) = served(root.path()).await;
    assert_eq!(
        m.branch_holds("main", &base, NET).await.expect("read"),
        Some((base.clone(), true))
    );
    assert_eq!(
        m.branch_holds("main", &next, NET).await.expect("read"),
        Some((base.clone(), false))
    );
    // Someone lands on top of `next`: main holds it, as a commit the mirror never had.
    w.branch("top", "next");
    let top = w.commit(&[("t.txt", "t\n")], "top");
    w.git(&[
        "push",
        "--quiet",
        "--force",
        bare.to_str().expect("utf-8"),
        "top:main",
    ]);
    assert_eq!(
        m.branch_holds("main", &next, NET).await.expect("read"),
        Some((top.clone(), true))
    );
    assert_eq!(
        m.branch_holds("gone", &next, NET).await.expect("read"),
        None
    );
}
