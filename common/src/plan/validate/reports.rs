//! The fields about tests: a gate's `reports` and `retry_on`, and the policy's
//! `retry_on` and `quarantine`. Like [`super::fields`], each records what is wrong with
//! its line and returns a usable value.

use serde_saphyr::Spanned;

use super::line;
use crate::ids::GateId;
use crate::plan::error::{Collector, PlanErrorKind};
use crate::plan::raw::{RawGate, RawQuarantine};
use crate::plan::{
    MAX_QUARANTINED_TESTS, MAX_REPORT_PATTERNS, Quarantine, QuarantinedTest, RetryOn,
};

/// A `retry_on` value (of the policy when `gate` is `None`).
pub(super) fn retry_on(
    raw: Option<&Spanned<String>>,
    gate: Option<&GateId>,
    errs: &mut Collector,
) -> Option<RetryOn> {
    let raw = raw?;
    match raw.value.as_str() {
        "any" => Some(RetryOn::Any),
        "flaky" => Some(RetryOn::Flaky),
        other => {
            let kind = PlanErrorKind::InvalidRetryOn {
                gate: gate.cloned(),
                value: other.to_owned(),
            };
            errs.push(line(raw), kind);
            None
        }
    }
}

/// `policy.quarantine`: a threshold in (0, 1] and named tests, each a valid glob with a
/// `YYYY-MM-DD` end date.
pub(super) fn quarantine(raw: &Spanned<RawQuarantine>, errs: &mut Collector) -> Quarantine {
    let invalid = |reason: String| PlanErrorKind::InvalidQuarantine { reason };
    let threshold = raw.value.threshold.as_ref().and_then(|t| {
        if t.value > 0.0 && t.value <= 1.0 {
            Some(t.value)
        } else {
            let reason = format!(
                "`threshold` is {}; use a flake score above 0 and at most 1 (for example 0.2)",
                t.value
            );
            errs.push(line(t), invalid(reason));
            None
        }
    });
    if raw.value.tests.len() > MAX_QUARANTINED_TESTS {
        let reason = format!(
            "{} tests are listed, more than the limit of {MAX_QUARANTINED_TESTS}; use a threshold or a pattern",
            raw.value.tests.len()
        );
        errs.push(line(raw), invalid(reason));
    }
    let mut tests = Vec::new();
    for entry in raw.value.tests.iter().take(MAX_QUARANTINED_TESTS) {
        if let Err(e) = globset::Glob::new(&entry.test.value) {
            let reason = format!(
                "test pattern {:?} is invalid: {}",
                entry.test.value,
                e.kind()
            );
            errs.push(line(&entry.test), invalid(reason));
            continue;
        }
        match end_of_day_unix_ms(&entry.until.value.0) {
            Some(until_unix_ms) => tests.push(QuarantinedTest {
                test: entry.test.value.clone(),
                until_unix_ms,
            }),
            None => {
                let reason = format!(
                    "`until` {:?} is not a date; write it as YYYY-MM-DD",
                    entry.until.value.0
                );
                errs.push(line(&entry.until), invalid(reason));
            }
        }
    }
    Quarantine { threshold, tests }
}

/// The last millisecond of the UTC day `YYYY-MM-DD`.
fn end_of_day_unix_ms(date: &str) -> Option<u64> {
    let bytes = date.as_bytes();
    let digits = |r: std::ops::Range<usize>| bytes[r].iter().all(u8::is_ascii_digit);
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' || !digits(0..4) {
        return None;
    }
    if !digits(5..7) || !digits(8..10) {
        return None;
    }
    let end = humantime::parse_rfc3339(&format!("{date}T23:59:59Z")).ok()?;
    let ms = end.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64;
    Some(ms + 999)
}

/// A gate's `reports` patterns: at most [`MAX_REPORT_PATTERNS`], each a valid glob
/// relative to the gate's workdir that stays inside it.
pub(super) fn reports(raw: &RawGate, id: &GateId, errs: &mut Collector) -> Vec<String> {
    if raw.reports.len() > MAX_REPORT_PATTERNS {
        let kind = PlanErrorKind::InvalidReport {
            gate: id.clone(),
            pattern: String::new(),
            reason: format!(
                "{} patterns, more than the limit of {MAX_REPORT_PATTERNS}; use `**` to match more files with one",
                raw.reports.len()
            ),
        };
        errs.push(line(&raw.reports[MAX_REPORT_PATTERNS]), kind);
    }
    let mut out = Vec::new();
    for pattern in &raw.reports {
        let value = pattern.value.as_str();
        let reason = if value.is_empty() {
            Some("it is empty".to_owned())
        } else if value.starts_with('/') {
            Some("it is absolute; write it relative to the gate's workdir".to_owned())
        } else if value.split('/').any(|c| c == "..") {
            Some("`..` is not allowed: reports are read inside the gate's workdir".to_owned())
        } else {
            globset::Glob::new(value)
                .err()
                .map(|e| e.kind().to_string())
        };
        match reason {
            Some(reason) => {
                let kind = PlanErrorKind::InvalidReport {
                    gate: id.clone(),
                    pattern: value.to_owned(),
                    reason,
                };
                errs.push(line(pattern), kind);
            }
            None => out.push(value.to_owned()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_at, find, parse_ok, rejected};
    use super::*;
    use crate::plan::error::PlanErrorKind;

    const GATE: &str = "version: 1\nname: p\ngates:\n";

    #[test]
    fn reports_and_retry_on_are_read_with_their_defaults() {
        let plan = parse_ok(
            "version: 1\nname: p\npolicy:\n  retry_on: flaky\n  cache_flaky: true\n\
             \x20 quarantine:\n    threshold: 0.25\n    tests:\n\
             \x20     - { test: \"pkg.T::test_*\", until: 2030-01-31 }\n\
             gates:\n  - { id: a, run: x, reports: [\"out/*.xml\", junit.xml] }\n\
             \x20 - { id: b, run: x, retry_on: any }\n",
        );
        assert_eq!(plan.gates[0].reports, ["out/*.xml", "junit.xml"]);
        assert_eq!(plan.gates[0].retry_on, RetryOn::Flaky, "the policy's");
        assert_eq!(plan.gates[1].retry_on, RetryOn::Any, "its own");
        assert!(plan.policy.cache_flaky);
        let q = &plan.policy.quarantine;
        assert_eq!(q.threshold, Some(0.25));
        // 2030-01-31T23:59:59.999Z
        assert_eq!(q.tests[0].until_unix_ms, 1_896_134_399_999);
        assert!(q.named().covers("pkg.T::test_one", 1_896_134_399_999));
        assert!(!q.named().covers("pkg.T::test_one", 1_896_134_400_000));
        assert!(!q.named().covers("pkg.U::test_one", 0));
        let plain = parse_ok(&format!("{GATE}  - {{ id: a, run: x }}\n"));
        assert_eq!(plain.gates[0].retry_on, RetryOn::Any);
        assert!(plain.gates[0].reports.is_empty());
        assert!(!plain.policy.quarantine.is_set());
    }

    #[test]
    fn bad_reports_retry_on_and_quarantine_are_errors_with_their_line() {
        let errors = rejected(&format!(
            "{GATE}  - {{ id: a, run: x, reports: [\"/abs.xml\", \"../up.xml\", \"a[\", \"\"] }}\n\
             \x20 - {{ id: b, run: x, retry_on: sometimes }}\n"
        ));
        for needle in ["absolute", "`..`", "a[", "empty"] {
            let e = find(&errors, |k| {
                matches!(k, PlanErrorKind::InvalidReport { reason, pattern, .. }
                    if reason.contains(needle) || pattern.contains(needle))
            });
            assert_at(e, 4, &["\"a\""]);
        }
        assert_at(
            find(&errors, |k| {
                matches!(k, PlanErrorKind::InvalidRetryOn { .. })
            }),
            5,
            &["sometimes", "`any`", "`flaky`"],
        );
        let errors = rejected(&format!(
            "version: 1\nname: p\npolicy:\n  quarantine:\n    threshold: 1.5\n    tests:\n\
             \x20     - {{ test: \"a[\", until: 2030-01-01 }}\n\
             \x20     - {{ test: ok, until: 2030-13-01 }}\n\
             \x20     - {{ test: ok, until: tomorrow }}\n\
             {}",
            "gates:\n  - { id: a, run: x }\n"
        ));
        let quarantine = |needle: &'static str| move |k: &PlanErrorKind| matches!(k, PlanErrorKind::InvalidQuarantine { reason } if reason.contains(needle));
        assert_at(find(&errors, quarantine("threshold")), 5, &["1.5"]);
        assert_at(find(&errors, quarantine("a[")), 7, &["pattern"]);
        assert_at(find(&errors, quarantine("2030-13-01")), 8, &["YYYY-MM-DD"]);
        assert_at(find(&errors, quarantine("tomorrow")), 9, &["YYYY-MM-DD"]);
        let many: String = (0..=MAX_REPORT_PATTERNS)
            .map(|i| format!("\"r{i}.xml\", "))
            .collect();
        let errors = rejected(&format!(
            "{GATE}  - {{ id: a, run: x, reports: [{many}] }}\n"
        ));
        find(
            &errors,
            |k| matches!(k, PlanErrorKind::InvalidReport { reason, .. } if reason.contains("limit")),
        );
    }
}
