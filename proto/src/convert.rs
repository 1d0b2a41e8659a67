//! Wire <-> domain conversions for the types both the coordinator and workers use, and
//! ([`events`]) for the events a plan publishes to clients.
//! Decoding never trusts the peer: a missing or out-of-range field is a [`WireError`]
//! naming the field, which services turn into `INVALID_ARGUMENT`.

pub mod events;
pub mod land;
pub mod reports;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

use gatehouse_common::exec::{AttemptRef, ExitStatus, GateResult, GateSpec, OutputTail};
use gatehouse_common::ids::{GateId, GateIdx, ItemId, PlanId};
use gatehouse_common::source::{Checkout, CommitId, RepoUrl};

use crate::v1;

/// A message from the peer that cannot be turned into a domain value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field that must be set is missing or empty.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A field has a value the receiver does not accept.
    #[error("invalid field {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A field names something (a gate, an item) that the receiver does not have.
    #[error("invalid field {field}: unknown id {value:?}")]
    Unknown {
        /// The field.
        field: &'static str,
        /// The id it names.
        value: String,
    },
}

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&AttemptRef> for v1::AttemptRef {
    fn from(a: &AttemptRef) -> Self {
        Self {
            plan_id: a.plan.to_string(),
            gate_index: a.gate.0,
            attempt: a.attempt,
        }
    }
}

/// Decodes an attempt reference that must be present.
pub fn attempt_from_wire(a: Option<v1::AttemptRef>) -> Result<AttemptRef, WireError> {
    let a = a.ok_or(WireError::Missing("attempt"))?;
    if a.plan_id.is_empty() {
        return Err(WireError::Missing("attempt.plan_id"));
    }
    if a.attempt == 0 {
        return Err(WireError::Missing("attempt.attempt"));
    }
    Ok(AttemptRef {
        plan: PlanId::new(a.plan_id),
        gate: GateIdx(a.gate_index),
        attempt: a.attempt,
    })
}

impl From<&GateResult> for v1::AttemptResult {
    fn from(r: &GateResult) -> Self {
        let mut out = Self {
            duration_ms: ms(r.duration),
            peak_memory_bytes: r.peak_memory,
            stdout_tail: r.stdout.bytes.clone(),
            stdout_dropped: r.stdout.dropped,
            stderr_tail: r.stderr.bytes.clone(),
            stderr_dropped: r.stderr.dropped,
            tests: r.tests.as_deref().map(v1::TestReport::from),
            ..Self::default()
        };
        let kind = match &r.status {
            ExitStatus::Exited(code) => {
                out.exit_code = *code;
                v1::ExitKind::Exited
            }
            ExitStatus::Signaled(sig) => {
                out.signal = *sig;
                v1::ExitKind::Signaled
            }
            ExitStatus::TimedOut => v1::ExitKind::TimedOut,
            ExitStatus::MemoryExceeded { peak, limit } => {
                out.peak_memory_bytes = Some(*peak);
                out.memory_limit_bytes = *limit;
                v1::ExitKind::MemoryExceeded
            }
            ExitStatus::Cancelled => v1::ExitKind::Cancelled,
            ExitStatus::SpawnFailed(msg) => {
                out.error = msg.clone();
                v1::ExitKind::SpawnFailed
            }
            ExitStatus::SourceFailed(msg) => {
                out.error = msg.clone();
                v1::ExitKind::SourceFailed
            }
        };
        out.kind = kind as i32;
        out
    }
}

impl TryFrom<v1::AttemptResult> for GateResult {
    type Error = WireError;

    fn try_from(r: v1::AttemptResult) -> Result<Self, WireError> {
        let status = match v1::ExitKind::try_from(r.kind).unwrap_or(v1::ExitKind::Unspecified) {
            v1::ExitKind::Exited => ExitStatus::Exited(r.exit_code),
            v1::ExitKind::Signaled => ExitStatus::Signaled(r.signal),
            v1::ExitKind::TimedOut => ExitStatus::TimedOut,
            v1::ExitKind::MemoryExceeded => ExitStatus::MemoryExceeded {
                peak: r.peak_memory_bytes.unwrap_or(0),
                limit: r.memory_limit_bytes,
            },
            v1::ExitKind::Cancelled => ExitStatus::Cancelled,
            v1::ExitKind::SpawnFailed => ExitStatus::SpawnFailed(r.error),
            v1::ExitKind::SourceFailed => ExitStatus::SourceFailed(r.error),
            v1::ExitKind::Unspecified => return Err(WireError::Missing("result.kind")),
        };
        Ok(Self {
            status,
            duration: Duration::from_millis(r.duration_ms),
            peak_memory: r.peak_memory_bytes,
            stdout: OutputTail {
                bytes: r.stdout_tail,
                dropped: r.stdout_dropped,
            },
            stderr: OutputTail {
                bytes: r.stderr_tail,
                dropped: r.stderr_dropped,
            },
            tests: match r.tests {
                Some(t) => Some(Box::new(t.try_into()?)),
                None => None,
            },
        })
    }
}

impl From<&GateSpec> for v1::GateSpec {
    fn from(s: &GateSpec) -> Self {
        Self {
            plan_name: s.plan_name.clone(),
            gate_id: s.gate.to_string(),
            item_id: s.item.as_ref().map(ToString::to_string).unwrap_or_default(),
            run: s.run.clone(),
            env: s.env.clone().into_iter().collect(),
            workdir: s.workdir_rel.clone(),
            timeout_ms: ms(s.timeout),
            memory_bytes: s.memory,
            checkout: s.checkout.as_ref().map(|c| {
                Box::new(v1::GitCheckout {
                    repo: c.repo.as_git_arg().to_string(),
                    base: c.base.to_string(),
                    stack: c.stack.iter().map(ToString::to_string).collect(),
                    commit: c.commit.to_string(),
                    item_commit: c
                        .item_commit
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                })
            }),
            reports: s.reports.clone(),
        }
    }
}

/// Decodes a checkout: every id a full object id, the repository a URL.
fn checkout_from_wire(c: v1::GitCheckout) -> Result<Checkout, WireError> {
    let id = |text: &str, field: &'static str| {
        CommitId::parse(text).ok_or_else(|| WireError::Invalid {
            field,
            reason: format!("not a full commit id: {text:?}"),
        })
    };
    let repo =
        RepoUrl::parse(&c.repo, std::path::Path::new("/")).map_err(|e| WireError::Invalid {
            field: "spec.checkout.repo",
            reason: e.to_string(),
        })?;
    Ok(Checkout {
        repo,
        base: id(&c.base, "spec.checkout.base")?,
        stack: c
            .stack
            .iter()
            .map(|s| id(s, "spec.checkout.stack"))
            .collect::<Result<_, _>>()?,
        commit: id(&c.commit, "spec.checkout.commit")?,
        item_commit: match c.item_commit.as_str() {
            "" => None,
            text => Some(id(text, "spec.checkout.item_commit")?),
        },
    })
}

/// Decodes a gate spec; its relative `workdir` resolves against `workspace`.
pub fn gate_spec_from_wire(
    s: v1::GateSpec,
    workspace: &std::path::Path,
) -> Result<GateSpec, WireError> {
    if s.gate_id.is_empty() {
        return Err(WireError::Missing("spec.gate_id"));
    }
    if s.run.trim().is_empty() {
        return Err(WireError::Missing("spec.run"));
    }
    if s.timeout_ms == 0 {
        return Err(WireError::Missing("spec.timeout_ms"));
    }
    let rel = if s.workdir.is_empty() {
        ".".to_string()
    } else {
        s.workdir
    };
    let workdir = normalize(&workspace.join(&rel));
    Ok(GateSpec {
        plan_name: s.plan_name,
        gate: GateId::new(s.gate_id),
        item: (!s.item_id.is_empty()).then(|| ItemId::new(s.item_id)),
        run: s.run,
        env: s.env.into_iter().collect(),
        workdir,
        workdir_rel: rel,
        timeout: Duration::from_millis(s.timeout_ms),
        memory: s.memory_bytes,
        checkout: s.checkout.map(|c| checkout_from_wire(*c)).transpose()?,
        reports: s.reports,
    })
}

/// Removes `.` components (keeps `..`, which the plan may use on purpose).
fn normalize(p: &std::path::Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;

    #[test]
    fn results_roundtrip() {
        for status in [
            ExitStatus::Exited(0),
            ExitStatus::Exited(3),
            ExitStatus::Signaled(9),
            ExitStatus::TimedOut,
            ExitStatus::MemoryExceeded { peak: 10, limit: 5 },
            ExitStatus::Cancelled,
            ExitStatus::SpawnFailed("no such dir".into()),
        ] {
            let r = GateResult {
                status,
                duration: Duration::from_millis(1234),
                peak_memory: Some(10),
                stdout: OutputTail {
                    bytes: b"out".to_vec(),
                    dropped: 7,
                },
                stderr: OutputTail {
                    bytes: b"err".to_vec(),
                    dropped: 0,
                },
                tests: None,
            };
            let back = GateResult::try_from(v1::AttemptResult::from(&r)).expect("decodes");
            assert_eq!(back, r);
        }
        assert!(GateResult::try_from(v1::AttemptResult::default()).is_err());
    }

    #[test]
    fn specs_resolve_relative_workdirs_against_the_workspace() {
        let spec = GateSpec {
            plan_name: "p".into(),
            gate: GateId::new("i/g"),
            item: Some(ItemId::new("i")),
            run: "true".into(),
            env: BTreeMap::from([("A".to_string(), "1".to_string())]),
            workdir: PathBuf::from("/client/checkout/sub"),
            workdir_rel: "./sub".into(),
            timeout: Duration::from_secs(5),
            memory: 42,
            checkout: None,
            reports: Vec::new(),
        };
        let back = gate_spec_from_wire(v1::GateSpec::from(&spec), std::path::Path::new("/ws"))
            .expect("decodes");
        assert_eq!(back.workdir, PathBuf::from("/ws/sub"));
        assert_eq!(
            (&back.run, &back.env, back.memory, &back.item),
            (&spec.run, &spec.env, 42, &spec.item)
        );
        let abs = v1::GateSpec {
            workdir: "/abs".into(),
            ..v1::GateSpec::from(&spec)
        };
        assert_eq!(
            gate_spec_from_wire(abs, std::path::Path::new("/ws"))
                .expect("ok")
                .workdir,
            PathBuf::from("/abs")
        );
        let no_run = v1::GateSpec {
            run: " ".into(),
            ..v1::GateSpec::from(&spec)
        };
        assert!(gate_spec_from_wire(no_run, std::path::Path::new("/ws")).is_err());
    }

    #[test]
    fn checkouts_roundtrip_and_reject_partial_ids() {
        let id = |c: char| CommitId::parse(&c.to_string().repeat(40)).expect("id");
        let checkout = Checkout {
            repo: RepoUrl::parse("https://u:tok@git.example.com/a.git", Path::new("/"))
                .expect("url"),
            base: id('a'),
            stack: vec![id('b'), id('c')],
            commit: id('d'),
            item_commit: Some(id('c')),
        };
        let spec = GateSpec {
            plan_name: "p".into(),
            gate: GateId::new("i/g"),
            item: Some(ItemId::new("i")),
            run: "true".into(),
            env: BTreeMap::new(),
            workdir: PathBuf::from("/x"),
            workdir_rel: ".".into(),
            timeout: Duration::from_secs(5),
            memory: 1,
            checkout: Some(checkout.clone()),
            reports: Vec::new(),
        };
        let wire = v1::GateSpec::from(&spec);
        assert_eq!(
            wire.checkout.as_ref().map(|c| c.repo.as_str()),
            Some("https://u:tok@git.example.com/a.git"),
            "the worker gets the credentials it fetches with"
        );
        let back = gate_spec_from_wire(wire.clone(), Path::new("/ws")).expect("decodes");
        assert_eq!(back.checkout, Some(checkout));
        let mut short = wire;
        if let Some(c) = short.checkout.as_mut() {
            c.commit = "abc123".into();
        }
        assert!(gate_spec_from_wire(short, Path::new("/ws")).is_err());
    }

    #[test]
    fn attempt_refs_roundtrip_and_reject_missing_fields() {
        let a = AttemptRef {
            plan: PlanId::new("p1"),
            gate: GateIdx(4),
            attempt: 2,
        };
        assert_eq!(
            attempt_from_wire(Some(v1::AttemptRef::from(&a))).expect("ok"),
            a
        );
        assert!(attempt_from_wire(None).is_err());
        assert!(attempt_from_wire(Some(v1::AttemptRef::default())).is_err());
    }
}
