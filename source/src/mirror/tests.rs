//! Mirrors, merges and checkouts against real repositories made by the tests.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::*;
use crate::speculate::{SpeculateError, Speculator};
use crate::testkit::Work;

const NET: Duration = Duration::from_secs(30);

async fn mirror(root: &Path, url: RepoUrl, name: &str) -> Mirror {
    let git = Git::find().await.expect("git");
    Mirror::open(git, &root.join(name), url)
        .await
        .expect("mirror")
}

#[tokio::test]
async fn refs_resolve_once_to_commits_that_are_then_kept_here() {
    let root = tempfile::tempdir().expect("tempdir");
    let w = Work::new(root.path());
    let [base, pr1, pr2, ..] = w.pyramid();
    let m = mirror(root.path(), w.url(), "cache").await;
    let names: Vec<String> = ["main", "pr1", "refs/heads/pr2", "v1", "HEAD"]
        .iter()
        .map(|s| s.to_string())
        .chain([pr1.to_string()])
        .collect();
    let ids = m.resolve(&names, NET).await.expect("resolve");
    assert_eq!(
        ids,
        [
            base.clone(),
            pr1.clone(),
            pr2.clone(),
            base.clone(),
            base,
            pr1.clone()
        ]
    );
    // The branch moves; what was resolved is still here, pinned.
    w.branch("pr1", "main");
    w.commit(&[("a.txt", "moved\n")], "moved");
    assert!(
        m.missing(std::slice::from_ref(&pr1))
            .await
            .expect("check")
            .is_empty()
    );
    let err = m.resolve(&["no-such-branch".into()], NET).await;
    assert!(
        matches!(&err, Err(MirrorError::NoSuchRef { name, .. }) if name == "no-such-branch"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stack_fast_forwards_an_independent_change_merges_the_same_everywhere() {
    let root = tempfile::tempdir().expect("tempdir");
    let w = Work::new(root.path());
    let [base, pr1, pr2, pr3, _] = w.pyramid();
    let names = ["main", "pr1", "pr2", "pr3"].map(String::from).to_vec();
    let one = mirror(root.path(), w.url(), "one").await;
    let two = mirror(root.path(), w.url(), "two").await;
    one.resolve(&names, NET).await.expect("resolve one");
    two.resolve(&names, NET).await.expect("resolve two");
    assert_ne!(one.dir(), two.dir());

    let mut spec = Speculator::new();
    // A stacked branch contains everything below it: no merge commit.
    let stacked = spec
        .state(&one, &base, &[pr1.clone(), pr2.clone()])
        .await
        .expect("stack");
    assert_eq!(stacked, pr2);
    // pr3 is beside the stack: a deterministic merge commit, the same in both mirrors.
    let merged = spec
        .state(&one, &base, &[pr1.clone(), pr2.clone(), pr3.clone()])
        .await
        .expect("merge");
    assert_ne!(merged, pr3);
    let mut other = Speculator::new();
    let again = other
        .state(&two, &base, &[pr1.clone(), pr2.clone(), pr3.clone()])
        .await
        .expect("merge again");
    assert_eq!(
        merged, again,
        "same inputs, same commit id, in another mirror"
    );
    // The shared prefix was merged once.
    assert_eq!(spec.steps(), 3);

    let out = root.path().join("checkout");
    one.checkout(&merged, &out).await.expect("checkout");
    let read = |p: &str| std::fs::read_to_string(out.join(p)).expect(p);
    assert_eq!(
        (read("a.txt"), read("b.txt"), read("c.txt")),
        ("a2\n".into(), "b3\n".into(), "c\n".into())
    );
    // The checkout is a repository of its own, detached at the state.
    let head = Command::new("git")
        .current_dir(&out)
        .args(["rev-parse", "HEAD"])
        .output()
        .expect("git");
    assert_eq!(
        String::from_utf8_lossy(&head.stdout).trim(),
        merged.as_str()
    );
}

#[tokio::test]
async fn checkouts_are_the_tree_s_bytes_whatever_its_attributes_say() {
    let root = tempfile::tempdir().expect("tempdir");
    let w = Work::new(root.path());
    // The repository asks for CRLF on checkout and for a filter that would rewrite files.
    let head = w.commit(
        &[
            (
                ".gitattributes",
                "*.txt text eol=crlf\n*.dat filter=rewrite\n",
            ),
            ("a.txt", "one\ntwo\n"),
            ("b.dat", "raw\n"),
        ],
        "attributes",
    );
    w.git(&["config", "filter.rewrite.smudge", "sed s/raw/cooked/"]);
    let m = mirror(root.path(), w.url(), "cache").await;
    m.resolve(&["main".into()], NET).await.expect("resolve");
    let out = root.path().join("checkout");
    m.checkout(&head, &out).await.expect("checkout");
    assert_eq!(std::fs::read(out.join("a.txt")).expect("a"), b"one\ntwo\n");
    assert_eq!(std::fs::read(out.join("b.dat")).expect("b"), b"raw\n");
}

#[tokio::test]
async fn a_conflict_names_the_commit_and_the_paths() {
    let root = tempfile::tempdir().expect("tempdir");
    let w = Work::new(root.path());
    let [base, pr1, _, _, clash] = w.pyramid();
    let m = mirror(root.path(), w.url(), "cache").await;
    m.resolve(&["pr1".into(), "clash".into()], NET)
        .await
        .expect("resolve");
    let err = Speculator::new()
        .state(&m, &base, &[pr1, clash.clone()])
        .await;
    match err {
        Err(SpeculateError::Conflict { at, commit, paths }) => {
            assert_eq!((at, commit, paths), (1, clash, vec!["a.txt".to_string()]));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn inputs_read_from_the_tree_change_only_with_the_files_they_match() {
    let root = tempfile::tempdir().expect("tempdir");
    let w = Work::new(root.path());
    let first = w.commit(&[("src/lib.rs", "1\n"), ("docs/x.md", "x\n")], "one");
    let docs = w.commit(&[("docs/x.md", "y\n")], "docs only");
    let code = w.commit(&[("src/lib.rs", "2\n")], "code");
    let m = mirror(root.path(), w.url(), "cache").await;
    m.resolve(&[code.to_string()], NET).await.expect("resolve");
    let mut matched = Vec::new();
    for c in [&first, &docs, &code] {
        let entries = m
            .entries(&m.tree(c).await.expect("tree"))
            .await
            .expect("ls-tree");
        let picked = crate::inputs::matching(&entries, ".", &["src/**".into()]).expect("globs");
        matched.push(picked.into_iter().cloned().collect::<Vec<_>>());
    }
    assert_eq!(
        matched[0], matched[1],
        "a docs commit leaves src/** as it was"
    );
    assert_ne!(matched[1], matched[2], "a code commit changes it");
    assert_eq!(matched[2][0].path, "src/lib.rs");
}

#[tokio::test]
async fn an_unreachable_or_silent_repository_fails_within_its_timeout() {
    let root = tempfile::tempdir().expect("tempdir");
    let gone = RepoUrl::parse("file:///nonexistent/repo.git", Path::new("/")).expect("url");
    let m = mirror(root.path(), gone, "cache").await;
    let err = m.resolve(&["main".into()], NET).await;
    assert!(
        matches!(err, Err(MirrorError::Unreachable { .. })),
        "{err:?}"
    );

    // A git:// server that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let silent =
        RepoUrl::parse(&format!("git://127.0.0.1:{port}/repo.git"), Path::new("/")).expect("url");
    let m = mirror(root.path(), silent, "cache").await;
    let started = std::time::Instant::now();
    let err = m
        .resolve(&["main".into()], Duration::from_millis(500))
        .await;
    assert!(
        matches!(&err, Err(MirrorError::Unreachable { reason, .. }) if reason.contains("no answer")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout bounds it"
    );
    drop(listener);
}

#[tokio::test]
async fn credentials_never_show_in_errors() {
    let root = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let url = RepoUrl::parse(
        &format!("http://user:s3cret@127.0.0.1:{port}/repo.git"),
        Path::new("/"),
    )
    .expect("url");
    let m = mirror(root.path(), url, "cache").await;
    let err = m
        .resolve(&["main".into()], NET)
        .await
        .expect_err("nothing listens");
    let shown = err.to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("***@127.0.0.1"), "{shown}");
}
