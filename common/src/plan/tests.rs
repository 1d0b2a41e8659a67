//! Tests of plan parsing and validation: every structural rejection with its kind, id
//! and line, both forms, JSON, dedupe, levels, cycles and the size limits. Field-level
//! rejections are tested in `fields.rs` with the helpers defined here.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::plan::error::{MAX_REPORTED_ERRORS, PlanError, PlanErrorKind};
use crate::plan::{DEFAULT_MEMORY, MAX_GATES, PlanForm};

pub(super) fn parse(text: &str) -> Result<Plan, PlanErrors> {
    parse_plan(text, PlanFormat::Yaml, "plan.yaml", Path::new("/base"))
}

pub(super) fn parse_ok(text: &str) -> Plan {
    parse(text).unwrap_or_else(|e| panic!("plan should be valid:\n{e}"))
}

pub(super) fn rejected(text: &str) -> PlanErrors {
    match parse(text) {
        Ok(_) => panic!("plan should be rejected:\n{text}"),
        Err(errors) => errors,
    }
}

/// The first error matching `pred`; panics listing every error when there is none.
pub(super) fn find(errors: &PlanErrors, pred: impl Fn(&PlanErrorKind) -> bool) -> &PlanError {
    errors
        .errors()
        .iter()
        .find(|e| pred(&e.kind))
        .unwrap_or_else(|| panic!("expected error kind not found in:\n{errors}"))
}

/// Asserts `err` is at `line` of plan.yaml and its message contains every needle.
pub(super) fn assert_at(err: &PlanError, line: u64, needles: &[&str]) {
    let text = err.to_string();
    assert_eq!(err.line, Some(line), "{text}");
    assert!(text.starts_with(&format!("plan.yaml:{line}: ")), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "{text:?} should contain {needle:?}");
    }
}

/// A flat plan with the given gates block (starting at line 3).
pub(super) fn flat(gates: &str) -> String {
    format!("version: 1\nname: t\ngates:\n{gates}")
}

/// An item-form plan with the given items block (starting at line 3).
pub(super) fn items(items: &str) -> String {
    format!("version: 1\nname: t\nitems:\n{items}")
}

const EXAMPLE: &str = r#"version: 1
name: release-train
policy:
  max_parallel: 8
  fail_fast: false
  retries: 0
  retry_backoff: 200ms
  timeout: 30m
  cache: true
  cache_salt: ""
items:
  - id: pr-101
    deps: []
    gates:
      - id: lint
        run: cargo clippy -- -D warnings
      - id: test
        run: cargo test
        needs: [lint]
        timeout: 10m
        retries: 2
        env: { RUST_LOG: info, JOBS: 4 }
        workdir: sub
        inputs: ["src/**", "Cargo.lock"]
        memory: 512Mi
        cache: false
  - id: pr-102
    deps: [pr-101]
    gates: [ { id: test, run: cargo test } ]
"#;

#[test]
fn example_plan_is_accepted_with_every_field() {
    let plan = parse_ok(EXAMPLE);
    assert_eq!(plan.name, "release-train");
    assert_eq!(plan.form(), PlanForm::Items);
    assert_eq!(plan.policy.max_parallel, Some(8));
    assert_eq!(plan.policy.retry_backoff, Duration::from_millis(200));
    assert_eq!(plan.gates.len(), 3);
    let test = &plan.gates[1];
    assert_eq!(test.id.as_str(), "pr-101/test");
    assert_eq!(test.item, Some(ItemIdx(0)));
    assert_eq!(test.needs, vec![GateIdx(0)]);
    assert_eq!(test.timeout, Duration::from_secs(600));
    assert_eq!(test.retries, 2);
    assert_eq!(test.env.get("RUST_LOG").map(String::as_str), Some("info"));
    assert_eq!(test.env.get("JOBS").map(String::as_str), Some("4"));
    assert_eq!(test.workdir_rel, "sub");
    assert_eq!(test.workdir, PathBuf::from("/base/sub"));
    assert_eq!(test.inputs, vec!["src/**", "Cargo.lock"]);
    assert_eq!(test.memory, 512 << 20);
    assert!(!test.cache);
    let lint = &plan.gates[0];
    assert_eq!(lint.workdir_rel, ".");
    assert_eq!(lint.workdir, PathBuf::from("/base"));
    assert_eq!(lint.memory, DEFAULT_MEMORY);
    assert!(lint.cache);
    assert_eq!(plan.items[1].deps, vec![ItemIdx(0)]);
    assert_eq!(plan.items[1].gates, vec![GateIdx(2)]);
    assert_eq!(plan.gates[2].id.as_str(), "pr-102/test");
    assert_eq!(plan.levels, vec![vec![0], vec![1]]);
    assert_eq!((plan.items[0].level, plan.items[1].level), (0, 1));
}

#[test]
fn flat_form_resolves_plain_needs_and_levels() {
    let plan = parse_ok(&flat(
        "  - { id: build, run: make }\n  - { id: test, run: make test, needs: [build] }\n\
         \x20 - { id: docs, run: make docs }\n  - { id: ship, run: ./ship, needs: [test, docs] }\n",
    ));
    assert_eq!(plan.form(), PlanForm::Flat);
    assert!(plan.items.is_empty());
    assert_eq!(plan.gates[3].needs, vec![GateIdx(1), GateIdx(2)]);
    assert_eq!(plan.levels, vec![vec![0, 2], vec![1], vec![3]]);
    assert_eq!(
        plan.level_ids(),
        vec![vec!["build", "docs"], vec!["test"], vec!["ship"]]
    );
}

#[test]
fn pyramid_levels_in_item_form() {
    let plan = parse_ok(&items(
        "  - { id: a, gates: [{ id: g, run: x }] }\n  - { id: b, gates: [{ id: g, run: x }] }\n\
         \x20 - { id: c, deps: [a], gates: [{ id: g, run: x }] }\n\
         \x20 - { id: d, deps: [b, a], gates: [{ id: g, run: x }] }\n\
         \x20 - { id: e, deps: [d, c], gates: [{ id: g, run: x }] }\n\
         \x20 - { id: f, deps: [a], gates: [{ id: g, run: x }] }\n",
    ));
    assert_eq!(plan.levels, vec![vec![0, 1], vec![2, 3, 5], vec![4]]);
    let levels: Vec<u32> = plan.items.iter().map(|i| i.level).collect();
    assert_eq!(levels, vec![0, 0, 1, 1, 2, 1]);
    assert_eq!(
        plan.items[3].deps,
        vec![ItemIdx(0), ItemIdx(1)],
        "deps in plan order"
    );
}

#[test]
fn needs_and_deps_are_deduplicated() {
    let plan = parse_ok(&items(
        "  - id: a\n    gates:\n      - { id: lint, run: x }\n\
         \x20     - { id: test, run: x, needs: [lint, lint, a/lint] }\n\
         \x20 - { id: b, deps: [a, a], gates: [{ id: g, run: x, needs: [a/test, a/lint, a/test] }] }\n",
    ));
    assert_eq!(plan.gates[1].needs, vec![GateIdx(0)]);
    assert_eq!(plan.gates[2].needs, vec![GateIdx(0), GateIdx(1)]);
    assert_eq!(plan.items[1].deps, vec![ItemIdx(0)]);
}

#[test]
fn json_input_is_accepted_and_errors_have_no_line() {
    let json = r#"{"version": 1, "name": "j", "policy": {"timeout": "1m"},
        "items": [{"id": "a", "gates": [{"id": "g", "run": "true", "memory": 1024,
                   "env": {"N": 4}}]},
                  {"id": "b", "deps": ["a"], "gates": [{"id": "g", "run": "true", "needs": ["a/g"]}]}]}"#;
    let plan = parse_plan(json, PlanFormat::Json, "plan.json", Path::new("/b"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.gates[0].memory, 1024);
    assert_eq!(plan.gates[0].env.get("N").map(String::as_str), Some("4"));
    assert_eq!(plan.gates[1].needs, vec![GateIdx(0)]);
    assert_eq!(plan.policy.timeout, Duration::from_secs(60));

    let bad = json.replace(r#""needs": ["a/g"]"#, r#""needs": ["a/h"]"#);
    let errors = parse_plan(&bad, PlanFormat::Json, "plan.json", Path::new("/b")).expect_err("bad");
    let err = find(&errors, |k| matches!(k, PlanErrorKind::UnknownNeed { .. }));
    assert_eq!(err.line, None);
    assert_eq!(
        err.to_string(),
        r#"plan.json: gate "b/g" needs unknown gate "a/h""#
    );

    let dup = r#"{"version": 1, "name": "j", "gates": [{"id": "g", "run": "x", "env": {"A": "1", "A": "2"}}]}"#;
    let errors = parse_plan(dup, PlanFormat::Json, "p.json", Path::new("/")).expect_err("dup env");
    find(
        &errors,
        |k| matches!(k, PlanErrorKind::DuplicateEnvVar { name, .. } if name == "A"),
    );

    let syntax = "{\"version\": 1,\n \"name\": }";
    let errors =
        parse_plan(syntax, PlanFormat::Json, "p.json", Path::new("/")).expect_err("syntax");
    assert_eq!(errors.errors().len(), 1);
    let err = &errors.errors()[0];
    assert!(matches!(err.kind, PlanErrorKind::Parse { .. }));
    assert_eq!(err.line, Some(2), "{err}");
    assert!(!err.to_string().contains("at line"), "{err}");
}

#[test]
fn yaml_syntax_error_is_one_error_with_its_line() {
    let errors = rejected("version: 1\nname: t\ngates:\n  - id: a\n    needs: [b, c\n");
    assert_eq!(errors.errors().len(), 1, "{errors}");
    let err = &errors.errors()[0];
    assert!(matches!(err.kind, PlanErrorKind::Parse { .. }));
    assert_at(err, 5, &["cannot parse plan", "bracket"]);
    assert!(!err.to_string().contains("at line"), "{err}");
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let errors = rejected(&flat("  - id: a\n    run: x\n    nedds: [b]\n"));
    let err = find(&errors, |k| matches!(k, PlanErrorKind::Parse { .. }));
    assert_at(err, 6, &["nedds"]);
    let errors = rejected("version: 1\nname: t\npolicy:\n  retry: 1\ngates: []\n");
    assert_at(&errors.errors()[0], 4, &["retry"]);
}

#[test]
fn header_errors() {
    let errors = rejected("version: 2\nname: \"  \"\ngates: [{ id: a, run: x }]\n");
    assert_at(
        find(&errors, |k| {
            matches!(k, PlanErrorKind::UnsupportedVersion { version: 2 })
        }),
        1,
        &["2"],
    );
    assert_at(
        find(&errors, |k| matches!(k, PlanErrorKind::EmptyName)),
        2,
        &["name"],
    );

    let errors = rejected("gates: [{ id: a, run: x }]\n");
    let missing_version = find(&errors, |k| matches!(k, PlanErrorKind::MissingVersion));
    assert_eq!(
        missing_version.to_string(),
        "plan.yaml: missing `version`; add `version: 1`"
    );
    find(&errors, |k| matches!(k, PlanErrorKind::MissingName));

    let errors = rejected("version: 1\nname: t\n");
    find(&errors, |k| matches!(k, PlanErrorKind::MissingGates));
    let errors = rejected("version: 1\nname: t\nitems: []\ngates: [{ id: a, run: x }]\n");
    assert_at(
        find(&errors, |k| matches!(k, PlanErrorKind::BothForms)),
        4,
        &["both"],
    );
    let errors =
        rejected("version: 1\nname: t\npolicy: { max_parallel: 0 }\ngates: [{ id: a, run: x }]\n");
    assert_at(
        find(&errors, |k| matches!(k, PlanErrorKind::ZeroMaxParallel)),
        3,
        &["max_parallel"],
    );
}

#[test]
fn empty_inputs() {
    for text in ["", "   \n", "# only a comment\n"] {
        let errors = rejected(text);
        assert!(
            matches!(errors.errors()[0].kind, PlanErrorKind::EmptyFile),
            "{text:?}: {errors}"
        );
    }
    let errors = rejected("version: 1\nname: t\ngates: []\n");
    assert_at(
        find(&errors, |k| matches!(k, PlanErrorKind::EmptyPlan)),
        3,
        &["no gates"],
    );
    let errors = rejected("version: 1\nname: t\nitems: []\n");
    find(&errors, |k| matches!(k, PlanErrorKind::EmptyPlan));
    let errors = rejected(&items(
        "  - id: a\n    gates: [{ id: g, run: x }]\n  - id: lonely\n",
    ));
    assert_at(
        find(&errors, |k| matches!(k, PlanErrorKind::EmptyItem { .. })),
        6,
        &["\"lonely\""],
    );
}

#[test]
fn invalid_and_duplicate_ids() {
    let errors = rejected(&items(
        "  - id: pr 101\n    gates: [{ id: g, run: x }]\n  - id: a\n    gates:\n\
         \x20     - { id: g, run: x }\n      - { id: g, run: y }\n      - { id: \"a/b\", run: y }\n\
         \x20 - id: a\n    gates: [{ id: h, run: x }]\n  - id: b\n    gates: [{ id: g, run: x }]\n",
    ));
    assert_at(
        find(&errors, |k| {
            matches!(k, PlanErrorKind::InvalidItemId { .. })
        }),
        4,
        &["\"pr 101\""],
    );
    assert_at(
        find(&errors, |k| {
            matches!(k, PlanErrorKind::DuplicateGate { .. })
        }),
        9,
        &["\"a/g\""],
    );
    assert_at(
        find(&errors, |k| {
            matches!(k, PlanErrorKind::InvalidGateId { .. })
        }),
        10,
        &["\"a/a/b\""],
    );
    assert_at(
        find(&errors, |k| {
            matches!(k, PlanErrorKind::DuplicateItem { .. })
        }),
        11,
        &["\"a\""],
    );
    // `b/g` next to `a/g` is fine: gate ids are unique per item.
    assert_eq!(errors.errors().len(), 4, "{errors}");

    let errors = rejected(&flat(
        "  - { id: a, run: x }\n  - { id: a, run: y }\n  - { id: \"\", run: z }\n",
    ));
    assert_at(
        find(&errors, |k| {
            matches!(k, PlanErrorKind::DuplicateGate { .. })
        }),
        5,
        &["\"a\""],
    );
    assert_at(
        find(&errors, |k| {
            matches!(k, PlanErrorKind::InvalidGateId { .. })
        }),
        6,
        &["\"\""],
    );
}

#[test]
fn unknown_and_self_references() {
    let errors = rejected(&items(
        "  - id: pr-101\n    deps: [pr-101, pr-99]\n    gates:\n      - { id: lint, run: x }\n\
         \x20     - id: test\n        run: x\n        needs: [lnt, test, pr-101/test, pr-102/x, a/b/c]\n",
    ));
    assert_at(
        find(&errors, |k| matches!(k, PlanErrorKind::SelfDep { .. })),
        5,
        &["\"pr-101\" depends on itself"],
    );
    assert_at(
        find(&errors, |k| matches!(k, PlanErrorKind::UnknownDep { .. })),
        5,
        &["unknown item \"pr-99\""],
    );
    let unknown: Vec<String> = errors
        .errors()
        .iter()
        .filter(|e| matches!(e.kind, PlanErrorKind::UnknownNeed { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        unknown,
        vec![
            r#"plan.yaml:10: gate "pr-101/test" needs unknown gate "pr-101/lnt""#,
            r#"plan.yaml:10: gate "pr-101/test" needs unknown gate "pr-102/x""#,
        ]
    );
    let self_needs = errors
        .errors()
        .iter()
        .filter(|e| matches!(e.kind, PlanErrorKind::SelfNeed { .. }));
    assert_eq!(
        self_needs.count(),
        2,
        "`test` and `pr-101/test` are both itself"
    );
    assert_at(
        find(&errors, |k| matches!(k, PlanErrorKind::InvalidNeed { .. })),
        10,
        &["\"a/b/c\""],
    );

    let errors = rejected(&flat("  - { id: a, run: x, needs: [a, b, x/a] }\n"));
    find(
        &errors,
        |k| matches!(k, PlanErrorKind::SelfNeed { gate } if gate.as_str() == "a"),
    );
    find(
        &errors,
        |k| matches!(k, PlanErrorKind::UnknownNeed { need, .. } if need == "b"),
    );
    find(
        &errors,
        |k| matches!(k, PlanErrorKind::InvalidNeed { need, .. } if need == "x/a"),
    );
}

#[test]
fn gate_cycle_in_flat_form_is_printed() {
    let errors = rejected(&flat(
        "  - { id: a, run: x, needs: [c] }\n  - { id: b, run: x, needs: [a] }\n\
         \x20 - { id: c, run: x, needs: [b] }\n  - { id: d, run: x, needs: [a] }\n",
    ));
    assert_eq!(errors.errors().len(), 1, "{errors}");
    let err = &errors.errors()[0];
    assert!(matches!(err.kind, PlanErrorKind::GateCycle { .. }));
    assert_at(err, 4, &["dependency cycle: a -> c -> b -> a"]);
}

#[test]
fn item_cycle_is_printed_once() {
    let errors = rejected(&items(
        "  - { id: pr-101, deps: [pr-102], gates: [{ id: g, run: x }] }\n\
         \x20 - { id: pr-102, deps: [pr-101], gates: [{ id: g, run: x }] }\n",
    ));
    assert_eq!(errors.errors().len(), 1, "{errors}");
    let err = &errors.errors()[0];
    assert!(matches!(err.kind, PlanErrorKind::ItemCycle { .. }));
    assert_at(
        err,
        4,
        &["item dependency cycle: pr-101 -> pr-102 -> pr-101"],
    );
}

#[test]
fn gate_cycle_through_item_deps_omits_virtual_nodes() {
    let errors = rejected(&items(
        "  - id: pr-101\n    gates:\n      - { id: test, run: x, needs: [pr-102/lint] }\n\
         \x20 - id: pr-102\n    deps: [pr-101]\n    gates: [{ id: lint, run: x }]\n",
    ));
    assert_eq!(errors.errors().len(), 1, "{errors}");
    let err = &errors.errors()[0];
    assert!(matches!(err.kind, PlanErrorKind::GateCycle { .. }));
    assert_at(
        err,
        6,
        &["dependency cycle: pr-101/test -> pr-102/lint -> pr-101/test"],
    );
}

#[test]
fn all_errors_are_collected_up_to_the_limit() {
    let gates: String = (0..MAX_REPORTED_ERRORS + 20)
        .map(|i| format!("  - {{ id: g{i}, run: \"\" }}\n"))
        .collect();
    let errors = rejected(&flat(&gates));
    assert_eq!(errors.errors().len(), MAX_REPORTED_ERRORS + 1);
    assert!(matches!(
        errors.errors()[MAX_REPORTED_ERRORS].kind,
        PlanErrorKind::TooManyErrors { .. }
    ));
    assert_eq!(errors.to_string().lines().count(), MAX_REPORTED_ERRORS + 1);
}

/// A JSON flat plan of `n` gates where gate `i` needs the gates of the previous layer
/// of ten (a layered chain of depth n/10).
fn big_json_plan(n: usize) -> String {
    let mut out = String::from(r#"{"version":1,"name":"big","gates":["#);
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let layer = i / 10;
        let needs: Vec<String> = if layer == 0 {
            Vec::new()
        } else {
            (0..10)
                .map(|j| format!("\"g{}\"", (layer - 1) * 10 + j))
                .collect()
        };
        out.push_str(&format!(
            r#"{{"id":"g{i}","run":"true","needs":[{}]}}"#,
            needs.join(",")
        ));
    }
    out.push_str("]}");
    out
}

#[test]
fn max_gates_accepted_and_one_more_rejected() {
    let plan = parse_plan(
        &big_json_plan(MAX_GATES),
        PlanFormat::Json,
        "big.json",
        Path::new("/"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.gates.len(), MAX_GATES);
    assert_eq!(plan.levels.len(), MAX_GATES / 10);

    let errors = parse_plan(
        &big_json_plan(MAX_GATES + 1),
        PlanFormat::Json,
        "big.json",
        Path::new("/"),
    )
    .expect_err("over the limit");
    let err = find(&errors, |k| {
        matches!(k, PlanErrorKind::TooManyGates { count: 100_001, .. })
    });
    assert!(err.to_string().contains("100001 gates"), "{err}");
}

#[test]
fn max_gates_fit_the_yaml_parser_budget() {
    // 100k gates are far more events and nodes than serde-saphyr's default budget allows.
    let mut text = flat("");
    for i in 0..MAX_GATES {
        text.push_str(&format!(
            "- {{id: g{i}, run: x, needs: [g{}]}}\n",
            i.saturating_sub(1)
        ));
    }
    let text = text.replacen("needs: [g0]", "needs: []", 1);
    let plan = parse_ok(&text);
    assert_eq!(
        plan.levels.len(),
        MAX_GATES,
        "a chain has one gate per level"
    );
}

#[test]
fn files_and_readers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("plan.json");
    std::fs::write(
        &path,
        r#"{"version":1,"name":"f","gates":[{"id":"a","run":"x","workdir":"w"}]}"#,
    )
    .expect("write plan");
    let plan = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.base_dir, dir.path());
    assert_eq!(plan.gates[0].workdir, dir.path().join("w"));

    let yaml = dir.path().join("plan.yml");
    std::fs::write(
        &yaml,
        "version: 1\nname: f\ngates:\n  - { id: a, run: x, needs: [b] }\n",
    )
    .expect("write");
    let errors = load_file(&yaml).expect_err("unknown need");
    assert!(
        errors
            .to_string()
            .starts_with(&format!("{}:4: ", yaml.display())),
        "{errors}"
    );

    let missing = dir.path().join("missing.yaml");
    let errors = load_file(&missing).expect_err("missing file");
    assert!(matches!(
        errors.errors()[0].kind,
        PlanErrorKind::Read { .. }
    ));
    assert!(
        errors
            .to_string()
            .starts_with(&missing.display().to_string()),
        "{errors}"
    );

    let huge = std::io::repeat(b' ').take(MAX_PLAN_BYTES as u64 + 1);
    let errors =
        load_reader(huge, PlanFormat::Yaml, "huge", Path::new("/")).expect_err("too large");
    assert!(matches!(
        errors.errors()[0].kind,
        PlanErrorKind::TooLarge { .. }
    ));
    let errors = load_reader(&[0xff, 0xfe][..], PlanFormat::Yaml, "bin", Path::new("/"))
        .expect_err("binary");
    assert!(matches!(errors.errors()[0].kind, PlanErrorKind::NotUtf8));
    assert_eq!(PlanFormat::from_path(Path::new("x.JSON")), PlanFormat::Json);
    assert_eq!(PlanFormat::from_path(Path::new("x.yaml")), PlanFormat::Yaml);
}

mod sources {
    use super::*;

    /// A plan whose `source` is `source` (lines 3..), then `items` after it.
    fn with_source(source: &str, items: &str) -> String {
        format!("version: 1\nname: t\nsource:\n{source}items:\n{items}")
    }

    const ITEM: &str = "  - id: pr1\n    ref: feature/x\n    gates: [ { id: g, run: x } ]\n";

    #[test]
    fn a_source_plan_keeps_its_repository_base_and_refs() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("app/.git")).expect("mkdir");
        let text = with_source("  repo: app\n  base: release/1.x\n", ITEM);
        let plan = parse_plan(&text, PlanFormat::Yaml, "plan.yaml", dir.path()).expect("valid");
        let source = plan.source.expect("source");
        assert_eq!(
            source.repo.local_path(),
            Some(dir.path().join("app").as_path())
        );
        assert_eq!(source.base.as_deref(), Some("release/1.x"));
        assert!(source.resolution.is_none(), "resolved later, once");
        assert_eq!(plan.items[0].git_ref.as_deref(), Some("feature/x"));
        // URLs are not checked on this machine; the credentials never show.
        let url = "  repo: https://user:s3cret@git.example.com/a.git\n";
        let plan = parse_ok(&with_source(url, ITEM));
        let shown = plan.source.expect("source").repo.to_string();
        assert_eq!(shown, "https://***@git.example.com/a.git");
    }

    #[test]
    fn bad_sources_and_refs_are_rejected_with_their_line() {
        let errors = rejected(&with_source("  repo: /nonexistent/app\n", ITEM));
        let e = find(&errors, |k| matches!(k, PlanErrorKind::RepoNotGit { .. }));
        assert_at(e, 4, &["/nonexistent/app", "is not a git repository"]);

        let errors = rejected(&with_source("  repo: ftp://h/a.git\n", ITEM));
        let e = find(&errors, |k| matches!(k, PlanErrorKind::InvalidRepo { .. }));
        assert_at(e, 4, &["source.repo", "ftp"]);

        let bad = with_source(
            "  repo: https://h/a.git\n  base: --upload-pack=evil\n",
            "  - id: pr1\n    ref: 'a b'\n    gates: [ { id: g, run: x } ]\n",
        );
        let errors = rejected(&bad);
        let base = find(&errors, |k| {
            matches!(k, PlanErrorKind::InvalidRef { item: None, .. })
        });
        assert_at(base, 5, &["source: invalid base", "starts with `-`"]);
        let r = find(&errors, |k| {
            matches!(k, PlanErrorKind::InvalidRef { item: Some(_), .. })
        });
        assert_at(r, 8, &["item \"pr1\": invalid ref", "spaces"]);

        let errors = rejected(&items(ITEM));
        let e = find(&errors, |k| {
            matches!(k, PlanErrorKind::RefWithoutSource { .. })
        });
        assert_at(e, 5, &["has a `ref` but the plan has no `source`"]);
    }

    #[test]
    fn gates_of_a_source_plan_stay_inside_the_repository() {
        let item = "  - id: pr1\n    gates:\n      - { id: up, run: x, workdir: .. }\n      - { id: abs, run: x, workdir: /tmp }\n      - { id: inp, run: x, workdir: sub, inputs: ['../../etc/*'] }\n      - { id: ok, run: x, workdir: sub, inputs: ['../shared/**'] }\n";
        let errors = rejected(&with_source("  repo: https://h/a.git\n", item));
        let outside: Vec<String> = errors
            .errors()
            .iter()
            .filter(|e| matches!(e.kind, PlanErrorKind::OutsideRepo { .. }))
            .map(ToString::to_string)
            .collect();
        assert_eq!(outside.len(), 3, "{outside:?}");
        assert!(outside[0].contains("pr1/up") && outside[0].contains("`workdir`"));
        assert!(outside[2].contains("pr1/inp") && outside[2].contains("`inputs`"));
        // Without a source, a workdir above the plan's directory is fine.
        parse_ok(&items(
            "  - id: pr1\n    gates: [ { id: up, run: x, workdir: .. } ]\n",
        ));
    }

    #[test]
    fn verify_gates_are_a_plan_of_their_own_and_land_is_a_policy() {
        let text = "version: 1\nname: t\npolicy: { land: true, retries: 2 }\nsource: { repo: https://h/a.git, base: main }\nverify:\n  - { id: build, run: make }\n  - { id: test, run: make test, needs: [build], inputs: ['src/**'] }\nitems:\n".to_string() + ITEM;
        let plan = parse_ok(&text);
        assert!(plan.policy.land);
        let verify = plan.verify.as_ref().expect("verify plan");
        assert_eq!(verify.items.len(), 1);
        assert_eq!(verify.items[0].id.as_str(), VERIFY_ITEM);
        let ids: Vec<&str> = verify.gates.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["verify/build", "verify/test"]);
        assert_eq!(verify.gates[1].needs, vec![GateIdx(0)]);
        assert_eq!(verify.gates[1].retries, 2, "the plan's policy applies");
        assert!(!verify.policy.land);
        assert!(verify.source.is_some() && verify.verify.is_none());
        // No `verify`, or an empty one: nothing to run on a combined tip.
        assert!(
            parse_ok(&with_source("  repo: https://h/a.git\n", ITEM))
                .verify
                .is_none()
        );
    }

    #[test]
    fn landing_settings_need_a_source_and_verify_gates_need_only_each_other() {
        let errors = rejected(&format!(
            "version: 1\nname: t\npolicy:\n  land: true\nverify:\n  - {{ id: v, run: x }}\nitems:\n{}",
            "  - id: pr1\n    gates: [ { id: g, run: x } ]\n"
        ));
        let e = find(&errors, |k| {
            matches!(
                k,
                PlanErrorKind::LandWithoutSource {
                    field: "policy.land"
                }
            )
        });
        assert_at(e, 4, &["`policy.land` needs a `source`"]);
        let e = find(&errors, |k| {
            matches!(k, PlanErrorKind::LandWithoutSource { field: "verify" })
        });
        assert_at(e, 6, &["`verify` needs a `source`"]);

        let text = "version: 1\nname: t\nsource: { repo: https://h/a.git }\nverify:\n  - { id: v, run: x, needs: [pr1/g] }\n  - { id: v, run: y }\nitems:\n".to_string() + ITEM;
        let errors = rejected(&text);
        let e = find(&errors, |k| matches!(k, PlanErrorKind::UnknownNeed { .. }));
        assert_at(e, 5, &["verify/v"]);
        let e = find(&errors, |k| {
            matches!(k, PlanErrorKind::DuplicateGate { .. })
        });
        assert_at(e, 6, &["verify/v"]);
    }
}
