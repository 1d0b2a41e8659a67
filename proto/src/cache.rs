//! The wire side of `gatehouse.v1.CacheService` (see `proto/gatehouse/v1/cache.proto`):
//! the limits both ends of the protocol hold to, and the pure checks and conversions of
//! its fields. Nothing here connects, batches, retries or spawns: the client and the
//! node live in the `gatehouse-cache` crate.

use gatehouse_common::cache::CacheKey;
use tonic::transport::Endpoint;

use crate::convert::WireError;

/// Most keys in one `Get` (the server refuses more).
pub const MAX_GET_KEYS: usize = 1024;
/// Largest chunk of an entry in one message (entries up to 8 MiB take several).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Checks that `url` can address a cache node.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{url:?} names no host"));
    }
    Endpoint::from_shared(url.to_owned()).map_err(|e| format!("{url:?}: {e}"))?;
    Ok(())
}

/// A 32-byte key from the wire.
pub fn key_from_wire(bytes: &[u8]) -> Result<CacheKey, WireError> {
    let key: [u8; 32] = bytes.try_into().map_err(|_| WireError::Invalid {
        field: "key",
        reason: format!("a cache key is 32 bytes, not {}", bytes.len()),
    })?;
    Ok(CacheKey(key))
}
