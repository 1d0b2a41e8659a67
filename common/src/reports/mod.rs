//! Per-test results from the report files gates write: what a JUnit XML report says of
//! each test case, compact enough to travel with a gate's result.
//!
//! [`junit::read`] reads one report as a stream (no tree of the whole file is ever
//! built) under explicit [`Limits`], handing over each test case ([`CaseRef`], or an
//! owned [`TestCase`]) with a stable [`TestId`] and an [`Outcome`]; [`TestResults`] is
//! what a gate keeps of them.

use serde::{Deserialize, Serialize};

pub mod junit;

pub use junit::{ReportError, read};

/// Bounds on reading one report. Every one is checked while reading, so a hostile or
/// broken file costs at most these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest report file, in bytes.
    pub max_bytes: u64,
    /// Deepest element nesting.
    pub max_depth: u32,
    /// Most test cases kept per gate; the rest are counted, not kept.
    pub max_cases: u32,
    /// Bytes kept of each failure's message and text.
    pub max_message_bytes: usize,
}

/// Default [`Limits::max_bytes`]: 100 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
/// Default [`Limits::max_depth`].
pub const DEFAULT_MAX_DEPTH: u32 = 50;
/// Default [`Limits::max_cases`].
pub const DEFAULT_MAX_CASES: u32 = 1_000_000;
/// Default [`Limits::max_message_bytes`]: 4 KiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_cases: DEFAULT_MAX_CASES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// A test's identity, stable across runs: its suite (the innermost `testsuite`'s name,
/// nested suites joined with `/`), its class (`classname`) and its name, each trimmed
/// with inner whitespace collapsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TestId {
    /// The suite path.
    pub suite: String,
    /// `classname` (empty when absent).
    pub class: String,
    /// `name`.
    pub name: String,
}

/// How one test case ended in one report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It passed (possibly after failed reruns: see [`TestCase::reruns_failed`]).
    Passed,
    /// An assertion failed (`failure`).
    Failed,
    /// It could not run to an assertion (`error`).
    Errored,
    /// It was skipped.
    Skipped,
}

impl Outcome {
    /// The outcome as a word.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Errored => "errored",
            Outcome::Skipped => "skipped",
        }
    }

    /// A failure of the test (failed or errored).
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Errored)
    }
}

/// One test case of a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCase {
    /// Who it is.
    pub id: TestId,
    /// How it ended.
    pub outcome: Outcome,
    /// Its `time`, in milliseconds (0 when absent or unreadable).
    pub duration_ms: u64,
    /// For a failure: its message attribute, else the first line of its text, cut to
    /// [`Limits::max_message_bytes`].
    pub message: Option<String>,
    /// Reruns in the same report that failed before its final outcome (Surefire's
    /// `flakyFailure`, `flakyError`, `rerunFailure`, `rerunError`): a test that passed
    /// with any is flaky within the run.
    pub reruns_failed: u32,
    /// Its `file` attribute.
    pub file: Option<String>,
    /// Its `line` attribute.
    pub line: Option<u32>,
}

impl TestCase {
    /// Passed after a failed rerun in the same report.
    pub fn flaky(&self) -> bool {
        self.outcome == Outcome::Passed && self.reruns_failed > 0
    }

    /// A borrowed view of it.
    pub fn as_ref(&self) -> CaseRef<'_> {
        CaseRef {
            suite: &self.id.suite,
            class: &self.id.class,
            name: &self.id.name,
            outcome: self.outcome,
            duration_ms: self.duration_ms,
            message: self.message.as_deref(),
            reruns_failed: self.reruns_failed,
            file: self.file.as_deref(),
            line: self.line,
        }
    }
}

/// A test case as the reader hands it over: borrowed, so one the caller only counts
/// or keys costs no copy. [`CaseRef::to_owned`] keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaseRef<'a> {
    /// [`TestId::suite`].
    pub suite: &'a str,
    /// [`TestId::class`].
    pub class: &'a str,
    /// [`TestId::name`].
    pub name: &'a str,
    /// [`TestCase::outcome`].
    pub outcome: Outcome,
    /// [`TestCase::duration_ms`].
    pub duration_ms: u64,
    /// [`TestCase::message`].
    pub message: Option<&'a str>,
    /// [`TestCase::reruns_failed`].
    pub reruns_failed: u32,
    /// [`TestCase::file`].
    pub file: Option<&'a str>,
    /// [`TestCase::line`].
    pub line: Option<u32>,
}

impl CaseRef<'_> {
    /// Passed after a failed rerun in the same report.
    pub fn flaky(&self) -> bool {
        self.outcome == Outcome::Passed && self.reruns_failed > 0
    }

    /// Its test's [`TestKey`].
    pub fn key(&self) -> TestKey {
        test_key(self.suite, self.class, self.name)
    }

    /// An owned copy.
    pub fn to_owned(&self) -> TestCase {
        TestCase {
            id: TestId {
                suite: self.suite.to_string(),
                class: self.class.to_string(),
                name: self.name.to_string(),
            },
            outcome: self.outcome,
            duration_ms: self.duration_ms,
            message: self.message.map(str::to_string),
            reruns_failed: self.reruns_failed,
            file: self.file.map(str::to_string),
            line: self.line,
        }
    }
}

/// A test's identity as 16 bytes (a keyed hash of its [`TestId`]): what is kept of a
/// passing test, so a suite of a million passing tests costs 16 MB, not its names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TestKey(pub [u8; 16]);

impl TestId {
    /// Its [`TestKey`].
    pub fn key(&self) -> TestKey {
        test_key(&self.suite, &self.class, &self.name)
    }
}

/// The [`TestKey`] of the test `suite`, `class`, `name`: a keyed BLAKE3 hash of the
/// three, length-prefixed, cut to 16 bytes.
fn test_key(suite: &str, class: &str, name: &str) -> TestKey {
    // The derived key is computed once: hashing a test id is on the path of every
    // passing test of every report.
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| blake3::derive_key("gatehouse 2026 test id v1", b""));
    // One call over a length-prefixed buffer (on the stack for usual ids).
    let len = 24 + suite.len() + class.len() + name.len();
    let mut stack = [0u8; 512];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for part in [suite, class, name] {
        buf[at..at + 8].copy_from_slice(&(part.len() as u64).to_le_bytes());
        buf[at + 8..at + 8 + part.len()].copy_from_slice(part.as_bytes());
        at += 8 + part.len();
    }
    let hash = blake3::keyed_hash(key, buf);
    let mut out = [0; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    TestKey(out)
}

/// What a gate keeps of its reports: counts, every test that did not simply pass
/// (failed, errored, or passed after failed reruns) in full, and the keys of the ones
/// that passed (to tell a flip from a failure later).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResults {
    /// Test cases that passed (flaky ones included).
    pub passed: u64,
    /// Test cases that failed or errored.
    pub failed: u64,
    /// Test cases skipped.
    pub skipped: u64,
    /// Test cases that passed after a failed rerun in the same report.
    pub flaky: u64,
    /// Failed, errored and flaky test cases, in report order, at most
    /// [`Limits::max_cases`].
    pub notable: Vec<TestCase>,
    /// Keys of the test cases that passed, at most [`Limits::max_cases`].
    pub passed_keys: Vec<TestKey>,
    /// Test cases beyond the limits: counted above, not kept.
    pub dropped: u64,
}

impl TestResults {
    /// Reads one report into these results.
    pub fn add_report(
        &mut self,
        input: impl std::io::Read,
        limits: &Limits,
    ) -> Result<(), ReportError> {
        let max = limits.max_cases as usize;
        read(input, limits, &mut |case: CaseRef<'_>| {
            match case.outcome {
                Outcome::Passed => self.passed += 1,
                Outcome::Failed | Outcome::Errored => self.failed += 1,
                Outcome::Skipped => self.skipped += 1,
            }
            if case.flaky() {
                self.flaky += 1;
            }
            let notable = case.outcome.is_failure() || case.flaky();
            if notable && self.notable.len() < max {
                self.notable.push(case.to_owned());
            } else if case.outcome == Outcome::Passed && self.passed_keys.len() < max {
                self.passed_keys.push(case.key());
            } else if notable || case.outcome == Outcome::Passed {
                self.dropped += 1;
            }
        })
    }
}
