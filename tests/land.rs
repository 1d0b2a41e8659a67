//! Landing under `gatehouse run --land`, against real repositories served by a real
//! `git daemon` with receive-pack enabled, on an ephemeral loopback port: the combined
//! tip is verified once and pushed with compare-and-swap, a failing combination is
//! bisected to the longest passing prefix, a branch that moves before the push is
//! re-speculated, and `gatehouse plan --from-branches` writes a plan that lands a
//! local stack.

mod support;

use std::path::{Path, PathBuf};

use support::Workspace;
use support::git::{GitDaemon, Repo};

/// The served repository: a working repository `work` and its bare copy `served/app`
/// (what the daemon serves and landing pushes to).
struct Served {
    bare: PathBuf,
    daemon: GitDaemon,
}

impl Served {
    /// main: README; pr1 (from main) adds one.txt; pr2 on pr1 adds two.txt; pr3 on pr2
    /// adds three.txt; side (from main) adds side.txt; side2 on side adds side2.txt;
    /// `other` (from main) adds
    /// other.txt (where main moves to when someone else lands first).
    fn new(root: &Path) -> Self {
        let work = Repo::init(&root.join("work"));
        work.commit(&[("README", "app\n")], "base");
        for (branch, from, file) in [
            ("pr1", "main", "one.txt"),
            ("pr2", "pr1", "two.txt"),
            ("pr3", "pr2", "three.txt"),
            ("side", "main", "side.txt"),
            ("side2", "side", "side2.txt"),
            ("other", "main", "other.txt"),
        ] {
            work.branch(branch, from);
            work.commit(&[(file, &format!("{branch}\n"))], branch);
        }
        work.switch("main");
        let served = root.join("served");
        let bare = served.join("app");
        work.clone_bare(&bare);
        let daemon = GitDaemon::serve_writable(&served);
        Self { bare, daemon }
    }

    /// Where `branch` of the served repository points.
    fn tip(&self, branch: &str) -> String {
        self.git(&["rev-parse", &format!("refs/heads/{branch}")])
    }

    fn git(&self, args: &[&str]) -> String {
        let out = support::git::git(&self.bare)
            .args(args)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The files of `commit`'s tree.
    fn files(&self, commit: &str) -> Vec<String> {
        self.git(&["ls-tree", "--name-only", commit])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// One item: a `files` gate keyed on its whole tree and a `readme` gate keyed on
/// README alone (so it stays cached when only other files change).
fn item(id: &str, deps: &[&str]) -> String {
    format!(
        "  - id: {id}\n    ref: {id}\n    deps: [{}]\n    gates:\n      - {{ id: files, run: 'test -f README' }}\n      - {{ id: readme, run: 'cat README', inputs: [README] }}\n",
        deps.join(", ")
    )
}

/// The stack pr1 <- pr2 <- pr3 and `side`, with a `verify` gate that logs the tree it
/// tested to `log` and then runs `check`.
fn plan(url: &str, log: &Path, check: &str, extra_gate: &str) -> String {
    format!(
        "version: 1\nname: land\nsource:\n  repo: {url}\n  base: main\nverify:\n  - id: all\n    run: 'git rev-parse \"HEAD^{{tree}}\" >> {log} && {check}'\nitems:\n{}{}{}{}{extra_gate}",
        item("pr1", &[]),
        item("pr2", &["pr1"]),
        item("pr3", &["pr2"]),
        item("side", &[]),
        log = log.display(),
    )
}

/// `gatehouse plan --from-branches main` of the clone `local` (its `origin`), with the
/// template `gates.yaml`, written to `output`.
fn from_branches<'a>(output: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "plan",
        "--from-branches",
        "main",
        "--remote",
        "origin",
        "--repo",
        "local",
        "--gates",
        "gates.yaml",
        "-o",
        output,
    ];
    args.extend_from_slice(extra);
    args
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn landed_items(run: &support::RunResult) -> Vec<String> {
    run.land()["landed"]
        .as_array()
        .expect("landed")
        .iter()
        .map(|l| l["item"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn everything_passes_verify_runs_once_and_the_branch_ends_at_the_tree_it_tested() {
    let ws = Workspace::new();
    let s = Served::new(ws.path());
    let log = ws.path().join("verify.log");
    let base = s.tip("main");
    ws.write("plan.yaml", &plan(&s.daemon.url("app"), &log, "true", ""));

    let run = ws.run_json("plan.yaml", &["--land"]);
    assert_eq!(run.code, 0, "stderr: {}\n{:?}", run.stderr, run.lines);
    assert_eq!(run.summary()["outcome"], "passed");
    let land = run.land();
    assert_eq!(landed_items(&run), ["pr1", "pr2", "pr3", "side"]);
    assert_eq!(land["left_out"], serde_json::json!([]));
    assert_eq!(land["base"], base.as_str());
    let commit = land["commit"].as_str().expect("landed commit");

    // verify ran once, on the combined tip, and the branch is exactly that tree.
    let tested = read_lines(&log);
    assert_eq!(tested.len(), 1, "{tested:?}");
    assert_eq!(s.tip("main"), commit);
    assert_eq!(
        s.git(&["rev-parse", &format!("{commit}^{{tree}}")]),
        tested[0]
    );
    assert_eq!(
        s.files(commit),
        ["README", "one.txt", "side.txt", "three.txt", "two.txt"]
    );
    assert_eq!(run.events("verify").len(), 1);
    assert_eq!(run.events("landed").len(), 4);
    // The landed history keeps every change's own commit.
    let pr3 = s.tip("pr3");
    s.git(&["merge-base", "--is-ancestor", &pr3, commit]);
    s.git(&["merge-base", "--is-ancestor", &base, commit]);
}

#[test]
fn a_combination_that_fails_verify_lands_the_longest_passing_prefix_and_names_the_culprit() {
    let ws = Workspace::new();
    let s = Served::new(ws.path());
    let log = ws.path().join("verify.log");
    // Each item passes alone; side together with the stack does not.
    let check = "! { test -f side.txt && test -f three.txt; }";
    ws.write("plan.yaml", &plan(&s.daemon.url("app"), &log, check, ""));

    let dry = ws.run_json("plan.yaml", &["--dry-run"]);
    assert_eq!(dry.code, 1, "stderr: {}\n{:?}", dry.stderr, dry.lines);
    assert_eq!(dry.land()["dry_run"], true);
    let main_before = s.tip("main");

    let run = ws.run_json("plan.yaml", &["--land"]);
    assert_eq!(run.code, 1, "not every item landed: {:?}", run.lines);
    assert_eq!(run.summary()["outcome"], "passed", "the gates all passed");
    assert_eq!(landed_items(&run), ["pr1", "pr2", "pr3"]);
    let land = run.land();
    assert_eq!(
        land["left_out"],
        serde_json::json!([{ "item": "side", "reason": "culprit" }])
    );
    // pr3's own speculative state is the prefix: it lands as the commit its gates
    // passed on.
    assert_eq!(land["commit"], s.tip("pr3").as_str());
    assert_eq!(s.tip("main"), s.tip("pr3"));
    assert_ne!(s.tip("main"), main_before);
    let verify: Vec<_> = run.events("verify");
    assert_eq!(verify.len(), 1, "{verify:?}");
    assert_eq!(verify[0]["passed"], false);
    // A failure is never cached: the failing tip ran once per invocation.
    assert_eq!(read_lines(&log).len(), 2);
}

#[test]
fn a_branch_that_moves_before_the_push_is_re_speculated_and_only_changed_trees_run() {
    let ws = Workspace::new();
    let s = Served::new(ws.path());
    let log = ws.path().join("verify.log");
    let other = s.tip("other");
    let mark = ws.path().join("moved");
    // A gate that, on the first run only, moves main in the served repository, as
    // another landing would: after the plan was resolved, before it lands.
    let mover = format!(
        "  - id: mover\n    gates:\n      - {{ id: move, cache: false, run: 'test -e {mark} || {{ touch {mark} && git --git-dir={bare} update-ref refs/heads/main {other}; }}' }}\n",
        mark = mark.display(),
        bare = s.bare.display(),
    );
    ws.write(
        "plan.yaml",
        &plan(&s.daemon.url("app"), &log, "true", &mover),
    );

    let run = ws.run_json("plan.yaml", &["--land"]);
    assert_eq!(run.code, 0, "stderr: {}\n{:?}", run.stderr, run.lines);
    let again = run.events("respeculate");
    assert_eq!(again.len(), 1, "{:?}", run.lines);
    assert_eq!(again[0]["now"], other.as_str());
    // The plan ran twice: the second time on the new base, where every whole-tree
    // gate ran again and every README-keyed gate was a cache hit.
    assert_eq!(run.events("summary").len(), 2);
    let gates = |gate: &str| -> Vec<bool> {
        run.lines
            .iter()
            .filter(|l| {
                l["event"] == "gate" && l["gate"] == gate && support::is_terminal(&l["state"])
            })
            .map(|l| l["cached"] == true)
            .collect()
    };
    for item in ["pr1", "pr2", "pr3", "side"] {
        assert_eq!(gates(&format!("{item}/files")), [false, false], "{item}");
    }
    // A key covers the gate's prerequisites too: pr2's and pr3's README gates wait for
    // the items below them, whose trees changed.
    // pr1's and side's are the same gate (one key): one ran, the other was served by
    // it, and both are cache hits the second time.
    let (pr1, side) = (gates("pr1/readme"), gates("side/readme"));
    assert_eq!((pr1[1], side[1]), (true, true), "{pr1:?} {side:?}");
    assert!(pr1[0] != side[0], "exactly one ran: {pr1:?} {side:?}");
    for item in ["pr2", "pr3"] {
        assert_eq!(gates(&format!("{item}/readme")), [false, false], "{item}");
    }
    let land = run.land();
    let commit = land["commit"].as_str().expect("commit");
    assert_eq!(land["base"], other.as_str(), "landed on the new base");
    assert_eq!(s.tip("main"), commit);
    let files = s.files(commit);
    assert!(files.contains(&"other.txt".to_string()), "{files:?}");
    assert!(files.contains(&"three.txt".to_string()), "{files:?}");
    assert!(files.contains(&"side.txt".to_string()), "{files:?}");
    // One verify on each base.
    assert_eq!(read_lines(&log).len(), 2);
}

#[test]
fn landing_needs_a_branch_and_a_refused_push_changes_nothing() {
    let ws = Workspace::new();
    let s = Served::new(ws.path());
    let log = ws.path().join("verify.log");
    // A base that is a commit cannot be landed on: usage error before anything runs.
    let pinned = plan(&s.daemon.url("app"), &log, "true", "")
        .replace("base: main", &format!("base: {}", s.tip("main")));
    ws.write("pinned.yaml", &pinned);
    let out = ws
        .cmd(&["run", "--land", "pinned.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("to name a branch"), "{stderr}");
    assert!(read_lines(&log).is_empty(), "nothing ran");

    // A served repository whose hook refuses every push: exit 4, the reason, main
    // unchanged.
    support::git::install_hook(
        &s.bare,
        "pre-receive",
        "#!/bin/sh\necho 'main is protected' >&2\nexit 1\n",
    );
    let before = s.tip("main");
    ws.write("plan.yaml", &plan(&s.daemon.url("app"), &log, "true", ""));
    let run = ws.run_json("plan.yaml", &["--land"]);
    assert_eq!(run.code, 4, "stderr: {}\n{:?}", run.stderr, run.lines);
    let land = run.land();
    let error = land["error"].as_str().expect("error");
    assert!(
        error.contains("refused") && error.contains("protected"),
        "{error}"
    );
    assert_eq!(land["commit"], serde_json::Value::Null);
    assert!(run.events("landed").is_empty());
    assert_eq!(s.tip("main"), before, "nothing changed");
}

#[test]
fn a_plan_from_branches_stacks_them_by_ancestry_and_lands_both_stacks() {
    let ws = Workspace::new();
    let s = Served::new(ws.path());
    // A clone of the served repository, as a developer has it: its remote-tracking
    // branches are the two stacks (pr1 <- pr2 <- pr3, side <- side2) and `other`.
    let local = ws.path().join("local");
    let clone = Repo::init(&local);
    clone.git(&["remote", "add", "origin", &s.daemon.url("app")]);
    clone.git(&["fetch", "--quiet", "origin"]);
    ws.write(
        "gates.yaml",
        "gates:\n  - { id: files, run: 'test -f README' }\nverify:\n  - { id: all, run: 'test -f one.txt' }\n",
    );
    // Not `other`, which this test does not want.
    let out = ws
        .cmd(&from_branches(
            "plan.yaml",
            &["--match", "pr*", "--match", "side*"],
        ))
        .output()
        .expect("plan");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let text = std::fs::read_to_string(ws.path().join("plan.yaml")).expect("plan");
    let plan: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
    assert_eq!(plan["source"]["repo"], s.daemon.url("app").as_str());
    assert_eq!(plan["source"]["base"], "main");
    let items: Vec<(String, serde_json::Value)> = plan["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or("").to_string(),
                i["deps"].clone(),
            )
        })
        .collect();
    let none = serde_json::Value::Null;
    assert_eq!(
        items,
        [
            ("pr1".to_string(), none.clone()),
            ("side".to_string(), none),
            ("pr2".to_string(), serde_json::json!(["pr1"])),
            ("side2".to_string(), serde_json::json!(["side"])),
            ("pr3".to_string(), serde_json::json!(["pr2"])),
        ],
        "{text}"
    );

    let run = ws.run_json("plan.yaml", &["--land"]);
    assert_eq!(run.code, 0, "stderr: {}\n{:?}", run.stderr, run.lines);
    let mut landed = landed_items(&run);
    landed.sort();
    assert_eq!(landed, ["pr1", "pr2", "pr3", "side", "side2"]);
    let files = s.files(&s.tip("main"));
    for f in ["one.txt", "two.txt", "three.txt", "side.txt", "side2.txt"] {
        assert!(files.contains(&f.to_string()), "{f} landed: {files:?}");
    }
    assert!(!files.contains(&"other.txt".to_string()));
}

/// Parses NDJSON output.
fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn a_cluster_lands_verifies_bisects_re_speculates_and_takes_plans_from_branches() {
    let mut c = support::cluster::Cluster::start();
    for i in 0..2 {
        let git_cache = c.ws.path().join(format!("git-w{i}")).display().to_string();
        c.add_worker(
            &format!("w{i}"),
            &["--slots", "2", "--git-cache", &git_cache],
        );
    }
    let s = Served::new(c.ws.path());
    let log = c.ws.path().join("verify.log");
    let base = s.tip("main");

    // 1. Everything passes: verify once on the combined tip, the branch there.
    c.ws.write("plan.yaml", &plan(&s.daemon.url("app"), &log, "true", ""));
    let out = c
        .cli(&["submit", "--watch", "--json", "--land", "plan.yaml"])
        .output()
        .expect("submit");
    let lines = json_lines(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{lines:?}");
    let land = lines.last().expect("output");
    assert_eq!(land["event"], "land", "{lines:?}");
    assert_eq!(land["base"], base.as_str());
    let commit = land["commit"].as_str().expect("commit").to_string();
    assert_eq!(s.tip("main"), commit);
    assert_eq!(land["landed"].as_array().map(Vec::len), Some(4));
    let tested = read_lines(&log);
    assert_eq!(tested.len(), 1, "verify ran once: {tested:?}");
    assert_eq!(
        s.git(&["rev-parse", &format!("{commit}^{{tree}}")]),
        tested[0]
    );
    let landed: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "landed").collect();
    assert_eq!(landed.len(), 4);

    // `status` says where it landed.
    let id = lines
        .iter()
        .find(|l| l["event"] == "submitted")
        .and_then(|l| l["plan_id"].as_str())
        .expect("plan id")
        .to_string();
    let described = c.get(&id);
    assert_eq!(described.land_branch, "main");
    assert_eq!(
        described.land.as_ref().map(|l| l.commit.as_str()),
        Some(commit.as_str())
    );
    // The raw stream ends with the landing's report, not at the summary (and it does
    // end: a watcher is not left waiting).
    let started = std::time::Instant::now();
    let events = c.watch(&id, 0);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let last = events.last().and_then(|e| e.event.clone());
    assert!(
        matches!(
            last,
            Some(gatehouse_proto::v1::plan_event::Event::Land(
                gatehouse_proto::v1::LandStep {
                    step: Some(gatehouse_proto::v1::land_step::Step::Report(_))
                }
            ))
        ),
        "{last:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e.event,
        Some(gatehouse_proto::v1::plan_event::Event::Summary(_))
    )));
    let out = c.cli(&["status", &id, "--json"]).output().expect("status");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["land"]["commit"], commit.as_str(), "{status}");
    assert_eq!(status["land"]["landed"].as_array().map(Vec::len), Some(4));
    let out = c.cli(&["status", &id]).output().expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("land: landed 4 items on main"), "{text}");

    // 2. The combination with `side` fails verify: the stack lands, side is the culprit.
    let check = "! { test -f side.txt && test -f three.txt && ! test -f other.txt; }";
    s.git(&["update-ref", "refs/heads/main", &base]);
    c.ws.write("culprit.yaml", &plan(&s.daemon.url("app"), &log, check, ""));
    let out = c
        .cli(&["submit", "--watch", "--json", "--land", "culprit.yaml"])
        .output()
        .expect("submit");
    let lines = json_lines(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{lines:?}");
    let land = lines.last().expect("output");
    assert_eq!(
        land["left_out"],
        serde_json::json!([{ "item": "side", "reason": "culprit" }]),
        "{land}"
    );
    assert_eq!(s.tip("main"), s.tip("pr3"));

    // 3. The branch moves while the plan runs: refused by the lease, the plan runs
    //    again on the new tip and lands there.
    s.git(&["update-ref", "refs/heads/main", &base]);
    let other = s.tip("other");
    let mark = c.ws.path().join("moved");
    let mover = format!(
        "  - id: mover\n    gates:\n      - {{ id: move, cache: false, run: 'test -e {mark} || {{ touch {mark} && git --git-dir={bare} update-ref refs/heads/main {other}; }}' }}\n",
        mark = mark.display(),
        bare = s.bare.display(),
    );
    c.ws.write(
        "moved.yaml",
        &plan(&s.daemon.url("app"), &log, "true", &mover),
    );
    let out = c
        .cli(&["submit", "--watch", "--json", "--land", "moved.yaml"])
        .output()
        .expect("submit");
    let lines = json_lines(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{lines:?}");
    let again: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["event"] == "respeculate")
        .collect();
    assert_eq!(again.len(), 1, "{lines:?}");
    assert_eq!(again[0]["now"], other.as_str());
    assert_eq!(lines.iter().filter(|l| l["event"] == "summary").count(), 2);
    let land = lines.last().expect("output");
    assert_eq!(land["base"], other.as_str());
    let commit = land["commit"].as_str().expect("commit");
    assert_eq!(s.tip("main"), commit);
    let files = s.files(commit);
    for f in ["other.txt", "three.txt", "side.txt"] {
        assert!(files.contains(&f.to_string()), "{f}: {files:?}");
    }

    // 4. A plan written from the branches of a clone lands both stacks through the
    //    cluster too.
    s.git(&["update-ref", "refs/heads/main", &base]);
    let clone = Repo::init(&c.ws.path().join("local"));
    clone.git(&["remote", "add", "origin", &s.daemon.url("app")]);
    clone.git(&["fetch", "--quiet", "origin"]);
    clone.git(&["branch", "-dr", "origin/other"]);
    c.ws.write(
        "gates.yaml",
        "gates:\n  - { id: files, run: 'test -f README' }\n",
    );
    let out = c
        .cli(&from_branches("branches.yaml", &[]))
        .output()
        .expect("plan");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c
        .cli(&["submit", "--watch", "--json", "--land", "branches.yaml"])
        .output()
        .expect("submit");
    let lines = json_lines(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{lines:?}");
    let land = lines.last().expect("output");
    assert_eq!(land["landed"].as_array().map(Vec::len), Some(5), "{land}");
    let files = s.files(&s.tip("main"));
    for f in ["three.txt", "side2.txt"] {
        assert!(files.contains(&f.to_string()), "{f}: {files:?}");
    }
}
