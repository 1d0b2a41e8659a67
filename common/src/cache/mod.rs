//! The content-addressed result cache.
//!
//! A gate's [`CacheKey`] (see [`key`]) is a BLAKE3 hash over everything that determines
//! its result. A passed gate's [`CacheEntry`] is stored under its key; a later gate with
//! the same key is reported as passed with `cached: true` without running.
//!
//! [`ResultCache`] is the seam between the scheduler's driver and a concrete store:
//! [`disk::DiskCache`] for `gatehouse run`, a sharded networked cache in the cluster.
//! Implementations must treat a corrupt or foreign-version entry as a miss, never as an
//! error that fails a gate, and must make `put` atomic (a reader sees the whole entry
//! or none).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::GateResult;
use crate::ids::GateId;

pub mod codec;
pub mod disk;
pub mod key;
pub mod placement;
pub mod tiered;

pub use codec::Corrupt;
pub use disk::DiskCache;
pub use key::{FileHashes, compute_key, compute_tree_key};

/// A 32-byte BLAKE3 cache key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Lowercase hex form (64 characters), used in file names and logs.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.to_hex()[..16])
    }
}

/// What the cache stores for a passed gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The passed attempt's result (exit code 0, duration, output tails).
    pub result: GateResult,
    /// The gate that produced the entry (informational: a gate with another id but the
    /// same key may reuse it).
    pub producer: GateId,
    /// When the entry was written, as milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Set for a gate that passed only after failing, stored because the plan said
    /// `policy.cache_flaky`: every hit reports it flaky, with these tests.
    pub flaky: Option<crate::reports::TestVerdict>,
}

/// Errors of a cache backend. Callers treat every one of them as a miss (for `get`) or
/// a lost write (for `put`): the cache never fails a gate.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing the store failed.
    #[error("cache i/o error at {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An input file named by a gate's `inputs` could not be read.
    #[error("cannot hash input {path} of gate {gate}: {source}")]
    Input {
        /// The gate whose key was being computed.
        gate: GateId,
        /// The input file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A glob in `inputs` is invalid (validation normally catches this earlier).
    #[error("invalid input glob {glob:?} of gate {gate}: {reason}")]
    Glob {
        /// The gate.
        gate: GateId,
        /// The glob as written.
        glob: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Encoding an entry failed.
    #[error("cannot encode cache entry: {0}")]
    Encode(String),
}

/// A store of [`CacheEntry`]s by [`CacheKey`].
#[async_trait::async_trait]
pub trait ResultCache: Send + Sync + 'static {
    /// Looks `key` up. `Ok(None)` is a miss; a corrupt entry is also a miss.
    async fn get(&self, key: &CacheKey) -> Result<Option<CacheEntry>, CacheError>;
    /// Stores `entry` under `key`, atomically, replacing any previous entry.
    async fn put(&self, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError>;
}

/// Milliseconds since the Unix epoch, for [`CacheEntry::created_unix_ms`].
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}
