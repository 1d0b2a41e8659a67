//! High availability against a real etcd: leader failover mid-plan, a paused leader
//! stepping down, etcd restarting mid-plan, a standalone coordinator restarted from its
//! state directory, and an independent etcd client watching the election.
//!
//! Each test starts its own etcd (`tests/support/etcd.rs`) on free loopback ports; with
//! `GATEHOUSE_SKIP_ETCD=1` they return early with a message.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use gatehouse_coordinator::registry::codec;
use gatehouse_proto::v1;
use support::cluster::{Cluster, terminals};
use support::ha::{ELECTION, HaCluster};
use support::{RunResult, is_terminal, wait_until};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
const PYRAMID: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/merge-pyramid.yaml"
);

/// A plan of `n` gates `g0`..`g{n-1}`, each needing the one before and sleeping `secs`.
fn chain(name: &str, n: usize, secs: &str) -> String {
    let mut plan = format!("version: 1\nname: {name}\ngates:\n");
    for i in 0..n {
        plan += &format!("  - id: g{i}\n    run: sleep {secs}\n");
        if i > 0 {
            plan += &format!("    needs: [g{}]\n", i - 1);
        }
    }
    plan
}

/// Terminal state of each gate in NDJSON output (panics on a gate with two).
fn terminal_states(lines: &[serde_json::Value]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for l in lines {
        if l["event"] == "gate" && is_terminal(&l["state"]) {
            let gate = l["gate"].as_str().expect("gate").to_string();
            let state = l["state"].as_str().expect("state").to_string();
            assert!(
                out.insert(gate.clone(), state).is_none(),
                "{gate} ended twice"
            );
        }
    }
    out
}

/// Lines written so far to an NDJSON file (the last, partial one left out).
fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn pyramid_states_of_gatehouse_run(c: &HaCluster) -> BTreeMap<String, String> {
    let local = RunResult::from_output(
        c.ws.cmd(&["run", "--json", "--no-cache", PYRAMID])
            .output()
            .expect("run"),
    );
    terminal_states(&local.lines)
}

#[test]
fn killing_the_leader_mid_pyramid_loses_nothing_and_the_watch_follows() {
    let Some(mut c) = HaCluster::start(3, "2s") else {
        return;
    };
    c.add_worker("w1", &["--slots", "2", "--workspace", EXAMPLES]);
    c.add_worker("w2", &["--slots", "2", "--workspace", EXAMPLES]);
    let expected = pyramid_states_of_gatehouse_run(&c);
    let leader = c.wait_leader(None);
    let out_path = c.ws.path().join("submit.ndjson");
    let mut submit = c
        .cli(&["submit", "--watch", "--json", PYRAMID])
        .stdout(File::create(&out_path).expect("create"))
        .stderr(File::create(c.ws.path().join("submit.err")).expect("create"))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn submit");
    wait_until(
        "two gates to finish before the failover",
        Duration::from_secs(30),
        || terminal_states(&read_lines(&out_path)).len() >= 2,
    );
    c.coordinators[leader].signal("KILL");
    let new_leader = c.wait_leader(Some(leader));
    assert_ne!(new_leader, leader);
    let mut code = None;
    wait_until("submit --watch to end", Duration::from_secs(90), || {
        code = submit.try_wait().expect("try_wait").map(|s| s.code());
        code.is_some()
    });
    let err = std::fs::read_to_string(c.ws.path().join("submit.err")).unwrap_or_default();
    let lines = read_lines(&out_path);
    assert_eq!(
        code.flatten(),
        Some(1),
        "the pyramid fails on pr-105; stderr: {err}"
    );
    assert_eq!(terminal_states(&lines), expected, "stderr: {err}");
    // Gates running at the failover were adopted from the workers, not run again.
    let reruns: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] == "gate" && is_terminal(&l["state"]))
        .filter(|l| l["attempt"].as_u64().unwrap_or(0) > 1)
        .map(|l| l["gate"].to_string())
        .collect();
    assert!(
        reruns.is_empty(),
        "gates ran again after the failover: {reruns:?}"
    );
    let last = lines.last().expect("output");
    assert_eq!(last["event"], "summary", "{last}");
    // Every gate was shown running at most once per attempt: no event repeated.
    let mut shown: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] == "gate")
        .map(|l| format!("{}/{}/{}", l["gate"], l["state"], l["attempt"]))
        .collect();
    let n = shown.len();
    shown.sort();
    shown.dedup();
    assert_eq!(
        shown.len(),
        n,
        "an event was shown twice across the failover"
    );
}

#[test]
fn a_paused_leader_steps_down_and_nothing_it_writes_after_takeover_survives() {
    let Some(mut c) = HaCluster::start(3, "2s") else {
        return;
    };
    c.add_worker("w1", &["--slots", "2"]);
    let old = c.wait_leader(None);
    let old_term = c.leader_key().expect("leader key").create_revision;
    let plan = chain("chain", 6, "0.7");
    let id = c.submit(old, &plan).expect("submit");
    wait_until("the first gate to pass", Duration::from_secs(20), || {
        c.passed_gates(old, &id) >= 1
    });
    c.coordinators[old].signal("STOP");
    let new = c.wait_leader(Some(old));
    let new_term = c.leader_key().expect("leader key").create_revision;
    assert_ne!(new_term, old_term);
    // The old leader is still paused: anything it writes from now on comes after the
    // takeover.
    let takeover = c.etcd_revision();
    c.coordinators[old].signal("CONT");
    wait_until(
        "the old leader to step down",
        Duration::from_secs(20),
        || !c.serving(old) && c.serving(new),
    );
    // The plan completes under the new leader.
    let done = c.cli(&["watch", "--json", &id]).output().expect("watch");
    let result = RunResult::from_output(done);
    assert_eq!(result.summary()["outcome"], "passed", "{}", result.stderr);
    assert_eq!(terminal_states(&result.lines).len(), 6);
    // Every log chunk the old leader wrote was written before the new term began.
    let chunks = c.etcd_range(&format!("/gatehouse/itest/plans/{id}/log/"));
    assert!(!chunks.is_empty());
    let mut new_chunks = 0;
    for kv in &chunks {
        let (term, _) = codec::chunk_term(&kv.value).expect("chunk decodes");
        if term == old_term {
            assert!(
                kv.mod_revision <= takeover,
                "{} was written by the old leader after the takeover",
                kv.key
            );
        } else {
            assert_eq!(term, new_term, "{}: unknown term", kv.key);
            new_chunks += 1;
        }
    }
    assert!(new_chunks > 0, "the new leader wrote the rest of the log");
    // Its term's components stop in the background, each within the 10 s shutdown
    // timeout (a store write in flight when it was paused may first have to time out),
    // so the line may come after the plan is done.
    wait_until(
        "the old leader to say it stepped down",
        Duration::from_secs(40),
        || {
            std::fs::read_to_string(&c.coordinators[old].log)
                .is_ok_and(|log| log.contains("stopped leading"))
        },
    );
}

#[test]
fn restarting_etcd_mid_plan_lets_the_plan_complete() {
    let Some(mut c) = HaCluster::start(3, "2s") else {
        return;
    };
    c.add_worker("w1", &["--slots", "2"]);
    let leader = c.wait_leader(None);
    let plan = chain("etcd-restart", 8, "0.5");
    let id = c.submit(leader, &plan).expect("submit");
    wait_until("two gates to pass", Duration::from_secs(20), || {
        c.passed_gates(leader, &id) >= 2
    });
    c.etcd.stop();
    // Without etcd the leader cannot prove it leads: once its lease would have run out
    // it stops (and so dispatches nothing), and no replica serves.
    wait_until(
        "the leader to stop leading without etcd",
        Duration::from_secs(20),
        || (0..c.addrs.len()).all(|i| !c.serving(i)),
    );
    c.etcd.start_again();
    let result = RunResult::from_output(c.cli(&["watch", "--json", &id]).output().expect("watch"));
    assert_eq!(result.summary()["outcome"], "passed", "{}", result.stderr);
    let states = terminal_states(&result.lines);
    assert_eq!(states.len(), 8);
    assert!(states.values().all(|s| s == "passed"), "{states:?}");
}

#[test]
fn etcdctl_elect_listen_sees_the_proclaimed_leader_change() {
    let Some(c) = HaCluster::start(3, "2s") else {
        return;
    };
    let leader = c.wait_leader(None);
    let out_path = c.ws.path().join("elect.out");
    let mut listen = support::KillOnDrop(
        std::process::Command::new(support::etcd::etcdctl())
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &c.etcd.endpoint(),
                "elect",
                "--listen",
                ELECTION,
            ])
            .stdout(File::create(&out_path).expect("create"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl"),
    );
    let first = c.url(leader);
    wait_until(
        "etcdctl to print the leader",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&out_path)
                .unwrap_or_default()
                .contains(&first)
        },
    );
    c.coordinators[leader].signal("KILL");
    let next = c.wait_leader(Some(leader));
    let second = c.url(next);
    wait_until(
        "etcdctl to print the new leader",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&out_path)
                .unwrap_or_default()
                .contains(&second)
        },
    );
    let _ = listen.0.kill();
}

#[test]
fn a_standalone_coordinator_killed_mid_plan_resumes_from_its_state_dir() {
    let mut c = Cluster::start_on_fixed_port();
    c.add_worker("w1", &["--slots", "2"]);
    let plan = chain("restart", 6, "0.5");
    let id = c.submit(&plan).expect("submit");
    let mut seen = Vec::new();
    wait_until("two gates to pass", Duration::from_secs(20), || {
        seen = c
            .get(&id)
            .gates
            .iter()
            .filter(|g| g.state == v1::GateState::Passed as i32)
            .map(|g| g.gate_id.clone())
            .collect();
        seen.len() >= 2
    });
    c.coordinator.signal("KILL");
    c.coordinator.wait_exit(Duration::from_secs(10));
    c.restart_coordinator();
    let events = c.watch(&id, 0);
    let t = terminals(&events);
    assert_eq!(t.len(), 6, "every gate ended exactly once: {t:?}");
    assert!(
        t.values().all(|g| g.state == v1::GateState::Passed as i32),
        "{t:?}"
    );
    for gate in &seen {
        assert_eq!(
            t[gate].attempt, 1,
            "{gate} passed before the kill and did not run again"
        );
    }
    // The replay is the full log: sequence numbers from 1 without gaps, ending in the summary.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    support::cluster::summary(&events);
}

#[test]
fn a_leader_shut_down_with_sigterm_resigns_and_another_takes_over_at_once() {
    // A long lease: a takeover within it shows the leader resigned rather than expired.
    let Some(mut c) = HaCluster::start(2, "30s") else {
        return;
    };
    let leader = c.wait_leader(None);
    let follower = 1 - leader;
    // The metrics say who leads: exactly one replica reports gatehouse_is_leader 1.
    let is_leader = |i: usize| support::sample(&support::scrape(&c.http[i]), "gatehouse_is_leader");
    wait_until("the leader's metrics", Duration::from_secs(10), || {
        is_leader(leader) == Some(1.0) && is_leader(follower) == Some(0.0)
    });
    let changes = |i: usize| {
        support::sample(
            &support::scrape(&c.http[i]),
            "gatehouse_leader_changes_total",
        )
    };
    // The first leader a replica sees is not a change.
    wait_until("the follower's metrics", Duration::from_secs(10), || {
        changes(follower) == Some(0.0)
    });
    let started = std::time::Instant::now();
    c.coordinators[leader].signal("TERM");
    assert_eq!(
        c.coordinators[leader].wait_exit(Duration::from_secs(20)),
        Some(0),
        "a graceful shutdown exits 0"
    );
    let next = c.wait_leader(Some(leader));
    assert_ne!(next, leader);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took over after {:?}, not after the 30 s lease",
        started.elapsed()
    );
    // The new leader says so, and counted the change from the old leader to itself.
    wait_until("the new leader's metrics", Duration::from_secs(10), || {
        is_leader(next) == Some(1.0) && changes(next) == Some(1.0)
    });
}

#[test]
fn a_source_plan_finishes_on_its_recorded_commits_after_a_failover_and_a_moved_branch() {
    use support::git::{GitDaemon, Repo};

    let Some(mut c) = HaCluster::start(3, "2s") else {
        return;
    };
    let served = c.ws.path().join("served");
    let repo = Repo::init(&served.join("app"));
    repo.commit(&[("README", "app\n")], "base");
    repo.branch("pr1", "main");
    repo.commit(&[("one.txt", "1\n")], "pr1");
    repo.branch("pr2", "pr1");
    repo.commit(&[("two.txt", "2\n")], "pr2");
    repo.switch("main");
    let daemon = GitDaemon::serve(&served);
    for w in ["w1", "w2"] {
        let cache = c.ws.path().join(format!("git-{w}")).display().to_string();
        c.add_worker(w, &["--slots", "2", "--git-cache", &cache]);
    }
    // pr2's gate checks the content pr2 had when the plan was submitted.
    let doc = format!(
        "version: 1\nname: ha-source\nsource: {{ repo: \"{}\", base: main }}\nitems:\n  - id: pr1\n    ref: pr1\n    gates:\n      - {{ id: slow, run: 'sleep 3 && test -f one.txt' }}\n  - id: pr2\n    ref: pr2\n    deps: [pr1]\n    gates:\n      - {{ id: content, run: 'test \"$(cat two.txt)\" = 2' }}\n",
        daemon.url("app")
    );
    let leader = c.wait_leader(None);
    let id = c.submit(leader, &doc).expect("submit");
    wait_until("pr1/slow to run", Duration::from_secs(30), || {
        let mut client = support::cluster::plan_client(&c.rt, &c.url(leader));
        let req = v1::GetPlanRequest {
            plan_id: id.clone(),
        };
        c.rt.block_on(client.get_plan(req))
            .map(|r| {
                r.into_inner()
                    .gates
                    .iter()
                    .any(|g| g.state == v1::GateState::Running as i32)
            })
            .unwrap_or(false)
    });
    // The branch moves, then the leader dies: the new leader must not resolve again.
    repo.switch("pr2");
    repo.commit(&[("two.txt", "moved\n")], "moved");
    repo.switch("main");
    c.coordinators[leader].signal("KILL");
    let new_leader = c.wait_leader(Some(leader));
    assert_ne!(new_leader, leader);
    wait_until(
        "both gates to pass on the recorded commits",
        Duration::from_secs(90),
        || c.passed_gates(new_leader, &id) == 2,
    );
}

#[test]
fn a_leader_killed_right_after_its_push_is_not_followed_by_a_second_push() {
    use support::git::{GitDaemon, Repo};

    let Some(mut c) = HaCluster::start(3, "2s") else {
        return;
    };
    // A stack pr1 <- pr2, served for pushing from a bare repository whose post-receive
    // hook counts pushes and kills the leader the first time: the push is accepted
    // (the branch moved), the leader never hears so, and someone else lands a commit on
    // top of it at once.
    let work = Repo::init(&c.ws.path().join("work"));
    let base = work.commit(&[("README", "app\n")], "base");
    work.branch("pr1", "main");
    work.commit(&[("one.txt", "1\n")], "pr1");
    work.branch("pr2", "pr1");
    let pr2 = work.commit(&[("two.txt", "2\n")], "pr2");
    work.switch("main");
    let served = c.ws.path().join("served");
    let bare = served.join("app");
    work.clone_bare(&bare);
    let pushes = c.ws.path().join("pushes.log");
    let leader_pid = c.ws.path().join("leader.pid");
    let killed = c.ws.path().join("killed");
    support::git::install_hook(
        &bare,
        "post-receive",
        &format!(
            "#!/bin/sh\ncat >> {pushes}\nif [ ! -e {started} ]; then touch {started}; kill -9 $(cat {pid}); \
             tip=$(git rev-parse refs/heads/main); \
             top=$(GIT_AUTHOR_NAME=o GIT_AUTHOR_EMAIL=o@x GIT_COMMITTER_NAME=o GIT_COMMITTER_EMAIL=o@x git commit-tree -p $tip -m 'landed on top' $tip^{{tree}}); \
             git update-ref refs/heads/main $top $tip; touch {killed}; fi\n",
            pushes = pushes.display(),
            started = c.ws.path().join("started").display(),
            killed = killed.display(),
            pid = leader_pid.display(),
        ),
    );
    let daemon = GitDaemon::serve_writable(&served);
    let git_cache = c.ws.path().join("git-w1").display().to_string();
    c.add_worker("w1", &["--slots", "2", "--git-cache", &git_cache]);

    let leader = c.wait_leader(None);
    std::fs::write(&leader_pid, c.coordinators[leader].pid().to_string()).expect("pid");
    let doc = format!(
        "version: 1\nname: ha-land\npolicy: {{ land: true }}\nsource: {{ repo: \"{}\", base: main }}\nitems:\n  - id: pr1\n    ref: pr1\n    gates: [ {{ id: t, run: 'test -f one.txt' }} ]\n  - id: pr2\n    ref: pr2\n    deps: [pr1]\n    gates: [ {{ id: t, run: 'test -f two.txt' }} ]\n",
        daemon.url("app")
    );
    let id = c.submit(leader, &doc).expect("submit");
    wait_until(
        "the push to kill the leader",
        Duration::from_secs(60),
        || killed.exists(),
    );
    let tip = || {
        let out = support::git::git(&bare)
            .args(["rev-parse", "refs/heads/main"])
            .output()
            .expect("git");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let on_top = tip();
    assert_ne!(on_top, pr2, "another commit landed on top");
    assert_eq!(
        support::git::git(&bare)
            .args(["rev-parse", &format!("{on_top}^")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .expect("git"),
        pr2,
        "on top of the accepted push"
    );
    let new_leader = c.wait_leader(Some(leader));
    assert_ne!(new_leader, leader);

    // The new leader reconciles from the branch (it holds the pushed commit) and
    // reports the plan landed.
    let out = c.cli(&["watch", &id, "--json"]).output().expect("watch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let land: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("json");
    assert_eq!(land["event"], "land", "{stdout}");
    // Reconciled from the branch: no second push refused by the lease, no new round.
    assert!(!stdout.contains("\"respeculate\""), "{stdout}");
    assert_eq!(land["commit"], pr2.as_str());
    assert_eq!(land["base"], base.as_str());
    assert_eq!(land["landed"].as_array().map(Vec::len), Some(2), "{land}");
    let pushed = std::fs::read_to_string(&pushes).unwrap_or_default();
    assert_eq!(pushed.lines().count(), 1, "one push landed: {pushed:?}");
    assert_eq!(tip(), on_top, "nothing pushed over the other commit");
    // The new leader did not even try again: it read the branch first (a second
    // attempt would be refused by its lease, so the hook alone could not tell).
    let log = std::fs::read_to_string(&c.coordinators[new_leader].log).unwrap_or_default();
    assert!(
        log.contains("the logged push had landed; not pushing again"),
        "{}",
        c.coordinators[new_leader].tail()
    );
}
