//! [`NodeStore`]: what one cache node holds. A bounded memory tier over an optional
//! bounded disk tier, both [`moka`] caches weighted by bytes (moka's TinyLFU admission
//! and LRU eviction), with a TTL counted from when the entry was first written.
//!
//! - **Memory tier**: encoded entries (`Arc<[u8]>`, shared with the RPCs that send
//!   them), at most [`StoreConfig::memory_bytes`].
//! - **Disk tier** (with [`StoreConfig::disk`]): one file per entry in the
//!   [`DiskCache`] layout, indexed by a moka cache of sizes bounded by the disk budget;
//!   when the index evicts or expires a key, its file is deleted. At startup the
//!   directory is scanned: files older than the TTL are deleted, the rest indexed with
//!   what is left of their TTL (from the file's mtime). A `put` writes both tiers; a
//!   `get` that misses memory reads the file and promotes it.
//!
//! Entries are checked ([`check_entry`]) when stored and when read from disk; damaged
//! bytes are refused or dropped, never served. The store never decodes an entry.
//!
//! Concurrency: all methods take `&self`; moka is internally synchronised, and disk
//! I/O runs in `spawn_blocking`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gatehouse_common::cache::codec::check_entry;
use gatehouse_common::cache::{CacheError, CacheKey, Corrupt, DiskCache};
use gatehouse_common::spawn::{spawn_blocking_named, spawn_in};
use moka::future::Cache;
use moka::notification::RemovalCause;

/// Bookkeeping bytes counted per entry on top of its encoded size.
const ENTRY_OVERHEAD: u64 = 96;

/// Sizes and lifetime of a node's store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of encoded entries the memory tier holds at most.
    pub memory_bytes: u64,
    /// The disk tier's directory and byte budget.
    pub disk: Option<(PathBuf, u64)>,
    /// Entries older than this are gone (counted from when they were first written).
    pub ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            disk: None,
            ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The node's counters (monotonic since start).
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub puts: AtomicU64,
    pub rejected: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
}

/// A snapshot of the store's size and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub hits: u64,
    pub misses: u64,
    pub puts: u64,
    pub rejected: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub memory_entries: u64,
    pub memory_bytes: u64,
    pub disk_entries: u64,
    pub disk_bytes: u64,
}

/// A stored entry and when it was first written (for its TTL).
#[derive(Clone)]
struct Held<T> {
    value: T,
    written: SystemTime,
}

/// Per-entry TTL from the entry's last write (a rewrite starts it again).
struct Ttl(Duration);

impl Ttl {
    fn left<T>(&self, held: &Held<T>) -> Option<Duration> {
        let age = SystemTime::now()
            .duration_since(held.written)
            .unwrap_or(Duration::ZERO);
        Some(self.0.saturating_sub(age))
    }
}

impl<T> moka::Expiry<CacheKey, Held<T>> for Ttl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        held: &Held<T>,
        _created_at: Instant,
    ) -> Option<Duration> {
        self.left(held)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        held: &Held<T>,
        _updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        self.left(held)
    }
}

struct DiskTier {
    files: DiskCache,
    /// key -> encoded size; its evictions delete files.
    index: Cache<CacheKey, Held<u64>>,
}

/// One node's store (see the module docs).
pub struct NodeStore {
    config: StoreConfig,
    memory: Cache<CacheKey, Held<Arc<[u8]>>>,
    disk: Option<DiskTier>,
    counters: Arc<StoreCounters>,
}

fn weight(bytes: u64) -> u32 {
    u32::try_from(bytes + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

/// The disk tier's unit of space: a file takes whole blocks.
const DISK_BLOCK: u64 = 4096;

/// What an entry of `bytes` takes on disk: its size rounded up to whole blocks, so the
/// disk budget bounds the space the files take, small entries included (ten thousand
/// 300-byte entries take 40 MiB of blocks, not 3 MB).
fn disk_weight(bytes: u64) -> u32 {
    u32::try_from(bytes.max(1).div_ceil(DISK_BLOCK) * DISK_BLOCK).unwrap_or(u32::MAX)
}

impl NodeStore {
    /// Opens the store, scanning (and pruning) the disk tier if there is one.
    pub async fn open(config: StoreConfig) -> Result<Self, CacheError> {
        let counters = Arc::new(StoreCounters::default());
        let c = counters.clone();
        let memory = Cache::builder()
            .max_capacity(config.memory_bytes)
            .weigher(|_, h: &Held<Arc<[u8]>>| weight(h.value.len() as u64))
            .expire_after(Ttl(config.ttl))
            .eviction_listener(move |_, _, cause| count_removal(&c, cause))
            .build();
        let disk = match &config.disk {
            None => None,
            Some((dir, budget)) => {
                Some(open_disk(dir.clone(), *budget, config.ttl, counters.clone()).await?)
            }
        };
        Ok(Self {
            config,
            memory,
            disk,
            counters,
        })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The encoded entry of `key`, if held and not expired.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<[u8]>> {
        let found = match self.memory.get(key).await {
            Some(held) => Some(held.value),
            None => self.get_from_disk(key).await,
        };
        let counter = match found {
            Some(_) => &self.counters.hits,
            None => &self.counters.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// [`get`](Self::get) for many keys, in their order: the memory tier answers at
    /// once; keys it misses are read from the disk tier concurrently, so one slow file
    /// does not hold up the others.
    pub async fn get_many(self: &Arc<Self>, keys: &[CacheKey]) -> Vec<Option<Arc<[u8]>>> {
        let mut found = Vec::with_capacity(keys.len());
        let mut from_disk = tokio::task::JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let held = self.memory.get(key).await.map(|h| h.value);
            if held.is_none() && self.disk.is_some() {
                let (store, key) = (self.clone(), *key);
                spawn_in(&mut from_disk, "cache-disk-get", async move {
                    (i, store.get_from_disk(&key).await)
                });
            }
            found.push(held);
        }
        while let Some(done) = from_disk.join_next().await {
            match done {
                Ok((i, entry)) => found[i] = entry,
                Err(e) => tracing::error!(error = %e, "cache disk lookup task failed"),
            }
        }
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        self.counters.hits.fetch_add(hits, Ordering::Relaxed);
        let misses = found.len() as u64 - hits;
        self.counters.misses.fetch_add(misses, Ordering::Relaxed);
        found
    }

    async fn get_from_disk(&self, key: &CacheKey) -> Option<Arc<[u8]>> {
        let disk = self.disk.as_ref()?;
        let held = disk.index.get(key).await?;
        let files = disk.files.clone();
        let k = *key;
        let read = spawn_blocking_named("cache-disk-read", move || files.read_raw(&k)).await;
        match read {
            Ok(Ok(Some(bytes))) => {
                let bytes: Arc<[u8]> = bytes.into();
                let promoted = Held {
                    value: bytes.clone(),
                    written: held.written,
                };
                self.memory.insert(*key, promoted).await;
                Some(bytes)
            }
            Ok(Ok(None)) => {
                disk.index.invalidate(key).await;
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(key = %key, error = %e, "cannot read a cache entry from disk");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "cache disk read task failed");
                None
            }
        }
    }

    /// Counts an entry refused before it reached the store (too large).
    pub fn count_rejected(&self) {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores `bytes` under `key` after checking their framing; a refused entry is
    /// counted in `rejected` and changes nothing.
    pub async fn put(&self, key: CacheKey, bytes: Arc<[u8]>) -> Result<(), Corrupt> {
        if let Err(reason) = check_entry(&key, &bytes) {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(reason);
        }
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        let written = SystemTime::now();
        if let Some(disk) = &self.disk {
            let (files, b) = (disk.files.clone(), bytes.clone());
            let wrote =
                spawn_blocking_named("cache-disk-write", move || files.write_raw(&key, &b)).await;
            match wrote {
                Ok(Ok(())) => {
                    let held = Held {
                        value: bytes.len() as u64,
                        written,
                    };
                    disk.index.insert(key, held).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(key = %key, error = %e, "cannot write a cache entry to disk")
                }
                Err(e) => tracing::error!(error = %e, "cache disk write task failed"),
            }
        }
        self.memory
            .insert(
                key,
                Held {
                    value: bytes,
                    written,
                },
            )
            .await;
        Ok(())
    }

    /// Sizes and counters, after applying pending evictions.
    pub async fn stats(&self) -> StoreStats {
        self.memory.run_pending_tasks().await;
        if let Some(d) = &self.disk {
            d.index.run_pending_tasks().await;
        }
        self.snapshot()
    }

    /// Sizes and counters as they stand (sizes may lag pending evictions by a moment).
    pub fn snapshot(&self) -> StoreStats {
        let (disk_entries, disk_bytes) = match &self.disk {
            Some(d) => (d.index.entry_count(), d.index.weighted_size()),
            None => (0, 0),
        };
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            hits: load(&c.hits),
            misses: load(&c.misses),
            puts: load(&c.puts),
            rejected: load(&c.rejected),
            evictions: load(&c.evictions),
            expirations: load(&c.expirations),
            memory_entries: self.memory.entry_count(),
            memory_bytes: self.memory.weighted_size(),
            disk_entries,
            disk_bytes,
        }
    }
}

fn count_removal(counters: &StoreCounters, cause: RemovalCause) {
    let counter = match cause {
        RemovalCause::Size => &counters.evictions,
        RemovalCause::Expired => &counters.expirations,
        RemovalCause::Explicit | RemovalCause::Replaced => return,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

async fn open_disk(
    dir: PathBuf,
    budget: u64,
    ttl: Duration,
    counters: Arc<StoreCounters>,
) -> Result<DiskTier, CacheError> {
    let files = spawn_blocking_named("cache-disk-open", move || {
        let files = DiskCache::open(dir)?;
        let scanned = files.scan_raw()?;
        Ok::<_, CacheError>((files, scanned))
    })
    .await
    .map_err(|e| CacheError::Io {
        path: "cache directory scan".into(),
        source: std::io::Error::other(e),
    })??;
    let (files, scanned) = files;
    let deleter = files.clone();
    let index = Cache::builder()
        .max_capacity(budget)
        .weigher(|_, h: &Held<u64>| disk_weight(h.value))
        .expire_after(Ttl(ttl))
        .eviction_listener(move |key: Arc<CacheKey>, _, cause| {
            count_removal(&counters, cause);
            if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                // A small unlink; the listener runs during the index's maintenance.
                if let Err(e) = deleter.remove_raw(&key) {
                    tracing::warn!(key = %key, error = %e, "cannot delete an evicted cache file");
                }
            }
        })
        .build();
    let now = SystemTime::now();
    let (mut kept, mut pruned) = (0u64, 0u64);
    for entry in scanned {
        let age = now.duration_since(entry.modified).unwrap_or(Duration::ZERO);
        if age >= ttl {
            let _ = files.remove_raw(&entry.key);
            pruned += 1;
            continue;
        }
        let held = Held {
            value: entry.len,
            written: entry.modified,
        };
        index.insert(entry.key, held).await;
        kept += 1;
    }
    index.run_pending_tasks().await;
    tracing::info!(dir = %files.root().display(), kept, pruned, "cache disk tier opened");
    Ok(DiskTier { files, index })
}

#[cfg(test)]
mod tests;
