//! Per-test results from the report files gates write: what a JUnit XML report says of
//! each test case, compact enough to travel with a gate's result.
//!
//! [`junit::read`] reads one report as a stream (no tree of the whole file is ever
//! built) under explicit [`Limits`], handing over each test case ([`CaseRef`], or an
//! owned [`TestCase`]) with a stable [`TestId`] and an [`Outcome`]; [`TestResults`] is
//! what a gate keeps of them.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

pub mod collect;
pub mod history;
pub mod junit;

pub use collect::{MAX_REPORT_FILES, collect};
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
    /// Bytes of failed and flaky test cases listed per attempt (names, messages, files;
    /// the rest are counted, not listed): what keeps a result small enough for the wire,
    /// the state store and the cache.
    pub max_listed_bytes: usize,
}

/// Default [`Limits::max_bytes`]: 100 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
/// Default [`Limits::max_depth`].
pub const DEFAULT_MAX_DEPTH: u32 = 50;
/// Default [`Limits::max_cases`].
pub const DEFAULT_MAX_CASES: u32 = 1_000_000;
/// Default [`Limits::max_message_bytes`]: 4 KiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;
/// Default [`Limits::max_listed_bytes`]: 256 KiB.
pub const DEFAULT_MAX_LISTED_BYTES: usize = 256 << 10;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_cases: DEFAULT_MAX_CASES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_listed_bytes: DEFAULT_MAX_LISTED_BYTES,
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
    /// [`Limits::max_message_bytes`]. For a test that passed after failed reruns: its
    /// first failed rerun's message attribute.
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

/// What a listed case costs, roughly: its strings and a fixed overhead.
const CASE_OVERHEAD: usize = 64;

impl TestCase {
    /// Its size as it travels and is stored, roughly.
    pub fn approx_bytes(&self) -> usize {
        self.as_ref().approx_bytes()
    }

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
    /// Its size as it travels and is stored, roughly.
    pub fn approx_bytes(&self) -> usize {
        CASE_OVERHEAD
            + self.suite.len()
            + self.class.len()
            + self.name.len()
            + self.message.map_or(0, str::len)
            + self.file.map_or(0, str::len)
    }

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
/// Serialized as 32 hex digits in human-readable formats (JSON), as bytes otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TestKey(pub [u8; 16]);

impl Serialize for TestKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        hex_bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for TestKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        hex_bytes::deserialize(d).map(TestKey)
    }
}

/// Fixed-size byte arrays as hex text in human-readable formats, as a tuple of bytes
/// otherwise (`#[serde(with = "hex_bytes")]`).
pub mod hex_bytes {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `bytes`.
    pub fn serialize<const N: usize, S: Serializer>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            s.serialize_str(&hex)
        } else {
            serde::Serialize::serialize(&tuple::Array(*bytes), s)
        }
    }

    /// Deserializes what [`serialize`] wrote.
    pub fn deserialize<'de, const N: usize, D: Deserializer<'de>>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let invalid = || D::Error::custom(format!("expected {} hex digits", 2 * N));
            if text.len() != 2 * N {
                return Err(invalid());
            }
            let mut out = [0u8; N];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(invalid)?, 16)
                    .map_err(|_| invalid())?;
            }
            Ok(out)
        } else {
            tuple::Array::deserialize(d).map(|a| a.0)
        }
    }

    /// `[u8; N]` as a serde tuple for any `N` (serde's own impls stop at 32).
    mod tuple {
        use serde::de::{Error as _, SeqAccess, Visitor};
        use serde::ser::SerializeTuple;

        pub struct Array<const N: usize>(pub [u8; N]);

        impl<const N: usize> serde::Serialize for Array<N> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut t = s.serialize_tuple(N)?;
                for b in &self.0 {
                    t.serialize_element(b)?;
                }
                t.end()
            }
        }

        impl<'de, const N: usize> serde::Deserialize<'de> for Array<N> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V<const N: usize>;
                impl<'de, const N: usize> Visitor<'de> for V<N> {
                    type Value = Array<N>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "{N} bytes")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<Array<N>, A::Error> {
                        let mut out = [0u8; N];
                        for (i, b) in out.iter_mut().enumerate() {
                            *b = seq
                                .next_element()?
                                .ok_or_else(|| A::Error::invalid_length(i, &self))?;
                        }
                        Ok(Array(out))
                    }
                }
                d.deserialize_tuple(N, V::<N>)
            }
        }
    }
}

impl TestId {
    /// How people name it: `class::name`, or `suite::name` when it has no class (the
    /// form `policy.quarantine.tests` patterns match and `gatehouse flakes` prints).
    pub fn name_for_humans(&self) -> String {
        let owner = if self.class.is_empty() {
            &self.suite
        } else {
            &self.class
        };
        if owner.is_empty() {
            self.name.clone()
        } else {
            format!("{owner}::{}", self.name)
        }
    }

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
/// (failed, errored, or passed after failed reruns) in full, and the keys of the
/// *watched* tests that passed: those the scheduler asked about because they failed
/// before on the same inputs, so a flip can be told from a failure while a suite of
/// passing tests costs nothing per test.
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
    /// Keys of the watched test cases that passed.
    pub watched_passed: Vec<TestKey>,
    /// Failed or flaky test cases beyond [`Limits::max_cases`]: counted above, not kept.
    pub dropped: u64,
}

impl TestResults {
    /// Reads one report into these results; `watch` names the tests whose passes are
    /// kept (by key) in [`TestResults::watched_passed`].
    pub fn add_report(
        &mut self,
        input: impl std::io::Read,
        limits: &Limits,
        watch: &HashSet<TestKey>,
    ) -> Result<(), ReportError> {
        let max = limits.max_cases as usize;
        let mut listed: usize = self.notable.iter().map(TestCase::approx_bytes).sum();
        read(input, limits, &mut |case: CaseRef<'_>| {
            match case.outcome {
                Outcome::Passed => self.passed += 1,
                Outcome::Failed | Outcome::Errored => self.failed += 1,
                Outcome::Skipped => self.skipped += 1,
            }
            if case.flaky() {
                self.flaky += 1;
            }
            if case.outcome.is_failure() || case.flaky() {
                let bytes = case.approx_bytes();
                if self.notable.len() < max && listed + bytes <= limits.max_listed_bytes {
                    listed += bytes;
                    self.notable.push(case.to_owned());
                } else {
                    self.dropped += 1;
                }
            } else if case.outcome == Outcome::Passed && !watch.is_empty() {
                // Hashing only when something is watched keeps a passing suite cheap.
                let key = case.key();
                if watch.contains(&key) {
                    self.watched_passed.push(key);
                }
            }
        })
    }

    /// The failed and errored test cases kept.
    pub fn failures(&self) -> impl Iterator<Item = &TestCase> {
        self.notable.iter().filter(|c| c.outcome.is_failure())
    }
}

/// A report file that could not be read, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    /// Its path, relative to the gate's workdir.
    pub path: String,
    /// Why ([`ReportError`]'s message).
    pub reason: String,
}

impl GateTests {
    /// Its size as it travels and is stored, roughly.
    pub fn approx_bytes(&self) -> usize {
        let strings = |v: &[String]| v.iter().map(String::len).sum::<usize>();
        CASE_OVERHEAD
            + self
                .results
                .notable
                .iter()
                .map(TestCase::approx_bytes)
                .sum::<usize>()
            + 16 * self.results.watched_passed.len()
            + strings(&self.missing)
            + self
                .unreadable
                .iter()
                .map(|u| u.path.len() + u.reason.len())
                .sum::<usize>()
    }
}

/// What one attempt's declared reports said: the facts an executor sends with the
/// attempt's result. The gate's own exit status is never changed by them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateTests {
    /// Per-test results of every report read.
    pub results: TestResults,
    /// Report files read.
    pub files: u32,
    /// Declared patterns that matched no file written during the attempt (a warning).
    pub missing: Vec<String>,
    /// Matched files that could not be read.
    pub unreadable: Vec<Unreadable>,
    /// When the reports were read, in milliseconds since the Unix epoch; the scheduler
    /// replaces it with the time it received the result (its own clock), which is the
    /// time of the run in the test history.
    pub read_unix_ms: u64,
}

/// The scheduler's reading of a gate's tests, beyond what its last attempt reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestVerdict {
    /// Tests that both failed and passed on the gate's inputs: in an earlier attempt,
    /// in an earlier plan, or within one report (reruns). Each as it failed.
    pub flaky: Vec<TestCase>,
    /// Failed tests that were quarantined, so they did not fail the gate.
    pub quarantined: Vec<TestCase>,
}

impl TestVerdict {
    /// Whether it says nothing.
    pub fn is_empty(&self) -> bool {
        self.flaky.is_empty() && self.quarantined.is_empty()
    }
}
