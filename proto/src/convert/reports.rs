//! Per-test results on the wire: [`GateTests`] <-> `TestReport`, [`TestCase`] <->
//! `TestCase`, and test keys as 16-byte strings. Decoding checks what it can (a key's
//! length, an outcome); counts are taken as sent.

use gatehouse_common::reports::history::FlakeRow;
use gatehouse_common::reports::{
    GateTests, Outcome, TestCase, TestId, TestKey, TestResults, Unreadable,
};

use super::WireError;
use crate::v1;

/// A test key as 16 bytes.
pub fn key_to_wire(key: &TestKey) -> Vec<u8> {
    key.0.to_vec()
}

/// Decodes a test key; `field` names where it came from.
pub fn key_from_wire(bytes: &[u8], field: &'static str) -> Result<TestKey, WireError> {
    let key: [u8; 16] = bytes.try_into().map_err(|_| WireError::Invalid {
        field,
        reason: format!("a test key is 16 bytes, not {}", bytes.len()),
    })?;
    Ok(TestKey(key))
}

impl From<&TestCase> for v1::TestCase {
    fn from(c: &TestCase) -> Self {
        Self {
            suite: c.id.suite.clone(),
            class_name: c.id.class.clone(),
            name: c.id.name.clone(),
            outcome: match c.outcome {
                Outcome::Passed => v1::TestOutcome::Passed,
                Outcome::Failed => v1::TestOutcome::Failed,
                Outcome::Errored => v1::TestOutcome::Errored,
                Outcome::Skipped => v1::TestOutcome::Skipped,
            } as i32,
            duration_ms: c.duration_ms,
            message: c.message.clone(),
            reruns_failed: c.reruns_failed,
            file: c.file.clone(),
            line: c.line,
        }
    }
}

impl TryFrom<v1::TestCase> for TestCase {
    type Error = WireError;

    fn try_from(c: v1::TestCase) -> Result<Self, WireError> {
        let outcome = match v1::TestOutcome::try_from(c.outcome) {
            Ok(v1::TestOutcome::Passed) => Outcome::Passed,
            Ok(v1::TestOutcome::Failed) => Outcome::Failed,
            Ok(v1::TestOutcome::Errored) => Outcome::Errored,
            Ok(v1::TestOutcome::Skipped) => Outcome::Skipped,
            _ => return Err(WireError::Missing("test_case.outcome")),
        };
        Ok(Self {
            id: TestId {
                suite: c.suite,
                class: c.class_name,
                name: c.name,
            },
            outcome,
            duration_ms: c.duration_ms,
            message: c.message,
            reruns_failed: c.reruns_failed,
            file: c.file,
            line: c.line,
        })
    }
}

/// Encodes test cases.
pub fn cases_to_wire(cases: &[TestCase]) -> Vec<v1::TestCase> {
    cases.iter().map(v1::TestCase::from).collect()
}

/// Decodes test cases. A case this side cannot read (an outcome added later) is left
/// out rather than failing the whole message: test results are advisory.
pub fn cases_from_wire(cases: Vec<v1::TestCase>) -> Result<Vec<TestCase>, WireError> {
    Ok(cases
        .into_iter()
        .filter_map(|c| TestCase::try_from(c).ok())
        .collect())
}

impl From<&GateTests> for v1::TestReport {
    fn from(t: &GateTests) -> Self {
        let r = &t.results;
        Self {
            passed: r.passed,
            failed: r.failed,
            skipped: r.skipped,
            flaky: r.flaky,
            notable: cases_to_wire(&r.notable),
            watched_passed: r.watched_passed.iter().map(key_to_wire).collect(),
            dropped: r.dropped,
            files: t.files,
            missing: t.missing.clone(),
            unreadable: t
                .unreadable
                .iter()
                .map(|u| v1::UnreadableReport {
                    path: u.path.clone(),
                    reason: u.reason.clone(),
                })
                .collect(),
            read_unix_ms: t.read_unix_ms,
        }
    }
}

impl TryFrom<v1::TestReport> for GateTests {
    type Error = WireError;

    fn try_from(t: v1::TestReport) -> Result<Self, WireError> {
        let sent = t.notable.len();
        let notable = cases_from_wire(t.notable)?;
        // Cases left out are counted as not listed, so nothing is judged on a list that
        // lacks a failure.
        let left_out = (sent - notable.len()) as u64;
        Ok(Self {
            results: TestResults {
                passed: t.passed,
                failed: t.failed,
                skipped: t.skipped,
                flaky: t.flaky,
                notable,
                // A malformed key names no test: left out, like an unknown case.
                watched_passed: t
                    .watched_passed
                    .iter()
                    .filter_map(|k| key_from_wire(k, "result.tests.watched_passed").ok())
                    .collect(),
                dropped: t.dropped.saturating_add(left_out),
            },
            files: t.files,
            missing: t.missing,
            unreadable: t
                .unreadable
                .into_iter()
                .map(|u| Unreadable {
                    path: u.path,
                    reason: u.reason,
                })
                .collect(),
            read_unix_ms: t.read_unix_ms,
        })
    }
}

impl From<&FlakeRow> for v1::FlakyTest {
    fn from(row: &FlakeRow) -> Self {
        Self {
            suite: row.test.suite.clone(),
            class_name: row.test.class.clone(),
            name: row.test.name.clone(),
            gate: row.gate.clone(),
            score: row.score,
            fails: row.fails,
            runs: row.runs,
            flips: row.flips,
            last_flip_unix_ms: row.last_flip_unix_ms.unwrap_or(0),
            last_run_unix_ms: row.last_run_unix_ms,
            message: row.message.clone().unwrap_or_default(),
            quarantined: row.quarantined,
        }
    }
}

impl From<v1::FlakyTest> for FlakeRow {
    fn from(t: v1::FlakyTest) -> Self {
        Self {
            test: TestId {
                suite: t.suite,
                class: t.class_name,
                name: t.name,
            },
            gate: t.gate,
            score: t.score.clamp(0.0, 1.0),
            fails: t.fails,
            runs: t.runs,
            flips: t.flips,
            last_flip_unix_ms: Some(t.last_flip_unix_ms).filter(|&ms| ms > 0),
            last_run_unix_ms: t.last_run_unix_ms,
            message: Some(t.message).filter(|m| !m.is_empty()),
            quarantined: t.quarantined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_bad_keys_are_refused() {
        let case = TestCase {
            id: TestId {
                suite: "pytest".into(),
                class: "tests.test_math".into(),
                name: "test_div".into(),
            },
            outcome: Outcome::Failed,
            duration_ms: 12,
            message: Some("assert 1 == 2".into()),
            reruns_failed: 1,
            file: Some("tests/test_math.py".into()),
            line: Some(7),
        };
        let tests = GateTests {
            results: TestResults {
                passed: 3,
                failed: 1,
                skipped: 2,
                flaky: 0,
                notable: vec![case.clone()],
                watched_passed: vec![case.id.key()],
                dropped: 4,
            },
            files: 2,
            missing: vec!["none/*.xml".into()],
            unreadable: vec![Unreadable {
                path: "bad.xml".into(),
                reason: "truncated".into(),
            }],
            read_unix_ms: 99,
        };
        let back = GateTests::try_from(v1::TestReport::from(&tests)).expect("decodes");
        assert_eq!(back, tests);
        // What this side cannot read is left out, never the whole report.
        let mut odd = v1::TestReport::from(&tests);
        odd.watched_passed.push(vec![1, 2, 3]);
        let mut unknown = v1::TestCase::from(&case);
        unknown.outcome = 99;
        assert!(TestCase::try_from(unknown.clone()).is_err());
        odd.notable.push(unknown);
        let read = GateTests::try_from(odd).expect("decodes");
        assert_eq!(read.results.notable, tests.results.notable);
        assert_eq!(read.results.watched_passed, tests.results.watched_passed);
        assert_eq!(
            read.results.dropped,
            tests.results.dropped + 1,
            "counted, not listed"
        );
    }
}
