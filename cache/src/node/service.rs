//! `gatehouse.v1.CacheService` over a [`NodeStore`]: a thin translation of RPCs to
//! store calls (see `proto/gatehouse/v1/cache.proto` for the contract). It holds only
//! the store, the membership receiver and the worker's client (read by `Stats`); every
//! RPC is independent, and a malformed request is `INVALID_ARGUMENT` without touching
//! the store. Streams end with their RPC; the server that runs it owns shutdown.

use std::pin::Pin;
use std::sync::Arc;

use gatehouse_common::cache::CacheKey;
use gatehouse_common::cache::codec::MAX_ENTRY_BYTES;
use gatehouse_proto::cache::{CHUNK_BYTES, MAX_GET_KEYS, key_from_wire};
use gatehouse_proto::v1;
use gatehouse_proto::v1::cache_service_server::CacheService;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::store::NodeStore;
use crate::{ClusterCache, Membership};

/// The service of one cache node.
pub struct CacheServiceImpl {
    node_id: String,
    store: Arc<NodeStore>,
    members: watch::Receiver<Arc<Membership>>,
    /// The worker's own client, whose failed replica writes `Stats` reports.
    client: Option<Arc<ClusterCache>>,
}

impl CacheServiceImpl {
    /// Serves `store` as node `node_id`; `Stats` shows `members` and `client`'s
    /// failed writes.
    pub fn new(
        node_id: String,
        store: Arc<NodeStore>,
        members: watch::Receiver<Arc<Membership>>,
        client: Option<Arc<ClusterCache>>,
    ) -> Self {
        Self {
            node_id,
            store,
            members,
            client,
        }
    }
}

type GetStream = Pin<Box<dyn Stream<Item = Result<v1::GetChunk, Status>> + Send>>;

/// Streams the answers of one `Get`: each entry is sliced into chunks as it is sent,
/// from the shared bytes the store holds (nothing is copied ahead of time).
struct Chunks {
    found: Vec<Option<Arc<[u8]>>>,
    index: usize,
    offset: usize,
}

impl Iterator for Chunks {
    type Item = Result<v1::GetChunk, Status>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.found.get(self.index)?;
        let index = self.index as u32;
        let Some(bytes) = entry else {
            self.index += 1;
            return Some(Ok(v1::GetChunk {
                index,
                found: false,
                data: Vec::new(),
                last: true,
            }));
        };
        let end = (self.offset + CHUNK_BYTES).min(bytes.len());
        let chunk = v1::GetChunk {
            index,
            found: true,
            data: bytes[self.offset..end].to_vec(),
            last: end == bytes.len(),
        };
        if chunk.last {
            self.index += 1;
            self.offset = 0;
        } else {
            self.offset = end;
        }
        Some(Ok(chunk))
    }
}

#[tonic::async_trait]
impl CacheService for CacheServiceImpl {
    type GetStream = GetStream;

    async fn get(&self, request: Request<v1::GetRequest>) -> Result<Response<GetStream>, Status> {
        let keys = request.into_inner().keys;
        if keys.len() > MAX_GET_KEYS {
            return Err(Status::invalid_argument(format!(
                "{} keys in one Get; at most {MAX_GET_KEYS}",
                keys.len()
            )));
        }
        let keys: Vec<CacheKey> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                key_from_wire(k).map_err(|e| Status::invalid_argument(format!("keys[{i}]: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let found = self.store.get_many(&keys).await;
        let chunks = Chunks {
            found,
            index: 0,
            offset: 0,
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn put(
        &self,
        request: Request<Streaming<v1::PutChunk>>,
    ) -> Result<Response<v1::PutResponse>, Status> {
        let mut stream = request.into_inner();
        let mut answer = v1::PutResponse::default();
        // The entry being received: its key, bytes so far, and whether it is too large
        // (then its remaining chunks are read and dropped).
        let mut current: Option<(CacheKey, Vec<u8>, bool)> = None;
        while let Some(chunk) = stream.message().await? {
            let (key, mut bytes, oversized) = match current.take() {
                Some(entry) => {
                    if !chunk.key.is_empty() {
                        return Err(Status::invalid_argument(
                            "a chunk carries a key before the previous entry's last chunk",
                        ));
                    }
                    entry
                }
                None => {
                    let key = key_from_wire(&chunk.key)
                        .map_err(|e| Status::invalid_argument(format!("first chunk: {e}")))?;
                    (key, Vec::new(), false)
                }
            };
            let oversized = oversized || (bytes.len() + chunk.data.len()) as u64 > MAX_ENTRY_BYTES;
            if !oversized {
                bytes.extend_from_slice(&chunk.data);
            }
            if !chunk.last {
                current = Some((key, if oversized { Vec::new() } else { bytes }, oversized));
                continue;
            }
            if oversized {
                tracing::warn!(key = %key, "refusing a cache entry over {MAX_ENTRY_BYTES} bytes");
                self.store.count_rejected();
                answer.rejected += 1;
                continue;
            }
            match self.store.put(key, bytes.into()).await {
                Ok(()) => answer.stored += 1,
                Err(reason) => {
                    tracing::warn!(key = %key, %reason, "refusing a damaged cache entry");
                    answer.rejected += 1;
                }
            }
        }
        if current.is_some() {
            return Err(Status::invalid_argument(
                "the stream ended inside an entry (no chunk with last = true)",
            ));
        }
        Ok(Response::new(answer))
    }

    async fn stats(
        &self,
        _request: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        let s = self.store.stats().await;
        let config = self.store.config();
        let members = self.members.borrow().clone();
        let node = v1::CacheNodeStats {
            node_id: self.node_id.clone(),
            hits: s.hits,
            misses: s.misses,
            memory_entries: s.memory_entries,
            memory_bytes: s.memory_bytes,
            disk_entries: s.disk_entries,
            disk_bytes: s.disk_bytes,
            evictions: s.evictions,
            expirations: s.expirations,
            puts: s.puts,
            rejected: s.rejected,
            memory_capacity_bytes: config.memory_bytes,
            disk_capacity_bytes: config.disk.as_ref().map_or(0, |d| d.1),
            ttl_ms: config.ttl.as_millis() as u64,
            replica_write_failures: self.client.as_ref().map_or(0, |c| {
                c.stats()
                    .put_failures
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
        };
        Ok(Response::new(v1::StatsResponse {
            node: Some(node),
            members: (!members.is_empty()).then(|| members.to_wire()),
        }))
    }
}
