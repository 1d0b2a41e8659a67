//! The RPC side of one cache node: a [`Link`] (the node's gRPC client and its health)
//! and its two batchers, one per direction, each a task of the client's tracker.
//!
//! - **Lookups** ([`Link::get_loop`]): requests queue on the node's unbounded channel
//!   (bounded in practice by the lookups in flight, each of which waits at most the
//!   lookup timeout); the batcher takes up to `max_batch` keys per `Get` RPC, with at
//!   most `in_flight` RPCs running. Each key is answered on its own `oneshot` as soon as
//!   its last chunk arrives; keys the stream never answered are `Failed`.
//! - **Writes** ([`Link::put_loop`]): the same for `Put` RPCs of up to
//!   [`PUT_BATCH_BYTES`]; each write of a batch is then settled by the
//!   [`Writer`] (done, retried or given up). The queue is bounded
//!   by the client's per-node byte budget.
//!
//! **Health.** An RPC that fails or times out without receiving anything marks the node
//! suspect for `suspect_for`; one that works clears it.
//!
//! **Shutdown.** A batcher ends when every sender is gone (the node left the
//! membership or the client closed) and its queue is empty, or at once when the
//! client's `stop` token fires; RPCs in flight are abandoned then.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gatehouse_common::cache::CacheKey;
use gatehouse_common::cache::codec::MAX_ENTRY_BYTES;
use gatehouse_common::spawn::spawn_tracked;
use gatehouse_proto::cache::{CHUNK_BYTES, MAX_GET_KEYS};
use gatehouse_proto::v1;
use gatehouse_proto::v1::cache_service_client::CacheServiceClient;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::write::{PutReq, Writer};
use super::{PUT_BATCH_BYTES, Shared};

/// What one replica said about one key.
pub(super) enum Answer {
    Found(Vec<u8>),
    Missing,
    Failed,
}

/// One lookup queued for a node's `Get` batcher.
pub(super) struct GetReq {
    pub(super) key: CacheKey,
    pub(super) reply: oneshot::Sender<Answer>,
}

/// The RPC side of one node.
#[derive(Clone)]
pub(super) struct Link {
    /// The node's URL, for logs.
    url: String,
    client: CacheServiceClient<Channel>,
    shared: Arc<Shared>,
    /// Shared with the node's [`Node`](super::Node), which reads it.
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
    pub(super) fn new(
        url: String,
        client: CacheServiceClient<Channel>,
        shared: Arc<Shared>,
        suspect_until: Arc<Mutex<Option<Instant>>>,
    ) -> Self {
        Self {
            url,
            client,
            shared,
            suspect_until,
        }
    }

    fn mark(&self, healthy: bool) {
        let mut until = self
            .suspect_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *until = (!healthy).then(|| Instant::now() + self.shared.config.suspect_for);
    }

    /// The node's `Get` batcher (see the module docs).
    pub(super) async fn get_loop(self, mut rx: mpsc::UnboundedReceiver<GetReq>) {
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

    /// The node's `Put` batcher (see the module docs). `requeue` is how retried writes
    /// come back to this queue; `queued` counts the node's unsettled bytes.
    pub(super) async fn put_loop(
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
                let writer = Writer::new(link.shared.clone());
                for req in batch {
                    writer.settle(&link.url, req, ok, &requeue, &queued);
                }
            });
        }
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
