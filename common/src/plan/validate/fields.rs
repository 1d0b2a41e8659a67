//! Field-level checks: the policy, and every field of one gate except its id and
//! `needs` (those are resolved against the whole plan by the parent module).
//!
//! Each function records what is wrong in the [`Collector`] with the line of the
//! offending value and returns a usable value anyway (the default), so validation can
//! go on and report every problem; the plan is discarded when anything was recorded.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::line;
use crate::ids::{GateId, ItemId, ItemIdx};
use crate::plan::error::{Collector, PlanErrorKind};
use crate::plan::raw::{RawGate, RawPolicy, RawSource, Scalar};
use crate::plan::{DEFAULT_MEMORY, Gate, MAX_ENV_VARS, MAX_LABELS, MAX_RUN_BYTES, Policy};
use crate::source::{PlanSource, RepoUrl};
use crate::units::{parse_duration, parse_size};

/// The policy with defaults applied.
pub(super) fn policy(raw: &RawPolicy, errs: &mut Collector) -> Policy {
    let defaults = Policy::default();
    if let Some(mp) = &raw.max_parallel
        && mp.value == 0
    {
        errs.push(line(mp), PlanErrorKind::ZeroMaxParallel);
    }
    let backoff = raw.retry_backoff.as_ref();
    let timeout = raw.timeout.as_ref();
    Policy {
        max_parallel: raw.max_parallel.as_ref().map(|mp| mp.value),
        fail_fast: raw.fail_fast.unwrap_or(defaults.fail_fast),
        retries: raw.retries.unwrap_or(defaults.retries),
        retry_backoff: duration(errs, None, "retry_backoff", backoff, false)
            .unwrap_or(defaults.retry_backoff),
        timeout: duration(errs, None, "timeout", timeout, true).unwrap_or(defaults.timeout),
        cache: raw.cache.unwrap_or(defaults.cache),
        cache_salt: raw.cache_salt.clone().unwrap_or_default(),
        land: raw.land.as_ref().is_some_and(|l| l.value),
        retry_on: super::reports::retry_on(raw.retry_on.as_ref(), None, errs)
            .unwrap_or(defaults.retry_on),
        quarantine: raw
            .quarantine
            .as_ref()
            .map(|q| super::reports::quarantine(q, errs))
            .unwrap_or_default(),
        cache_flaky: raw.cache_flaky.unwrap_or(defaults.cache_flaky),
    }
}

/// The `source:` block: the repository parsed (a path resolved against `base_dir` and
/// required to be a git repository: the one check here that reads the file system; a
/// `file://` URL is taken as written, like any URL) and `base` checked.
pub(super) fn source(
    raw: &Spanned<RawSource>,
    base_dir: &Path,
    errs: &mut Collector,
) -> Option<PlanSource> {
    let repo = &raw.value.repo;
    let base = raw
        .value
        .base
        .as_ref()
        .and_then(|b| git_ref(b, None, "base", errs));
    let url = match RepoUrl::parse(&repo.value, base_dir) {
        Ok(url) => url,
        Err(e) => {
            let kind = PlanErrorKind::InvalidRepo {
                reason: e.to_string(),
            };
            errs.push(line(repo), kind);
            return None;
        }
    };
    if let Some(path) = url.local_path().filter(|_| url.is_path())
        && !is_git_repository(path)
    {
        let kind = PlanErrorKind::RepoNotGit {
            path: path.display().to_string(),
        };
        errs.push(line(repo), kind);
        return None;
    }
    Some(PlanSource {
        repo: url,
        base,
        resolution: None,
    })
}

/// Whether `path` is a git repository: a work tree with `.git`, or a bare repository.
fn is_git_repository(path: &Path) -> bool {
    path.join(".git").exists() || (path.join("HEAD").is_file() && path.join("objects").is_dir())
}

/// A `ref` or `base` value: a branch, tag, full ref, `HEAD` or commit id, as git's
/// `check-ref-format` would accept it (and never an option: no leading `-`).
pub(super) fn git_ref(
    raw: &Spanned<String>,
    item: Option<ItemId>,
    field: &'static str,
    errs: &mut Collector,
) -> Option<String> {
    let value = raw.value.as_str();
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.starts_with('-') {
        Some("it starts with `-`")
    } else if value.len() > 1024 {
        Some("it is longer than 1024 bytes")
    } else if value
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        Some("ref names cannot contain spaces, control characters or any of ~^:?*[\\")
    } else if value.contains("..") || value.contains("@{") || value.contains("//") {
        Some("ref names cannot contain `..`, `@{` or `//`")
    } else if value.ends_with('/') || value.ends_with('.') || value.ends_with(".lock") {
        Some("ref names cannot end with `/`, `.` or `.lock`")
    } else {
        None
    };
    match reason {
        Some(reason) => {
            let kind = PlanErrorKind::InvalidRef {
                item,
                field,
                value: value.to_owned(),
                reason,
            };
            errs.push(line(raw), kind);
            None
        }
        None => Some(value.to_owned()),
    }
}

/// Whether a `/`-separated relative path climbs above its root (`../x`, `a/../../x`).
pub(super) fn climbs_above_root(path: &str) -> bool {
    let mut depth = 0usize;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

/// Gate `id` built from `raw` with every default applied; `needs` is left empty.
pub(super) fn gate(
    raw: &RawGate,
    id: GateId,
    item: Option<ItemIdx>,
    policy: &Policy,
    base_dir: &Path,
    errs: &mut Collector,
) -> Gate {
    let timeout = duration(errs, Some(&id), "timeout", raw.timeout.as_ref(), true);
    let workdir_rel = match &raw.workdir {
        None => ".".to_owned(),
        Some(w) => {
            if w.value.is_empty() || w.value.contains('\0') {
                let workdir = w.value.clone();
                let kind = PlanErrorKind::InvalidWorkdir {
                    gate: id.clone(),
                    workdir,
                };
                errs.push(line(w), kind);
            }
            w.value.clone()
        }
    };
    for input in &raw.inputs {
        if let Err(e) = globset::Glob::new(&input.value) {
            let kind = PlanErrorKind::InvalidGlob {
                gate: id.clone(),
                glob: input.value.clone(),
                reason: e.kind().to_string(),
            };
            errs.push(line(input), kind);
        }
    }
    Gate {
        run: run(raw, &id, errs),
        timeout: timeout.unwrap_or(policy.timeout),
        retries: raw.retries.unwrap_or(policy.retries),
        env: env(raw, &id, errs),
        workdir: resolve_workdir(base_dir, &workdir_rel),
        workdir_rel,
        inputs: raw.inputs.iter().map(|i| i.value.clone()).collect(),
        memory: memory(raw, &id, errs),
        cache: raw.cache.unwrap_or(policy.cache),
        labels: labels(raw, &id, errs),
        reports: super::reports::reports(raw, &id, errs),
        retry_on: super::reports::retry_on(raw.retry_on.as_ref(), Some(&id), errs)
            .unwrap_or(policy.retry_on),
        id,
        item,
        needs: Vec::new(),
    }
}

/// Parses an optional duration; `None` when absent or invalid (the error is recorded).
fn duration(
    errs: &mut Collector,
    gate: Option<&GateId>,
    field: &'static str,
    value: Option<&Spanned<Scalar>>,
    nonzero: bool,
) -> Option<Duration> {
    let value = value?;
    let reason = match parse_duration(&value.value.0) {
        Ok(d) if nonzero && d.is_zero() => format!("a {field} must be greater than zero"),
        Ok(d) => return Some(d),
        Err(reason) => reason,
    };
    let kind = PlanErrorKind::InvalidDuration {
        gate: gate.cloned(),
        field,
        value: value.value.0.clone(),
        reason,
    };
    errs.push(line(value), kind);
    None
}

/// The gate's `run`: present, not blank, within [`MAX_RUN_BYTES`], without NUL.
fn run(raw: &RawGate, id: &GateId, errs: &mut Collector) -> String {
    let Some(run) = &raw.run else {
        errs.push(
            line(&raw.id),
            PlanErrorKind::MissingRun { gate: id.clone() },
        );
        return String::new();
    };
    let (gate, len, limit) = (id.clone(), run.value.len(), MAX_RUN_BYTES);
    if run.value.trim().is_empty() {
        errs.push(line(run), PlanErrorKind::EmptyRun { gate });
    } else if len > limit {
        errs.push(line(run), PlanErrorKind::RunTooLong { gate, len, limit });
    } else if run.value.contains('\0') {
        errs.push(line(run), PlanErrorKind::NulInRun { gate });
    }
    run.value.clone()
}

/// The gate's `env`: at most [`MAX_ENV_VARS`] entries, valid unique names, no NUL.
fn env(raw: &RawGate, id: &GateId, errs: &mut Collector) -> BTreeMap<String, String> {
    let vars = &raw.env.0;
    if vars.len() > MAX_ENV_VARS {
        let (count, limit) = (vars.len(), MAX_ENV_VARS);
        let kind = PlanErrorKind::TooManyEnvVars {
            gate: id.clone(),
            count,
            limit,
        };
        errs.push(line(&raw.id), kind);
    }
    let mut env = BTreeMap::new();
    for (name, value) in vars {
        let (gate, text) = (id.clone(), name.value.clone());
        if text.is_empty() || text.contains('=') || text.contains('\0') {
            errs.push(
                line(name),
                PlanErrorKind::InvalidEnvName { gate, name: text },
            );
        } else if value.0.contains('\0') {
            errs.push(
                line(name),
                PlanErrorKind::NulInEnvValue { gate, name: text },
            );
        } else if env.insert(text.clone(), value.0.clone()).is_some() {
            errs.push(
                line(name),
                PlanErrorKind::DuplicateEnvVar { gate, name: text },
            );
        }
    }
    env
}

/// The gate's `labels`: at most [`MAX_LABELS`] entries; keys `[A-Za-z0-9._/-]{1,128}`,
/// values at most 256 bytes without NUL; no key twice.
fn labels(raw: &RawGate, id: &GateId, errs: &mut Collector) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if raw.labels.0.len() > MAX_LABELS {
        let reason = format!("more than {MAX_LABELS} labels");
        let kind = PlanErrorKind::InvalidLabel {
            gate: id.clone(),
            label: String::new(),
            reason,
        };
        errs.push(line(&raw.id), kind);
    }
    for (key, value) in &raw.labels.0 {
        let k = &key.value;
        let key_ok = (1..=128).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        let reason = if !key_ok {
            Some("keys are 1 to 128 of [A-Za-z0-9._/-]".to_string())
        } else if value.0.len() > 256 || value.0.contains('\0') {
            Some("values are at most 256 bytes without nul".to_string())
        } else if labels.insert(k.clone(), value.0.clone()).is_some() {
            Some("given twice".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            let kind = PlanErrorKind::InvalidLabel {
                gate: id.clone(),
                label: k.clone(),
                reason,
            };
            errs.push(line(key), kind);
        }
    }
    labels
}

/// The gate's memory request: a valid non-zero size, [`DEFAULT_MEMORY`] when absent.
fn memory(raw: &RawGate, id: &GateId, errs: &mut Collector) -> u64 {
    let Some(m) = &raw.memory else {
        return DEFAULT_MEMORY;
    };
    let kind = match parse_size(&m.value.0) {
        Ok(0) => PlanErrorKind::ZeroMemory { gate: id.clone() },
        Ok(bytes) => return bytes,
        Err(reason) => PlanErrorKind::InvalidSize {
            gate: id.clone(),
            field: "memory",
            value: m.value.0.clone(),
            reason,
        },
    };
    errs.push(line(m), kind);
    DEFAULT_MEMORY
}

/// `base_dir` joined with `rel` (an absolute `rel` replaces it), without `.` components.
fn resolve_workdir(base_dir: &Path, rel: &str) -> PathBuf {
    base_dir
        .join(rel)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::tests::{assert_at, find, flat, parse_ok, rejected};
    use crate::plan::error::PlanErrorKind;
    use crate::plan::{DEFAULT_TIMEOUT, MAX_ENV_VARS, MAX_RUN_BYTES, Policy};

    #[test]
    fn defaults_come_from_constants_then_policy() {
        let plan = parse_ok(&flat("  - { id: a, run: x }\n"));
        assert_eq!(plan.policy, Policy::default());
        assert_eq!(plan.gates[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!((plan.gates[0].retries, plan.gates[0].cache), (0, true));

        let text = "version: 1\nname: t\npolicy: { timeout: 5m, retries: 3, cache: false }\n\
                    gates:\n  - { id: a, run: x }\n  - { id: b, run: x, timeout: 1s, retries: 0, cache: true }\n";
        let plan = parse_ok(text);
        let (a, b) = (&plan.gates[0], &plan.gates[1]);
        assert_eq!(
            (a.timeout, a.retries, a.cache),
            (Duration::from_secs(300), 3, false)
        );
        assert_eq!(
            (b.timeout, b.retries, b.cache),
            (Duration::from_secs(1), 0, true)
        );
    }

    #[test]
    fn run_errors() {
        let long = "x".repeat(MAX_RUN_BYTES + 1);
        let errors = rejected(&flat(&format!(
            "  - {{ id: a, run: \"\" }}\n  - {{ id: b, run: \"   \" }}\n  - {{ id: c }}\n\
             \x20 - {{ id: d, run: {long} }}\n  - {{ id: e, run: \"a\\0b\" }}\n"
        )));
        assert_at(
            find(
                &errors,
                |k| matches!(k, PlanErrorKind::EmptyRun { gate } if gate.as_str() == "a"),
            ),
            4,
            &["\"a\""],
        );
        assert_at(
            find(
                &errors,
                |k| matches!(k, PlanErrorKind::EmptyRun { gate } if gate.as_str() == "b"),
            ),
            5,
            &["\"b\""],
        );
        assert_at(
            find(&errors, |k| matches!(k, PlanErrorKind::MissingRun { .. })),
            6,
            &["\"c\""],
        );
        assert_at(
            find(&errors, |k| matches!(k, PlanErrorKind::RunTooLong { .. })),
            7,
            &["\"d\"", "65537"],
        );
        assert_at(
            find(&errors, |k| matches!(k, PlanErrorKind::NulInRun { .. })),
            8,
            &["\"e\""],
        );
        let exact = "x".repeat(MAX_RUN_BYTES);
        parse_ok(&flat(&format!("  - {{ id: a, run: {exact} }}\n")));
    }

    #[test]
    fn duration_and_size_errors() {
        let errors = rejected(
            "version: 1\nname: t\npolicy:\n  timeout: soon\n  retry_backoff: -1s\ngates:\n\
             \x20 - id: a\n    run: x\n    timeout: 0s\n    memory: 12Qi\n\
             \x20 - { id: b, run: x, memory: 0, timeout: 90 }\n",
        );
        let policy_timeout = find(&errors, |k| {
            matches!(
                k,
                PlanErrorKind::InvalidDuration {
                    gate: None,
                    field: "timeout",
                    ..
                }
            )
        });
        assert_at(
            policy_timeout,
            4,
            &[
                "policy: invalid `timeout` \"soon\"",
                "expected a duration like",
            ],
        );
        find(&errors, |k| {
            matches!(
                k,
                PlanErrorKind::InvalidDuration {
                    gate: None,
                    field: "retry_backoff",
                    ..
                }
            )
        });
        let zero = find(
            &errors,
            |k| matches!(k, PlanErrorKind::InvalidDuration { gate: Some(g), .. } if g.as_str() == "a"),
        );
        assert_at(zero, 9, &["\"a\"", "greater than zero"]);
        assert_at(
            find(&errors, |k| matches!(k, PlanErrorKind::InvalidSize { .. })),
            10,
            &["\"a\"", "12Qi"],
        );
        assert_at(
            find(&errors, |k| matches!(k, PlanErrorKind::ZeroMemory { .. })),
            11,
            &["\"b\""],
        );
        let unitless = find(
            &errors,
            |k| matches!(k, PlanErrorKind::InvalidDuration { gate: Some(g), .. } if g.as_str() == "b"),
        );
        assert_at(unitless, 11, &["missing unit"]);

        let plan = parse_ok(&flat(
            "  - { id: a, run: x, memory: 1048576 }\n  - { id: b, run: x, memory: 1.5Gi }\n",
        ));
        assert_eq!(
            (plan.gates[0].memory, plan.gates[1].memory),
            (1 << 20, 3 << 29)
        );
    }

    #[test]
    fn env_errors() {
        let many: String = (0..=MAX_ENV_VARS).map(|i| format!("V{i}: x, ")).collect();
        let errors = rejected(&flat(&format!(
            "  - id: a\n    run: x\n    env: {{ \"\": x, \"A=B\": y, \"N\\0\": z, OK: \"v\\0\" }}\n\
             \x20 - {{ id: b, run: x, env: {{ {many} }} }}\n"
        )));
        let names: Vec<&str> = errors
            .errors()
            .iter()
            .filter_map(|e| match &e.kind {
                PlanErrorKind::InvalidEnvName { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(names, vec!["", "A=B", "N\0"]);
        assert_at(
            find(&errors, |k| {
                matches!(k, PlanErrorKind::InvalidEnvName { .. })
            }),
            6,
            &["\"a\""],
        );
        find(
            &errors,
            |k| matches!(k, PlanErrorKind::NulInEnvValue { name, .. } if name == "OK"),
        );
        let too_many = find(&errors, |k| {
            matches!(k, PlanErrorKind::TooManyEnvVars { count: 257, .. })
        });
        assert_at(too_many, 7, &["\"b\"", "257"]);
        let at_limit: String = (0..MAX_ENV_VARS).map(|i| format!("V{i}: x, ")).collect();
        parse_ok(&flat(&format!(
            "  - {{ id: b, run: x, env: {{ {at_limit} }} }}\n"
        )));
    }

    #[test]
    fn workdir_and_glob() {
        let plan = parse_ok(&flat(
            "  - { id: a, run: x, workdir: /abs/dir }\n  - { id: b, run: x, workdir: ./rel/x }\n",
        ));
        assert_eq!(plan.gates[0].workdir, PathBuf::from("/abs/dir"));
        assert_eq!(plan.gates[0].workdir_rel, "/abs/dir");
        assert_eq!(plan.gates[1].workdir, PathBuf::from("/base/rel/x"));
        assert_eq!(plan.gates[1].workdir_rel, "./rel/x");

        let errors = rejected(&flat(
            "  - { id: a, run: x, workdir: \"\", inputs: [\"src/**\", \"a[\"] }\n",
        ));
        assert_at(
            find(&errors, |k| {
                matches!(k, PlanErrorKind::InvalidWorkdir { .. })
            }),
            4,
            &["\"a\""],
        );
        assert_at(
            find(
                &errors,
                |k| matches!(k, PlanErrorKind::InvalidGlob { glob, .. } if glob == "a["),
            ),
            4,
            &["\"a[\""],
        );
    }
}
