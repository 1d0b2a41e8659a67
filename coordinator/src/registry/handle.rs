//! The registry's front: [`RegistryHandle`], the typed calls of its mailbox
//! ([`RegistryMsg`]), and the views it answers with ([`PlanInfo`], [`PlanSnapshot`],
//! [`EventBatch`]).

use std::sync::Arc;

use gatehouse_common::ids::PlanId;
use gatehouse_common::plan::Plan;
use tokio::sync::{mpsc, oneshot, watch};

use super::RegistryError;
use super::codec::PlanSource;
use crate::core::{GateEvent, PlanEvent, PlanSummary, RunOptions};

/// Summary information of one plan.
#[derive(Clone, Debug)]
pub struct PlanInfo {
    pub id: PlanId,
    pub name: String,
    pub total_gates: u32,
    pub submitted_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub summary: Option<PlanSummary>,
    /// Gates in a terminal state so far, by state name.
    pub counts: crate::core::Counts,
    /// The branch it lands on (`None`: it does not land).
    pub land_branch: Option<String>,
    /// Its landing's report, once over.
    pub land: Option<gatehouse_common::land::LandReport>,
}

/// A consistent view of one plan.
#[derive(Clone, Debug)]
pub struct PlanSnapshot {
    pub info: PlanInfo,
    pub plan: Arc<Plan>,
    /// The latest event of each gate (`None`: nothing happened to it yet).
    pub gates: Vec<Option<GateEvent>>,
}

/// Durable events after a sequence number.
pub struct EventBatch {
    pub plan: Arc<Plan>,
    /// `(seq, event)` in order, at most [`MAX_BATCH`].
    pub events: Vec<(u64, PlanEvent)>,
    /// Announces the newest durable sequence number of the plan.
    pub newest: watch::Receiver<u64>,
    /// The plan has finished and its log is durable and complete.
    pub finished: bool,
    /// The plan lands: its last event is its landing's report, not its summary.
    pub lands: bool,
}

pub(crate) enum RegistryMsg {
    Submit {
        plan: Arc<Plan>,
        source: PlanSource,
        options: RunOptions,
        reply: oneshot::Sender<Result<PlanId, RegistryError>>,
    },
    Get {
        id: PlanId,
        reply: oneshot::Sender<Result<PlanSnapshot, RegistryError>>,
    },
    List {
        reply: oneshot::Sender<Vec<PlanInfo>>,
    },
    EventsAfter {
        id: PlanId,
        after: u64,
        reply: oneshot::Sender<Result<EventBatch, RegistryError>>,
    },
    Cancel {
        id: PlanId,
        force: bool,
        reply: oneshot::Sender<Result<bool, RegistryError>>,
    },
    Restored {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the registry actor.
#[derive(Clone)]
pub struct RegistryHandle {
    pub(super) tx: mpsc::Sender<RegistryMsg>,
}

impl RegistryHandle {
    /// Answers once the plans read back from the store are restored (the scheduler
    /// runs the unfinished ones again); an error if the registry stopped first.
    pub async fn restored(&self) -> Result<(), RegistryError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(RegistryMsg::Restored { reply })
            .await
            .map_err(|_| RegistryError::ShuttingDown)?;
        rx.await.map_err(|_| RegistryError::ShuttingDown)
    }

    /// Accepts a validated plan and starts it; returns its new id.
    /// Answers once the plan is durable.
    pub async fn submit(
        &self,
        plan: Arc<Plan>,
        source: PlanSource,
        options: RunOptions,
    ) -> Result<PlanId, RegistryError> {
        self.ask(|reply| RegistryMsg::Submit {
            plan,
            source,
            options,
            reply,
        })
        .await?
    }

    /// A snapshot of one plan.
    pub async fn get(&self, id: PlanId) -> Result<PlanSnapshot, RegistryError> {
        self.ask(|reply| RegistryMsg::Get { id, reply }).await?
    }

    /// Every known plan, newest first.
    pub async fn list(&self) -> Result<Vec<PlanInfo>, RegistryError> {
        self.ask(|reply| RegistryMsg::List { reply }).await
    }

    /// Events with a sequence number greater than `after`.
    pub async fn events_after(&self, id: PlanId, after: u64) -> Result<EventBatch, RegistryError> {
        self.ask(|reply| RegistryMsg::EventsAfter { id, after, reply })
            .await?
    }

    /// Cancels a plan; `Ok(false)` if it had already finished.
    pub async fn cancel(&self, id: PlanId, force: bool) -> Result<bool, RegistryError> {
        self.ask(|reply| RegistryMsg::Cancel { id, force, reply })
            .await?
    }

    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<T>) -> RegistryMsg,
    ) -> Result<T, RegistryError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .await
            .map_err(|_| RegistryError::ShuttingDown)?;
        rx.await.map_err(|_| RegistryError::ShuttingDown)
    }
}
