//! Test history: what is remembered of tests across attempts and plans, and the flake
//! score computed from it.
//!
//! The facts are [`TestRun`]s, one per attempt whose reports had something worth
//! remembering: its failed tests, the tests that passed only after a rerun in the
//! report, and the passes of *watched* tests (tests already in the history: the
//! executor reports their passes, and no others, see
//! [`super::TestResults::watched_passed`]). An attempt whose tests all passed, none of
//! them watched, leaves no fact at all, so a large passing suite costs nothing here.
//!
//! [`History`] folds the facts, in order, into per-test windows of recent runs. A run
//! *flips* when the last earlier run of the same test on the same inputs (the gate's
//! cache key) had the other outcome, or when the test passed after a failed rerun
//! within one report. The **flake score** of a test is the weighted share of its last
//! [`WINDOW`] runs that flipped, the newest run weighing 1 and each older one
//! [`DECAY`] times the one after it:
//!
//! ```text
//! score = sum(DECAY^age * flip) / sum(DECAY^age)      age = 0 for the newest run
//! ```
//!
//! A test that fails every time on the same inputs never flips (it is broken, score 0);
//! one that failed once and passed on its retry has score 0.53 until more runs dilute
//! it. Nothing here reads a clock: ages are counted in runs, and retention compares the
//! times the facts carry.
//!
//! Bounds: at most [`MAX_TESTS`] tests are tracked (the least recently run are
//! forgotten first), a test not run for [`MAX_AGE`] (measured from the newest fact) is
//! forgotten, only runs from the last [`MAX_RECORDS`] facts count (about what a durable
//! history keeps, so a history folded from it is close to the live one; a run's flip is
//! decided when it is folded, so the two can differ where a flip's counterpart is older
//! than the records kept), and a fact keeps at most [`MAX_RUN_FAILURES`] failed tests,
//! each message cut to [`MESSAGE_BYTES`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{TestCase, TestId, TestKey};

/// Runs kept per test for its score.
pub const WINDOW: usize = 50;
/// Weight of a run relative to the run after it.
pub const DECAY: f64 = 0.9;
/// Most tests tracked.
pub const MAX_TESTS: usize = 10_000;
/// A test not run for this long (relative to the newest fact) is forgotten.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most failed (or rerun-flaky) tests kept in one [`TestRun`].
pub const MAX_RUN_FAILURES: usize = 500;
/// Most facts a durable history keeps (the oldest go first).
pub const MAX_RECORDS: usize = 5000;
/// Bytes of a failure's message kept in the history.
pub const MESSAGE_BYTES: usize = 256;

/// A failed test as the history keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTest {
    /// Who.
    pub id: TestId,
    /// The first line of its message, cut to [`MESSAGE_BYTES`].
    pub message: Option<String>,
}

impl FailedTest {
    /// What the history keeps of `case`.
    pub fn of(case: &TestCase) -> Self {
        let message = case.message.as_deref().map(|m| {
            let line = m.lines().next().unwrap_or("");
            let mut end = line.len().min(MESSAGE_BYTES);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line[..end].to_owned()
        });
        Self {
            id: case.id.clone(),
            message,
        }
    }
}

/// What one attempt's reports add to the history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRun {
    /// The plan run.
    pub plan: String,
    /// The gate's full id.
    pub gate: String,
    /// The inputs it ran on: the gate's cache key, or for a gate without one a digest
    /// of plan and gate (so only its own attempts compare).
    #[serde(with = "super::hex_bytes")]
    pub inputs: [u8; 32],
    /// When its reports were read (milliseconds since the Unix epoch).
    pub unix_ms: u64,
    /// Tests that failed or errored.
    pub failed: Vec<FailedTest>,
    /// Tests that passed after a failed rerun within the report.
    pub flaky: Vec<FailedTest>,
    /// Watched tests that passed.
    pub passed: Vec<TestKey>,
    /// Failed tests that were quarantined (they did not fail the gate).
    pub quarantined: Vec<TestKey>,
}

impl TestRun {
    /// Whether it says anything (an empty run is not worth recording).
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.flaky.is_empty() && self.passed.is_empty()
    }
}

/// The inputs a gate ran on, as [`TestRun::inputs`] holds them: its cache key, or a
/// digest of plan and gate when it has none (then only its own attempts compare).
pub fn inputs(key: Option<[u8; 32]>, plan: &str, gate: &str) -> [u8; 32] {
    match key {
        Some(key) => key,
        None => {
            let mut h = blake3::Hasher::new_derive_key("gatehouse 2026 unkeyed gate inputs");
            h.update(&(plan.len() as u64).to_le_bytes());
            h.update(plan.as_bytes());
            h.update(gate.as_bytes());
            *h.finalize().as_bytes()
        }
    }
}

/// A gate's name without its item (`pr-12/test` -> `test`): watch lists are shared
/// by the gates of that name across items and plans.
pub fn gate_name(gate: &str) -> &str {
    gate.rsplit_once('/').map_or(gate, |(_, name)| name)
}

/// One run of a tracked test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    /// The first 8 bytes of [`TestRun::inputs`].
    inputs: u64,
    failed: bool,
    flip: bool,
    /// The number of the fact it came from (facts are numbered as they are folded).
    fact: u64,
    unix_ms: u64,
}

#[derive(Clone, Debug)]
struct Tracked {
    id: TestId,
    /// The gate it last ran in (full id).
    gate: String,
    /// The names of the gates it ran in (without items; the newest last, at most
    /// [`MAX_GATE_NAMES`]): attempts of gates of these names watch it.
    gate_names: Vec<String>,
    /// Its last [`WINDOW`] runs, oldest first; runs of facts beyond the last
    /// [`MAX_RECORDS`] are dropped, as a history folded from the durable records alone
    /// (a new leader's) never had them.
    runs: VecDeque<Run>,
    message: Option<String>,
    quarantined: bool,
}

/// Most gate names remembered per test.
const MAX_GATE_NAMES: usize = 8;

impl Tracked {
    /// It ran in `gate` (a full gate id).
    fn ran_in(&mut self, gate: &str) {
        gate.clone_into(&mut self.gate);
        let name = gate_name(gate);
        if let Some(at) = self.gate_names.iter().position(|n| n == name) {
            let n = self.gate_names.remove(at);
            self.gate_names.push(n);
        } else {
            if self.gate_names.len() == MAX_GATE_NAMES {
                self.gate_names.remove(0);
            }
            self.gate_names.push(name.to_owned());
        }
    }

    /// Records a run; whether it flipped.
    fn push(&mut self, run: (u64, u64), failed: bool, flaky_in_report: bool, unix_ms: u64) -> bool {
        let (inputs, fact) = run;
        let contradicts = self
            .runs
            .iter()
            .rev()
            .find(|r| r.inputs == inputs)
            .is_some_and(|r| r.failed != failed);
        let flip = flaky_in_report || contradicts;
        if self.runs.len() == WINDOW {
            self.runs.pop_front();
        }
        self.runs.push_back(Run {
            inputs,
            failed,
            flip,
            fact,
            unix_ms,
        });
        flip
    }

    fn last_run_ms(&self) -> u64 {
        self.runs.back().map_or(0, |r| r.unix_ms)
    }

    fn score(&self) -> f64 {
        let (mut flipped, mut total, mut weight) = (0.0, 0.0, 1.0);
        for run in self.runs.iter().rev() {
            total += weight;
            if run.flip {
                flipped += weight;
            }
            weight *= DECAY;
        }
        if total == 0.0 { 0.0 } else { flipped / total }
    }
}

/// The tracked entry of `f`'s test (created if new), last seen in `gate`.
fn track<'a>(
    tests: &'a mut HashMap<TestKey, Tracked>,
    f: &FailedTest,
    gate: &str,
) -> (TestKey, &'a mut Tracked) {
    let key = f.id.key();
    let tracked = tests.entry(key).or_insert_with(|| Tracked {
        id: f.id.clone(),
        gate: String::new(),
        gate_names: Vec::new(),
        runs: VecDeque::new(),
        message: None,
        quarantined: false,
    });
    tracked.ran_in(gate);
    (key, tracked)
}

/// A tracked test as `gatehouse flakes` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlakeRow {
    /// Who.
    pub test: TestId,
    /// The gate it last ran in.
    pub gate: String,
    /// Its flake score (0..=1).
    pub score: f64,
    /// Failures among its recorded runs (the last [`WINDOW`]).
    pub fails: u64,
    /// Its recorded runs (the last [`WINDOW`], since its first failure).
    pub runs: u64,
    /// Flips among them.
    pub flips: u64,
    /// When it last flipped (milliseconds since the Unix epoch).
    pub last_flip_unix_ms: Option<u64>,
    /// When it last ran.
    pub last_run_unix_ms: u64,
    /// Its last failure's message (first line).
    pub message: Option<String>,
    /// It was quarantined in its last failing run.
    pub quarantined: bool,
}

/// Which rows `gatehouse flakes` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlakeFilter {
    /// Only tests last run in this gate (full id, or name without the item).
    pub gate: Option<String>,
    /// Only tests run at or after this time (milliseconds since the Unix epoch).
    pub since_unix_ms: u64,
    /// Also tests that never flipped.
    pub all: bool,
    /// At most this many rows (0: all).
    pub limit: usize,
}

impl FlakeFilter {
    /// `rows` (already ordered) that pass the filter.
    pub fn apply(&self, rows: Vec<FlakeRow>) -> Vec<FlakeRow> {
        let limit = if self.limit == 0 {
            usize::MAX
        } else {
            self.limit
        };
        rows.into_iter()
            .filter(|r| self.all || r.score > 0.0)
            .filter(|r| r.last_run_unix_ms >= self.since_unix_ms)
            .filter(|r| {
                self.gate
                    .as_deref()
                    .is_none_or(|g| r.gate == g || gate_name(&r.gate) == g)
            })
            .take(limit)
            .collect()
    }
}

/// The folded history (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct History {
    tests: HashMap<TestKey, Tracked>,
    /// The newest fact's time: "now" for retention.
    newest_ms: u64,
    /// Facts folded so far (their numbers).
    facts: u64,
    /// Watch lists by gate name, built on demand and dropped on every change.
    watch: HashMap<String, Arc<[TestKey]>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tests tracked.
    pub fn len(&self) -> usize {
        self.tests.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// Folds one fact in; returns the tests that flipped in it.
    pub fn apply(&mut self, run: &TestRun) -> Vec<TestKey> {
        let inputs = u64::from_le_bytes(run.inputs[..8].try_into().unwrap_or([0; 8]));
        self.facts += 1;
        let this = (inputs, self.facts);
        let at = run.unix_ms;
        self.newest_ms = self.newest_ms.max(at);
        self.watch.clear();
        let quarantined: std::collections::HashSet<&TestKey> = run.quarantined.iter().collect();
        let mut flipped = Vec::new();
        for f in &run.failed {
            let (key, t) = track(&mut self.tests, f, &run.gate);
            t.message.clone_from(&f.message);
            t.quarantined = quarantined.contains(&key);
            if t.push(this, true, false, at) {
                flipped.push(key);
            }
        }
        for f in &run.flaky {
            let (key, t) = track(&mut self.tests, f, &run.gate);
            t.message.clone_from(&f.message);
            t.push(this, false, true, at);
            flipped.push(key);
        }
        // A test that also failed in this attempt (another report of the same run, a
        // test matrix) did not pass it: the failure wins.
        let failed_here: std::collections::HashSet<TestKey> = run
            .failed
            .iter()
            .chain(&run.flaky)
            .map(|f| f.id.key())
            .collect();
        for key in run.passed.iter().filter(|k| !failed_here.contains(k)) {
            if let Some(t) = self.tests.get_mut(key) {
                t.ran_in(&run.gate);
                if t.push(this, false, false, at) {
                    flipped.push(*key);
                }
            }
        }
        self.retain();
        flipped
    }

    /// Forgets runs of facts beyond the last [`MAX_RECORDS`], tests with no run left or
    /// not run within [`MAX_AGE`], then the least recently run beyond [`MAX_TESTS`].
    fn retain(&mut self) {
        let horizon = self.newest_ms.saturating_sub(MAX_AGE.as_millis() as u64);
        let oldest_fact = self.facts.saturating_sub(MAX_RECORDS as u64);
        self.tests.retain(|_, t| {
            while t.runs.front().is_some_and(|r| r.fact <= oldest_fact) {
                t.runs.pop_front();
            }
            !t.runs.is_empty() && t.last_run_ms() >= horizon
        });
        if self.tests.len() > MAX_TESTS {
            let mut by_age: Vec<(u64, TestKey)> = self
                .tests
                .iter()
                .map(|(k, t)| (t.last_run_ms(), *k))
                .collect();
            by_age.sort_unstable();
            let excess = self.tests.len() - MAX_TESTS;
            for (_, key) in by_age.into_iter().take(excess) {
                self.tests.remove(&key);
            }
        }
    }

    /// The flake score of `test` (0 when untracked).
    pub fn score(&self, test: &TestKey) -> f64 {
        self.tests.get(test).map_or(0.0, Tracked::score)
    }

    /// `test`'s last failure as remembered (its id and message), if it is tracked.
    pub fn failure(&self, test: &TestKey) -> Option<FailedTest> {
        self.tests.get(test).map(|t| FailedTest {
            id: t.id.clone(),
            message: t.message.clone(),
        })
    }

    /// Whether `test` is known flaky: it flipped within its window.
    pub fn is_flaky(&self, test: &TestKey) -> bool {
        self.tests
            .get(test)
            .is_some_and(|t| t.runs.iter().any(|r| r.flip))
    }

    /// The tests whose passes an attempt of a gate named like `gate` should report:
    /// every tracked test that ran in a gate of that name.
    pub fn watch(&mut self, gate: &str) -> Arc<[TestKey]> {
        let name = gate_name(gate);
        if let Some(list) = self.watch.get(name) {
            return list.clone();
        }
        let mut keys: Vec<TestKey> = self
            .tests
            .iter()
            .filter(|(_, t)| t.gate_names.iter().any(|n| n == name))
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        let list: Arc<[TestKey]> = keys.into();
        self.watch.insert(name.to_owned(), list.clone());
        list
    }

    /// Every tracked test, highest score first (then most recently run).
    pub fn rows(&self) -> Vec<FlakeRow> {
        let mut rows: Vec<FlakeRow> = self
            .tests
            .values()
            .map(|t| FlakeRow {
                test: t.id.clone(),
                gate: t.gate.clone(),
                score: t.score(),
                fails: t.runs.iter().filter(|r| r.failed).count() as u64,
                runs: t.runs.len() as u64,
                flips: t.runs.iter().filter(|r| r.flip).count() as u64,
                last_flip_unix_ms: t.runs.iter().rev().find(|r| r.flip).map(|r| r.unix_ms),
                last_run_unix_ms: t.last_run_ms(),
                message: t.message.clone(),
                quarantined: t.quarantined,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.last_run_unix_ms.cmp(&a.last_run_unix_ms))
                .then_with(|| a.test.cmp(&b.test))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> TestId {
        TestId {
            suite: "s".into(),
            class: "c".into(),
            name: name.into(),
        }
    }

    fn failed(name: &str) -> FailedTest {
        FailedTest {
            id: id(name),
            message: Some("boom".into()),
        }
    }

    fn run(inputs: u8, at: u64) -> TestRun {
        TestRun {
            plan: "p".into(),
            gate: "item/test".into(),
            inputs: [inputs; 32],
            unix_ms: at,
            ..TestRun::default()
        }
    }

    #[test]
    fn a_failure_then_a_pass_on_the_same_inputs_is_a_flip() {
        let mut h = History::new();
        let mut first = run(1, 1);
        first.failed = vec![failed("t"), failed("broken")];
        assert!(h.apply(&first).is_empty());
        let key = id("t").key();
        assert!(!h.is_flaky(&key));
        assert_eq!(&*h.watch("other-item/test"), {
            let mut k = vec![id("t").key(), id("broken").key()];
            k.sort();
            k
        });
        // The retry: "t" passed, "broken" failed again.
        let mut retry = run(1, 2);
        retry.passed = vec![key];
        retry.failed = vec![failed("broken")];
        assert_eq!(h.apply(&retry), vec![key]);
        assert!(h.is_flaky(&key));
        assert!(!h.is_flaky(&id("broken").key()), "broken, not flaky");
        assert!((h.score(&key) - 1.0 / 1.9).abs() < 1e-9);
        // Passing again on the same inputs is no new flip; on other inputs neither.
        let mut again = run(1, 3);
        again.passed = vec![key];
        assert!(h.apply(&again).is_empty());
        let mut other = run(2, 4);
        other.failed = vec![failed("t")];
        assert!(h.apply(&other).is_empty());
        let rows = h.rows();
        assert_eq!(rows[0].test, id("t"));
        assert_eq!((rows[0].fails, rows[0].runs, rows[0].flips), (2, 4, 1));
        assert_eq!(rows[0].last_flip_unix_ms, Some(2));
        assert_eq!(rows[1].score, 0.0);
    }

    #[test]
    fn a_test_that_ran_in_two_gates_is_watched_by_both() {
        let mut h = History::new();
        let mut unit = run(1, 1);
        unit.gate = "unit".into();
        unit.failed = vec![failed("shared")];
        h.apply(&unit);
        let mut math = run(2, 2);
        math.gate = "pr-1/math".into();
        math.failed = vec![failed("shared")];
        h.apply(&math);
        let key = id("shared").key();
        assert!(h.watch("unit").contains(&key));
        assert!(h.watch("pr-2/math").contains(&key));
        assert!(!h.watch("lint").contains(&key));
        assert_eq!(h.rows()[0].gate, "pr-1/math", "the gate it last ran in");
    }

    #[test]
    fn a_test_that_failed_and_passed_in_one_attempt_did_not_flip() {
        let mut h = History::new();
        let mut r = run(1, 1);
        r.failed = vec![failed("matrix")];
        h.apply(&r);
        let mut both = run(1, 2);
        both.failed = vec![failed("matrix")];
        both.passed = vec![id("matrix").key()];
        assert!(h.apply(&both).is_empty());
        assert!(!h.is_flaky(&id("matrix").key()));
    }

    #[test]
    fn the_score_decays_as_clean_runs_follow() {
        let mut h = History::new();
        let key = id("t").key();
        let mut r = run(1, 1);
        r.failed = vec![failed("t")];
        h.apply(&r);
        let mut r = run(1, 2);
        r.passed = vec![key];
        h.apply(&r);
        let mut last = h.score(&key);
        for at in 3..60 {
            let mut r = run(at as u8, at);
            r.passed = vec![key];
            h.apply(&r);
            let score = h.score(&key);
            assert!(score < last || score == 0.0, "{score} < {last}");
            last = score;
        }
        // The flip left the window.
        assert_eq!(last, 0.0);
        assert!(!h.is_flaky(&key));
    }

    #[test]
    fn rerun_flakes_flip_at_once_and_unknown_passes_are_ignored() {
        let mut h = History::new();
        let mut r = run(1, 1);
        r.flaky = vec![failed("rerun")];
        r.passed = vec![id("never-failed").key()];
        assert_eq!(h.apply(&r), vec![id("rerun").key()]);
        assert_eq!(h.len(), 1);
        assert!(h.is_flaky(&id("rerun").key()));
    }

    #[test]
    fn retention_forgets_by_age_and_count() {
        let mut h = History::new();
        let mut r = run(1, 0);
        r.failed = vec![failed("old")];
        h.apply(&r);
        let day = 24 * 3600 * 1000;
        let mut r = run(1, 31 * day);
        r.failed = vec![failed("new")];
        h.apply(&r);
        assert_eq!(h.len(), 1);
        assert_eq!(h.rows()[0].test, id("new"));
        let mut r = run(1, 31 * day + 1);
        r.failed = (0..MAX_TESTS + 5).map(|i| failed(&i.to_string())).collect();
        h.apply(&r);
        assert_eq!(h.len(), MAX_TESTS);
    }

    #[test]
    fn the_newest_records_alone_fold_to_the_same_history() {
        // A test that fails now and then, over more facts than a durable history keeps.
        let facts: Vec<TestRun> = (0..MAX_RECORDS as u64 + 300)
            .map(|i| {
                let mut r = run((i % 7) as u8, 1_000 + i);
                if i % 50 == 0 {
                    r.failed = vec![failed("t"), failed(&format!("once-{i}"))];
                } else {
                    r.passed = vec![id("t").key()];
                }
                r
            })
            .collect();
        let mut all = History::new();
        for f in &facts {
            all.apply(f);
        }
        let mut recent = History::new();
        for f in &facts[facts.len() - MAX_RECORDS..] {
            recent.apply(f);
        }
        assert_eq!(all.rows(), recent.rows());
        assert!(
            all.rows().iter().all(|r| r.test.name != "once-0"),
            "its only run is gone"
        );
    }

    #[test]
    fn messages_are_cut_on_a_char_boundary() {
        let case = TestCase {
            id: id("t"),
            outcome: super::super::Outcome::Failed,
            duration_ms: 0,
            message: Some(format!("{}\nsecond line", "é".repeat(MESSAGE_BYTES))),
            reruns_failed: 0,
            file: None,
            line: None,
        };
        let kept = FailedTest::of(&case).message.expect("message");
        assert!(kept.len() <= MESSAGE_BYTES && kept.chars().all(|c| c == 'é'));
    }
}
