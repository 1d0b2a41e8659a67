//! The node store against its contract: checked entries in, the same bytes out;
//! damaged ones refused; TTL, memory and disk budgets kept; the disk tier surviving a
//! restart, pruned of expired files and never serving a damaged one.

use gatehouse_common::cache::codec::encode_entry;
use gatehouse_common::cache::{CacheEntry, unix_ms_now};
use gatehouse_common::exec::{ExitStatus, GateResult, OutputTail};
use gatehouse_common::ids::GateId;

use super::*;

fn key(i: u32) -> CacheKey {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_le_bytes());
    CacheKey(k)
}

/// An encoded entry of about `size` bytes (random-ish output defeats compression).
fn encoded(k: &CacheKey, size: usize) -> Arc<[u8]> {
    let noise = crate::node::noise(u64::from(k.0[0]) ^ (size as u64) << 8, size);
    let entry = CacheEntry {
        result: GateResult {
            status: ExitStatus::Exited(0),
            duration: Duration::from_millis(3),
            peak_memory: None,
            stdout: OutputTail {
                bytes: noise,
                dropped: 0,
            },
            stderr: OutputTail::default(),
            tests: None,
        },
        producer: GateId::new("g"),
        created_unix_ms: unix_ms_now(),
        flaky: None,
    };
    encode_entry(k, &entry).expect("encode").into()
}

fn memory_only(memory_bytes: u64, ttl: Duration) -> StoreConfig {
    StoreConfig {
        memory_bytes,
        disk: None,
        ttl,
    }
}

#[tokio::test]
async fn stores_and_serves_checked_entries() {
    let store = NodeStore::open(memory_only(1 << 20, Duration::from_secs(60)))
        .await
        .expect("open");
    let bytes = encoded(&key(1), 100);
    store.put(key(1), bytes.clone()).await.expect("put");
    assert_eq!(store.get(&key(1)).await.as_deref(), Some(&bytes[..]));
    assert_eq!(store.get(&key(2)).await, None);
    let s = store.stats().await;
    assert_eq!((s.hits, s.misses, s.puts, s.memory_entries), (1, 1, 1, 1));
}

#[tokio::test]
async fn damaged_or_misfiled_entries_are_refused() {
    let store = NodeStore::open(memory_only(1 << 20, Duration::from_secs(60)))
        .await
        .expect("open");
    let good = encoded(&key(1), 100);
    let mut flipped = good.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(
        store.put(key(1), flipped.into()).await,
        Err(Corrupt::Checksum)
    ));
    // Right bytes, wrong key.
    assert!(matches!(
        store.put(key(2), good.clone()).await,
        Err(Corrupt::KeyMismatch(_))
    ));
    // Another format version.
    let mut other = good.to_vec();
    other[7] += 1;
    assert!(matches!(
        store.put(key(1), other.into()).await,
        Err(Corrupt::Header)
    ));
    assert_eq!(store.get(&key(1)).await, None);
    assert_eq!(store.stats().await.rejected, 3);
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let store = NodeStore::open(memory_only(1 << 20, Duration::from_millis(300)))
        .await
        .expect("open");
    store.put(key(1), encoded(&key(1), 10)).await.expect("put");
    assert!(store.get(&key(1)).await.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.get(&key(1)).await, None);
    // moka's timer wheel removes expired entries on a ~1 s granularity.
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = store.stats().await;
        if s.expirations == 1 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((s.memory_entries, s.expirations), (0, 1), "{s:?}");
}

#[tokio::test]
async fn memory_stays_within_its_byte_bound() {
    let bound = 256 * 1024;
    let store = NodeStore::open(memory_only(bound, Duration::from_secs(60)))
        .await
        .expect("open");
    for i in 0..100 {
        store
            .put(key(i), encoded(&key(i), 16 * 1024))
            .await
            .expect("put");
    }
    let s = store.stats().await;
    assert!(s.memory_bytes <= bound, "{} > {bound}", s.memory_bytes);
    assert!(s.memory_entries < 100 && s.memory_entries > 0, "{s:?}");
    assert_eq!(s.evictions, 100 - s.memory_entries, "{s:?}");
}

#[tokio::test]
async fn the_disk_budget_counts_whole_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = NodeStore::open(StoreConfig {
        memory_bytes: 1 << 20,
        disk: Some((dir.path().to_path_buf(), 8 * DISK_BLOCK)),
        ttl: Duration::from_secs(3600),
    })
    .await
    .expect("open");
    // Twenty entries of a few hundred bytes: by bytes they would all fit in 32 KiB,
    // but each file takes a 4 KiB block, so at most eight stay on disk.
    for i in 0..20 {
        store.put(key(i), encoded(&key(i), 300)).await.expect("put");
    }
    let s = store.stats().await;
    assert!(s.disk_entries <= 8, "{s:?}");
    assert!(s.disk_bytes <= 8 * DISK_BLOCK, "{s:?}");
    assert_eq!(disk_weight(1), 4096);
    assert_eq!(disk_weight(4097), 8192);
}

#[tokio::test]
async fn the_disk_tier_survives_a_restart_and_stays_within_its_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |disk: u64| StoreConfig {
        // Memory holds about two entries: the rest must come from disk.
        memory_bytes: 40 * 1024,
        disk: Some((dir.path().to_path_buf(), disk)),
        ttl: Duration::from_secs(3600),
    };
    let store = NodeStore::open(config(10 << 20)).await.expect("open");
    let entries: Vec<_> = (0..20).map(|i| encoded(&key(i), 16 * 1024)).collect();
    for (i, bytes) in entries.iter().enumerate() {
        store.put(key(i as u32), bytes.clone()).await.expect("put");
    }
    drop(store);
    let store = NodeStore::open(config(10 << 20)).await.expect("reopen");
    for (i, bytes) in entries.iter().enumerate() {
        let got = store.get(&key(i as u32)).await;
        assert_eq!(got.as_deref(), Some(&bytes[..]), "entry {i}");
    }
    assert_eq!(store.stats().await.disk_entries, 20);
    drop(store);
    // Reopened with room for about 5 entries: the rest are evicted and deleted.
    let budget = 5 * 17 * 1024;
    let store = NodeStore::open(config(budget)).await.expect("reopen small");
    let s = store.stats().await;
    assert!(s.disk_bytes <= budget && s.disk_entries <= 5, "{s:?}");
    let files = DiskCache::open(dir.path())
        .expect("open")
        .scan_raw()
        .expect("scan");
    assert_eq!(
        files.len() as u64,
        s.disk_entries,
        "evicted files are deleted"
    );
}

#[tokio::test]
async fn expired_files_are_pruned_at_startup_and_damaged_ones_are_misses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |ttl: Duration| StoreConfig {
        memory_bytes: 1 << 20,
        disk: Some((dir.path().to_path_buf(), 1 << 20)),
        ttl,
    };
    let store = NodeStore::open(config(Duration::from_secs(3600)))
        .await
        .expect("open");
    store.put(key(1), encoded(&key(1), 10)).await.expect("put");
    store.put(key(2), encoded(&key(2), 10)).await.expect("put");
    drop(store);
    let files = DiskCache::open(dir.path()).expect("open");
    std::fs::write(files.entry_path(&key(2)), b"torn").expect("damage");
    let store = NodeStore::open(config(Duration::from_secs(3600)))
        .await
        .expect("reopen");
    assert!(store.get(&key(1)).await.is_some());
    assert_eq!(store.get(&key(2)).await, None, "a damaged file is a miss");
    drop(store);
    std::thread::sleep(Duration::from_millis(1100));
    let store = NodeStore::open(config(Duration::from_secs(1)))
        .await
        .expect("reopen");
    assert_eq!(store.get(&key(1)).await, None);
    assert!(
        files.scan_raw().expect("scan").is_empty(),
        "expired files are deleted"
    );
}
