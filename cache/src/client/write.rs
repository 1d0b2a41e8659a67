//! The write path of the cache client: a [`Writer`] queues an entry for one replica
//! ([`Writer::enqueue_put`]: new results and read-repairs) and settles each write after
//! its `Put` RPC ([`Writer::settle`]): done, retried after a delay, or given up.
//!
//! **Bounds.** A write to a suspect node is dropped at once; one that would take the
//! node's unsettled bytes past `max_queued_bytes` is dropped too. Every dropped or
//! finally failed write is counted in `put_failures` and answered `false` to a caller
//! that waits ([`ClusterCache::put_bytes`](super::ClusterCache::put_bytes)); none is
//! ever a gate failure.
//!
//! **Retries.** A write whose RPC failed waits the next delay of its own
//! [`Backoff`] (`put_backoff`, doubling; see
//! `ClientConfig::put_retry_delays`) in a task of the client's tracker, then goes back
//! to its node's queue, up to `put_attempts` tries in all. Its bytes stay counted
//! against the node until it is settled.
//!
//! **Shutdown.** A retry waiting when the client stops is abandoned (its caller, if
//! any, sees the reply dropped: `false`). A retry for a node that left the membership
//! (its queue is gone) fails at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_common::backoff::Backoff;
use gatehouse_common::cache::CacheKey;
use gatehouse_common::spawn::spawn_tracked;
use tokio::sync::{mpsc, oneshot};

use super::{ClientStats, Node, Shared};

/// One write of an entry to one replica.
pub(super) struct PutReq {
    pub(super) key: CacheKey,
    /// The encoded entry (shared by the writes to every replica).
    pub(super) bytes: Arc<[u8]>,
    /// Which try this is, from 1.
    attempt: u32,
    /// The delays before this write's retries.
    backoff: Backoff,
    /// Told whether the write landed, for a caller that waits.
    reply: Option<oneshot::Sender<bool>>,
}

/// Writes entries to nodes (new results and read-repairs) for a
/// [`ClusterCache`](super::ClusterCache), also from its background tasks.
pub(super) struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Writes `bytes` back to the replica at `url` (if it is one of `replicas`), which
    /// answered "missing" for `key`.
    pub(super) fn repair(
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

    /// Queues a first try of writing `bytes` to `node` (see the module docs for when
    /// it is dropped instead); `reply`, if any, is told how it ended.
    pub(super) fn enqueue_put(
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
            backoff: self.shared.config.put_retry_delays(),
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

    /// Settles one write to the node at `url` after its RPC (`ok`: the node took it):
    /// done, retried after a backoff (back through `requeue`), or given up. `queued`
    /// is the node's count of unsettled bytes.
    pub(super) fn settle(
        &self,
        url: &str,
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
            tracing::warn!(%url, key = %req.key, attempts = req.attempt,
                "cache write failed; giving up on this replica");
            answer_put(req, false);
            return;
        }
        req.attempt += 1;
        let (shared, requeue, queued) = (self.shared.clone(), requeue.clone(), queued.clone());
        spawn_tracked(&self.shared.tasks, "cache-put-retry", async move {
            if !req.backoff.wait(&shared.stop).await {
                return;
            }
            // The node's senders live until the client closes (which waits for queued
            // writes) or the node leaves the membership (then the write is moot).
            let sent = match requeue.upgrade() {
                Some(tx) => tx.send(req).map_err(|e| e.0),
                None => Err(req),
            };
            if let Err(req) = sent {
                queued.fetch_sub(size, Ordering::Relaxed);
                ClientStats::bump(&shared.stats.put_failures);
                answer_put(req, false);
            }
        });
    }
}

/// Tells a waiting caller, if any, how its write ended.
fn answer_put(req: PutReq, ok: bool) {
    if let Some(reply) = req.reply {
        let _ = reply.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::ClientConfig;

    /// A write's retries wait `put_backoff`, then twice that, and so on, exactly: no
    /// cap within any sensible number of attempts and no jitter.
    #[test]
    fn retry_delays_double_from_put_backoff() {
        let config = ClientConfig {
            put_backoff: Duration::from_millis(200),
            ..ClientConfig::default()
        };
        let mut delays = config.put_retry_delays();
        let got: Vec<u128> = (0..6).map(|_| delays.next_delay().as_millis()).collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 6400]);
    }
}
