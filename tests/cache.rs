//! Integration tests of the shared result cache: a real coordinator and real worker
//! processes serving the cache on loopback (`--cache-listen 127.0.0.1:0`). Every gate
//! appends a line to its own counter file, so a test can tell how often each one
//! really ran.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use gatehouse_cache::node_stats;
use gatehouse_proto::v1;
use serde_json::Value;
use support::cluster::{Cluster, dispatched, submit_with, summary};
use support::{RunResult, wait_until};

/// Adds one cache node per entry of `extra` (more flags each) that also runs gates, and
/// waits until the coordinator knows them all as cache nodes.
fn cache_cluster(mut c: Cluster, extra: &[&[&str]]) -> Cluster {
    for (i, more) in extra.iter().enumerate() {
        let mut args = vec!["--slots", "2", "--cache-listen", "127.0.0.1:0"];
        args.extend_from_slice(more);
        c.add_worker(&format!("w{i}"), &args);
    }
    wait_for_nodes(&c, extra.len());
    c
}

/// Waits until the coordinator lists `nodes` cache nodes and every one of them has
/// received that membership (it reaches workers within about 100 ms; a result written
/// before then goes to the replicas of the older membership).
fn wait_for_nodes(c: &Cluster, nodes: usize) {
    wait_until(
        &format!("{nodes} cache nodes"),
        Duration::from_secs(20),
        || {
            let urls: Vec<String> = c
                .list_workers()
                .into_iter()
                .map(|w| w.cache_url)
                .filter(|u| !u.is_empty())
                .collect();
            urls.len() == nodes && urls.iter().all(|u| members_seen_by(c, u) == nodes)
        },
    );
}

/// How many nodes the membership last received by the cache node at `url` names.
fn members_seen_by(c: &Cluster, url: &str) -> usize {
    c.rt.block_on(node_stats(url, Duration::from_secs(2), &Default::default()))
        .ok()
        .and_then(|s| s.members)
        .map_or(0, |m| m.nodes.len())
}

/// A DAG of `n` gates (each needs the previous two), each counting its runs in
/// `dir/count-<i>`; `salt` makes every key new.
fn counted_plan(dir: &Path, n: usize, salt: &str) -> String {
    let mut doc = format!("version: 1\nname: counted\npolicy:\n  cache_salt: \"{salt}\"\ngates:\n");
    for i in 0..n {
        let needs: Vec<String> = (i.saturating_sub(2)..i).map(|d| format!("g{d}")).collect();
        doc.push_str(&format!(
            "  - id: g{i}\n    run: echo ran >> {}/count-{i}\n    needs: [{}]\n",
            dir.display(),
            needs.join(", ")
        ));
    }
    doc
}

fn runs(dir: &Path, i: usize) -> usize {
    std::fs::read_to_string(dir.join(format!("count-{i}")))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Submits with the cache and returns the plan's events.
fn run_cached(c: &Cluster, doc: &str) -> Vec<v1::PlanEvent> {
    let id = submit_with(&c.rt, &c.url(), doc, true).expect("submit");
    c.watch(&id, 0)
}

/// `gatehouse cache stats --json` against the cluster.
fn cache_stats(c: &Cluster) -> Value {
    let out = c
        .cli(&["cache", "stats", "--json"])
        .output()
        .expect("stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats json")
}

/// Cache writes are asynchronous (the worker reports its result, then writes the
/// entry to the replicas): wait until `n` entries landed on the nodes.
fn wait_for_puts(c: &Cluster, n: u64) {
    wait_until(
        &format!("{n} cache writes"),
        Duration::from_secs(10),
        || cache_stats(c)["total"]["puts"].as_u64() >= Some(n),
    );
}

#[test]
fn a_second_run_is_all_hits_and_survives_losing_a_node_and_the_coordinator() {
    let mut c = cache_cluster(Cluster::start_on_fixed_port(), &[&[], &[], &[]]);
    let gates = 12;
    let doc = counted_plan(c.ws.path(), gates, "a");

    let first = run_cached(&c, &doc);
    assert_eq!(
        summary(&first).counts.as_ref().expect("counts").passed,
        gates as u32
    );
    assert_eq!(summary(&first).counts.as_ref().expect("counts").cached, 0);
    // Every passed gate went to R = 2 replicas.
    wait_for_puts(&c, 2 * gates as u64);
    // A new coordinator (nothing in memory; the workers come back to it): what follows
    // can only come from the cache nodes.
    c.coordinator.signal("KILL");
    let _ = c.coordinator.wait_exit(Duration::from_secs(5));
    c.restart_coordinator();
    wait_for_nodes(&c, 3);

    let second = run_cached(&c, &doc);
    let counts = summary(&second).counts.expect("counts");
    assert_eq!((counts.passed, counts.cached), (gates as u32, gates as u32));
    assert_eq!(
        dispatched(&second),
        0,
        "a fully cached plan dispatches nothing"
    );
    for i in 0..gates {
        assert_eq!(runs(c.ws.path(), i), 1, "gate g{i} ran again");
    }
    let stats = cache_stats(&c);
    assert_eq!(stats["nodes"].as_array().expect("nodes").len(), 3);
    assert_eq!(stats["replicas"], 2);

    // kill -9 one node: every key still has a live replica.
    c.workers[0].signal("KILL");
    let third = run_cached(&c, &doc);
    let counts = summary(&third).counts.expect("counts");
    assert_eq!((counts.passed, counts.cached), (gates as u32, gates as u32));
    for i in 0..gates {
        assert_eq!(
            runs(c.ws.path(), i),
            1,
            "gate g{i} ran again after a node was lost"
        );
    }

    // `gatehouse run --cache` on this machine finds the cluster's entries too.
    let node = c
        .list_workers()
        .into_iter()
        .map(|w| w.cache_url)
        .find(|u| !u.is_empty())
        .expect("a cache node");
    let plan = c.ws.write("counted.yaml", &doc);
    let local = RunResult::from_output(
        c.ws.cmd(&["run", "--json", "--cache", &node, "--cache-dir"])
            .arg(c.ws.path().join("local-cache"))
            .arg(&plan)
            .output()
            .expect("run"),
    );
    assert_eq!(local.code, 0, "{}", local.stderr);
    assert_eq!(local.summary()["gates"]["cached"], gates as u64);
    for i in 0..gates {
        assert_eq!(runs(c.ws.path(), i), 1, "gatehouse run ran g{i}");
    }
}

#[test]
fn plans_sharing_gates_run_each_shared_gate_once() {
    let c = cache_cluster(Cluster::start(), &[&[], &[]]);
    let dir = c.ws.path();
    // `lint` and `build` are the same in both plans (same command, same key); each
    // plan also has a test of its own. The shared gates take a while, so both plans
    // reach them while the first run is still going.
    let doc = |name: &str| {
        format!(
            "version: 1\nname: {name}\ngates:\n\
             - id: lint\n  run: echo ran >> {d}/count-lint; sleep 0.5\n\
             - id: build\n  run: echo ran >> {d}/count-build; sleep 0.5\n  needs: [lint]\n\
             - id: test\n  run: echo ran >> {d}/count-{name}\n  needs: [build]\n",
            d = dir.display()
        )
    };
    let a = submit_with(&c.rt, &c.url(), &doc("a"), true).expect("submit a");
    let b = submit_with(&c.rt, &c.url(), &doc("b"), true).expect("submit b");
    let (ea, eb) = (c.watch(&a, 0), c.watch(&b, 0));
    for events in [&ea, &eb] {
        assert_eq!(summary(events).outcome, v1::PlanOutcome::Passed as i32);
    }
    let count = |name: &str| {
        std::fs::read_to_string(dir.join(format!("count-{name}")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(count("lint"), 1, "lint ran once for both plans");
    assert_eq!(count("build"), 1, "build ran once for both plans");
    assert_eq!((count("a"), count("b")), (1, 1));
    let cached = |e: &[v1::PlanEvent]| summary(e).counts.as_ref().expect("counts").cached;
    assert_eq!(
        cached(&ea) + cached(&eb),
        2,
        "one plan got lint and build from the other"
    );
}

#[test]
fn a_hung_cache_node_does_not_stall_scheduling() {
    // Liveness 30 s: the stopped node stays a member for the whole test, as a node
    // that hangs without its session breaking would. It has too little memory for any
    // gate (256 MiB by default), so only its cache role matters.
    let c = cache_cluster(
        Cluster::start_with_liveness("30s"),
        &[&[], &[], &["--memory", "128Mi"]],
    );
    let chain = |salt: &str| {
        let mut doc =
            format!("version: 1\nname: chain\npolicy:\n  cache_salt: \"{salt}\"\ngates:\n");
        for i in 0..20 {
            let needs = if i == 0 {
                String::new()
            } else {
                format!("g{}", i - 1)
            };
            doc.push_str(&format!(
                "  - id: g{i}\n    run: \"true\"\n    needs: [{needs}]\n"
            ));
        }
        doc
    };
    let timed = |salt: &str| {
        let t = Instant::now();
        let events = run_cached(&c, &chain(salt));
        assert_eq!(summary(&events).outcome, v1::PlanOutcome::Passed as i32);
        t.elapsed()
    };
    let baseline = timed("before");
    c.workers[2].signal("STOP");
    // Twenty lookups one after the other, two thirds of them placed on the hung node:
    // without a bound each would wait for it.
    let stopped = timed("stopped");
    c.workers[2].signal("CONT");
    // One lookup timeout (250 ms) when the node is first found hung, maybe another when
    // it is probed again, and slack for a loaded machine.
    assert!(
        stopped < baseline + Duration::from_millis(1500),
        "with a hung node: {stopped:?}, before: {baseline:?}"
    );
}
