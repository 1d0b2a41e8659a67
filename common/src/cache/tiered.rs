//! [`Tiered`]: a near cache (the local disk) in front of a far one (a cluster's shared
//! cache), as `gatehouse run --cache URL` uses them. A lookup tries near, then far; a
//! far hit is copied near. A write goes to both. An error of one tier is logged and
//! the other still answers: a tier never fails a gate.

use std::sync::Arc;

use super::{CacheEntry, CacheError, CacheKey, ResultCache};

/// Near before far (see the module docs).
pub struct Tiered {
    near: Arc<dyn ResultCache>,
    far: Arc<dyn ResultCache>,
}

impl Tiered {
    /// `near` answers first; `far` is asked on a near miss.
    pub fn new(near: Arc<dyn ResultCache>, far: Arc<dyn ResultCache>) -> Self {
        Self { near, far }
    }
}

#[async_trait::async_trait]
impl ResultCache for Tiered {
    async fn get(&self, key: &CacheKey) -> Result<Option<CacheEntry>, CacheError> {
        match self.near.get(key).await {
            Ok(Some(entry)) => return Ok(Some(entry)),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "near cache lookup failed; asking the far one"),
        }
        let entry = self.far.get(key).await?;
        if let Some(entry) = &entry
            && let Err(e) = self.near.put(key, entry).await
        {
            tracing::warn!(error = %e, "cannot copy a far cache hit into the near cache");
        }
        Ok(entry)
    }

    async fn put(&self, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError> {
        let (near, far) = tokio::join!(self.near.put(key, entry), self.far.put(key, entry));
        match (near, far) {
            (Err(e), Err(_)) => Err(e),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => {
                tracing::warn!(error = %e, "cache write failed in one tier");
                Ok(())
            }
            (Ok(()), Ok(())) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cache::DiskCache;
    use crate::exec::{ExitStatus, GateResult, OutputTail};
    use crate::ids::GateId;

    fn entry() -> CacheEntry {
        CacheEntry {
            result: GateResult {
                status: ExitStatus::Exited(0),
                duration: Duration::from_millis(5),
                peak_memory: None,
                stdout: OutputTail::default(),
                stderr: OutputTail::default(),
                tests: None,
            },
            producer: GateId::new("g"),
            created_unix_ms: 1,
            flaky: None,
        }
    }

    #[tokio::test]
    async fn far_hits_are_copied_near_and_writes_reach_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let near = Arc::new(DiskCache::open(dir.path().join("near")).expect("open"));
        let far = Arc::new(DiskCache::open(dir.path().join("far")).expect("open"));
        let tiered = Tiered::new(near.clone(), far.clone());
        let (a, b) = (CacheKey([1; 32]), CacheKey([2; 32]));
        far.put(&a, &entry()).await.expect("put");
        assert_eq!(tiered.get(&a).await.expect("get"), Some(entry()));
        assert_eq!(near.get(&a).await.expect("get"), Some(entry()));
        tiered.put(&b, &entry()).await.expect("put");
        assert_eq!(near.get(&b).await.expect("get"), Some(entry()));
        assert_eq!(far.get(&b).await.expect("get"), Some(entry()));
        assert_eq!(tiered.get(&CacheKey([3; 32])).await.expect("get"), None);
    }
}
