//! The client of the shared result cache (`gatehouse.v1.CacheService`, served by the
//! workers that are cache nodes): [`ClusterCache`] places keys on nodes with
//! rendezvous hashing ([`Placement`]) over a [`Membership`], reads the replicas of a
//! key in parallel (first hit wins, bounded by a short timeout, with read-repair) and
//! writes an entry to all of them (with retries). See `docs/cache.md`.
//!
//! **Batching.** Each node has a batcher task per direction: a request waits its linger
//! ([`ClientConfig::lookup_linger`], none by default; [`ClientConfig::put_linger`],
//! 10 ms) and while up to [`ClientConfig::in_flight`] RPCs to that node are running,
//! and the next RPC takes everything queued (up to [`ClientConfig::max_batch`] keys, or entries
//! up to [`PUT_BATCH_BYTES`]). Ten thousand lookups at once cost a few dozen RPCs, and
//! results that trickle in one by one share a write.
//!
//! **Failure.** A node whose RPC fails or times out without answering anything is
//! *suspect* for [`ClientConfig::suspect_for`]: lookups skip it (a miss unless another
//! replica has the entry) and writes to it are dropped, so a hung node costs one
//! timeout, not one per lookup, and cannot fill a queue. Lookups never fail: a
//! timeout, an error or a damaged entry is a miss. Writes are retried
//! ([`ClientConfig::put_attempts`]) and bounded per node
//! ([`ClientConfig::max_queued_bytes`]); one that is dropped or still fails is counted
//! in [`ClientStats::put_failures`], never reported as a gate failure.
//!
//! **Tasks.** Batchers and RPCs are tasks of the client's tracker; [`ClusterCache::close`]
//! lets queued writes finish for a bounded time and stops them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gatehouse_common::cache::codec::{MAX_ENTRY_BYTES, decode_entry, encode_entry};
use gatehouse_common::cache::placement::Placement;
use gatehouse_common::cache::{CacheEntry, CacheError, CacheKey, ResultCache};
use gatehouse_common::spawn::spawn_tracked;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};

use crate::convert::WireError;
use crate::v1;
use crate::v1::cache_service_client::CacheServiceClient;

/// Most keys in one `Get` (the server refuses more).
pub const MAX_GET_KEYS: usize = 1024;
/// Largest chunk of an entry in one message (entries up to 8 MiB take several).
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// A `Put` batch stops taking entries past this many bytes.
pub const PUT_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Most replicas a membership may ask for.
pub const MAX_REPLICAS: usize = 8;

/// The live cache nodes (worker id -> CacheService URL) and the replication factor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    placement: Placement,
    replicas: usize,
    urls: HashMap<String, String>,
}

impl Default for Membership {
    fn default() -> Self {
        Self::new(0, 2, [])
    }
}

impl Membership {
    /// `nodes` as (id, url) pairs; a repeated id keeps its last URL.
    pub fn new(
        epoch: u64,
        replicas: usize,
        nodes: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let urls: HashMap<String, String> = nodes.into_iter().collect();
        Self {
            placement: Placement::new(epoch, urls.keys().cloned()),
            replicas: replicas.clamp(1, MAX_REPLICAS),
            urls,
        }
    }

    /// Reads a membership frame; URLs must be `http://` or `https://`.
    pub fn from_wire(m: &v1::CacheMembers) -> Result<Self, WireError> {
        for n in &m.nodes {
            if n.id.is_empty() {
                return Err(WireError::Missing("cache_members.nodes.id"));
            }
            check_url(&n.url).map_err(|reason| WireError::Invalid {
                field: "cache_members.nodes.url",
                reason,
            })?;
        }
        Ok(Self::new(
            m.epoch,
            m.replicas as usize,
            m.nodes.iter().map(|n| (n.id.clone(), n.url.clone())),
        ))
    }

    /// The membership frame.
    pub fn to_wire(&self) -> v1::CacheMembers {
        v1::CacheMembers {
            epoch: self.epoch(),
            replicas: self.replicas as u32,
            nodes: self
                .nodes()
                .map(|(id, url)| v1::CacheNode {
                    id: id.to_owned(),
                    url: url.to_owned(),
                })
                .collect(),
        }
    }

    /// Grows with every change made by one coordinator.
    pub fn epoch(&self) -> u64 {
        self.placement.epoch()
    }

    /// The replication factor.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The nodes as (id, url), sorted by id.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.placement
            .nodes()
            .iter()
            .map(|id| (id.as_str(), self.urls[id].as_str()))
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Whether there is no node (every lookup is a miss, every write a no-op).
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The (id, url) of the nodes holding `key`, best first.
    pub fn replicas_of(&self, key: &CacheKey) -> Vec<(&str, &str)> {
        self.placement
            .replicas(key, self.replicas)
            .into_iter()
            .map(|id| (id, self.urls[id].as_str()))
            .collect()
    }
}

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
    pub tls: crate::tls::Tls,
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
            tls: crate::tls::Tls::default(),
        }
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

/// What one replica said about one key.
enum Answer {
    Found(Vec<u8>),
    Missing,
    Failed,
}

struct GetReq {
    key: CacheKey,
    reply: oneshot::Sender<Answer>,
}

struct PutReq {
    key: CacheKey,
    bytes: Arc<[u8]>,
    attempt: u32,
    reply: Option<oneshot::Sender<bool>>,
}

/// One node's client: batchers for both directions and its health.
struct Node {
    gets: mpsc::UnboundedSender<GetReq>,
    puts: mpsc::UnboundedSender<PutReq>,
    /// Bytes of this node's writes not settled yet (queued, in flight or waiting for
    /// a retry).
    queued_bytes: Arc<AtomicU64>,
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

struct Shared {
    config: ClientConfig,
    stats: ClientStats,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// The cluster's result cache as a [`ResultCache`]. Cheap to share (`Arc`); see the
/// module docs.
pub struct ClusterCache {
    members: watch::Receiver<Arc<Membership>>,
    shared: Arc<Shared>,
    /// url -> node client, for the nodes of the membership last seen.
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
        let mut pending = Vec::new();
        for (url, node) in &replicas {
            if node.suspect() {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            if node.gets.send(GetReq { key: *key, reply }).is_ok() {
                pending.push((url.clone(), rx));
            }
        }
        let mut missed = Vec::new();
        let mut failed = false;
        let deadline = Instant::now() + self.shared.config.lookup_timeout;
        let mut hit = None;
        let mut waiting: Vec<_> = pending
            .into_iter()
            .map(|(url, rx)| Box::pin(async move { (url, rx.await) }))
            .collect();
        while !waiting.is_empty() && hit.is_none() {
            let next = futures_select(&mut waiting);
            let Ok((url, answer)) = tokio::time::timeout_at(deadline, next).await else {
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
                while !waiting.is_empty() {
                    let next = futures_select(&mut waiting);
                    match tokio::time::timeout_at(deadline, next).await {
                        Ok((url, Ok(Answer::Missing))) => {
                            client.repair(&replicas, &url, &key, &bytes)
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        Some(entry)
    }

    /// A handle that writes entries, also from background tasks.
    fn writer(&self) -> Writer {
        Writer {
            shared: self.shared.clone(),
        }
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
            let live: std::collections::HashSet<&str> = members.nodes().map(|n| n.1).collect();
            nodes.1.retain(|url, _| live.contains(url.as_str()));
            nodes.0 = members.epoch();
        }
        wanted
            .into_iter()
            .filter_map(|(_, url)| {
                if let Some(node) = nodes.1.get(url) {
                    return Some((url.to_owned(), node.clone()));
                }
                let node = Arc::new(self.start_node(url)?);
                nodes.1.insert(url.to_owned(), node.clone());
                Some((url.to_owned(), node))
            })
            .collect()
    }

    fn start_node(&self, url: &str) -> Option<Node> {
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
        let link = Link {
            url: url.to_owned(),
            client,
            shared: self.shared.clone(),
            suspect_until: node.suspect_until.clone(),
        };
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

/// Writes entries to nodes (new results and read-repairs) for a [`ClusterCache`], also
/// from its background tasks.
struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    fn repair(
        &self,
        replicas: &[(String, Arc<Node>)],
        url: &str,
        key: &CacheKey,
        bytes: &Arc<[u8]>,
    ) {
        if let Some((_, node)) = replicas.iter().find(|(u, _)| u == url) {
            tracing::debug!(key = %key, %url, "read-repair");
            ClientStats::bump(&self.shared.stats.repairs);
            self.enqueue_put(node, *key, bytes.clone(), None);
        }
    }

    fn enqueue_put(
        &self,
        node: &Node,
        key: CacheKey,
        bytes: Arc<[u8]>,
        reply: Option<oneshot::Sender<bool>>,
    ) {
        let stats = &self.shared.stats;
        let size = bytes.len() as u64;
        let req = PutReq {
            key,
            bytes,
            attempt: 1,
            reply,
        };
        // A node that just failed or timed out gets nothing for a while: its queue
        // would only grow (the entry is written back by read-repair later).
        if node.suspect() {
            ClientStats::bump(&stats.put_failures);
            tracing::debug!(key = %key, "cache node is suspect; write dropped");
            answer_put(req, false);
            return;
        }
        let queued = node.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if queued + size > self.shared.config.max_queued_bytes {
            node.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            ClientStats::bump(&stats.put_failures);
            tracing::warn!(key = %key, queued, "cache write queue full; write dropped");
            answer_put(req, false);
        } else if let Err(mpsc::error::SendError(req)) = node.puts.send(req) {
            node.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            ClientStats::bump(&stats.put_failures);
            answer_put(req, false);
        }
    }
}

/// Waits for the first of `futs` to finish and removes it.
async fn futures_select<F: std::future::Future + Unpin>(futs: &mut Vec<F>) -> F::Output {
    std::future::poll_fn(|cx| {
        for i in 0..futs.len() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(&mut futs[i]).poll(cx) {
                drop(futs.swap_remove(i));
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn answer_put(req: PutReq, ok: bool) {
    if let Some(reply) = req.reply {
        let _ = reply.send(ok);
    }
}

/// The RPC side of one node.
#[derive(Clone)]
struct Link {
    url: String,
    client: CacheServiceClient<Channel>,
    shared: Arc<Shared>,
    suspect_until: Arc<Mutex<Option<Instant>>>,
}

/// Waits for a first request and a free RPC slot, then takes whatever else is queued
/// while `room` (told of each request taken) says the batch has room. `None` once the
/// channel is closed and drained, or the client stops.
async fn next_batch<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
    linger: Duration,
    mut room: impl FnMut(&T) -> bool,
) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
    let first = tokio::select! {
        () = stop.cancelled() => return None,
        first = rx.recv() => first?,
    };
    if !linger.is_zero() {
        // Let more requests join this RPC (writes are not waited for; a short delay
        // saves an RPC per entry when results trickle in one by one).
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(linger) => {}
        }
    }
    let permit = tokio::select! {
        () = stop.cancelled() => return None,
        permit = slots.clone().acquire_owned() => permit.ok()?,
    };
    // Whatever queued while waiting for a slot goes in the same RPC.
    let mut more = room(&first);
    let mut batch = vec![first];
    while more {
        match rx.try_recv() {
            Ok(req) => {
                more = room(&req);
                batch.push(req);
            }
            Err(_) => break,
        }
    }
    Some((permit, batch))
}

impl Link {
    fn mark(&self, healthy: bool) {
        let mut until = self
            .suspect_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *until = (!healthy).then(|| Instant::now() + self.shared.config.suspect_for);
    }

    async fn get_loop(self, mut rx: mpsc::UnboundedReceiver<GetReq>) {
        let slots = Arc::new(Semaphore::new(self.shared.config.in_flight.max(1)));
        let max = self.shared.config.max_batch.clamp(1, MAX_GET_KEYS);
        loop {
            let mut taken = 0;
            let room = |_: &GetReq| {
                taken += 1;
                taken < max
            };
            let Some((permit, mut batch)) = next_batch(
                &mut rx,
                &slots,
                &self.shared.stop,
                self.shared.config.lookup_linger,
                room,
            )
            .await
            else {
                return;
            };
            batch.retain(|r| !r.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let link = self.clone();
            spawn_tracked(&self.shared.tasks, "cache-get", async move {
                let _permit = permit;
                link.get_batch(batch).await;
            });
        }
    }

    /// One `Get` RPC for `batch`. Each key is answered as soon as its last chunk
    /// arrives; keys still open when the stream fails or times out are `Failed`. The
    /// node becomes suspect only if it sent nothing at all.
    async fn get_batch(&self, batch: Vec<GetReq>) {
        let timeout = self.shared.config.lookup_timeout;
        let mut request = tonic::Request::new(v1::GetRequest {
            keys: batch.iter().map(|r| r.key.0.to_vec()).collect(),
        });
        request.set_timeout(timeout);
        let mut client = self.client.clone();
        let mut open: Vec<Option<oneshot::Sender<Answer>>> =
            batch.into_iter().map(|r| Some(r.reply)).collect();
        let mut progress = false;
        let outcome = tokio::select! {
            () = self.shared.stop.cancelled() => return,
            outcome = tokio::time::timeout(timeout, async {
                let mut stream = client.get(request).await?.into_inner();
                // The entry being reassembled: its index and bytes so far.
                let mut partial: Option<(usize, Vec<u8>)> = None;
                while let Some(chunk) = stream.message().await? {
                    progress = true;
                    let i = chunk.index as usize;
                    let Some(slot) = open.get_mut(i) else {
                        return Err(tonic::Status::internal("chunk index out of range"));
                    };
                    if !chunk.found {
                        partial = None;
                        if let Some(reply) = slot.take() {
                            let _ = reply.send(Answer::Missing);
                        }
                        continue;
                    }
                    let bytes = match &mut partial {
                        Some((at, bytes)) if *at == i => bytes,
                        _ => &mut partial.insert((i, Vec::new())).1,
                    };
                    bytes.extend_from_slice(&chunk.data);
                    if bytes.len() as u64 > MAX_ENTRY_BYTES {
                        return Err(tonic::Status::internal("entry exceeds the size limit"));
                    }
                    if chunk.last
                        && let Some((_, bytes)) = partial.take()
                        && let Some(reply) = slot.take()
                    {
                        let _ = reply.send(Answer::Found(bytes));
                    }
                }
                Ok(())
            }) => outcome,
        };
        match outcome {
            Ok(Ok(())) => self.mark(true),
            Ok(Err(status)) => {
                tracing::debug!(url = %self.url, %status, "cache lookup failed");
                self.mark(progress);
            }
            Err(_) => {
                tracing::debug!(url = %self.url, ?timeout, progress, "cache lookup timed out");
                self.mark(progress);
            }
        }
        // Keys the stream never answered.
        for reply in open.into_iter().flatten() {
            let _ = reply.send(Answer::Failed);
        }
    }

    async fn put_loop(
        self,
        mut rx: mpsc::UnboundedReceiver<PutReq>,
        requeue: mpsc::WeakUnboundedSender<PutReq>,
        queued: Arc<AtomicU64>,
    ) {
        let slots = Arc::new(Semaphore::new(self.shared.config.in_flight.max(1)));
        // Ends when every sender is gone (the node left the membership or the client
        // closed) and the queue is empty, or at once when the client stops.
        loop {
            let mut bytes = 0;
            let room = |req: &PutReq| {
                bytes += req.bytes.len();
                bytes < PUT_BATCH_BYTES
            };
            let linger = self.shared.config.put_linger;
            let Some((permit, batch)) =
                next_batch(&mut rx, &slots, &self.shared.stop, linger, room).await
            else {
                return;
            };
            let link = self.clone();
            let requeue = requeue.clone();
            let queued = queued.clone();
            spawn_tracked(&self.shared.tasks, "cache-put", async move {
                let ok = link.put_batch(&batch).await;
                drop(permit);
                for req in batch {
                    link.after_put(req, ok, &requeue, &queued);
                }
            });
        }
    }

    /// Settles one write after its RPC: done, retried after a backoff, or given up.
    fn after_put(
        &self,
        mut req: PutReq,
        ok: bool,
        requeue: &mpsc::WeakUnboundedSender<PutReq>,
        queued: &Arc<AtomicU64>,
    ) {
        let stats = &self.shared.stats;
        let size = req.bytes.len() as u64;
        if ok {
            queued.fetch_sub(size, Ordering::Relaxed);
            ClientStats::bump(&stats.puts);
            answer_put(req, true);
            return;
        }
        if req.attempt >= self.shared.config.put_attempts.max(1) {
            queued.fetch_sub(size, Ordering::Relaxed);
            ClientStats::bump(&stats.put_failures);
            tracing::warn!(url = %self.url, key = %req.key, attempts = req.attempt,
                "cache write failed; giving up on this replica");
            answer_put(req, false);
            return;
        }
        let backoff = self.shared.config.put_backoff * 2u32.pow(req.attempt - 1);
        req.attempt += 1;
        let (link, requeue, queued) = (self.clone(), requeue.clone(), queued.clone());
        spawn_tracked(&self.shared.tasks, "cache-put-retry", async move {
            tokio::select! {
                () = link.shared.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            // The node's senders live until the client closes (which waits for queued
            // writes) or the node leaves the membership (then the write is moot).
            let sent = match requeue.upgrade() {
                Some(tx) => tx.send(req).map_err(|e| e.0),
                None => Err(req),
            };
            if let Err(req) = sent {
                queued.fetch_sub(size, Ordering::Relaxed);
                ClientStats::bump(&link.shared.stats.put_failures);
                answer_put(req, false);
            }
        });
    }

    /// One `Put` RPC carrying `batch`; `true` if the node took it (entries it rejects
    /// as damaged are not retried: they would be rejected again).
    async fn put_batch(&self, batch: &[PutReq]) -> bool {
        let mut chunks = Vec::new();
        for req in batch {
            let mut parts = req.bytes.chunks(CHUNK_BYTES).peekable();
            let mut first = true;
            while let Some(part) = parts.next() {
                chunks.push(v1::PutChunk {
                    key: if first {
                        req.key.0.to_vec()
                    } else {
                        Vec::new()
                    },
                    data: part.to_vec(),
                    last: parts.peek().is_none(),
                });
                first = false;
            }
        }
        let timeout = self.shared.config.put_timeout;
        let mut request = tonic::Request::new(tokio_stream::iter(chunks));
        request.set_timeout(timeout);
        let mut client = self.client.clone();
        let result = tokio::select! {
            () = self.shared.stop.cancelled() => return false,
            r = tokio::time::timeout(timeout, client.put(request)) => r,
        };
        match result {
            Ok(Ok(response)) => {
                let r = response.into_inner();
                if r.rejected > 0 {
                    tracing::warn!(url = %self.url, rejected = r.rejected, "cache node rejected entries");
                }
                self.mark(true);
                true
            }
            Ok(Err(status)) => {
                tracing::debug!(url = %self.url, %status, "cache write failed");
                self.mark(false);
                false
            }
            Err(_) => {
                tracing::debug!(url = %self.url, ?timeout, "cache write timed out");
                self.mark(false);
                false
            }
        }
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

/// A 32-byte key from the wire.
pub fn key_from_wire(bytes: &[u8]) -> Result<CacheKey, WireError> {
    let key: [u8; 32] = bytes.try_into().map_err(|_| WireError::Invalid {
        field: "key",
        reason: format!("a cache key is 32 bytes, not {}", bytes.len()),
    })?;
    Ok(CacheKey(key))
}

/// Asks the cache node at `url` for its `Stats` (its counters and the membership it
/// last received), connecting and answering within `timeout`.
pub async fn node_stats(
    url: &str,
    timeout: Duration,
    tls: &crate::tls::Tls,
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
