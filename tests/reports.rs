//! Test reports and flakiness with real test runners: a pytest suite (`--junitxml`) and a
//! cargo-nextest crate (its JUnit output, retries included) run as gates by the real
//! `gatehouse` binary; their reports are read, flaky tests are flagged and remembered,
//! `retry_on: flaky` and quarantine decide, and `gatehouse flakes` lists the history.

mod support;

use serde_json::Value;
use support::Workspace;
use support::tools;

/// A pytest suite: one test that passes, one that always fails, and one that fails on
/// a gate's first attempt only (`GATEHOUSE_ATTEMPT` is the attempt number).
const SUITE: &str = r#"
import os

def test_ok():
    assert 1 + 1 == 2

def test_broken():
    assert 2 * 2 == 5, "arithmetic is broken"

def test_flaky():
    assert os.environ.get("GATEHOUSE_ATTEMPT") != "1", "fails on the first attempt"
"#;

/// A plan of one gate running pytest on `tests/` with `-k select`, and `policy` lines.
fn pytest_plan(name: &str, select: &str, policy: &str) -> String {
    let python = tools::venv().join("bin/python");
    format!(
        "version: 1\nname: {name}\npolicy:\n  retry_backoff: 10ms\n{policy}\ngates:\n  - id: test\n    \
         run: {} -m pytest -q -p no:cacheprovider -k '{select}' --junitxml=out/junit.xml tests\n    \
         reports: [out/*.xml]\n",
        python.display()
    )
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|t| t["test"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn pytest_failures_flakes_retries_and_quarantine_end_to_end() {
    let ws = Workspace::new();
    ws.write("tests/test_math.py", SUITE);

    // 1. Every test, one retry: the first attempt fails two tests; the retry passes the
    //    flaky one, which is flagged, and still fails the broken one.
    ws.write("all.yaml", &pytest_plan("all", "test_", "  retries: 1"));
    let run = ws.run_json("all.yaml", &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let retrying = run
        .lines
        .iter()
        .find(|l| l["state"] == "retrying")
        .expect("a retrying line");
    assert_eq!(
        names(&retrying["tests"]["failed_tests"]),
        ["test_broken", "test_flaky"]
    );
    let end = run.terminal("test");
    assert_eq!(end["state"], "failed");
    assert_eq!(end["attempt"], 2);
    let tests = &end["tests"];
    assert_eq!(
        (tests["passed"].as_u64(), tests["failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(names(&tests["failed_tests"]), ["test_broken"]);
    assert_eq!(
        tests["failed_tests"][0]["message"],
        "AssertionError: arithmetic is broken"
    );
    assert_eq!(tests["failed_tests"][0]["class"], "tests.test_math");
    assert_eq!(names(&tests["flaky_tests"]), ["test_flaky"]);

    // `gatehouse flakes` lists the flaky test, not the broken one (unless --all).
    let out = ws.cmd(&["flakes", "--json"]).output().expect("flakes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = listed["tests"].as_array().expect("tests");
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["test"], "tests.test_math::test_flaky");
    assert_eq!(rows[0]["gate"], "test");
    let score = rows[0]["score"].as_f64().expect("score");
    assert!(score > 0.2 && score < 1.0, "{score}");
    assert_eq!(
        (rows[0]["fails"].as_u64(), rows[0]["runs"].as_u64()),
        (Some(1), Some(2))
    );
    let text = ws.cmd(&["flakes", "--all"]).output().expect("flakes");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("SCORE") && text.contains("test_broken"),
        "{text}"
    );

    // 2. retry_on: flaky. Only the flaky test fails: it is known flaky, so the gate is
    //    retried and passes, flaky, and that pass is not cached.
    let flaky_only = "  retries: 2\n  retry_on: flaky";
    ws.write(
        "flaky.yaml",
        &pytest_plan("flaky", "test_flaky or test_ok", flaky_only),
    );
    let run = ws.run_json("flaky.yaml", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let end = run.terminal("test");
    assert_eq!(
        (end["state"].as_str(), end["attempt"].as_u64()),
        (Some("passed"), Some(2))
    );
    assert_eq!(end["flaky"], true);
    assert_eq!(names(&end["tests"]["flaky_tests"]), ["test_flaky"]);
    let again = ws.run_json("flaky.yaml", &[]);
    assert_eq!(
        again.terminal("test")["cached"],
        false,
        "a flaky pass is measured again"
    );

    //    A real failure next to it: no retry, one attempt.
    ws.write("real.yaml", &pytest_plan("real", "test_", flaky_only));
    let run = ws.run_json("real.yaml", &[]);
    let end = run.terminal("test");
    assert_eq!(
        (end["state"].as_str(), end["attempt"].as_u64()),
        (Some("failed"), Some(1))
    );
    assert!(run.lines.iter().all(|l| l["state"] != "retrying"));

    // 3. Quarantine: the broken test by name, the flaky one by its score. The gate fails
    //    only through them, so it passes, flaky, with both quarantined, uncached.
    let quarantine = "  quarantine:\n    threshold: 0.2\n    tests:\n      \
                      - { test: \"*::test_broken\", until: 2099-12-31 }";
    ws.write("quarantine.yaml", &pytest_plan("q", "test_", quarantine));
    let run = ws.run_json("quarantine.yaml", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let end = run.terminal("test");
    assert_eq!(
        (end["state"].as_str(), end["exit_code"].as_i64()),
        (Some("passed"), Some(1))
    );
    assert_eq!(end["flaky"], true);
    assert_eq!(
        names(&end["tests"]["quarantined_tests"]),
        ["test_broken", "test_flaky"]
    );
    let again = ws.run_json("quarantine.yaml", &[]);
    assert_eq!(
        again.terminal("test")["cached"],
        false,
        "a quarantined pass is not cached"
    );
    //    Expired: the same failure fails the gate.
    let expired = quarantine
        .replace("2099-12-31", "2020-01-01")
        .replace("0.2", "1");
    ws.write("expired.yaml", &pytest_plan("q", "test_", &expired));
    assert_eq!(ws.run_json("expired.yaml", &[]).state("test"), "failed");

    // The text output lists the failed tests before the output tail.
    let out = ws
        .cmd(&["run", "--no-cache", "real.yaml"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    let failed_at = text
        .find("x tests.test_math::test_broken: AssertionError")
        .expect(&text);
    let gate_at = text.find("failed    test").expect(&text);
    assert!(gate_at < failed_at, "{text}");
}

#[test]
fn a_declared_report_that_is_missing_or_broken_is_a_warning_not_a_failure() {
    let ws = Workspace::new();
    ws.write(
        "plan.yaml",
        "version: 1\nname: r\ngates:\n  - id: none\n    run: \"true\"\n    reports: [\"none/*.xml\"]\n\
         \x20 - id: broken\n    run: \"mkdir -p out && printf '<testsuite><testcase' > out/cut.xml\"\n    \
         reports: [\"out/*.xml\"]\n\
         \x20 - id: stale\n    run: \"true\"\n    reports: [old.xml]\n",
    );
    let old = ws.write(
        "old.xml",
        "<testsuite name='s'><testcase name='t'/></testsuite>",
    );
    // The stale report is older than the attempt: written an hour ago.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .and_then(|f| f.set_modified(hour_ago))
        .expect("age the report");
    let run = ws.run_json("plan.yaml", &["--no-cache"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for gate in ["none", "broken", "stale"] {
        assert_eq!(run.state(gate), "passed", "{gate}");
    }
    assert_eq!(
        run.terminal("none")["tests"]["missing_reports"][0],
        "none/*.xml"
    );
    let broken = &run.terminal("broken")["tests"]["unreadable_reports"][0];
    assert_eq!(broken["path"], "out/cut.xml");
    assert!(
        broken["reason"]
            .as_str()
            .unwrap_or("")
            .contains("truncated")
            || broken["reason"]
                .as_str()
                .unwrap_or("")
                .contains("invalid XML"),
        "{broken}"
    );
    assert_eq!(
        run.terminal("stale")["tests"]["missing_reports"][0],
        "old.xml"
    );
}

/// A crate with a passing test, a failing one and one that fails on its first run only,
/// which nextest retries (its JUnit report then says `flakyFailure`).
fn nextest_crate(ws: &Workspace) {
    ws.write(
        "crate/Cargo.toml",
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    );
    ws.write(
        "crate/src/lib.rs",
        r#"
#[cfg(test)]
mod tests {
    #[test]
    fn passes() {}

    #[test]
    fn fails() {
        assert_eq!(1 + 1, 3, "one and one");
    }

    #[test]
    fn flaky_once() {
        let marker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ran-once");
        if !marker.exists() {
            std::fs::write(&marker, b"").unwrap();
            panic!("first run fails");
        }
    }
}
"#,
    );
    ws.write(
        "crate/.config/nextest.toml",
        "[profile.ci]\nretries = 1\nfail-fast = false\n[profile.ci.junit]\npath = \"junit.xml\"\n",
    );
}

#[test]
fn cargo_nextest_junit_reports_are_read_with_their_retries() {
    let ws = Workspace::new();
    nextest_crate(&ws);
    ws.write(
        "plan.yaml",
        "version: 1\nname: n\ngates:\n  - id: nextest\n    workdir: crate\n    \
         run: cargo nextest run --profile ci --offline\n    env: { CARGO_TARGET_DIR: target }\n    \
         timeout: 10m\n    reports: [target/nextest/ci/junit.xml]\n",
    );
    let run = ws.run_json("plan.yaml", &[]);
    let end = run.terminal("nextest");
    assert_eq!(end["state"], "failed", "{}", run.stderr);
    let tests = &end["tests"];
    assert_eq!(tests["files"], 1, "{end}");
    assert_eq!(
        (tests["passed"].as_u64(), tests["failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(tests["flaky_reruns"], 1);
    let failed = &tests["failed_tests"][0];
    assert_eq!(failed["name"], "tiny::tests::fails");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or("")
            .contains("one and one")
            || failed["message"]
                .as_str()
                .unwrap_or("")
                .contains("panicked"),
        "{failed}"
    );
    // The rerun flake is flaky within the report, with how its first run failed.
    assert_eq!(names(&tests["flaky_tests"]), ["tests::flaky_once"]);
    let flaky = &tests["flaky_tests"][0];
    assert!(
        flaky["message"].as_str().unwrap_or("").contains("panicked"),
        "{flaky}"
    );
}

#[test]
fn a_cluster_judges_tests_the_same_and_its_history_survives_a_leader_failover() {
    let Some(mut c) = support::ha::HaCluster::start(3, "2s") else {
        return;
    };
    c.ws.write("tests/test_math.py", SUITE);
    let workspace = c.ws.path().to_str().expect("utf-8").to_string();
    c.add_worker("w1", &["--workspace", &workspace]);
    let submit = |c: &support::ha::HaCluster, plan: &str| {
        let out = c
            .cli(&["submit", "--watch", "--json", plan])
            .output()
            .expect("submit");
        support::RunResult::from_output(out)
    };

    // The flaky test is flagged on the worker's retry, as in `gatehouse run`.
    c.ws.write("all.yaml", &pytest_plan("all", "test_", "  retries: 1"));
    let run = submit(&c, "all.yaml");
    let end = run.terminal("test");
    assert_eq!(end["state"], "failed", "{}", run.stderr);
    assert_eq!(names(&end["tests"]["failed_tests"]), ["test_broken"]);
    assert_eq!(names(&end["tests"]["flaky_tests"]), ["test_flaky"]);

    // The API and `status --json` say the same; the leader's metrics count the tests.
    let plan_id = run
        .lines
        .iter()
        .find_map(|l| l["plan_id"].as_str())
        .expect("submit names the plan")
        .to_string();
    let out = c
        .cli(&["status", "--json", &plan_id])
        .output()
        .expect("status");
    let status: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let gate = &status["gates"][0];
    assert_eq!(
        names(&gate["tests"]["failed_tests"]),
        ["test_broken"],
        "{status}"
    );
    assert_eq!(
        names(&gate["tests"]["flaky_tests"]),
        ["test_flaky"],
        "{status}"
    );
    let leader = c.wait_leader(None);
    let metrics = support::scrape(&c.http[leader]);
    let tests = |outcome: &str| {
        support::sample(
            &metrics,
            &format!("gatehouse_tests_total{{outcome=\"{outcome}\"}}"),
        )
    };
    // Two attempts of three tests: 2 + 1 failed, 1 + 2 passed.
    assert_eq!(
        (tests("failed"), tests("passed")),
        (Some(3.0), Some(3.0)),
        "{metrics}"
    );
    assert_eq!(
        support::sample(&metrics, "gatehouse_tests_flaky_total"),
        Some(1.0)
    );

    // The leader dies; the next one reads the history back from etcd.
    c.coordinators[leader].signal("KILL");
    c.wait_leader(Some(leader));
    let out = c.cli(&["flakes", "--json"]).output().expect("flakes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        listed["tests"][0]["test"], "tests.test_math::test_flaky",
        "{listed}"
    );
    assert!(
        listed["tests"][0]["score"].as_f64().unwrap_or(0.0) > 0.2,
        "{listed}"
    );

    // It knows the test flaky: retry_on: flaky retries it, and quarantine by score holds.
    let flaky_only = "  retries: 2\n  retry_on: flaky";
    c.ws.write(
        "flaky.yaml",
        &pytest_plan("flaky", "test_flaky or test_ok", flaky_only),
    );
    let end = submit(&c, "flaky.yaml").terminal("test").clone();
    assert_eq!(
        (end["state"].as_str(), end["attempt"].as_u64()),
        (Some("passed"), Some(2))
    );
    assert_eq!(end["flaky"], true);
    let quarantine = "  quarantine:\n    threshold: 0.2";
    c.ws.write(
        "q.yaml",
        &pytest_plan("q", "test_flaky or test_ok", quarantine),
    );
    let run = submit(&c, "q.yaml");
    let end = run.terminal("test");
    assert_eq!(
        (end["state"].as_str(), end["attempt"].as_u64()),
        (Some("passed"), Some(1))
    );
    assert_eq!(names(&end["tests"]["quarantined_tests"]), ["test_flaky"]);
    let again = submit(&c, "q.yaml");
    assert_eq!(
        again.terminal("test")["cached"],
        false,
        "a quarantined pass is not cached"
    );
}

#[test]
fn the_example_plan_shows_a_flake_and_a_real_failure() {
    let ws = Workspace::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/test-reports");
    for file in ["plan.yaml", "fake-suite.sh"] {
        let text = std::fs::read_to_string(format!("{example}/{file}")).expect("example");
        ws.write(file, &text);
    }
    let run = ws.run_json("plan.yaml", &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let unit = run.terminal("unit");
    assert_eq!(
        (unit["state"].as_str(), unit["flaky"].as_bool()),
        (Some("passed"), Some(true))
    );
    assert_eq!(
        names(&unit["tests"]["flaky_tests"]),
        ["test_retry_on_timeout"]
    );
    let math = run.terminal("math");
    assert_eq!(
        (math["state"].as_str(), math["attempt"].as_u64()),
        (Some("failed"), Some(1))
    );
    assert_eq!(
        names(&math["tests"]["failed_tests"]),
        ["test_retry_on_timeout", "test_divide"]
    );
    assert_eq!(math["tests"]["failed_tests"][1]["line"], 12);
}
