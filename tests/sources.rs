//! Source-aware plans under `gatehouse run`, against real repositories made by the tests
//! and served by a real `git daemon` on an ephemeral loopback port (and over file://):
//! every gate runs on exactly its item's speculative tree, conflicts fail their item,
//! and the cache follows the trees.

mod support;

use support::Workspace;
use support::git::{GitDaemon, Repo};

/// The shell test that the checkout holds exactly `present` of the stack's files.
fn holds(present: &[&str]) -> String {
    let all = ["one.txt", "two.txt", "three.txt", "side.txt"];
    let mut checks = vec!["test -f README".to_string()];
    for f in all {
        checks.push(if present.contains(&f) {
            format!("test -f {f}")
        } else {
            format!("test ! -e {f}")
        });
    }
    // The checkout is exactly the commit the gate was keyed on.
    checks.push(r#"test "$(git rev-parse HEAD)" = "$GATEHOUSE_COMMIT""#.into());
    checks.join(" && ")
}

/// pr1 (from main) adds one.txt; pr2 on pr1 adds two.txt; pr3 on pr2 adds three.txt;
/// side (from main) adds side.txt; clash (from main) adds its own one.txt.
fn make_repo(dir: &std::path::Path) -> (Repo, Vec<String>) {
    let r = Repo::init(dir);
    let base = r.commit(&[("README", "app\n")], "base");
    r.branch("pr1", "main");
    let pr1 = r.commit(&[("one.txt", "1\n")], "pr1");
    r.branch("pr2", "pr1");
    let pr2 = r.commit(&[("two.txt", "2\n")], "pr2");
    r.branch("pr3", "pr2");
    let pr3 = r.commit(&[("three.txt", "3\n")], "pr3");
    r.branch("side", "main");
    let side = r.commit(&[("side.txt", "s\n")], "side");
    r.branch("clash", "main");
    let clash = r.commit(&[("one.txt", "clash\n")], "clash");
    r.switch("main");
    (r, vec![base, pr1, pr2, pr3, side, clash])
}

/// Each item: `files` checks its tree; `readme` reads only README (`inputs`).
fn item(id: &str, git_ref: &str, deps: &[&str], present: &[&str]) -> String {
    format!(
        "  - id: {id}\n    ref: {git_ref}\n    deps: [{deps}]\n    gates:\n      - id: files\n        run: '{check}'\n      - id: readme\n        run: cat README\n        inputs: [README]\n",
        deps = deps.join(", "),
        check = holds(present),
    )
}

fn plan(repo: &str, items: &[String]) -> String {
    format!(
        "version: 1\nname: stack\nsource:\n  repo: {repo}\n  base: main\nitems:\n{}",
        items.concat()
    )
}

fn stack_items() -> Vec<String> {
    vec![
        item("pr1", "pr1", &[], &["one.txt"]),
        item("pr2", "pr2", &["pr1"], &["one.txt", "two.txt"]),
        item("pr3", "pr3", &["pr2"], &["one.txt", "two.txt", "three.txt"]),
        item("side", "side", &["pr1"], &["one.txt", "side.txt"]),
    ]
}

fn cached(run: &support::RunResult, gate: &str) -> bool {
    run.terminal(gate)["cached"] == true
}

#[test]
fn a_stack_over_git_daemon_runs_each_gate_on_its_speculative_tree_and_caches_by_tree() {
    let ws = Workspace::new();
    let served = ws.path().join("served");
    let (repo, ids) = make_repo(&served.join("app"));
    let daemon = GitDaemon::serve(&served);
    ws.write("plan.yaml", &plan(&daemon.url("app"), &stack_items()));

    let first = ws.run_json("plan.yaml", &[]);
    assert_eq!(first.code, 0, "stderr: {}\n{:?}", first.stderr, first.lines);
    assert!(
        daemon.served() > 0,
        "the plan read the repository over git://"
    );
    for gate in [
        "pr1/files",
        "pr2/files",
        "pr3/files",
        "side/files",
        "pr1/readme",
    ] {
        assert_eq!(first.state(gate), "passed", "{gate}");
        assert!(!cached(&first, gate), "{gate} ran");
    }
    assert_eq!(
        first.summary()["merge_order"],
        serde_json::json!(["pr1", "pr2", "pr3", "side"])
    );
    // What each item resolved to, and its speculative state.
    let source = &first.lines[0];
    assert_eq!(source["event"], "source", "{source}");
    assert_eq!(source["base"]["commit"], ids[0].as_str());
    let items = source["items"].as_array().expect("items");
    let spec = |i: usize| items[i]["speculative_commit"].as_str().unwrap_or_default();
    assert_eq!(items[0]["commit"], ids[1].as_str());
    assert_eq!(
        spec(2),
        ids[3],
        "a stacked branch fast-forwards: its own commit"
    );
    assert!(
        ![ids[0].as_str(), ids[1].as_str(), ids[4].as_str()].contains(&spec(3)),
        "side is merged onto pr1: a new commit"
    );

    // The same plan again: nothing runs.
    let again = ws.run_json("plan.yaml", &[]);
    assert_eq!(again.code, 0, "stderr: {}", again.stderr);
    assert_eq!(again.summary()["gates"]["cached"], 8, "{:?}", again.lines);

    // A commit on the middle branch: pr2 and what is stacked on it run again; pr1 and
    // side stay cached, and so does pr2/readme, whose input did not change.
    repo.switch("pr2");
    repo.commit(&[("two.txt", "2, revised\n")], "pr2 again");
    repo.switch("main");
    let middle = ws.run_json("plan.yaml", &[]);
    assert_eq!(
        middle.code, 0,
        "stderr: {}\n{:?}",
        middle.stderr, middle.lines
    );
    for gate in [
        "pr1/files",
        "pr1/readme",
        "side/files",
        "side/readme",
        "pr2/readme",
    ] {
        assert!(cached(&middle, gate), "{gate} stays cached");
    }
    for gate in ["pr2/files", "pr3/files", "pr3/readme"] {
        assert!(!cached(&middle, gate), "{gate} runs again");
    }

    // A commit on top touching only a file outside README: pr3/readme stays cached.
    repo.switch("pr3");
    repo.commit(&[("three.txt", "3, revised\n")], "pr3 again");
    repo.switch("main");
    let top = ws.run_json("plan.yaml", &[]);
    assert_eq!(top.code, 0, "stderr: {}", top.stderr);
    assert!(cached(&top, "pr3/readme"), "outside its inputs: cached");
    assert!(!cached(&top, "pr3/files"), "the whole tree changed");
    assert!(cached(&top, "pr2/files"));
}

#[test]
fn a_conflict_fails_its_item_naming_the_path_and_skips_what_is_stacked_on_it() {
    let ws = Workspace::new();
    let (repo, _) = make_repo(&ws.path().join("app"));
    let mut items = stack_items();
    items.push(item("clash", "clash", &["pr1"], &[]));
    items.push(item("above", "pr3", &["clash"], &[]));
    ws.write("plan.yaml", &plan(&repo.file_url(), &items));

    let run = ws.run_json("plan.yaml", &[]);
    assert_eq!(run.code, 1, "stderr: {}", run.stderr);
    for gate in ["clash/files", "clash/readme"] {
        let line = run.terminal(gate);
        assert_eq!(
            (
                line["state"].as_str(),
                line["reason"].as_str(),
                line["attempt"].as_u64()
            ),
            (Some("failed"), Some("merge_conflict"), Some(0)),
            "{gate} never ran: {line}"
        );
    }
    assert_eq!(run.terminal("above/files")["reason"], "dependency_failed");
    for gate in ["pr1/files", "pr2/files", "pr3/files", "side/files"] {
        assert_eq!(run.state(gate), "passed", "{gate}");
    }
    let clash = &run.lines[0]["items"][4];
    assert_eq!(clash["reason"], "merge_conflict", "{clash}");
    assert_eq!(clash["paths"], serde_json::json!(["one.txt"]));
    assert!(
        clash["error"]
            .as_str()
            .unwrap_or_default()
            .contains("one.txt")
    );

    // The text output names the conflict too.
    let out = ws.cmd(&["run", "plan.yaml"]).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("merge_conflict") && text.contains("conflicts in one.txt"),
        "{text}"
    );
}

#[test]
fn an_unreachable_repository_or_a_missing_ref_fails_with_source_and_says_what_to_check() {
    let ws = Workspace::new();
    let (repo, _) = make_repo(&ws.path().join("app"));
    // Nothing listens on port 1 of loopback: refused at once.
    ws.write(
        "down.yaml",
        &plan("git://127.0.0.1:1/app", &[item("pr1", "pr1", &[], &[])]),
    );
    let started = std::time::Instant::now();
    let down = ws.run_json("down.yaml", &[]);
    assert_eq!(down.code, 1, "stderr: {}", down.stderr);
    assert_eq!(down.terminal("pr1/files")["reason"], "source");
    assert!(
        down.lines[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot read git://127.0.0.1:1/app"),
        "{}",
        down.lines[0]
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));

    let items = [
        item("pr1", "pr1", &[], &["one.txt"]),
        item("gone", "no-such-branch", &[], &[]),
    ];
    ws.write("gone.yaml", &plan(&repo.file_url(), &items));
    let gone = ws.run_json("gone.yaml", &[]);
    assert_eq!(gone.code, 1, "stderr: {}", gone.stderr);
    assert_eq!(gone.state("pr1/files"), "passed", "the rest runs");
    assert_eq!(gone.terminal("gone/files")["reason"], "source");
    let error = gone.lines[0]["items"][1]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("no-such-branch"), "{error}");
}

#[test]
fn a_flat_plan_with_a_source_runs_every_gate_on_base() {
    let ws = Workspace::new();
    let (repo, ids) = make_repo(&ws.path().join("app"));
    ws.write(
        "flat.yaml",
        "version: 1\nname: flat\nsource: { repo: app }\ngates:\n  - id: base\n    run: 'test -f README && test ! -e one.txt && test \"$GATEHOUSE_COMMIT\" = \"$GATEHOUSE_BASE_COMMIT\" && test -z \"$GATEHOUSE_ITEM_COMMIT\"'\n    workdir: .\n",
    );
    let run = ws.run_json("flat.yaml", &[]);
    assert_eq!(run.code, 0, "stderr: {}\n{:?}", run.stderr, run.lines);
    assert_eq!(
        run.lines[0]["base"]["commit"],
        ids[0].as_str(),
        "HEAD by default"
    );
    drop(repo);
}

/// The test repository served by `git daemon`, and a coordinator with two workers
/// (`w0`, `w1`: `worker_args`, and a git cache each in the workspace).
fn served_cluster(worker_args: &[&str]) -> (Workspace, GitDaemon, support::cluster::Cluster) {
    let ws = Workspace::new();
    let served = ws.path().join("served");
    make_repo(&served.join("app"));
    let daemon = GitDaemon::serve(&served);
    let mut c = support::cluster::Cluster::start();
    for i in 0..2 {
        let git_cache = ws.path().join(format!("git-w{i}")).display().to_string();
        let mut args = worker_args.to_vec();
        args.extend(["--git-cache", &git_cache]);
        c.add_worker(&format!("w{i}"), &args);
    }
    (ws, daemon, c)
}

#[test]
fn a_cluster_runs_a_source_plan_over_git_daemon_with_the_keys_of_gatehouse_run() {
    use std::time::Duration;
    use support::cluster::{submit_with, summary, terminals};

    let (ws, daemon, c) = served_cluster(&["--slots", "2", "--cache-listen", "127.0.0.1:0"]);
    support::wait_until("2 cache nodes", Duration::from_secs(20), || {
        c.list_workers()
            .iter()
            .filter(|w| !w.cache_url.is_empty())
            .count()
            == 2
    });
    let doc = plan(&daemon.url("app"), &stack_items());

    let id = submit_with(&c.rt, &c.url(), &doc, true).expect("submit");
    let events = c.watch(&id, 0);
    let s = summary(&events);
    assert_eq!(
        s.outcome,
        gatehouse_proto::v1::PlanOutcome::Passed as i32,
        "{events:?}"
    );
    let gates = terminals(&events);
    assert_eq!(gates.len(), 8);
    for (gate, e) in &gates {
        assert_eq!(
            e.state,
            gatehouse_proto::v1::GateState::Passed as i32,
            "{gate}: {e:?}"
        );
        // (pr2/readme and side/readme are the same gate, keyed alike: one may be
        // served by the other's result; every tree check really ran.)
        if gate.ends_with("/files") {
            assert!(
                !e.cached && e.worker_id.starts_with('w'),
                "{gate} ran on a worker: {e:?}"
            );
        }
    }

    // `status` shows what each item resolved to, as `gatehouse run` does.
    let out = c.cli(&["status", &id, "--json"]).output().expect("status");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let items = status["source"]["items"].as_array().expect("source items");
    assert_eq!(items.len(), 4, "{status}");
    assert!(
        items.iter().all(|i| i["speculative_commit"].is_string()),
        "{status}"
    );
    assert!(
        status["source"]["repo"]
            .as_str()
            .unwrap_or_default()
            .starts_with("git://127.0.0.1:"),
        "{status}"
    );

    // The keys are gatehouse run's: a local run through the cluster's cache finds every
    // gate there (once the workers' writes landed).
    ws.write("plan.yaml", &doc);
    let node = c.list_workers()[0].cache_url.clone();
    let mut local = None;
    support::wait_until(
        "every gate in the cluster's cache",
        Duration::from_secs(20),
        || {
            let dir = ws.path().join("fresh-cache");
            let _ = std::fs::remove_dir_all(&dir);
            let dir = dir.display().to_string();
            let run = ws.run_json("plan.yaml", &["--cache", &node, "--cache-dir", &dir]);
            let all = run.code == 0 && run.summary()["gates"]["cached"] == 8;
            local = Some(run);
            all
        },
    );
    assert_eq!(local.expect("ran").code, 0);

    // A second submission dispatches nothing.
    let again = submit_with(&c.rt, &c.url(), &doc, true).expect("submit again");
    let events = c.watch(&again, 0);
    assert_eq!(support::cluster::dispatched(&events), 0, "{events:?}");
    assert_eq!(summary(&events).counts.as_ref().map(|c| c.cached), Some(8));

    // An unreachable repository fails the items with `source`, and the plan ends.
    let down = plan("git://127.0.0.1:1/app", &[item("pr1", "pr1", &[], &[])]);
    let id = submit_with(&c.rt, &c.url(), &down, true).expect("submit");
    let events = c.watch(&id, 0);
    let gates = terminals(&events);
    assert_eq!(gates["pr1/files"].reason, "source", "{events:?}");
}

#[test]
fn a_cluster_refuses_a_repository_given_as_a_local_path() {
    let ws = Workspace::new();
    let (repo, _) = make_repo(&ws.path().join("app"));
    let cluster = support::cluster::Cluster::start();
    // Over gRPC, as any client could send it.
    let document = plan("/srv/app", &[item("pr1", "pr1", &[], &[])]);
    let refused = cluster.submit(&document).expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // Through `gatehouse submit`: the path exists here, but not for the cluster.
    ws.write("plan.yaml", &plan("app", &[item("pr1", "pr1", &[], &[])]));
    let out = cluster
        .cli(&["submit", &ws.path().join("plan.yaml").display().to_string()])
        .output()
        .expect("submit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is a local path") && stderr.contains("use a URL"),
        "{stderr}"
    );
    drop(repo);
}

#[test]
fn a_worker_killed_during_its_checkout_loses_the_attempt_to_another() {
    use std::time::Duration;
    use support::cluster::{submit_with, summary, terminals};

    let (_ws, daemon, c) = served_cluster(&["--slots", "1"]);
    support::wait_until("2 workers", Duration::from_secs(20), || {
        c.list_workers().len() == 2
    });
    // The coordinator's preparation of a fresh mirror takes three connections (the ref
    // listing, the base, the item's commit); the next one, the fetch of the worker
    // that checks the gate out, is held unanswered.
    daemon.hold_after(3);
    let doc = plan(&daemon.url("app"), &[item("pr1", "pr1", &[], &["one.txt"])]);
    let id = submit_with(&c.rt, &c.url(), &doc, true).expect("submit");
    let mut busy = String::new();
    support::wait_until(
        "a worker checking the gate out",
        Duration::from_secs(20),
        || {
            let held = daemon.served() > 3;
            busy = c
                .list_workers()
                .into_iter()
                .find(|w| w.slots_used == 1)
                .map(|w| w.worker_id)
                .unwrap_or_default();
            held && !busy.is_empty()
        },
    );
    let status = c.get(&id);
    assert!(
        status
            .gates
            .iter()
            .all(|g| g.state != gatehouse_proto::v1::GateState::Running as i32),
        "still checking out: {status:?}"
    );
    let index: usize = busy.trim_start_matches('w').parse().expect("worker index");
    c.workers[index].signal("KILL");
    daemon.release();

    let events = c.watch(&id, 0);
    let s = summary(&events);
    assert_eq!(
        s.outcome,
        gatehouse_proto::v1::PlanOutcome::Passed as i32,
        "{events:?}"
    );
    let gates = terminals(&events);
    let files = &gates["pr1/files"];
    assert_ne!(files.worker_id, busy, "it ran elsewhere: {files:?}");
    assert!(files.worker_id.starts_with('w'), "{files:?}");
}
