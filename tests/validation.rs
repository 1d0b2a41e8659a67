//! Integration tests: every validation error, through the real binary. An invalid plan
//! exits 2, names the file, the offending id and (YAML) the line, and never starts a gate.

mod support;

use support::*;

/// (plan text, substrings the error must contain).
const CASES: &[(&str, &str, &[&str])] = &[
    (
        "duplicate gate id",
        "version: 1\nname: x\ngates:\n  - { id: a, run: 'true' }\n  - { id: a, run: 'true' }\n",
        &["plan.yaml:5", "\"a\""],
    ),
    (
        "duplicate item id",
        "version: 1\nname: x\nitems:\n  - id: p\n    gates: [{ id: a, run: 'true' }]\n  - id: p\n    gates: [{ id: b, run: 'true' }]\n",
        &["plan.yaml:6", "\"p\""],
    ),
    (
        "unknown needs",
        "version: 1\nname: x\ngates:\n  - { id: a, run: 'true' }\n  - { id: b, run: 'true', needs: [nope] }\n",
        &["plan.yaml:5", "\"nope\""],
    ),
    (
        "unknown deps",
        "version: 1\nname: x\nitems:\n  - id: p\n    deps: [ghost]\n    gates: [{ id: a, run: 'true' }]\n",
        &["plan.yaml:5", "\"ghost\""],
    ),
    (
        "self dependency",
        "version: 1\nname: x\ngates:\n  - { id: a, run: 'true', needs: [a] }\n",
        &["plan.yaml:4", "\"a\""],
    ),
    (
        "cycle across items",
        "version: 1\nname: x\nitems:\n  - id: pr-101\n    gates:\n      - { id: test, run: 'true', needs: [pr-102/lint] }\n  - id: pr-102\n    deps: [pr-101]\n    gates:\n      - { id: lint, run: 'true' }\n",
        &["cycle", "pr-101/test", "pr-102/lint"],
    ),
    (
        "empty run",
        "version: 1\nname: x\ngates:\n  - { id: a, run: '  ' }\n",
        &["plan.yaml:4", "\"a\""],
    ),
    (
        "bad duration",
        "version: 1\nname: x\ngates:\n  - { id: a, run: 'true', timeout: 10 parsecs }\n",
        &["plan.yaml:4", "\"a\"", "10 parsecs"],
    ),
    (
        "bad size",
        "version: 1\nname: x\ngates:\n  - { id: a, run: 'true', memory: lots }\n",
        &["plan.yaml:4", "lots"],
    ),
    (
        "unknown key",
        "version: 1\nname: x\ngates:\n  - { id: a, run: 'true', tiemout: 1s }\n",
        &["plan.yaml:4", "tiemout"],
    ),
    (
        "bad label",
        "version: 1\nname: x\ngates:\n  - { id: a, run: 'true', labels: { 'a b': x } }\n",
        &["plan.yaml:4", "a b", "label"],
    ),
    (
        "invalid id",
        "version: 1\nname: x\ngates:\n  - { id: 'a b', run: 'true' }\n",
        &["plan.yaml:4", "a b"],
    ),
];

#[test]
fn each_validation_error_names_file_id_and_line_and_exits_2() {
    for (what, plan, needles) in CASES {
        let ws = Workspace::new();
        ws.write("plan.yaml", plan);
        let out = ws.cmd(&["validate", "plan.yaml"]).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: exit code; stderr: {stderr}"
        );
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{what}: stderr lacks {needle:?}:\n{stderr}"
            );
        }
    }
}

#[test]
fn limits_are_enforced() {
    let ws = Workspace::new();
    let long_run = "x".repeat(64 * 1024 + 1);
    ws.write(
        "run.yaml",
        &format!("version: 1\nname: x\ngates:\n  - id: a\n    run: '{long_run}'\n"),
    );
    let mut env = String::new();
    for i in 0..257 {
        env.push_str(&format!("      V{i}: x\n"));
    }
    ws.write(
        "env.yaml",
        &format!("version: 1\nname: x\ngates:\n  - id: a\n    run: 'true'\n    env:\n{env}"),
    );
    let mut many = String::from("version: 1\nname: x\ngates:\n");
    for i in 0..100_001 {
        many.push_str(&format!("  - {{ id: g{i}, run: 'true' }}\n"));
    }
    ws.write("many.yaml", &many);
    for (file, needle) in [
        ("run.yaml", "65536"),
        ("env.yaml", "256"),
        ("many.yaml", "100000"),
    ] {
        let out = ws.cmd(&["validate", file]).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains(file), "{file}: names the file: {stderr}");
        assert!(
            stderr.replace(',', "").contains(needle),
            "{file}: mentions {needle}: {stderr}"
        );
    }
}

#[test]
fn invalid_plan_starts_no_gate() {
    let ws = Workspace::new();
    ws.write(
        "plan.yaml",
        "version: 1\nname: x\ngates:\n  - { id: a, run: 'touch ran' }\n  - { id: b, run: 'true', needs: [c] }\n  - { id: c, run: 'true', needs: [b] }\n",
    );
    let out = ws.cmd(&["run", "plan.yaml"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cycle"), "{stderr}");
    assert!(
        !ws.path().join("ran").exists(),
        "no gate of an invalid plan runs"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn validate_json_reports_levels_and_merge_order() {
    let ws = Workspace::new();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/merge-pyramid.yaml"
    );
    let out = ws
        .cmd(&["validate", "--json", example])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], true);
    assert_eq!(v["gates"], 12);
    assert_eq!(v["items"], 7);
    assert_eq!(v["levels"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["merge_order"][0], "pr-101");
}

#[test]
fn usage_errors_exit_2() {
    let ws = Workspace::new();
    let out = ws.cmd(&["run"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = ws.cmd(&["run", "missing.yaml"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}
