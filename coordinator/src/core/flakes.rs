//! What a finished attempt's test reports decide: the fact it adds to the test history
//! ([`TestRun`]), which tests flipped (flaky), whether its failure is entirely
//! quarantined (the gate passes), and whether `retry_on: flaky` lets it be retried.
//!
//! Every input is a recorded fact: the attempt's reports, the gate's earlier attempts,
//! the history and the plan's policy. The only time used is the one the reports were
//! read at (for a named quarantine's end date).

use gatehouse_common::exec::{ExitStatus, GateResult};
use gatehouse_common::ids::GateIdx;
use gatehouse_common::reports::history::{self, FailedTest, History, MAX_RUN_FAILURES, TestRun};
use gatehouse_common::reports::{GateTests, Outcome, TestCase, TestKey, TestVerdict};

use super::plan_run::PlanRun;

/// The reading of one attempt's tests.
#[derive(Debug, Default)]
pub(super) struct Judged {
    /// The fact to record (none when the attempt had nothing worth remembering).
    pub(super) fact: Option<TestRun>,
    /// Flaky and quarantined tests.
    pub(super) verdict: TestVerdict,
    /// The attempt failed only because of quarantined tests: the gate passes.
    pub(super) quarantined: bool,
    /// Its reports show a test that passed only after a failed rerun.
    pub(super) flaky_in_report: bool,
    /// It failed, and every failed test is known flaky (what `retry_on: flaky` asks).
    pub(super) only_flaky_failures: bool,
}

/// Judges attempt results of gate `g` of `run` (see the module docs), folding the fact
/// into `history`.
pub(super) fn judge(
    history: &mut History,
    run: &PlanRun,
    g: GateIdx,
    result: &GateResult,
) -> Judged {
    let Some(tests) = result.tests.as_deref() else {
        return Judged::default();
    };
    let gate = run.plan.gate(g);
    // Only a cached gate's key stands for its code: an uncached gate's key (which its
    // dependents still use) covers its command, not what it ran on, so two runs of
    // different code would compare as the same inputs.
    let key = run
        .gate(g)
        .key
        .filter(|_| run.options.use_cache && gate.cache);
    let inputs = history::inputs(key.map(|k| k.0), run.id.as_str(), gate.id.as_str());
    let failed: Vec<&TestCase> = tests.results.failures().collect();
    let rerun_flaky: Vec<&TestCase> = tests.results.notable.iter().filter(|c| c.flaky()).collect();
    let complete = complete(tests);
    let quarantine = &run.plan.policy.quarantine;
    let is_quarantined = |case: &TestCase| {
        run.quarantine
            .covers(&case.id.name_for_humans(), tests.read_unix_ms)
            || quarantine
                .threshold
                .is_some_and(|t| history.score(&case.id.key()) >= t)
    };
    // Only a test run that ended on its own, by failing, is explained by its tests: a
    // timeout, a signal or a kill may have cut the reports short.
    let failed_by_tests = matches!(result.status, ExitStatus::Exited(code) if code != 0);
    let quarantined = quarantine.is_set()
        && failed_by_tests
        && complete
        && !failed.is_empty()
        && failed.iter().all(|c| is_quarantined(c));
    let fact = TestRun {
        plan: run.id.to_string(),
        gate: gate.id.to_string(),
        inputs,
        unix_ms: tests.read_unix_ms,
        failed: failed
            .iter()
            .take(MAX_RUN_FAILURES)
            .map(|c| FailedTest::of(c))
            .collect(),
        flaky: rerun_flaky
            .iter()
            .take(MAX_RUN_FAILURES)
            .map(|c| FailedTest::of(c))
            .collect(),
        passed: tests.results.watched_passed.clone(),
        quarantined: if quarantined {
            failed
                .iter()
                .take(MAX_RUN_FAILURES)
                .map(|c| c.id.key())
                .collect()
        } else {
            Vec::new()
        },
    };
    let flipped = if fact.is_empty() {
        Vec::new()
    } else {
        history.apply(&fact)
    };
    let earlier = run.gate(g).tests.as_deref();
    let mut flaky: Vec<TestCase> = earlier.map(|e| e.flaky.clone()).unwrap_or_default();
    for key in &flipped {
        if !flaky.iter().any(|c| c.id.key() == *key)
            && let Some(case) = as_failed(key, tests, earlier.map(|e| &e.failed), history)
        {
            flaky.push(case);
        }
    }
    let verdict = TestVerdict {
        flaky,
        quarantined: if quarantined {
            failed.iter().map(|c| (*c).clone()).collect()
        } else {
            Vec::new()
        },
    };
    let only_flaky_failures = failed_by_tests
        && complete
        && !failed.is_empty()
        && failed.iter().all(|c| history.is_flaky(&c.id.key()));
    Judged {
        fact: (!fact.is_empty()).then_some(fact),
        verdict,
        quarantined,
        flaky_in_report: !rerun_flaky.is_empty(),
        only_flaky_failures,
    }
}

/// Whether the reports account for every failure: all read, none beyond the limits.
/// Quarantine and `retry_on: flaky` judge only what they can see whole.
fn complete(tests: &GateTests) -> bool {
    tests.unreadable.is_empty() && tests.missing.is_empty() && tests.results.dropped == 0
}

/// The failing occurrence of flipped test `key`: from this attempt's report (a rerun
/// flake, or a failure after a pass), else from the gate's earlier attempts, else as the
/// history remembers it.
fn as_failed(
    key: &TestKey,
    tests: &GateTests,
    earlier: Option<&Vec<TestCase>>,
    history: &History,
) -> Option<TestCase> {
    let same = |c: &&TestCase| c.id.key() == *key;
    if let Some(case) = tests.results.notable.iter().find(same) {
        return Some(case.clone());
    }
    if let Some(case) = earlier.and_then(|e| e.iter().find(same)) {
        return Some(case.clone());
    }
    let remembered = history.failure(key)?;
    Some(TestCase {
        id: remembered.id,
        outcome: Outcome::Failed,
        duration_ms: 0,
        message: remembered.message,
        reruns_failed: 0,
        file: None,
        line: None,
    })
}

/// Keeps what a failed attempt's tests said (its failures, the flaky tests so far) for
/// the attempts after it (bounded).
pub(super) fn remember(run: &mut PlanRun, g: GateIdx, result: &GateResult, verdict: &TestVerdict) {
    let Some(tests) = result.tests.as_deref() else {
        return;
    };
    let kept = run.gate_mut(g).tests.get_or_insert_with(Box::default);
    for case in tests.results.failures() {
        if kept.failed.len() >= MAX_RUN_FAILURES {
            break;
        }
        if !kept.failed.iter().any(|k| k.id == case.id) {
            kept.failed.push(case.clone());
        }
    }
    kept.flaky.clone_from(&verdict.flaky);
}
