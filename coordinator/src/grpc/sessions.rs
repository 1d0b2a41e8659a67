//! The worker sessions of one term, as the rest of the coordinator reaches them: the
//! [`GrpcTransport`] the scheduler sends through, the [`SessionAcks`] the registry
//! acknowledges durable results through, and the worker list `ListWorkers` shows.
//!
//! State: [`Sessions`], a `DashMap` from worker id to its newest session (generation,
//! outbound queue, and what its Hello said of the worker). Invariant: only the session
//! task of an entry's generation inserts or removes it (a newer session replaces it; an
//! older session's cleanup removes nothing but its own); everyone else only reads.
//! Outbound queues are unbounded because the scheduler must never wait on a worker: a
//! worker holds at most its slots in assignments plus their cancellations.
//!
//! What a worker *is* for scheduling (slots in use, memory, draining, pressure) is the
//! core's alone; `ListWorkers` reads the core's published [`WorkerSnapshot`] and adds
//! only what the session knows (host name, address, version, cache URL).

use std::sync::Arc;

use dashmap::DashMap;
use gatehouse_common::exec::{AttemptRef, ToWorker};
use gatehouse_common::ids::{SessionKey, WorkerId};
use gatehouse_proto::convert::reports;
use gatehouse_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

use crate::core::WorkerState;
use crate::scheduler::{TransportError, WorkerSnapshot, WorkerTransport};

/// A session's outbound frames.
pub(super) type Outbound = mpsc::UnboundedSender<Result<v1::CoordinatorMessage, Status>>;

/// What a worker said of itself in its Hello, for `ListWorkers`.
#[derive(Clone, Debug, Default)]
pub(super) struct WorkerAbout {
    pub(super) hostname: String,
    /// The peer address of its session.
    pub(super) address: String,
    pub(super) version: String,
    pub(super) cache_url: String,
}

struct SessionEntry {
    generation: u64,
    outbound: Outbound,
    about: WorkerAbout,
}

/// Worker id -> its newest session. See the module docs for the invariant.
#[derive(Clone, Default)]
pub struct Sessions(Arc<DashMap<WorkerId, SessionEntry>>);

impl Sessions {
    /// Session `key` becomes the worker's newest (called by that session only); false,
    /// and nothing changes, if a newer session of the worker registered first (an old
    /// connection whose Hello was slow).
    pub(super) fn insert(&self, key: &SessionKey, outbound: Outbound, about: WorkerAbout) -> bool {
        let session = SessionEntry {
            generation: key.generation,
            outbound,
            about,
        };
        let entry = self.0.entry(key.worker.clone());
        if let dashmap::Entry::Occupied(newer) = &entry
            && newer.get().generation > key.generation
        {
            return false;
        }
        entry.insert(session);
        true
    }

    /// Session `key` ended (called by that session only); a newer one stays.
    pub(super) fn remove(&self, key: &SessionKey) {
        self.0
            .remove_if(&key.worker, |_, e| e.generation == key.generation);
    }

    /// Queues `frame` on session `key`; false if that session is gone.
    fn send(&self, key: &SessionKey, frame: v1::CoordinatorMessage) -> bool {
        self.0
            .get(&key.worker)
            .filter(|e| e.generation == key.generation)
            .is_some_and(|e| e.outbound.send(Ok(frame)).is_ok())
    }

    /// `ListWorkers`: every worker of `snapshot` whose session is still here, with
    /// what that session said of it, sorted by worker id.
    pub fn list(&self, snapshot: &WorkerSnapshot) -> Vec<v1::WorkerStatus> {
        let mut out: Vec<v1::WorkerStatus> = snapshot
            .workers
            .iter()
            .filter_map(|view| {
                let session = self
                    .0
                    .get(&view.info.id.worker)
                    .filter(|e| e.generation == view.info.id.generation)?;
                let about = &session.about;
                let state = match view.state {
                    WorkerState::Ready => v1::WorkerState::Ready,
                    WorkerState::Pressured => v1::WorkerState::Pressured,
                    WorkerState::Draining => v1::WorkerState::Draining,
                };
                Some(v1::WorkerStatus {
                    worker_id: view.info.id.worker.to_string(),
                    hostname: about.hostname.clone(),
                    address: about.address.clone(),
                    state: state as i32,
                    slots_total: view.info.slots,
                    slots_used: view.slots_used,
                    memory_total_bytes: view.info.memory_total,
                    memory_used_bytes: view.memory_used,
                    memory_available_bytes: view.info.memory_available,
                    last_heartbeat_age_ms: snapshot.age(view.last_heartbeat).as_millis() as u64,
                    labels: view.info.labels.clone().into_iter().collect(),
                    version: about.version.clone(),
                    cache_url: about.cache_url.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
    }
}

/// The frame acknowledging `attempts`' results.
fn ack_frame(attempts: &[AttemptRef]) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage {
        msg: Some(v1::coordinator_message::Msg::Ack(v1::ResultAck {
            attempts: attempts.iter().map(Into::into).collect(),
        })),
    }
}

/// Sends acknowledgements of durable results to the worker's newest session: a result
/// reported through an older session is still the worker's to forget.
pub struct SessionAcks {
    sessions: Sessions,
}

impl SessionAcks {
    /// Acks through the sessions of one term.
    pub fn new(sessions: Sessions) -> Self {
        Self { sessions }
    }
}

impl crate::registry::AckSink for SessionAcks {
    fn ack(&self, worker: &SessionKey, attempts: Vec<AttemptRef>) {
        if let Some(session) = self.sessions.0.get(&worker.worker) {
            let _ = session.outbound.send(Ok(ack_frame(&attempts)));
        }
    }
}

/// Reaches workers through their sessions' outbound queues (never waits).
pub struct GrpcTransport {
    sessions: Sessions,
}

impl GrpcTransport {
    /// A transport over the sessions registered in `sessions`.
    pub fn new(sessions: Sessions) -> Self {
        Self { sessions }
    }
}

impl WorkerTransport for GrpcTransport {
    fn send(&mut self, worker: &SessionKey, msg: ToWorker) -> Result<(), TransportError> {
        use v1::coordinator_message::Msg;
        let frame = match msg {
            ToWorker::Assign(a) => {
                let deadline = gatehouse_common::cache::unix_ms_now()
                    .saturating_add(a.spec.timeout.as_millis() as u64);
                Msg::Assign(v1::Assignment {
                    attempt: Some((&a.attempt).into()),
                    spec: Some(a.spec.as_ref().into()),
                    deadline_unix_ms: deadline,
                    traceparent: a.traceparent.clone().unwrap_or_default(),
                    cache_key: a.cache_key.map(|k| k.0.to_vec()).unwrap_or_default(),
                    watch: a.watch.iter().map(reports::key_to_wire).collect(),
                })
            }
            ToWorker::Cancel { attempt, grace } => Msg::Cancel(v1::CancelAttempt {
                attempt: Some((&attempt).into()),
                grace_ms: grace.as_millis() as u64,
            }),
        };
        let frame = v1::CoordinatorMessage { msg: Some(frame) };
        match self.sessions.send(worker, frame) {
            true => Ok(()),
            false => Err(TransportError {
                worker: worker.clone(),
            }),
        }
    }
}
