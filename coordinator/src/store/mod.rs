//! Durable plan state: the [`StateStore`] trait and its two backends, [`LocalStore`]
//! (an embedded redb file for a standalone coordinator's `--state-dir`) and
//! [`EtcdStore`] (etcd, for a coordinator that shares its state with standbys).
//!
//! What is stored, per plan: the accepted plan record (opaque bytes, written once before
//! `SubmitPlan` answers), its event log as opaque chunks keyed by the sequence number of
//! their first event, and whether it was cancelled. The store never interprets the bytes;
//! encoding is the caller's business.
//!
//! Key layout, the same logical keys for both backends (etcd puts them under
//! `/gatehouse/<cluster>/`, the local store under no prefix):
//!
//! ```text
//! plans/<plan_id>/record                  the plan record
//! plans/<plan_id>/cancel                  `force` or `graceful`
//! plans/<plan_id>/log/<first_seq>         one event chunk; first_seq as 20 zero-padded digits
//! tests/<seq>                             one test-history record; seq as 20 digits
//! ```
//!
//! The test history is a sequence of opaque records that [`StateStore::load_history`]
//! reads back in order; its writer bounds it by deleting the oldest
//! ([`StoreOp::DeleteTests`]).
//!
//! [`StoreOp::DeletePlan`] deletes the prefix `plans/<plan_id>/`, trailing slash
//! included, so forgetting `p-1` never touches `p-10`. Plan ids must satisfy
//! [`is_valid_id`] (no `/`), which keeps every key unambiguous.
//!
//! Concurrency: a store is `Send + Sync` and may be shared (`Arc<dyn StateStore>`);
//! every [`StateStore::apply`] is one atomic transaction, and concurrent applies are
//! serialised by the backend in some order. The store keeps no cache: [`StateStore::load`]
//! reads what is durable. A single writer (the leading coordinator) is assumed; the
//! etcd backend enforces it with a [`etcd::Fence`].
//!
//! Failure: a failed apply has applied nothing (all or nothing), except that the outcome
//! of a request cut off by [`StoreError::Unavailable`] is unknown to the caller; retrying
//! the same batch is safe because every op is idempotent. Dropping an `apply` future
//! does not cancel a write already handed to the backend.

mod etcd;
mod local;
#[doc(hidden)]
pub mod suite;

use std::collections::BTreeMap;
use std::path::PathBuf;

use gatehouse_common::ids::{PlanId, is_valid_id};

pub use etcd::{EtcdStore, Fence};
pub use local::LocalStore;

/// One write of a batch. Plan ids are [`PlanId`]s that satisfy [`is_valid_id`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// The accepted plan (opaque encoded record; written once, before SubmitPlan answers).
    PutPlan { plan: PlanId, record: Vec<u8> },
    /// A chunk of the plan's event log whose first event has sequence number `first_seq`
    /// (opaque bytes). Writing the same `first_seq` again replaces the chunk.
    AppendEvents {
        plan: PlanId,
        first_seq: u64,
        chunk: Vec<u8>,
    },
    /// The plan was cancelled (force: kill without grace).
    PutCancel { plan: PlanId, force: bool },
    /// Forget the plan entirely (record, chunks, cancel).
    DeletePlan { plan: PlanId },
    /// Test-history record number `seq` (opaque bytes).
    PutTests { seq: u64, record: Vec<u8> },
    /// Forget test-history record `seq`.
    DeleteTests { seq: u64 },
}

impl StoreOp {
    /// The plan this op is about (`None` for the test history's ops).
    pub fn plan(&self) -> Option<&PlanId> {
        match self {
            StoreOp::PutPlan { plan, .. }
            | StoreOp::AppendEvents { plan, .. }
            | StoreOp::PutCancel { plan, .. }
            | StoreOp::DeletePlan { plan } => Some(plan),
            StoreOp::PutTests { .. } | StoreOp::DeleteTests { .. } => None,
        }
    }

    /// Bytes this op counts against [`StoreLimits::max_bytes`]: its logical key (or, for
    /// a delete, the plan's key prefix) plus its value. Backend key prefixes are not
    /// counted; each backend's limit leaves room for them.
    pub fn size(&self) -> usize {
        match self.write() {
            Write::Put { key, value } => key.len() + value.len(),
            Write::DeletePrefix(prefix) => prefix.len(),
        }
    }

    /// The one key-level write this op stands for.
    pub(crate) fn write(&self) -> Write<'_> {
        match self {
            StoreOp::PutPlan { plan, record } => Write::Put {
                key: record_key(plan),
                value: record,
            },
            StoreOp::AppendEvents {
                plan,
                first_seq,
                chunk,
            } => Write::Put {
                key: log_key(plan, *first_seq),
                value: chunk,
            },
            StoreOp::PutCancel { plan, force } => Write::Put {
                key: cancel_key(plan),
                value: cancel_value(*force),
            },
            StoreOp::DeletePlan { plan } => Write::DeletePrefix(plan_prefix(plan)),
            StoreOp::PutTests { seq, record } => Write::Put {
                key: tests_key(*seq),
                value: record,
            },
            // Keys are fixed-width: the prefix is exactly the one key.
            StoreOp::DeleteTests { seq } => Write::DeletePrefix(tests_key(*seq)),
        }
    }
}

/// Sum of [`StoreOp::size`] over a batch: the `bytes` compared with
/// [`StoreLimits::max_bytes`].
pub fn batch_size(ops: &[StoreOp]) -> usize {
    ops.iter().map(StoreOp::size).sum()
}

/// A key-level write, relative to the backend's prefix.
pub(crate) enum Write<'a> {
    Put { key: String, value: &'a [u8] },
    DeletePrefix(String),
}

/// Everything stored about one plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPlan {
    pub plan: PlanId,
    /// The record written by [`StoreOp::PutPlan`].
    pub record: Vec<u8>,
    /// `Some(force)` once the plan was cancelled.
    pub cancel: Option<bool>,
    /// Event chunks as `(first_seq, chunk)`, ascending by `first_seq`.
    pub chunks: Vec<(u64, Vec<u8>)>,
}

/// The largest batch one [`StateStore::apply`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most ops in one batch.
    pub max_ops: usize,
    /// Most bytes in one batch, as counted by [`batch_size`].
    pub max_bytes: usize,
}

impl StoreLimits {
    /// Whether a batch of `ops` ops and `bytes` bytes fits.
    pub fn admits(&self, ops: usize, bytes: usize) -> bool {
        ops <= self.max_ops && bytes <= self.max_bytes
    }
}

/// Durable plan state. See the module doc for the key layout and the contract.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Applies every op atomically (all or nothing), in order. Refuses a batch over
    /// `limits()` with [`StoreError::TooLarge`], or one naming an invalid plan id with
    /// [`StoreError::InvalidPlanId`], and applies nothing. An empty batch is a no-op.
    async fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError>;

    /// Every stored plan, ordered by plan id. Chunks ascending by first_seq (numerically).
    /// A plan with chunks or a cancel but no record (should not happen) is skipped with
    /// a warning.
    async fn load(&self) -> Result<Vec<StoredPlan>, StoreError>;

    /// Every test-history record, ascending by sequence number.
    async fn load_history(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// The largest batch [`StateStore::apply`] accepts.
    fn limits(&self) -> StoreLimits;

    /// Short name for logs/metrics: "local" or "etcd".
    fn kind(&self) -> &'static str;
}

/// A store that times its operations into `gatehouse_state_store_txn_seconds`.
pub struct Timed {
    inner: std::sync::Arc<dyn StateStore>,
    metrics: crate::metrics::Metrics,
}

impl Timed {
    /// Wraps `inner`.
    pub fn new(inner: std::sync::Arc<dyn StateStore>, metrics: crate::metrics::Metrics) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait::async_trait]
impl StateStore for Timed {
    async fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let start = std::time::Instant::now();
        let applied = self.inner.apply(ops).await;
        self.metrics.store_op("apply", start.elapsed());
        applied
    }

    async fn load(&self) -> Result<Vec<StoredPlan>, StoreError> {
        let start = std::time::Instant::now();
        let loaded = self.inner.load().await;
        self.metrics.store_op("load", start.elapsed());
        loaded
    }

    async fn load_history(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = std::time::Instant::now();
        let loaded = self.inner.load_history().await;
        self.metrics.store_op("load_history", start.elapsed());
        loaded
    }

    fn limits(&self) -> StoreLimits {
        self.inner.limits()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Transient: etcd unreachable or too slow; the caller retries.
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    /// The leadership guard failed: this coordinator no longer leads; nothing was applied.
    #[error("the write was refused because this coordinator no longer holds the leadership")]
    Fenced,
    /// The batch is over [`StateStore::limits`]; nothing was applied.
    #[error(
        "the batch is too large for the state store: {ops} ops and {bytes} bytes, the limit is {max_ops} ops and {max_bytes} bytes"
    )]
    TooLarge {
        ops: usize,
        bytes: usize,
        max_ops: usize,
        max_bytes: usize,
    },
    /// A stored key or value is not in the expected layout.
    #[error("the state store holds a corrupt entry at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A local store failure (the message names the path).
    #[error("the local state store failed: {0}")]
    Io(String),
    /// The local state dir is already open by another process (or handle).
    #[error("the state directory {} is in use by another coordinator", .0.display())]
    InUse(PathBuf),
    /// An op names a plan id that cannot be a key; nothing was applied.
    #[error("plan id \"{0}\" cannot be stored: ids are 1-128 characters of A-Z a-z 0-9 . _ -")]
    InvalidPlanId(PlanId),
    /// The store was configured wrongly (bad endpoint or cluster name).
    #[error("invalid state store configuration: {0}")]
    InvalidConfig(String),
    /// etcd refused the request for a reason retrying will not fix.
    #[error("etcd rejected the request: {0}")]
    Rejected(String),
}

/// Refuses a batch with an invalid plan id or over `limits`.
pub(crate) fn check_batch(ops: &[StoreOp], limits: StoreLimits) -> Result<(), StoreError> {
    if let Some(plan) = ops
        .iter()
        .filter_map(StoreOp::plan)
        .find(|plan| !is_valid_id(plan.as_str()))
    {
        return Err(StoreError::InvalidPlanId(plan.clone()));
    }
    let bytes = batch_size(ops);
    if !limits.admits(ops.len(), bytes) {
        return Err(StoreError::TooLarge {
            ops: ops.len(),
            bytes,
            max_ops: limits.max_ops,
            max_bytes: limits.max_bytes,
        });
    }
    Ok(())
}

/// Where every plan key starts.
pub(crate) const PLANS: &str = "plans/";
const RECORD: &str = "record";
const CANCEL: &str = "cancel";
const LOG: &str = "log/";
const FORCE: &[u8] = b"force";
const GRACEFUL: &[u8] = b"graceful";

/// `plans/<plan_id>/`: the prefix of every key of one plan.
pub(crate) fn plan_prefix(plan: &PlanId) -> String {
    format!("{PLANS}{plan}/")
}

fn record_key(plan: &PlanId) -> String {
    format!("{PLANS}{plan}/{RECORD}")
}

fn cancel_key(plan: &PlanId) -> String {
    format!("{PLANS}{plan}/{CANCEL}")
}

/// The 20-digit padding makes the lexical key order the numeric order.
fn log_key(plan: &PlanId, first_seq: u64) -> String {
    format!("{PLANS}{plan}/{LOG}{first_seq:020}")
}

pub(crate) const TESTS: &str = "tests/";

fn tests_key(seq: u64) -> String {
    format!("{TESTS}{seq:020}")
}

/// The sequence number of a test-history key (relative to the backend's prefix).
pub(crate) fn tests_seq(key: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(TESTS))
        .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "not a test-history key (tests/<20 digits>)".into(),
        })
}

fn cancel_value(force: bool) -> &'static [u8] {
    if force { FORCE } else { GRACEFUL }
}

/// The first key after every key that starts with `prefix` (the end of a prefix range).
/// `prefix` must not be empty or all `0xff` (ours end in `/`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Only reachable for an all-0xff prefix: an empty end means "to the end of keys" to
    // etcd, and no plan key is that long in a redb table either.
    Vec::new()
}

/// Collects stored entries into [`StoredPlan`]s.
pub(crate) struct Loader<'a> {
    /// The backend's key prefix, stripped from each key and shown in errors.
    prefix: &'a str,
    plans: BTreeMap<PlanId, Partial>,
}

#[derive(Default)]
struct Partial {
    record: Option<Vec<u8>>,
    cancel: Option<bool>,
    chunks: BTreeMap<u64, Vec<u8>>,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(prefix: &'a str) -> Self {
        Self {
            prefix,
            plans: BTreeMap::new(),
        }
    }

    /// Adds one entry whose full key (backend prefix included) is `key`.
    pub(crate) fn add(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_string(),
        };
        let text = std::str::from_utf8(key).map_err(|_| corrupt("the key is not UTF-8"))?;
        let rest = text
            .strip_prefix(self.prefix)
            .and_then(|k| k.strip_prefix(PLANS))
            .ok_or_else(|| corrupt("the key is not under plans/"))?;
        let (id, field) = rest
            .split_once('/')
            .ok_or_else(|| corrupt("the key has no field after the plan id"))?;
        if !is_valid_id(id) {
            return Err(corrupt("the plan id is not valid"));
        }
        let plan = self.plans.entry(PlanId::new(id)).or_default();
        match field {
            RECORD => plan.record = Some(value),
            CANCEL => {
                plan.cancel = Some(match value.as_slice() {
                    FORCE => true,
                    GRACEFUL => false,
                    _ => return Err(corrupt("the cancel value is neither force nor graceful")),
                })
            }
            _ => {
                let seq = field
                    .strip_prefix(LOG)
                    .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<u64>().ok())
                    .ok_or_else(|| {
                        corrupt("unknown field (expected record, cancel or log/<20 digits>)")
                    })?;
                plan.chunks.insert(seq, value);
            }
        }
        Ok(())
    }

    /// The plans, ordered by id; plans without a record are skipped with a warning.
    pub(crate) fn finish(self) -> Vec<StoredPlan> {
        self.plans
            .into_iter()
            .filter_map(|(plan, p)| {
                let Some(record) = p.record else {
                    tracing::warn!(
                        plan_id = %plan,
                        chunks = p.chunks.len(),
                        cancelled = p.cancel.is_some(),
                        "skipping a stored plan that has no record"
                    );
                    return None;
                };
                Some(StoredPlan {
                    plan,
                    record,
                    cancel: p.cancel,
                    chunks: p.chunks.into_iter().collect(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PlanId {
        PlanId::new(s)
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(record_key(&id("p-1")), "plans/p-1/record");
        assert_eq!(cancel_key(&id("p-1")), "plans/p-1/cancel");
        assert_eq!(
            log_key(&id("p-1"), 42),
            "plans/p-1/log/00000000000000000042"
        );
        assert_eq!(
            log_key(&id("p"), u64::MAX),
            "plans/p/log/18446744073709551615"
        );
        assert_eq!(plan_prefix(&id("p-1")), "plans/p-1/");
        assert_eq!(prefix_end(b"plans/p-1/"), b"plans/p-10".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }

    #[test]
    fn sizes_count_keys_and_values() {
        let op = StoreOp::PutPlan {
            plan: id("p"),
            record: vec![0; 10],
        };
        assert_eq!(op.size(), "plans/p/record".len() + 10);
        let del = StoreOp::DeletePlan { plan: id("p") };
        assert_eq!(del.size(), "plans/p/".len());
        assert_eq!(
            batch_size(&[op.clone(), del.clone()]),
            op.size() + del.size()
        );
        let limits = StoreLimits {
            max_ops: 1,
            max_bytes: 1000,
        };
        assert!(check_batch(std::slice::from_ref(&op), limits).is_ok());
        assert!(matches!(
            check_batch(&[op, del], limits),
            Err(StoreError::TooLarge {
                ops: 2,
                max_ops: 1,
                ..
            })
        ));
        let bad = StoreOp::DeletePlan { plan: id("a/b") };
        assert!(matches!(
            check_batch(&[bad], limits),
            Err(StoreError::InvalidPlanId(p)) if p.as_str() == "a/b"
        ));
    }

    #[test]
    fn loader_rejects_keys_outside_the_layout() {
        for key in [
            "x/plans/p/record",
            "plans/p",
            "plans/a b/record",
            "plans/p/other",
            "plans/p/log/12",
            "plans/p/log/0000000000000000000x",
            "plans/p/log/99999999999999999999",
        ] {
            let mut loader = Loader::new("");
            let err = loader
                .add(key.as_bytes(), Vec::new())
                .expect_err("a key outside the layout");
            assert!(
                matches!(&err, StoreError::Corrupt { key: k, .. } if k == key),
                "{key}: {err}"
            );
        }
        let mut loader = Loader::new("/g/");
        let err = loader.add(b"/g/plans/p/cancel", b"maybe".to_vec());
        assert!(matches!(err, Err(StoreError::Corrupt { key, .. }) if key == "/g/plans/p/cancel"));
    }

    #[test]
    fn loader_skips_plans_without_a_record() {
        let mut loader = Loader::new("");
        loader
            .add(b"plans/a/log/00000000000000000001", vec![1])
            .expect("a key in the layout");
        loader
            .add(b"plans/b/cancel", b"force".to_vec())
            .expect("a key in the layout");
        loader
            .add(b"plans/c/record", vec![7])
            .expect("a key in the layout");
        let plans = loader.finish();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].plan, id("c"));
    }

    #[test]
    fn messages_say_what_failed() {
        let e = StoreError::InUse(PathBuf::from("/x"));
        assert_eq!(
            e.to_string(),
            "the state directory /x is in use by another coordinator"
        );
        let e = StoreError::Unavailable("connection refused".into());
        assert_eq!(e.to_string(), "etcd is unavailable: connection refused");
    }
}
