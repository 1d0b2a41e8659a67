//! [`DiskCache`]: the local result cache of `gatehouse run`, one file per entry, and
//! the disk tier of a cache node (through the blocking `*_raw` functions).
//!
//! Layout: `<dir>/v1/<first 2 hex digits of the key>/<64 hex digits>`. An entry file
//! holds the entry's encoded bytes exactly as [`super::codec`] describes them.
//!
//! Failure handling: a missing file is a miss. A file that is too large
//! ([`MAX_ENTRY_BYTES`]), has another magic or version, was written for another key,
//! fails its checksum or does not decode is also a miss, logged with `tracing::warn!`;
//! it is never an error and never a crash. Only real I/O failures are errors.
//!
//! Concurrency: the cache owns no in-memory state; all file I/O runs on
//! tokio's blocking pool ([`spawn_blocking_named`]). `put` writes a temporary file (`.tmp*`, never a valid
//! entry name) in the entry's directory and renames it over the entry, so readers see
//! the old entry, the new one or none, never half of one, and concurrent `put`s of one
//! key each leave a complete entry (the last rename wins). Writes are not fsynced: an
//! entry torn by a power loss fails its checksum and is a miss. A temporary file left
//! by a crash is ignored.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::codec::{FORMAT_VERSION, MAX_ENTRY_BYTES, check_entry, decode_entry, encode_entry};
use super::{CacheEntry, CacheError, CacheKey, ResultCache};
use crate::spawn::spawn_blocking_named;

/// A [`ResultCache`] in a local directory. Cheap to clone; clones share the directory.
#[derive(Clone, Debug)]
pub struct DiskCache {
    /// `<dir>/v<FORMAT_VERSION>`: every entry lives below it.
    root: PathBuf,
}

impl DiskCache {
    /// Opens (creating it if needed) the cache in `dir`. Blocks briefly on the file
    /// system; call it at startup.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = dir.into().join(format!("v{FORMAT_VERSION}"));
        fs::create_dir_all(&root).map_err(|source| io_error(&root, source))?;
        Ok(Self { root })
    }

    /// The versioned directory holding the entries (`<dir>/v1`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the entry for `key` lives.
    pub fn entry_path(&self, key: &CacheKey) -> PathBuf {
        let hex = key.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }
}

#[async_trait::async_trait]
impl ResultCache for DiskCache {
    async fn get(&self, key: &CacheKey) -> Result<Option<CacheEntry>, CacheError> {
        let (path, key) = (self.entry_path(key), *key);
        let join_path = path.clone();
        spawn_blocking_named("cache-read", move || read_entry(&path, &key))
            .await
            .map_err(|e| io_error(&join_path, io::Error::other(e)))?
    }

    async fn put(&self, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError> {
        let (path, key, entry) = (self.entry_path(key), *key, entry.clone());
        let join_path = path.clone();
        spawn_blocking_named("cache-write", move || write_entry(&path, &key, &entry))
            .await
            .map_err(|e| io_error(&join_path, io::Error::other(e)))?
    }
}

fn read_entry(path: &Path, key: &CacheKey) -> Result<Option<CacheEntry>, CacheError> {
    let Some(bytes) = read_file(path)? else {
        return Ok(None);
    };
    match decode_entry(key, &bytes) {
        Ok(entry) => Ok(Some(entry)),
        Err(reason) => {
            tracing::warn!(key = %key, path = %path.display(), %reason, "ignoring corrupt cache entry");
            Ok(None)
        }
    }
}

fn write_entry(path: &Path, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError> {
    write_file(path, &encode_entry(key, entry)?)
}

/// The file's bytes (at most one more than [`MAX_ENTRY_BYTES`]); `None` if it is absent.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, CacheError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    Ok(Some(bytes))
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let mut tmp = NamedTempFile::new_in(dir).map_err(|e| io_error(dir, e))?;
    tmp.write_all(bytes).map_err(|e| io_error(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| io_error(path, e.error))?;
    Ok(())
}

/// An entry file found by [`DiskCache::scan_raw`].
#[derive(Clone, Debug)]
pub struct ScannedEntry {
    /// The key its name spells.
    pub key: CacheKey,
    /// Its size in bytes.
    pub len: u64,
    /// When it was last written.
    pub modified: std::time::SystemTime,
}

/// Blocking access to encoded entries, for a cache node's disk tier (call from
/// `spawn_blocking`). Bytes are checked with [`check_entry`] on the way in and out:
/// a damaged file reads as absent (and is removed), never as an error.
impl DiskCache {
    /// The checked encoded entry of `key`, or `None`.
    pub fn read_raw(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.entry_path(key);
        let Some(bytes) = read_file(&path)? else {
            return Ok(None);
        };
        match check_entry(key, &bytes) {
            Ok(_) => Ok(Some(bytes)),
            Err(reason) => {
                tracing::warn!(key = %key, path = %path.display(), %reason, "removing corrupt cache entry");
                let _ = fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Stores already encoded (and checked) bytes under `key`, atomically.
    pub fn write_raw(&self, key: &CacheKey, bytes: &[u8]) -> Result<(), CacheError> {
        write_file(&self.entry_path(key), bytes)
    }

    /// Removes `key`'s entry; an absent entry is not an error.
    pub fn remove_raw(&self, key: &CacheKey) -> Result<(), CacheError> {
        let path = self.entry_path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&path, e)),
            _ => Ok(()),
        }
    }

    /// Every entry file (by name; contents are checked when read). Temporary files and
    /// foreign names are skipped.
    pub fn scan_raw(&self) -> Result<Vec<ScannedEntry>, CacheError> {
        let mut found = Vec::new();
        let shards = fs::read_dir(&self.root).map_err(|e| io_error(&self.root, e))?;
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let Some(key) = name.to_str().and_then(parse_hex_key) else {
                    continue;
                };
                let Ok(meta) = file.metadata() else {
                    continue;
                };
                if meta.is_file() {
                    found.push(ScannedEntry {
                        key,
                        len: meta.len(),
                        modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    });
                }
            }
        }
        Ok(found)
    }
}

/// The key a 64-digit lowercase hex file name spells.
fn parse_hex_key(name: &str) -> Option<CacheKey> {
    // Entry names are what `CacheKey::to_hex` wrote: lowercase only, so a file that
    // differs in case is not mistaken for the entry.
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    blake3::Hash::from_hex(name)
        .ok()
        .map(|h| CacheKey(*h.as_bytes()))
}

fn io_error(path: &Path, source: io::Error) -> CacheError {
    CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cache::codec::{MAGIC, PREFIX_LEN};
    use crate::exec::{ExitStatus, GateResult, OutputTail};
    use crate::ids::GateId;

    fn entry(stdout: &str) -> CacheEntry {
        CacheEntry {
            result: GateResult {
                status: ExitStatus::Exited(0),
                duration: Duration::from_millis(1234),
                peak_memory: Some(42 << 20),
                stdout: OutputTail {
                    bytes: stdout.as_bytes().to_vec(),
                    dropped: 7,
                },
                stderr: OutputTail::default(),
                tests: None,
            },
            producer: GateId::new("pr-1/test"),
            created_unix_ms: 1_700_000_000_000,
            flaky: None,
        }
    }

    fn cache() -> (tempfile::TempDir, DiskCache) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = DiskCache::open(dir.path().join("cache")).expect("open");
        (dir, cache)
    }

    const KEY: CacheKey = CacheKey([0xab; 32]);

    /// Rewrites the stored entry of `KEY` with `f` and returns what `get` makes of it.
    async fn get_after(cache: &DiskCache, f: impl FnOnce(&mut Vec<u8>)) -> Option<CacheEntry> {
        cache.put(&KEY, &entry("ok")).await.expect("put");
        let path = cache.entry_path(&KEY);
        let mut bytes = fs::read(&path).expect("read");
        f(&mut bytes);
        fs::write(&path, &bytes).expect("write");
        cache.get(&KEY).await.expect("get")
    }

    #[tokio::test]
    async fn roundtrip_and_layout() {
        let (dir, cache) = cache();
        cache.put(&KEY, &entry("hello")).await.expect("put");
        assert_eq!(cache.get(&KEY).await.expect("get"), Some(entry("hello")));
        let hex = KEY.to_hex();
        let path = dir.path().join("cache/v2").join(&hex[..2]).join(&hex);
        assert_eq!(cache.entry_path(&KEY), path);
        assert!(path.is_file());
        cache.put(&KEY, &entry("again")).await.expect("overwrite");
        assert_eq!(cache.get(&KEY).await.expect("get"), Some(entry("again")));
    }

    #[tokio::test]
    async fn missing_entry_is_a_miss() {
        let (_dir, cache) = cache();
        assert_eq!(cache.get(&KEY).await.expect("get"), None);
    }

    #[tokio::test]
    async fn truncated_entries_are_misses() {
        let (_dir, cache) = cache();
        let full = encode_entry(&KEY, &entry("ok")).expect("encode").len();
        for len in [0, 5, PREFIX_LEN - 1, PREFIX_LEN, full - 1] {
            assert_eq!(
                get_after(&cache, |b| b.truncate(len)).await,
                None,
                "len {len}"
            );
        }
    }

    #[tokio::test]
    async fn any_flipped_byte_is_a_miss() {
        let (_dir, cache) = cache();
        let len = encode_entry(&KEY, &entry("ok")).expect("encode").len();
        for i in 0..len {
            assert_eq!(get_after(&cache, |b| b[i] ^= 0x01).await, None, "byte {i}");
        }
    }

    #[tokio::test]
    async fn other_version_is_a_miss() {
        let (_dir, cache) = cache();
        let got = get_after(&cache, |b| b[MAGIC.len()] = FORMAT_VERSION + 1).await;
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn garbage_and_oversized_files_are_misses() {
        let (_dir, cache) = cache();
        let garbage = |b: &mut Vec<u8>| *b = b"not a cache entry at all".repeat(10);
        assert_eq!(get_after(&cache, garbage).await, None);
        let huge = |b: &mut Vec<u8>| b.resize(MAX_ENTRY_BYTES as usize + 1, 0);
        assert_eq!(get_after(&cache, huge).await, None);
    }

    #[tokio::test]
    async fn entry_under_another_key_is_a_miss() {
        let (_dir, cache) = cache();
        let other = CacheKey([0xcd; 32]);
        cache.put(&other, &entry("other")).await.expect("put");
        let target = cache.entry_path(&KEY);
        fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        fs::copy(cache.entry_path(&other), &target).expect("copy");
        assert_eq!(cache.get(&KEY).await.expect("get"), None);
        assert_eq!(cache.get(&other).await.expect("get"), Some(entry("other")));
    }

    #[tokio::test]
    async fn leftover_temp_file_is_ignored() {
        let (_dir, cache) = cache();
        let path = cache.entry_path(&KEY);
        let shard = path.parent().expect("parent");
        fs::create_dir_all(shard).expect("mkdir");
        let half = encode_entry(&KEY, &entry("ok")).expect("encode");
        fs::write(shard.join(".tmpAbC123"), &half[..half.len() / 2]).expect("write");
        assert_eq!(cache.get(&KEY).await.expect("get"), None);
        cache.put(&KEY, &entry("ok")).await.expect("put");
        assert_eq!(cache.get(&KEY).await.expect("get"), Some(entry("ok")));
        assert!(shard.join(".tmpAbC123").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_leave_one_complete_entry() {
        let (_dir, cache) = cache();
        let cache = Arc::new(cache);
        let entries: Vec<CacheEntry> = (0..32).map(|i| entry(&"x".repeat(i * 100))).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for e in entries.clone() {
            let cache = Arc::clone(&cache);
            tasks.spawn(async move {
                cache.put(&KEY, &e).await.expect("put");
                cache.get(&KEY).await.expect("get")
            });
        }
        while let Some(seen) = tasks.join_next().await {
            let seen = seen
                .expect("task")
                .expect("an entry is present after a put");
            assert!(entries.contains(&seen));
        }
        let last = cache.get(&KEY).await.expect("get").expect("hit");
        assert!(entries.contains(&last));
        let shard = cache
            .entry_path(&KEY)
            .parent()
            .expect("parent")
            .to_path_buf();
        let names: Vec<_> = fs::read_dir(shard)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(KEY.to_hex())],
            "no temp files remain"
        );
    }

    #[tokio::test]
    async fn raw_access_scans_checks_and_removes() {
        let (_dir, cache) = cache();
        let other = CacheKey([0x01; 32]);
        cache.put(&KEY, &entry("a")).await.expect("put");
        let bytes = encode_entry(&other, &entry("b")).expect("encode");
        cache.write_raw(&other, &bytes).expect("write");
        assert_eq!(cache.read_raw(&other).expect("read"), Some(bytes));
        let mut keys: Vec<_> = cache
            .scan_raw()
            .expect("scan")
            .iter()
            .map(|e| e.key)
            .collect();
        keys.sort();
        assert_eq!(keys, vec![other, KEY]);
        // A damaged file reads as absent and is removed.
        fs::write(cache.entry_path(&KEY), b"junk").expect("write");
        assert_eq!(cache.read_raw(&KEY).expect("read"), None);
        assert!(!cache.entry_path(&KEY).exists());
        cache.remove_raw(&other).expect("remove");
        cache.remove_raw(&other).expect("removing twice is fine");
        assert!(cache.scan_raw().expect("scan").is_empty());
    }
}
