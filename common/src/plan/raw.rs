//! Serde mirror of a plan file, before validation.
//!
//! These structs accept exactly the keys of the plan format (`deny_unknown_fields`, so a
//! misspelt key is an error with its location) and nothing more: ids stay strings,
//! durations and sizes stay text, nothing is defaulted or cross-checked. [`super::validate`]
//! turns a [`RawPlan`] into a [`super::Plan`].
//!
//! Values that validation may reject are wrapped in [`Spanned`] so the error can name
//! the YAML line (`spanned.referenced.line()`). For JSON input `Spanned` deserializes
//! too, with an unknown location (line 0), which validation reports as "no line".

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// The whole plan file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    /// Format version; must be 1. Optional here so that its absence is reported
    /// together with every other problem.
    pub version: Option<Spanned<u64>>,
    /// Plan name; required and non-empty (checked in validation).
    pub name: Option<Spanned<String>>,
    /// Plan-wide policy; every field optional.
    #[serde(default)]
    pub policy: RawPolicy,
    /// The repository the plan gates (source-aware plans only).
    pub source: Option<Spanned<RawSource>>,
    /// Item form: items with their gates. Exactly one of `items`/`gates` is allowed.
    pub items: Option<Spanned<Vec<RawItem>>>,
    /// Flat form: gates with global ids.
    pub gates: Option<Spanned<Vec<RawGate>>>,
    /// Gates run on the combined tip before landing (source-aware plans only).
    pub verify: Option<Spanned<Vec<RawGate>>>,
}

/// The `policy:` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Running gates at once; at least 1.
    pub max_parallel: Option<Spanned<u32>>,
    /// First failure cancels the rest.
    pub fail_fast: Option<bool>,
    /// Default extra attempts.
    pub retries: Option<u32>,
    /// First retry backoff (duration text).
    pub retry_backoff: Option<Spanned<Scalar>>,
    /// Default per-attempt timeout (duration text).
    pub timeout: Option<Spanned<Scalar>>,
    /// Default for gates' `cache`.
    pub cache: Option<bool>,
    /// Mixed into every cache key.
    pub cache_salt: Option<String>,
    /// Land the items that passed when the gates end (source-aware plans only).
    pub land: Option<Spanned<bool>>,
    /// Default for gates' `retry_on` (`any` or `flaky`).
    pub retry_on: Option<Spanned<String>>,
    /// Tests whose failures do not fail their gate.
    pub quarantine: Option<Spanned<RawQuarantine>>,
    /// Cache a gate that passed only after a failure (or with flaky tests).
    pub cache_flaky: Option<bool>,
}

/// `policy.quarantine`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuarantine {
    /// Flake score at or above which a test is quarantined.
    pub threshold: Option<Spanned<f64>>,
    /// Tests quarantined by name, each until a date.
    #[serde(default)]
    pub tests: Vec<RawQuarantined>,
}

/// One entry of `policy.quarantine.tests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuarantined {
    /// A glob over the test's name (`class::name`).
    pub test: Spanned<String>,
    /// The last day (UTC, `YYYY-MM-DD`) it is quarantined.
    pub until: Spanned<Scalar>,
}

/// The `source:` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// URL or path of the repository.
    pub repo: Spanned<String>,
    /// Branch, tag, full ref or commit the items build on.
    pub base: Option<Spanned<String>>,
}

/// One entry of `items:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawItem {
    /// Item id.
    pub id: Spanned<String>,
    /// The change: a branch, tag, full ref or commit (source-aware plans only).
    #[serde(rename = "ref")]
    pub git_ref: Option<Spanned<String>>,
    /// Ids of items this one waits for.
    #[serde(default)]
    pub deps: Vec<Spanned<String>>,
    /// The item's gates; an item without gates is rejected in validation.
    #[serde(default)]
    pub gates: Vec<RawGate>,
}

/// One gate, in either form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    /// Gate id (without the item prefix).
    pub id: Spanned<String>,
    /// Shell command; optional here so a missing `run` is collected with other errors.
    pub run: Option<Spanned<String>>,
    /// Gate ids (`gate`, or `item/gate` in the item form) this gate waits for.
    #[serde(default)]
    pub needs: Vec<Spanned<String>>,
    /// Per-attempt timeout (duration text).
    pub timeout: Option<Spanned<Scalar>>,
    /// Extra attempts.
    pub retries: Option<u32>,
    /// Environment variables, in file order.
    #[serde(default)]
    pub env: RawEnv,
    /// Working directory relative to the plan file's directory.
    pub workdir: Option<Spanned<String>>,
    /// Input globs relative to `workdir`.
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    /// Memory request (size text, or a bare number of bytes).
    pub memory: Option<Spanned<Scalar>>,
    /// Whether the result cache is used.
    pub cache: Option<bool>,
    /// Worker labels this gate requires (`arch: arm64`), in file order.
    #[serde(default)]
    pub labels: RawEnv,
    /// JUnit XML report globs relative to `workdir`.
    #[serde(default)]
    pub reports: Vec<Spanned<String>>,
    /// When a failed attempt is retried (`any` or `flaky`).
    pub retry_on: Option<Spanned<String>>,
}

/// A scalar kept as text: a string, or a number or boolean written without quotes
/// (`memory: 1024`, `env: { JOBS: 4 }`). Durations and sizes are parsed from this text
/// during validation, so a bad value is reported with its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A gate's `env:` mapping, in file order, with the location of every name.
///
/// Kept as a list rather than a map so that a name given twice (possible in JSON) is
/// reported instead of silently keeping the last value.
#[derive(Debug, Default)]
pub struct RawEnv(pub Vec<(Spanned<String>, Scalar)>);

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;

        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = RawEnv;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of environment variable names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEnv, A::Error> {
                let mut vars = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(name) = map.next_key::<Spanned<String>>()? {
                    let value = map.next_value::<Scalar>()?;
                    vars.push((name, value));
                }
                Ok(RawEnv(vars))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawEnv, E> {
                Ok(RawEnv::default())
            }
        }

        deserializer.deserialize_map(EnvVisitor)
    }
}
