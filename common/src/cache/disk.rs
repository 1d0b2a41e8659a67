//! [`DiskCache`]: the local result cache of `gatehouse run`, one file per entry.
//!
//! Layout: `<dir>/v1/<first 2 hex digits of the key>/<64 hex digits>`. An entry file is
//!
//! ```text
//! b"GHCACHE" FORMAT_VERSION (8 bytes) | key (32) | BLAKE3(payload) (32) | payload
//! ```
//!
//! where the payload is the zstd-compressed (level 3) bincode (standard config, serde)
//! encoding of the [`CacheEntry`]. The key is stored so an entry copied or renamed to
//! another key's path is not served for it.
//!
//! Failure handling: a missing file is a miss. A file that is too large
//! ([`MAX_ENTRY_BYTES`]), has another magic or version, was written for another key,
//! fails its checksum or does not decode is also a miss, logged with `tracing::warn!`;
//! it is never an error and never a crash. Only real I/O failures are errors.
//!
//! Concurrency: the cache owns no in-memory state; all file I/O runs in
//! `tokio::task::spawn_blocking`. `put` writes a temporary file (`.tmp*`, never a valid
//! entry name) in the entry's directory and renames it over the entry, so readers see
//! the old entry, the new one or none, never half of one, and concurrent `put`s of one
//! key each leave a complete entry (the last rename wins). Writes are not fsynced: an
//! entry torn by a power loss fails its checksum and is a miss. A temporary file left
//! by a crash is ignored.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::{CacheEntry, CacheError, CacheKey, ResultCache};

/// Magic bytes at the start of every entry file.
const MAGIC: [u8; 7] = *b"GHCACHE";
/// Version of the entry file format (also the `v1` directory name).
pub const FORMAT_VERSION: u8 = 1;
/// Magic + version, key, checksum.
const PREFIX_LEN: usize = MAGIC.len() + 1 + 32 + 32;
/// Entry files larger than this are rejected (as corrupt on read, as an error on write).
pub const MAX_ENTRY_BYTES: u64 = 8 * 1024 * 1024;
/// Upper bound of a decompressed payload, against decompression bombs.
const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;
/// zstd compression level of payloads.
const ZSTD_LEVEL: i32 = 3;

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
        tokio::task::spawn_blocking(move || read_entry(&path, &key))
            .await
            .map_err(|e| io_error(&join_path, io::Error::other(e)))?
    }

    async fn put(&self, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError> {
        let (path, key, entry) = (self.entry_path(key), *key, entry.clone());
        let join_path = path.clone();
        tokio::task::spawn_blocking(move || write_entry(&path, &key, &entry))
            .await
            .map_err(|e| io_error(&join_path, io::Error::other(e)))?
    }
}

/// Why an entry file was treated as a miss.
#[derive(Debug, thiserror::Error)]
enum Corrupt {
    #[error("entry file is larger than {MAX_ENTRY_BYTES} bytes")]
    TooLarge,
    #[error("entry file is shorter than its {PREFIX_LEN} byte header")]
    Truncated,
    #[error("unknown magic or format version")]
    Header,
    #[error("entry was written for key {0}")]
    KeyMismatch(CacheKey),
    #[error("payload checksum mismatch")]
    Checksum,
    #[error("cannot decompress payload: {0}")]
    Decompress(io::Error),
    #[error("decompressed payload is larger than {MAX_DECODED_BYTES} bytes")]
    DecodedTooLarge,
    #[error("cannot decode payload: {0}")]
    Decode(bincode::error::DecodeError),
    #[error("payload has {0} trailing bytes")]
    Trailing(usize),
}

fn read_entry(path: &Path, key: &CacheKey) -> Result<Option<CacheEntry>, CacheError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    match decode_entry(key, &bytes) {
        Ok(entry) => Ok(Some(entry)),
        Err(reason) => {
            tracing::warn!(key = %key, path = %path.display(), %reason, "ignoring corrupt cache entry");
            Ok(None)
        }
    }
}

fn write_entry(path: &Path, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError> {
    let bytes = encode_entry(key, entry)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let mut tmp = NamedTempFile::new_in(dir).map_err(|e| io_error(dir, e))?;
    tmp.write_all(&bytes).map_err(|e| io_error(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| io_error(path, e.error))?;
    Ok(())
}

/// The complete entry file for `entry` under `key`.
fn encode_entry(key: &CacheKey, entry: &CacheEntry) -> Result<Vec<u8>, CacheError> {
    let plain = bincode::serde::encode_to_vec(entry, bincode::config::standard())
        .map_err(|e| CacheError::Encode(e.to_string()))?;
    let payload = zstd::bulk::compress(&plain, ZSTD_LEVEL)
        .map_err(|e| CacheError::Encode(format!("zstd compression failed: {e}")))?;
    let total = PREFIX_LEN + payload.len();
    if total as u64 > MAX_ENTRY_BYTES {
        return Err(CacheError::Encode(format!(
            "entry is {total} bytes compressed, more than the {MAX_ENTRY_BYTES} byte limit"
        )));
    }
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(&MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.extend_from_slice(&key.0);
    bytes.extend_from_slice(blake3::hash(&payload).as_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Checks and decodes an entry file read for `key`.
fn decode_entry(key: &CacheKey, bytes: &[u8]) -> Result<CacheEntry, Corrupt> {
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return Err(Corrupt::TooLarge);
    }
    if bytes.len() < PREFIX_LEN {
        return Err(Corrupt::Truncated);
    }
    let (header, rest) = bytes.split_at(MAGIC.len() + 1);
    if header[..MAGIC.len()] != MAGIC || header[MAGIC.len()] != FORMAT_VERSION {
        return Err(Corrupt::Header);
    }
    let (stored_key, rest) = rest.split_at(32);
    if stored_key != key.0 {
        let mut other = [0; 32];
        other.copy_from_slice(stored_key);
        return Err(Corrupt::KeyMismatch(CacheKey(other)));
    }
    let (checksum, payload) = rest.split_at(32);
    if blake3::hash(payload).as_bytes() != checksum {
        return Err(Corrupt::Checksum);
    }
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::with_buffer(payload)
        .map_err(Corrupt::Decompress)?
        .take(MAX_DECODED_BYTES as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(Corrupt::Decompress)?;
    if plain.len() > MAX_DECODED_BYTES {
        return Err(Corrupt::DecodedTooLarge);
    }
    let config = bincode::config::standard().with_limit::<MAX_DECODED_BYTES>();
    let (entry, used) =
        bincode::serde::decode_from_slice(&plain, config).map_err(Corrupt::Decode)?;
    if used != plain.len() {
        return Err(Corrupt::Trailing(plain.len() - used));
    }
    Ok(entry)
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
            },
            producer: GateId::new("pr-1/test"),
            created_unix_ms: 1_700_000_000_000,
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
        let path = dir.path().join("cache/v1").join(&hex[..2]).join(&hex);
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
}
