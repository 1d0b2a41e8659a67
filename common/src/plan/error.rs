//! Errors of loading and validating a plan.
//!
//! Validation collects every problem it finds (up to [`MAX_REPORTED_ERRORS`]) instead of
//! stopping at the first, so a user fixes a plan in one round. Each [`PlanError`] names the
//! file, the line when known (YAML input; JSON values carry no location), and a
//! [`PlanErrorKind`] that carries the offending ids. [`PlanErrors`] displays one error per
//! line as `FILE:LINE: MESSAGE`, or `FILE: MESSAGE` without a line.

use std::fmt;
use std::io;

use crate::ids::{GateId, ItemId};

/// After this many errors validation stops collecting and adds
/// [`PlanErrorKind::TooManyErrors`].
pub const MAX_REPORTED_ERRORS: usize = 50;

/// What is wrong with a plan. Messages are lowercase and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum PlanErrorKind {
    /// The plan file could not be read.
    #[error("cannot read plan file: {error}")]
    Read {
        /// The underlying I/O error.
        error: io::Error,
    },
    /// The input is larger than [`super::validate::MAX_PLAN_BYTES`].
    #[error("plan is larger than the limit of {limit} bytes; split it into several plans")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The input is not UTF-8.
    #[error("plan file is not valid utf-8; save it as utf-8")]
    NotUtf8,
    /// The YAML or JSON is malformed or does not match the plan format (for example an
    /// unknown key or a value of the wrong type).
    #[error("cannot parse plan: {message}")]
    Parse {
        /// The parser's message, without its location.
        message: String,
    },
    /// The input holds no document at all.
    #[error("plan file is empty; a plan needs `version: 1`, a `name` and `items` or `gates`")]
    EmptyFile,
    /// `version` is missing.
    #[error("missing `version`; add `version: 1`")]
    MissingVersion,
    /// `version` is not 1.
    #[error("unsupported plan version {version}; this gatehouse reads `version: 1`")]
    UnsupportedVersion {
        /// The version in the file.
        version: u64,
    },
    /// `name` is missing.
    #[error("missing `name`; give the plan a name")]
    MissingName,
    /// `name` is empty or whitespace only.
    #[error("`name` is empty; give the plan a name")]
    EmptyName,
    /// Neither `items` nor `gates` is present.
    #[error("plan has neither `items` nor `gates`; add one of them")]
    MissingGates,
    /// Both `items` and `gates` are present.
    #[error("plan has both `items` and `gates`; use either `items` or top-level `gates`")]
    BothForms,
    /// `items` or `gates` is an empty list.
    #[error("plan has no gates; add at least one gate")]
    EmptyPlan,
    /// More gates than [`super::MAX_GATES`].
    #[error("plan has {count} gates, more than the limit of {limit}; split it into several plans")]
    TooManyGates {
        /// Gates in the plan.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// `policy.max_parallel` is 0.
    #[error("`policy.max_parallel` is 0; use at least 1, or omit it to use every executor slot")]
    ZeroMaxParallel,
    /// An item id does not match `[A-Za-z0-9._-]{1,128}`.
    #[error("invalid item id {id:?}; ids must match [A-Za-z0-9._-]{{1,128}}")]
    InvalidItemId {
        /// The id as written.
        id: String,
    },
    /// A gate id does not match `[A-Za-z0-9._-]{1,128}`.
    #[error("invalid gate id {id:?}; ids must match [A-Za-z0-9._-]{{1,128}}")]
    InvalidGateId {
        /// The full id as written (`item/gate` in the item form).
        id: String,
    },
    /// Two items share an id.
    #[error("duplicate item id {:?}; rename one of the items", .item.as_str())]
    DuplicateItem {
        /// The repeated id.
        item: ItemId,
    },
    /// Two gates share a full id.
    #[error("duplicate gate id {:?}; rename one of the gates", .gate.as_str())]
    DuplicateGate {
        /// The repeated full id.
        gate: GateId,
    },
    /// An item has no gates.
    #[error("item {:?} has no gates; add a gate or remove the item", .item.as_str())]
    EmptyItem {
        /// The item.
        item: ItemId,
    },
    /// A `deps` entry names no item.
    #[error("item {:?} depends on unknown item {dep:?}", .item.as_str())]
    UnknownDep {
        /// The depending item.
        item: ItemId,
        /// The entry as written.
        dep: String,
    },
    /// An item lists itself in `deps`.
    #[error("item {:?} depends on itself; remove it from its `deps`", .item.as_str())]
    SelfDep {
        /// The item.
        item: ItemId,
    },
    /// A `needs` entry is not a gate id (or `item/gate` in the item form).
    #[error(
        "gate {:?} has an invalid need {need:?}; write a gate id, or `item/gate` for a gate of another item",
        .gate.as_str()
    )]
    InvalidNeed {
        /// The needing gate.
        gate: GateId,
        /// The entry as written.
        need: String,
    },
    /// A `needs` entry names no gate.
    #[error("gate {:?} needs unknown gate {need:?}", .gate.as_str())]
    UnknownNeed {
        /// The needing gate.
        gate: GateId,
        /// The full id it resolved to.
        need: String,
    },
    /// A gate lists itself in `needs`.
    #[error("gate {:?} needs itself; remove it from its `needs`", .gate.as_str())]
    SelfNeed {
        /// The gate.
        gate: GateId,
    },
    /// Items depend on each other in a cycle.
    #[error("item dependency cycle: {}; remove one of these `deps`", join_ids(.cycle))]
    ItemCycle {
        /// The items of the cycle; the first is repeated at the end.
        cycle: Vec<ItemId>,
    },
    /// Gates wait for each other in a cycle, directly through `needs` or through the
    /// `deps` of their items.
    #[error("dependency cycle: {}; remove one of these `needs` or `deps`", join_ids(.cycle))]
    GateCycle {
        /// The gates of the cycle; the first is repeated at the end.
        cycle: Vec<GateId>,
    },
    /// A gate has no `run`.
    #[error("gate {:?} has no `run`; give it a shell command", .gate.as_str())]
    MissingRun {
        /// The gate.
        gate: GateId,
    },
    /// A gate's `run` is empty or whitespace only.
    #[error("gate {:?} has an empty `run`; give it a shell command", .gate.as_str())]
    EmptyRun {
        /// The gate.
        gate: GateId,
    },
    /// A gate's `run` contains a NUL byte, which no shell can receive.
    #[error("gate {:?} has a nul byte in `run`; remove it", .gate.as_str())]
    NulInRun {
        /// The gate.
        gate: GateId,
    },
    /// A gate's `run` is longer than [`super::MAX_RUN_BYTES`].
    #[error(
        "gate {:?} has a `run` of {len} bytes, more than the limit of {limit}; move the commands into a script",
        .gate.as_str()
    )]
    RunTooLong {
        /// The gate.
        gate: GateId,
        /// Length of `run` in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A gate has more `env` entries than [`super::MAX_ENV_VARS`].
    #[error("gate {:?} has {count} env vars, more than the limit of {limit}", .gate.as_str())]
    TooManyEnvVars {
        /// The gate.
        gate: GateId,
        /// Entries in its `env`.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A label is invalid (bad key, bad value, duplicate, too many).
    #[error("gate {:?} has an invalid label {label:?}: {reason}", .gate.as_str())]
    InvalidLabel {
        /// The gate.
        gate: GateId,
        /// The label key as written.
        label: String,
        /// What is wrong.
        reason: String,
    },
    /// An env name is empty or contains `=` or NUL.
    #[error(
        "gate {:?} has an invalid env name {name:?}; names must be non-empty without `=` or nul",
        .gate.as_str()
    )]
    InvalidEnvName {
        /// The gate.
        gate: GateId,
        /// The name as written.
        name: String,
    },
    /// An env value contains NUL.
    #[error("gate {:?} has a nul byte in the value of env {name:?}; remove it", .gate.as_str())]
    NulInEnvValue {
        /// The gate.
        gate: GateId,
        /// The variable's name.
        name: String,
    },
    /// An env name is given twice.
    #[error("gate {:?} sets env {name:?} twice; keep one", .gate.as_str())]
    DuplicateEnvVar {
        /// The gate.
        gate: GateId,
        /// The repeated name.
        name: String,
    },
    /// A duration (of the policy or of a gate) does not parse or is out of range.
    #[error("{}: invalid `{field}` {value:?}: {reason}", owner(.gate))]
    InvalidDuration {
        /// The gate, or `None` for the policy.
        gate: Option<GateId>,
        /// The key (`timeout`, `retry_backoff`).
        field: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A gate's size does not parse.
    #[error("gate {:?}: invalid `{field}` {value:?}: {reason}", .gate.as_str())]
    InvalidSize {
        /// The gate.
        gate: GateId,
        /// The key (`memory`).
        field: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A gate requests no memory at all.
    #[error(
        "gate {:?} requests `memory: 0`; request at least 1 byte, or omit it for the default 256Mi",
        .gate.as_str()
    )]
    ZeroMemory {
        /// The gate.
        gate: GateId,
    },
    /// A gate's `workdir` is empty or contains NUL.
    #[error("gate {:?} has an invalid `workdir` {workdir:?}; use \".\" for the plan's directory", .gate.as_str())]
    InvalidWorkdir {
        /// The gate.
        gate: GateId,
        /// The value as written.
        workdir: String,
    },
    /// An `inputs` entry is not a valid glob.
    #[error("gate {:?} has an invalid input glob {glob:?}: {reason}", .gate.as_str())]
    InvalidGlob {
        /// The gate.
        gate: GateId,
        /// The glob as written.
        glob: String,
        /// Why the glob is invalid.
        reason: String,
    },
    /// `source.repo` is not a repository location.
    #[error("invalid `source.repo`: {reason}")]
    InvalidRepo {
        /// What is wrong (never the credentials of a URL).
        reason: String,
    },
    /// `source.repo` is a local path that is not a git repository.
    #[error(
        "`source.repo` {path} is not a git repository; give the directory of a clone or of a bare repository"
    )]
    RepoNotGit {
        /// The path, resolved against the plan's directory.
        path: String,
    },
    /// A plan submitted to a cluster names its repository by a local path.
    #[error(
        "`source.repo` is a local path ({path}), which a cluster's workers cannot see; use a URL (https, ssh, git, or file:// for a path every machine shares)"
    )]
    LocalRepoInCluster {
        /// The path.
        path: String,
    },
    /// An item has a `ref` in a plan without `source`.
    #[error("item {:?} has a `ref` but the plan has no `source`; add `source: {{ repo: ... }}` or remove the `ref`", .item.as_str())]
    RefWithoutSource {
        /// The item.
        item: ItemId,
    },
    /// A landing setting (`policy.land`, `verify`) in a plan without `source`.
    #[error(
        "`{field}` needs a `source`: only a plan whose items are git changes can land; add `source: {{ repo: ..., base: <branch> }}` or remove `{field}`"
    )]
    LandWithoutSource {
        /// `policy.land` or `verify`.
        field: &'static str,
    },
    /// `source.base` or an item's `ref` is not a ref name or commit id git accepts.
    #[error("{}: invalid {field} {value:?}: {reason}", ref_owner(.item))]
    InvalidRef {
        /// The item, or `None` for `source.base`.
        item: Option<ItemId>,
        /// `ref` or `base`.
        field: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A gate of a source-aware plan reaches outside the repository.
    #[error("gate {:?}: `{field}` {value:?} is outside the repository; in a plan with `source`, paths are relative to the repository's root", .gate.as_str())]
    OutsideRepo {
        /// The gate.
        gate: GateId,
        /// `workdir` or `inputs`.
        field: &'static str,
        /// The value as written.
        value: String,
    },
    /// A gate's `reports` entry is not usable.
    #[error("gate {:?} has an invalid report pattern {pattern:?}: {reason}", .gate.as_str())]
    InvalidReport {
        /// The gate.
        gate: GateId,
        /// The pattern as written (empty when the list itself is wrong).
        pattern: String,
        /// What is wrong.
        reason: String,
    },
    /// `retry_on` is neither `any` nor `flaky`.
    #[error("{}: invalid `retry_on` {value:?}; use `any` (every failure) or `flaky` (only failures of known flaky tests)", retry_owner(.gate))]
    InvalidRetryOn {
        /// The gate, or `None` for `policy.retry_on`.
        gate: Option<GateId>,
        /// The value as written.
        value: String,
    },
    /// `policy.quarantine` is not usable.
    #[error("invalid `policy.quarantine`: {reason}")]
    InvalidQuarantine {
        /// What is wrong.
        reason: String,
    },
    /// Validation stopped collecting errors.
    #[error("stopped after {limit} errors; fix these and validate again")]
    TooManyErrors {
        /// [`MAX_REPORTED_ERRORS`].
        limit: usize,
    },
}

fn retry_owner(gate: &Option<GateId>) -> String {
    match gate {
        Some(gate) => format!("gate {:?}", gate.as_str()),
        None => "policy".to_owned(),
    }
}

/// `a -> b -> a`.
fn join_ids<T: fmt::Display>(ids: &[T]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// `gate "x"` or `policy`, the subject of a duration error.
fn owner(gate: &Option<GateId>) -> String {
    match gate {
        Some(gate) => format!("gate {:?}", gate.as_str()),
        None => "policy".to_owned(),
    }
}

/// `item "x"` or `source`, the subject of a ref error.
fn ref_owner(item: &Option<ItemId>) -> String {
    match item {
        Some(item) => format!("item {:?}", item.as_str()),
        None => "source".to_owned(),
    }
}

/// One problem in one plan file.
#[derive(Debug)]
pub struct PlanError {
    /// The file as the user named it (`-` or `<stdin>` for standard input).
    pub file: String,
    /// 1-based line of the offending value, when known.
    pub line: Option<u64>,
    /// What is wrong.
    pub kind: PlanErrorKind,
}

impl PlanError {
    /// An error at `line` of `file`; line 0 (an unknown location) becomes `None`.
    pub fn new(file: impl Into<String>, line: u64, kind: PlanErrorKind) -> Self {
        Self {
            file: file.into(),
            line: (line > 0).then_some(line),
            kind,
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.kind),
            None => write!(f, "{}: {}", self.file, self.kind),
        }
    }
}

// The kind's message is part of this error's own `Display`, so it is not repeated as a
// `source`.
impl std::error::Error for PlanError {}

/// Every problem found in a plan, in the order found; never empty.
#[derive(Debug)]
pub struct PlanErrors(pub Vec<PlanError>);

impl PlanErrors {
    /// A list of exactly one error.
    pub fn single(file: impl Into<String>, line: u64, kind: PlanErrorKind) -> Self {
        Self(vec![PlanError::new(file, line, kind)])
    }

    /// The errors, in the order found.
    pub fn errors(&self) -> &[PlanError] {
        &self.0
    }
}

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanErrors {}

/// Collects the errors of one validation run, up to [`MAX_REPORTED_ERRORS`].
#[derive(Debug)]
pub(crate) struct Collector {
    /// Source name used for every error.
    file: String,
    /// Errors so far, at most `MAX_REPORTED_ERRORS + 1` (the last being `TooManyErrors`).
    errors: Vec<PlanError>,
}

impl Collector {
    /// An empty collector for `file`.
    pub(crate) fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            errors: Vec::new(),
        }
    }

    /// Records an error at `line` (0 = unknown); ignored once the limit is reached.
    pub(crate) fn push(&mut self, line: u64, kind: PlanErrorKind) {
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors
                .push(PlanError::new(self.file.as_str(), line, kind));
        } else if self.errors.len() == MAX_REPORTED_ERRORS {
            let limit = MAX_REPORTED_ERRORS;
            self.errors.push(PlanError::new(
                self.file.as_str(),
                0,
                PlanErrorKind::TooManyErrors { limit },
            ));
        }
    }

    /// Every recorded error; for a caller that just recorded one and cannot go on.
    pub(crate) fn into_errors(self) -> PlanErrors {
        PlanErrors(self.errors)
    }

    /// `Ok(value)` when nothing was recorded, else every recorded error.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, PlanErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(PlanErrors(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_line() {
        let errors = PlanErrors(vec![
            PlanError::new(
                "plan.yaml",
                7,
                PlanErrorKind::UnknownNeed {
                    gate: GateId::new("pr-101/test"),
                    need: "pr-101/lnt".to_owned(),
                },
            ),
            PlanError::new("plan.json", 0, PlanErrorKind::MissingName),
        ]);
        assert_eq!(
            errors.to_string(),
            "plan.yaml:7: gate \"pr-101/test\" needs unknown gate \"pr-101/lnt\"\n\
             plan.json: missing `name`; give the plan a name"
        );
    }

    #[test]
    fn cycle_and_owner_messages() {
        let cycle = PlanErrorKind::GateCycle {
            cycle: vec![GateId::new("a/x"), GateId::new("b/y"), GateId::new("a/x")],
        };
        assert!(
            cycle
                .to_string()
                .starts_with("dependency cycle: a/x -> b/y -> a/x")
        );
        let policy = PlanErrorKind::InvalidDuration {
            gate: None,
            field: "timeout",
            value: "soon".to_owned(),
            reason: "bad".to_owned(),
        };
        assert_eq!(
            policy.to_string(),
            "policy: invalid `timeout` \"soon\": bad"
        );
    }

    #[test]
    fn collector_caps_errors() {
        let mut collector = Collector::new("p.yaml");
        for _ in 0..MAX_REPORTED_ERRORS + 10 {
            collector.push(1, PlanErrorKind::EmptyPlan);
        }
        let errors = collector.finish(()).expect_err("errors were pushed");
        assert_eq!(errors.errors().len(), MAX_REPORTED_ERRORS + 1);
        assert!(matches!(
            errors.errors().last().map(|e| &e.kind),
            Some(PlanErrorKind::TooManyErrors { .. })
        ));
    }
}
