//! The client of the shared result cache (`gatehouse.v1.CacheService`, served by the
//! workers that are cache nodes): [`ClusterCache`] places keys on nodes with
//! rendezvous hashing over a [`Membership`] it follows on a `watch` channel, reads the
//! replicas of a key in parallel (first hit wins, bounded by a short timeout, with
//! read-repair) and writes an entry to all of them (with retries). See `docs/cache.md`.
//!
//! **State.** One `Node` per node URL of the membership last seen (created on first
//! use, forgotten when the node leaves): the senders of its two batchers, its bytes of
//! unsettled writes and when its suspicion ends. The per-node RPC side is
//! `client/batch.rs`; the write path (queue bounds, retries, read-repair) is
//! `client/write.rs`.
//!
//! **Batching.** Each node has a batcher task per direction: a request waits its linger
//! ([`ClientConfig::lookup_linger`], none by default; [`ClientConfig::put_linger`],
//! 10 ms) and while up to [`ClientConfig::in_flight`] RPCs to that node are running,
//! and the next RPC takes everything queued (up to [`ClientConfig::max_batch`] keys, or
//! entries up to [`PUT_BATCH_BYTES`]). Ten thousand lookups at once cost a few dozen
//! RPCs, and results that trickle in one by one share a write.
//!
//! **Failure.** A node whose RPC fails or times out without answering anything is
//! *suspect* for [`ClientConfig::suspect_for`]: lookups skip it (a miss unless another
//! replica has the entry) and writes to it are dropped, so a hung node costs one
//! timeout, not one per lookup, and cannot fill a queue. Lookups never fail: a
//! timeout, an error or a damaged entry is a miss. Writes are retried
//! ([`ClientConfig::put_attempts`], after [`ClientConfig::put_backoff`] doubling) and
//! bounded per node ([`ClientConfig::max_queued_bytes`]); one that is dropped or still
//! fails is counted in [`ClientStats::put_failures`], never reported as a gate failure.
//!
//! **Tasks and shutdown.** Batchers, RPCs, retries and read-repairs are tasks of the
//! client's tracker; [`ClusterCache::close`] lets queued writes finish for a bounded
//! time, then stops them all and waits for them. After `close`, lookups are misses and
//! writes no-ops.

mod batch;
mod write;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use gatehouse_common::backoff::Backoff;
use gatehouse_common::cache::codec::{decode_entry, encode_entry};
use gatehouse_common::cache::{CacheEntry, CacheError, CacheKey, ResultCache};
use gatehouse_common::spawn::spawn_tracked;
use gatehouse_proto::cache::CHUNK_BYTES;
use gatehouse_proto::v1;
use gatehouse_proto::v1::cache_service_client::CacheServiceClient;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::membership::Membership;
use batch::{Answer, GetReq, Link};
use write::{PutReq, Writer};

/// A `Put` batch stops taking entries past this many bytes.
pub const PUT_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Client tunables.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// A lookup that has no hit by then is a miss.
    pub lookup_timeout: Duration,
    /// Deadline of one `Put` RPC.
    pub put_timeout: Duration,
    /// Tries per write and replica before it counts as failed.
    pub put_attempts: u32,
    /// Wait before the first retry of a write (doubling).
    pub put_backoff: Duration,
    /// How long a write waits for others to join its `Put` RPC.
    pub put_linger: Duration,
    /// How long a lookup waits for others to join its `Get` RPC.
    pub lookup_linger: Duration,
    /// Keys per `Get` RPC.
    pub max_batch: usize,
    /// RPCs in flight per node and direction.
    pub in_flight: usize,
    /// How long a node that timed out or failed is skipped by lookups.
    pub suspect_for: Duration,
    /// Bytes of entries queued for one node (including writes waiting to be retried)
    /// beyond which new writes to it are dropped, counted as failed.
    pub max_queued_bytes: u64,
    /// TLS for `https://` node URLs.
    pub tls: gatehouse_proto::tls::Tls,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            lookup_timeout: Duration::from_millis(250),
            put_timeout: Duration::from_secs(5),
            put_attempts: 3,
            put_backoff: Duration::from_millis(200),
            put_linger: Duration::from_millis(10),
            // A timer linger costs a lookup ~2 ms (timer granularity) for a few percent
            // of throughput on sub-millisecond gates: lookups batch only naturally.
            lookup_linger: Duration::ZERO,
            max_batch: 256,
            in_flight: 4,
            suspect_for: Duration::from_secs(2),
            max_queued_bytes: 64 << 20,
            tls: gatehouse_proto::tls::Tls::default(),
        }
    }
}

impl ClientConfig {
    /// The retry delays of one write to one replica: [`ClientConfig::put_backoff`],
    /// doubling, without a cap (`put_attempts` ends the sequence: 200 ms, then 400 ms
    /// with the defaults). No jitter: the entries of a failed batch retry together and
    /// so share their next `Put`, and a suspect node's writes are dropped anyway.
    fn put_retry_delays(&self) -> Backoff {
        Backoff::new(self.put_backoff, Duration::MAX)
    }
}

/// What a client did, since it was created.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Lookups answered by some replica.
    pub hits: AtomicU64,
    /// Lookups without a hit (including timeouts and errors).
    pub misses: AtomicU64,
    /// Lookups in which some replica failed or timed out.
    pub errors: AtomicU64,
    /// Entries written back to a replica that missed them.
    pub repairs: AtomicU64,
    /// Entries delivered to a replica.
    pub puts: AtomicU64,
    /// Entries that could not be delivered to a replica after every retry.
    pub put_failures: AtomicU64,
}

impl ClientStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One node's client: the senders of its batchers and its health.
struct Node {
    /// Lookups for the node's `Get` batcher.
    gets: mpsc::UnboundedSender<GetReq>,
    /// Writes for the node's `Put` batcher (bounded by `queued_bytes`).
    puts: mpsc::UnboundedSender<PutReq>,
    /// Bytes of this node's writes not settled yet (queued, in flight or waiting for
    /// a retry).
    queued_bytes: Arc<AtomicU64>,
    /// Until when the node is skipped, set by its link after a failed RPC.
    suspect_until: Arc<Mutex<Option<Instant>>>,
}

impl Node {
    fn suspect(&self) -> bool {
        let until = *self
            .suspect_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until.is_some_and(|t| Instant::now() < t)
    }
}

/// What the client and all its tasks share.
struct Shared {
    config: ClientConfig,
    stats: ClientStats,
    /// Owns every task of the client; closed by [`ClusterCache::close`].
    tasks: TaskTracker,
    /// Fired by [`ClusterCache::close`] once writes settled (or the bound passed).
    stop: CancellationToken,
}

/// The cluster's result cache as a [`ResultCache`]. Cheap to share (`Arc`); see the
/// module docs.
pub struct ClusterCache {
    members: watch::Receiver<Arc<Membership>>,
    shared: Arc<Shared>,
    /// url -> node client, for the nodes of the membership (epoch) last seen.
    nodes: Mutex<(u64, HashMap<String, Arc<Node>>)>,
}

impl ClusterCache {
    /// A client following `members` (its sender is updated by whoever learns the
    /// membership: the coordinator's worker directory, a worker's session).
    pub fn new(config: ClientConfig, members: watch::Receiver<Arc<Membership>>) -> Self {
        Self {
            members,
            shared: Arc::new(Shared {
                config,
                stats: ClientStats::default(),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
            }),
            nodes: Mutex::new((u64::MAX, HashMap::new())),
        }
    }

    /// The client's counters.
    pub fn stats(&self) -> &ClientStats {
        &self.shared.stats
    }

    /// The membership the client uses now.
    pub fn membership(&self) -> Arc<Membership> {
        self.members.borrow().clone()
    }

    /// Lets queued writes (retries included) settle for at most `bound`, then stops
    /// every task. Lookups and writes after this are no-ops (misses).
    pub async fn close(&self, bound: Duration) {
        // No new node clients from here on (see `replicas`).
        self.shared.tasks.close();
        let deadline = Instant::now() + bound;
        loop {
            let pending: u64 = self
                .nodes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .1
                .values()
                .map(|n| n.queued_bytes.load(Ordering::Relaxed))
                .sum();
            if pending == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    ?bound,
                    pending_bytes = pending,
                    "cache writes still pending at shutdown; dropped"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.shared.stop.cancel();
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clear();
        self.shared.tasks.wait().await;
    }

    /// Looks `key` up on its replicas: the encoded entry, if one replica has an entry
    /// that decodes. Replicas that answered "missing" while another had it get the
    /// entry written back.
    pub async fn get_entry(&self, key: &CacheKey) -> Option<CacheEntry> {
        let replicas = self.replicas(key);
        let stats = &self.shared.stats;
        // Every replica asked, answering in whatever order they answer.
        let mut waiting = FuturesUnordered::new();
        for (url, node) in &replicas {
            if node.suspect() {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            if node.gets.send(GetReq { key: *key, reply }).is_ok() {
                let url = url.clone();
                waiting.push(async move { (url, rx.await) });
            }
        }
        let mut missed = Vec::new();
        let mut failed = false;
        let deadline = Instant::now() + self.shared.config.lookup_timeout;
        let mut hit = None;
        while !waiting.is_empty() && hit.is_none() {
            let Ok(Some((url, answer))) = tokio::time::timeout_at(deadline, waiting.next()).await
            else {
                failed = true;
                break;
            };
            match answer {
                Ok(Answer::Found(bytes)) => match decode_entry(key, &bytes) {
                    Ok(entry) => hit = Some((entry, bytes)),
                    Err(reason) => {
                        tracing::warn!(key = %key, %url, %reason, "damaged cache entry; treated as a miss");
                        missed.push(url);
                    }
                },
                Ok(Answer::Missing) => missed.push(url),
                Ok(Answer::Failed) | Err(_) => failed = true,
            }
        }
        if failed {
            ClientStats::bump(&stats.errors);
        }
        let Some((entry, bytes)) = hit else {
            ClientStats::bump(&stats.misses);
            return None;
        };
        ClientStats::bump(&stats.hits);
        // Read-repair: replicas that said "missing", now or (in the background, until
        // the lookup's deadline) once the others answer, get the entry written back.
        let bytes: Arc<[u8]> = bytes.into();
        for url in &missed {
            self.writer().repair(&replicas, url, key, &bytes);
        }
        if !waiting.is_empty() {
            let (replicas, key, client) = (replicas.clone(), *key, self.writer());
            spawn_tracked(&self.shared.tasks, "cache-read-repair", async move {
                while let Ok(Some((url, answer))) =
                    tokio::time::timeout_at(deadline, waiting.next()).await
                {
                    if let Ok(Answer::Missing) = answer {
                        client.repair(&replicas, &url, &key, &bytes);
                    }
                }
            });
        }
        Some(entry)
    }

    /// A handle that writes entries, also from background tasks.
    fn writer(&self) -> Writer {
        Writer::new(self.shared.clone())
    }

    /// Queues `entry` for every replica of `key` and returns at once; failures are
    /// counted in [`ClientStats::put_failures`].
    pub fn put_detached(&self, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError> {
        let bytes: Arc<[u8]> = encode_entry(key, entry)?.into();
        for (_, node) in self.replicas(key) {
            self.writer().enqueue_put(&node, *key, bytes.clone(), None);
        }
        Ok(())
    }

    /// Writes already encoded bytes to every replica of `key` and waits; `true` if at
    /// least one replica stored them (or there is no replica at all).
    pub async fn put_bytes(&self, key: &CacheKey, bytes: Arc<[u8]>) -> bool {
        let replicas = self.replicas(key);
        if replicas.is_empty() {
            return true;
        }
        let mut replies = Vec::new();
        for (_, node) in &replicas {
            let (tx, rx) = oneshot::channel();
            self.writer()
                .enqueue_put(node, *key, bytes.clone(), Some(tx));
            replies.push(rx);
        }
        let mut any = false;
        for rx in replies {
            any |= rx.await.unwrap_or(false);
        }
        any
    }

    /// The clients of `key`'s replicas (created on first use).
    fn replicas(&self, key: &CacheKey) -> Vec<(String, Arc<Node>)> {
        let members = self.members.borrow().clone();
        let wanted = members.replicas_of(key);
        if wanted.is_empty() || self.shared.stop.is_cancelled() || self.shared.tasks.is_closed() {
            return Vec::new();
        }
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if nodes.0 != members.epoch() {
            // Forget the clients of nodes that left (their batchers end once idle).
            let live: HashSet<&str> = members.nodes().map(|n| n.1).collect();
            nodes.1.retain(|url, _| live.contains(url.as_str()));
            nodes.0 = members.epoch();
        }
        wanted
            .into_iter()
            .filter_map(|(_, url)| {
                if let Some(node) = nodes.1.get(url) {
                    return Some((url.to_owned(), node.clone()));
                }
                let node = Arc::new(self.connect_node(url)?);
                nodes.1.insert(url.to_owned(), node.clone());
                Some((url.to_owned(), node))
            })
            .collect()
    }

    /// A client for the node at `url`: a lazy channel and its two batcher tasks.
    fn connect_node(&self, url: &str) -> Option<Node> {
        let endpoint = match self.shared.config.tls.endpoint(url) {
            Ok(e) => e
                .connect_timeout(
                    self.shared
                        .config
                        .lookup_timeout
                        .max(Duration::from_secs(1)),
                )
                .tcp_nodelay(true),
            Err(e) => {
                tracing::warn!(%url, error = %e, "unusable cache node URL");
                return None;
            }
        };
        let client = CacheServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(2 * CHUNK_BYTES + 4096)
            .max_encoding_message_size(2 * CHUNK_BYTES + 4096);
        let (gets, get_rx) = mpsc::unbounded_channel();
        let (puts, put_rx) = mpsc::unbounded_channel();
        let node = Node {
            gets,
            puts: puts.clone(),
            queued_bytes: Arc::new(AtomicU64::new(0)),
            suspect_until: Arc::new(Mutex::new(None)),
        };
        let link = Link::new(
            url.to_owned(),
            client,
            self.shared.clone(),
            node.suspect_until.clone(),
        );
        spawn_tracked(
            &self.shared.tasks,
            "cache-get-batcher",
            link.clone().get_loop(get_rx),
        );
        spawn_tracked(
            &self.shared.tasks,
            "cache-put-batcher",
            link.put_loop(put_rx, puts.downgrade(), node.queued_bytes.clone()),
        );
        Some(node)
    }
}

#[async_trait::async_trait]
impl ResultCache for ClusterCache {
    async fn get(&self, key: &CacheKey) -> Result<Option<CacheEntry>, CacheError> {
        Ok(self.get_entry(key).await)
    }

    /// Queues the entry for every replica and returns: a write never waits for a
    /// slow node (see [`ClusterCache::put_detached`]; [`ClusterCache::close`] lets
    /// queued writes finish).
    async fn put(&self, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError> {
        self.put_detached(key, entry)
    }
}

/// Asks the cache node at `url` for its `Stats` (its counters and the membership it
/// last received), connecting and answering within `timeout`.
pub async fn node_stats(
    url: &str,
    timeout: Duration,
    tls: &gatehouse_proto::tls::Tls,
) -> Result<v1::StatsResponse, String> {
    let endpoint = tls
        .endpoint(url)
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let call = async {
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        CacheServiceClient::new(channel)
            .stats(v1::StatsRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| s.message().to_owned())
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}
