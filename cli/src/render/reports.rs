//! What a gate's test reports add to its line: counts, its failed tests (before the
//! output tail), flaky and quarantined tests, and reports that were missing or could not
//! be read. The same for text and `--json`.

use gatehouse_common::reports::{GateTests, TestCase, TestVerdict};
use serde_json::{Value, json};

/// Failed (or flaky, or quarantined) tests listed per gate; the rest are counted.
pub const LISTED: usize = 20;

/// `, 12 tests: 1 failed` for the gate's detail.
pub fn counts_text(tests: &GateTests) -> String {
    let r = &tests.results;
    let total = r.passed + r.failed + r.skipped;
    let mut text = format!(", {total} test{}", if total == 1 { "" } else { "s" });
    let mut parts = Vec::new();
    if r.failed > 0 {
        parts.push(format!("{} failed", r.failed));
    }
    if r.skipped > 0 {
        parts.push(format!("{} skipped", r.skipped));
    }
    if !parts.is_empty() {
        text.push_str(": ");
        text.push_str(&parts.join(", "));
    }
    text
}

/// Lines under a gate: its failed tests when `failed`, then flaky and quarantined
/// tests, then unusable reports.
pub fn lines(
    tests: Option<&GateTests>,
    verdict: Option<&TestVerdict>,
    failed: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if let (true, Some(t)) = (failed, tests) {
        let failures: Vec<&TestCase> = t.results.failures().collect();
        for case in failures.iter().take(LISTED) {
            out.push(format!("    x {}", describe(case)));
        }
        let more = t
            .results
            .failed
            .saturating_sub(LISTED.min(failures.len()) as u64);
        if more > 0 {
            out.push(format!("    x ... {more} more failed tests"));
        }
    }
    if let Some(v) = verdict {
        for (what, cases) in [("flaky", &v.flaky), ("quarantined", &v.quarantined)] {
            for case in cases.iter().take(LISTED) {
                out.push(format!("    ~ {what}: {}", describe(case)));
            }
            if cases.len() > LISTED {
                out.push(format!(
                    "    ~ ... {} more {what} tests",
                    cases.len() - LISTED
                ));
            }
        }
    }
    if let Some(t) = tests {
        for pattern in &t.missing {
            out.push(format!(
                "    ! report {pattern}: no file written by this attempt"
            ));
        }
        for bad in &t.unreadable {
            out.push(format!("    ! report {}: {}", bad.path, bad.reason));
        }
    }
    out
}

/// `class::name: first line of the message (file:line)`.
fn describe(case: &TestCase) -> String {
    let mut text = case.id.name_for_humans();
    if let Some(message) = case.message.as_deref().and_then(|m| m.lines().next()) {
        text.push_str(": ");
        text.push_str(message);
    }
    match (&case.file, case.line) {
        (Some(file), Some(line)) => text.push_str(&format!("  ({file}:{line})")),
        (Some(file), None) => text.push_str(&format!("  ({file})")),
        _ => {}
    }
    text
}

/// A test in JSON: its identity and, for a failure, the first line of its message.
fn case_value(case: &TestCase) -> Value {
    let mut v = json!({
        "name": case.id.name_for_humans(),
        "suite": case.id.suite,
        "class": case.id.class,
        "test": case.id.name,
        "outcome": case.outcome.as_str(),
    });
    if let Some(message) = case.message.as_deref().and_then(|m| m.lines().next()) {
        v["message"] = json!(message);
    }
    if let Some(file) = &case.file {
        v["file"] = json!(file);
    }
    if let Some(line) = case.line {
        v["line"] = json!(line);
    }
    v
}

/// The `tests` member of a gate's JSON line.
pub fn value(tests: Option<&GateTests>, verdict: Option<&TestVerdict>) -> Option<Value> {
    if tests.is_none() && verdict.is_none() {
        return None;
    }
    let mut v = json!({});
    if let Some(t) = tests {
        let r = &t.results;
        v["passed"] = json!(r.passed);
        v["failed"] = json!(r.failed);
        v["skipped"] = json!(r.skipped);
        v["flaky_reruns"] = json!(r.flaky);
        v["files"] = json!(t.files);
        v["failed_tests"] = r.failures().map(case_value).collect();
        if r.dropped > 0 {
            v["not_listed"] = json!(r.dropped);
        }
        v["missing_reports"] = json!(t.missing);
        v["unreadable_reports"] = t
            .unreadable
            .iter()
            .map(|u| json!({"path": u.path, "reason": u.reason}))
            .collect();
    }
    if let Some(verdict) = verdict {
        v["flaky_tests"] = verdict.flaky.iter().map(case_value).collect();
        v["quarantined_tests"] = verdict.quarantined.iter().map(case_value).collect();
    }
    Some(v)
}
