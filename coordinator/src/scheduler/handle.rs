//! [`SchedulerHandle`]: the typed front of the scheduler actor's mailbox.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::ids::PlanId;
use gatehouse_common::plan::Plan;
use gatehouse_common::reports::history::{FlakeRow, TestRun};
use tokio::sync::{mpsc, oneshot};

use super::{PlanOutput, SchedulerError};
use crate::core::{RestoredGate, RunOptions};

/// A plan resumed from the durable log (see `core::recovery`).
#[derive(Debug)]
pub struct RestoredPlan {
    /// Its id.
    pub id: PlanId,
    /// The plan.
    pub plan: Arc<Plan>,
    /// Submitter options.
    pub options: RunOptions,
    /// What the log says of each gate, in plan order.
    pub gates: Vec<RestoredGate>,
    /// A cancellation was recorded (`Some(force)`).
    pub cancel: Option<bool>,
    /// Time since it was first submitted.
    pub age: Duration,
}

/// Messages to the scheduler actor.
pub(super) enum SchedulerMsg {
    Submit {
        id: PlanId,
        plan: Arc<Plan>,
        options: RunOptions,
        events: mpsc::UnboundedSender<PlanOutput>,
        reply: oneshot::Sender<Result<PlanId, SchedulerError>>,
    },
    Cancel {
        plan: PlanId,
        force: bool,
    },
    Restore {
        restored: RestoredPlan,
        events: mpsc::UnboundedSender<PlanOutput>,
        reply: oneshot::Sender<Result<(), SchedulerError>>,
    },
    LoadHistory {
        runs: Vec<TestRun>,
        reply: oneshot::Sender<Result<(), SchedulerError>>,
    },
    Flakes {
        reply: oneshot::Sender<Result<Vec<FlakeRow>, SchedulerError>>,
    },
}

/// Handle to the scheduler actor.
#[derive(Clone)]
pub struct SchedulerHandle {
    pub(super) tx: mpsc::Sender<SchedulerMsg>,
}

impl SchedulerHandle {
    /// Submits a validated plan under `id`; its events go to `events`, ending with
    /// [`crate::core::PlanEvent::Finished`].
    pub async fn submit(
        &self,
        id: PlanId,
        plan: Arc<Plan>,
        options: RunOptions,
        events: mpsc::UnboundedSender<PlanOutput>,
    ) -> Result<PlanId, SchedulerError> {
        self.ask(|reply| SchedulerMsg::Submit {
            id,
            plan,
            options,
            events,
            reply,
        })
        .await
    }

    /// Cancels a plan (`force`: kill running gates without a grace period).
    pub async fn cancel(&self, plan: PlanId, force: bool) -> Result<(), SchedulerError> {
        self.send(SchedulerMsg::Cancel { plan, force }).await
    }

    /// Resumes a plan restored from the durable log. Its gates in doubt run again one
    /// recovery window later unless a worker re-reports them (`core::recovery`).
    pub async fn restore(
        &self,
        restored: RestoredPlan,
        events: mpsc::UnboundedSender<PlanOutput>,
    ) -> Result<(), SchedulerError> {
        self.ask(|reply| SchedulerMsg::Restore {
            restored,
            events,
            reply,
        })
        .await
    }

    /// Folds the durable test history into the core's, before plans run (at start, or
    /// when this coordinator becomes the leader).
    pub async fn load_history(&self, runs: Vec<TestRun>) -> Result<(), SchedulerError> {
        self.ask(|reply| SchedulerMsg::LoadHistory { runs, reply })
            .await
    }

    /// The tests the history tracks, highest flake score first.
    pub async fn flakes(&self) -> Result<Vec<FlakeRow>, SchedulerError> {
        self.ask(|reply| SchedulerMsg::Flakes { reply }).await
    }

    /// Sends a request and waits for its answer.
    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T, SchedulerError>>) -> SchedulerMsg,
    ) -> Result<T, SchedulerError> {
        let (reply, rx) = oneshot::channel();
        self.send(msg(reply)).await?;
        rx.await.map_err(|_| SchedulerError::ShuttingDown)?
    }

    async fn send(&self, msg: SchedulerMsg) -> Result<(), SchedulerError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| SchedulerError::ShuttingDown)
    }
}
