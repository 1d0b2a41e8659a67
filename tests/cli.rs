//! Integration tests: the real `gatehouse` binary on real plans, real processes.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::*;

const PASS_FAIL: &str = r#"
version: 1
name: skips
gates:
  - { id: a, run: "echo boom >&2; exit 3" }
  - { id: b, run: "true", needs: [a] }
  - { id: c, run: "true", needs: [b] }
  - { id: d, run: "true" }
"#;

#[test]
fn example_pyramid_runs_with_skips_and_merge_order() {
    let ws = Workspace::new();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/merge-pyramid.yaml"
    );
    let cache = ws.path().join("cache");
    let cache = cache.to_str().expect("utf-8 path");
    let r = ws.run_json(example, &["--cache-dir", cache]);
    assert_eq!(
        r.code, 1,
        "a gate fails in the example; stderr: {}",
        r.stderr
    );
    assert_eq!(r.state("pr-105/integration"), "failed");
    assert_eq!(r.state("pr-107/package"), "skipped");
    assert_eq!(r.terminal("pr-107/package")["cause"], "pr-105/integration");
    let s = r.summary();
    assert_eq!(s["outcome"], "failed");
    assert_eq!(s["gates"]["total"], 12);
    assert_eq!(s["gates"]["passed"], 10);
    assert_eq!(s["gates"]["skipped"], 1);
    assert_eq!(
        s["merge_order"],
        serde_json::json!(["pr-101", "pr-102", "pr-103", "pr-104", "pr-106"])
    );
    assert_eq!(
        s["levels"],
        serde_json::json!([
            ["pr-101", "pr-104", "pr-106"],
            ["pr-102", "pr-105"],
            ["pr-103", "pr-107"]
        ])
    );
    // Second run: everything that passed comes from the cache.
    let r2 = ws.run_json(example, &["--cache-dir", cache]);
    assert_eq!(r2.summary()["gates"]["cached"], 10);
    assert_eq!(r2.terminal("pr-101/fmt")["cached"], true);
    assert_eq!(
        r2.terminal("pr-105/integration")["cached"],
        false,
        "failures are never cached"
    );
}

#[test]
fn json_output_has_one_terminal_line_per_gate_and_a_summary() {
    let ws = Workspace::new();
    ws.write("plan.yaml", PASS_FAIL);
    let r = ws.run_json("plan.yaml", &["--no-cache"]);
    assert_eq!(r.code, 1);
    for gate in ["a", "b", "c", "d"] {
        let t = r.terminal(gate);
        for key in [
            "event",
            "gate",
            "state",
            "attempt",
            "cached",
            "flaky",
            "exit_code",
            "duration_ms",
            "worker",
        ] {
            assert!(t.get(key).is_some(), "{gate} line lacks {key}: {t}");
        }
    }
    let a = r.terminal("a");
    assert_eq!(a["exit_code"], 3);
    assert_eq!(a["worker"], "local-0");
    assert_eq!(a["stderr_tail"], "boom\n");
    let s = r.summary();
    for key in [
        "plan",
        "outcome",
        "gates",
        "merge_order",
        "levels",
        "duration_ms",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    for key in [
        "total",
        "passed",
        "failed",
        "timed_out",
        "skipped",
        "cancelled",
        "cached",
    ] {
        assert!(s["gates"].get(key).is_some(), "summary.gates lacks {key}");
    }
    assert_eq!(s["plan"], "skips");
    assert_eq!(s["levels"], serde_json::json!([["a", "d"], ["b"], ["c"]]));
    let summaries = r.lines.iter().filter(|l| l["event"] == "summary").count();
    assert_eq!(summaries, 1);
}

#[test]
fn failure_skips_dependents_and_independent_gates_run() {
    let ws = Workspace::new();
    ws.write("plan.yaml", PASS_FAIL);
    let r = ws.run_json("plan.yaml", &["--no-cache"]);
    assert_eq!(r.state("a"), "failed");
    assert_eq!(r.state("b"), "skipped");
    assert_eq!(r.state("c"), "skipped");
    assert_eq!(r.state("d"), "passed");
    assert_eq!(r.terminal("c")["cause"], "a");
}

#[test]
fn all_passed_exits_zero_and_reads_stdin_and_json_plans() {
    let ws = Workspace::new();
    let plan = "version: 1\nname: ok\ngates:\n  - { id: a, run: 'true' }\n  - { id: b, run: 'true', needs: [a] }\n";
    let mut child = ws
        .cmd(&["run", "--json", "--no-cache", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), plan.as_bytes())
        .expect("write plan");
    drop(child.stdin.take());
    let r = RunResult::from_output(child.wait_with_output().expect("wait"));
    assert_eq!(r.code, 0);
    assert_eq!(r.summary()["outcome"], "passed");

    ws.write(
        "plan.json",
        r#"{"version":1,"name":"j","gates":[{"id":"a","run":"true"},{"id":"b","run":"exit 0","needs":["a"]}]}"#,
    );
    let r = ws.run_json("plan.json", &["--no-cache"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["gates"]["passed"], 2);
}

#[test]
fn fail_fast_cancels_running_gates_and_skips_the_rest() {
    let ws = Workspace::new();
    ws.write(
        "plan.yaml",
        r#"
version: 1
name: ff
policy: { fail_fast: true }
gates:
  - { id: slow, run: "echo $$ > slow.pid; exec sleep 300" }
  - { id: bad, run: "while [ ! -s slow.pid ]; do sleep 0.01; done; exit 1" }
  - { id: later, run: "true", needs: [bad] }
  - { id: other, run: "true", needs: [slow] }
"#,
    );
    let r = ws.run_json(
        "plan.yaml",
        &["--no-cache", "-j", "2", "--kill-grace", "1s"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.state("bad"), "failed");
    assert_eq!(r.state("slow"), "cancelled");
    assert_eq!(r.state("later"), "skipped");
    assert_eq!(r.state("other"), "skipped");
    assert_eq!(r.summary()["outcome"], "failed");
    let pid = read_pid(&ws.path().join("slow.pid")).expect("slow gate wrote its pid");
    assert!(!process_alive(pid), "cancelled gate's process is gone");
}

#[test]
fn retry_then_pass_is_flaky() {
    let ws = Workspace::new();
    ws.write(
        "plan.yaml",
        r#"
version: 1
name: flaky
policy: { retry_backoff: 10ms }
gates:
  - id: sometimes
    retries: 2
    run: |
      n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count
      [ "$n" -ge 2 ] || { echo "attempt $n failed" >&2; exit 1; }
"#,
    );
    let r = ws.run_json("plan.yaml", &["--no-cache"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = r.terminal("sometimes");
    assert_eq!(t["state"], "passed");
    assert_eq!(t["flaky"], true);
    assert_eq!(t["attempt"], 2);
    let retrying: Vec<&Value> = r
        .lines
        .iter()
        .filter(|l| l["state"] == "retrying")
        .collect();
    assert_eq!(retrying.len(), 1);
    assert_eq!(retrying[0]["stderr_tail"], "attempt 1 failed\n");
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let ws = Workspace::new();
    ws.write(
        "plan.yaml",
        r#"
version: 1
name: timeout
gates:
  - id: hangs
    timeout: 500ms
    run: "sleep 300 & echo $! > grandchild.pid; wait"
"#,
    );
    let r = ws.run_json("plan.yaml", &["--no-cache", "--kill-grace", "1s"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.state("hangs"), "timed_out");
    let pid = read_pid(&ws.path().join("grandchild.pid")).expect("grandchild pid written");
    wait_until(
        "the grandchild sleep to be gone",
        Duration::from_secs(5),
        || !process_alive(pid),
    );
}

#[test]
fn ctrl_c_cancels_and_exits_130_leaving_nothing_running() {
    let ws = Workspace::new();
    ws.write(
        "plan.yaml",
        r#"
version: 1
name: interrupt
gates:
  - { id: long, run: "sleep 300 & echo $! > grandchild.pid; wait" }
  - { id: after, run: "true", needs: [long] }
"#,
    );
    let child = ws
        .cmd(&[
            "run",
            "--json",
            "--no-cache",
            "--kill-grace",
            "2s",
            "plan.yaml",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut child = KillOnDrop(child);
    let pid_file = ws.path().join("grandchild.pid");
    wait_until(
        "the gate to start its grandchild",
        Duration::from_secs(10),
        || read_pid(&pid_file).is_some(),
    );
    let grandchild = read_pid(&pid_file).expect("pid");
    // SIGINT, as Ctrl-C in a terminal would deliver it.
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let stdout = child.0.stdout.take().expect("stdout");
    let lines: Vec<Value> = BufReader::new(stdout)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("line")).expect("json"))
        .collect();
    let code = child.0.wait().expect("wait").code();
    assert_eq!(code, Some(130));
    let state = |g: &str| {
        lines
            .iter()
            .find(|l| l["gate"] == g && is_terminal(&l["state"]))
            .map(|l| l["state"].clone())
    };
    assert_eq!(state("long"), Some("cancelled".into()));
    assert_eq!(state("after"), Some("cancelled".into()));
    assert_eq!(
        lines.last().map(|l| l["outcome"].clone()),
        Some("cancelled".into())
    );
    wait_until("the grandchild to be gone", Duration::from_secs(5), || {
        !process_alive(grandchild)
    });
}

#[test]
fn cache_hits_on_second_run_and_misses_after_an_input_changes() {
    let ws = Workspace::new();
    ws.write("src/a.txt", "one\n");
    ws.write(
        "plan.yaml",
        r#"
version: 1
name: cached
gates:
  - { id: hash, run: "cat src/a.txt >> ran.log", inputs: ["src/**"] }
  - { id: after, run: "echo after >> ran.log", needs: [hash] }
  - { id: never, run: "echo never >> ran.log", cache: false }
"#,
    );
    let cached = |r: &RunResult, g: &str| r.terminal(g)["cached"].as_bool().expect("bool");
    let r1 = ws.run_json("plan.yaml", &[]);
    assert_eq!(r1.code, 0, "{}", r1.stderr);
    assert!(!cached(&r1, "hash") && !cached(&r1, "after"));
    assert!(
        ws.path().join(".gatehouse/cache").is_dir(),
        "default cache location"
    );

    let r2 = ws.run_json("plan.yaml", &[]);
    assert!(
        cached(&r2, "hash") && cached(&r2, "after"),
        "second run hits"
    );
    assert!(!cached(&r2, "never"), "cache: false always runs");
    assert_eq!(r2.summary()["gates"]["cached"], 2);

    ws.write("src/a.txt", "two\n");
    let r3 = ws.run_json("plan.yaml", &[]);
    assert!(!cached(&r3, "hash"), "changed input misses");
    assert!(
        !cached(&r3, "after"),
        "dependents of a changed gate miss too"
    );
    let log = std::fs::read_to_string(ws.path().join("ran.log")).expect("log");
    assert_eq!(
        log.matches("after").count(),
        2,
        "after ran in runs 1 and 3 only: {log}"
    );

    let r4 = ws.run_json("plan.yaml", &["--no-cache"]);
    assert!(!cached(&r4, "hash"), "--no-cache never reads the cache");
}

#[test]
fn corrupt_cache_entry_is_a_miss() {
    let ws = Workspace::new();
    ws.write(
        "plan.yaml",
        "version: 1\nname: c\ngates:\n  - { id: a, run: 'echo ran >> ran.log' }\n",
    );
    assert_eq!(ws.run_json("plan.yaml", &[]).code, 0);
    let mut entries = Vec::new();
    for e in walk(&ws.path().join(".gatehouse/cache")) {
        entries.push(e);
    }
    assert_eq!(entries.len(), 1, "one entry: {entries:?}");
    std::fs::write(&entries[0], b"garbage").expect("corrupt");
    let r = ws.run_json("plan.yaml", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.terminal("a")["cached"], false);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn closed_stdout_does_not_crash_the_run() {
    let ws = Workspace::new();
    let mut plan = String::from("version: 1\nname: many\ngates:\n");
    for i in 0..200 {
        plan.push_str(&format!("  - {{ id: g{i}, run: 'true' }}\n"));
    }
    ws.write("plan.yaml", &plan);
    let mut child = ws
        .cmd(&["run", "--no-cache", "plan.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Like `| head -1`: read one line, then close the pipe.
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    assert!(first.starts_with("passed"), "{first:?}");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "no panic on EPIPE: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn gates_with_labels_run_only_where_the_labels_match() {
    let ws = Workspace::new();
    ws.write(
        "plan.yaml",
        "version: 1\nname: labels\ngates:\n  - { id: arm, run: 'true', labels: { arch: arm64 } }\n  - { id: any, run: 'true' }\n",
    );
    let r = ws.run_json("plan.yaml", &["--no-cache"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.state("arm"), "failed");
    assert_eq!(r.terminal("arm")["reason"], "unschedulable");
    assert_eq!(r.state("any"), "passed");
    let r = ws.run_json(
        "plan.yaml",
        &["--no-cache", "--labels", "arch=arm64,os=linux"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn json_logs_are_one_object_per_line_and_a_bad_level_is_a_usage_error() {
    let ws = Workspace::new();
    let plan = ws.write(
        "p.yaml",
        "version: 1\nname: p\ngates:\n  - id: a\n    run: \"true\"\n",
    );
    let plan = plan.to_str().expect("utf-8");
    let out = ws
        .cmd(&[
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "run",
            "-q",
            "--no-cache",
            plan,
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "debug logs expected");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
    }
    // Pretty logs into a pipe carry no terminal colour codes.
    let out = ws
        .cmd(&["--log-level", "debug", "run", "-q", "--no-cache", plan])
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    assert!(!out.stderr.is_empty() && !out.stderr.contains(&0x1b));
    let out = ws
        .cmd(&["--log-level", "bogus[=", "run", plan])
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --log-level"));
}
