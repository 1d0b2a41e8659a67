//! What this coordinator is right now: the leader (with the components that only the
//! leader runs) or a follower (knowing, perhaps, who leads).
//!
//! The server publishes the [`Role`] on a `watch` channel; the gRPC services read it on
//! every call. A leader's components live for one *term*: they are built when this
//! coordinator starts leading and dropped when it stops ([`Term::token`] fires), so
//! nothing of a deposed leader's state can be used after its term.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::grpc::{CacheMembers, Sessions};
use crate::registry::RegistryHandle;
use crate::scheduler::{WorkerEvent, WorkerSnapshot};

/// The components of one leadership term, as the services use them.
pub struct Term {
    /// Plans.
    pub registry: RegistryHandle,
    /// The scheduler (for what its core knows beyond plans: the test history).
    pub scheduler: crate::scheduler::SchedulerHandle,
    /// The scheduler's worker-event channel.
    pub reports: mpsc::Sender<WorkerEvent>,
    /// The workers' sessions (the scheduler's transport and the acks go through them).
    pub sessions: Sessions,
    /// The workers as the scheduler core accounts them, for `ListWorkers`.
    pub workers: watch::Receiver<Arc<WorkerSnapshot>>,
    /// The cache nodes among them.
    pub cache_members: CacheMembers,
    /// Fires when the term ends: sessions and watch streams of the term end with it.
    pub token: CancellationToken,
    /// Owns the term's session and watch-stream tasks (awaited when the term ends).
    pub tasks: tokio_util::task::TaskTracker,
}

/// This coordinator's role.
#[derive(Clone)]
pub enum Role {
    /// It leads; calls go to the term's components.
    Leading(Arc<Term>),
    /// It does not lead; `leader` is the leader's URL when one is known.
    Following {
        /// The leader's client-facing URL.
        leader: Option<String>,
    },
}

/// Read side of the role, held by the services.
pub type RoleWatch = watch::Receiver<Role>;

/// The current term, or the not-leader answer naming the leader.
pub fn current_term(role: &RoleWatch) -> Result<Arc<Term>, tonic::Status> {
    match &*role.borrow() {
        Role::Leading(term) if !term.token.is_cancelled() => Ok(term.clone()),
        Role::Leading(_) => Err(gatehouse_proto::leader::not_leader(None)),
        Role::Following { leader } => Err(gatehouse_proto::leader::not_leader(leader.as_deref())),
    }
}
