//! The encoded form of a [`CacheEntry`], shared by the local disk cache, the cache
//! nodes' stores and the wire (`gatehouse.v1.CacheService` carries these bytes as they
//! are, so a node never decodes what it stores):
//!
//! ```text
//! b"GHCACHE" FORMAT_VERSION (8 bytes) | key (32) | BLAKE3(payload) (32) | payload
//! ```
//!
//! where the payload is the zstd-compressed (level 3) bincode (standard config, serde)
//! encoding of the [`CacheEntry`]. The key is stored so an entry copied or renamed to
//! another key is not served for it; the checksum catches torn and damaged bytes.
//!
//! Versioning: an entry of another [`FORMAT_VERSION`] is [`Corrupt::Header`], which
//! every reader treats as a miss: after an upgrade that changes the format, old entries
//! are simply not found and are rewritten by the next run. Version 2 added per-test
//! results and the flaky verdict of a stored flaky pass.

use std::io::{self, Read};

use super::{CacheEntry, CacheError, CacheKey};

/// Magic bytes at the start of every entry file.
pub const MAGIC: [u8; 7] = *b"GHCACHE";
/// Version of the entry format (also the `v1` directory name of a disk cache).
pub const FORMAT_VERSION: u8 = 2;
/// Magic + version, key, checksum.
pub const PREFIX_LEN: usize = MAGIC.len() + 1 + 32 + 32;
/// Encoded entries larger than this are rejected (as corrupt on read, as an error on
/// write).
pub const MAX_ENTRY_BYTES: u64 = 8 * 1024 * 1024;
/// Upper bound of a decompressed payload, against decompression bombs.
pub const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;
/// zstd compression level of payloads.
const ZSTD_LEVEL: i32 = 3;

/// Why encoded bytes are not a usable entry (every reader treats this as a miss).
#[derive(Debug, thiserror::Error)]
pub enum Corrupt {
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

/// The encoded bytes of `entry` under `key`.
pub fn encode_entry(key: &CacheKey, entry: &CacheEntry) -> Result<Vec<u8>, CacheError> {
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

/// Checks the framing of bytes read for `key` (size, magic and version, key, checksum)
/// without decompressing them, and returns the payload. Cache nodes check every entry
/// they are given this way; [`decode_entry`] does it too.
pub fn check_entry<'a>(key: &CacheKey, bytes: &'a [u8]) -> Result<&'a [u8], Corrupt> {
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
    Ok(payload)
}

/// Checks and decodes bytes read for `key`.
pub fn decode_entry(key: &CacheKey, bytes: &[u8]) -> Result<CacheEntry, Corrupt> {
    let payload = check_entry(key, bytes)?;
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
