//! A plan's landing in the coordinator: the driver around [`Lander`] for one landing
//! attempt (a *round*), started by the registry once the plan's summary is logged.
//!
//! It decides nothing: it folds commits through the coordinator's mirror, runs the
//! `verify` plan on the scheduler (as a plan of its own, `<id>.verify-<round>-<prefix>`,
//! cached by tree; its gate events are not logged, its outcome is), pushes with
//! compare-and-swap, and logs every step in the plan's log through the registry
//! ([`LandMsg`]). Two steps wait until their record is durable before going on:
//! - `Pushing`, before the push: a new leader that finds it without an outcome knows a
//!   push may have happened and reads the branch before anything else (the branch at
//!   the pushed commit: it landed, never pushed twice; at the base: it did not, push
//!   again under the same lease; anywhere else: it moved);
//! - `Respeculated`, before the plan's gates run again on the branch's new tip under the
//!   same plan id: a new leader resumes that round with its recorded resolution.
//!
//! A new leader resumes a landing from the log ([`Replay`]): `verify` outcomes already
//! logged in the round are not run again, and a logged push is reconciled as above.
//! Cancelling the plan stops the landing before its push.

use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_common::events::{PlanEvent, PlanOutcome, PlanSummary};
use gatehouse_common::ids::PlanId;
use gatehouse_common::land::{LandFailure, LandRecord, LandReport, LandSpec};
use gatehouse_common::plan::Plan;
use gatehouse_common::source::CommitId;
use gatehouse_source::{Mirror, Speculator};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::core::RunOptions;
use crate::land::{LandCommand, LandEvent, LandOptions, Lander, PushOutcome, answers};
use crate::scheduler::{PlanOutput, SchedulerError, SchedulerHandle};
use crate::sources::Sources;

/// A landing step for the registry to log; `durable` answers once it is.
pub(crate) struct LandMsg {
    pub(crate) plan: PlanId,
    pub(crate) record: LandRecord,
    pub(crate) durable: Option<oneshot::Sender<()>>,
}

/// What the plan's log already says of the current round.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// `verify` outcomes by prefix.
    pub(crate) verified: HashMap<u32, bool>,
    /// A push logged as about to be made: (commit, expected), and the report if it
    /// landed.
    pub(crate) pushing: Option<(CommitId, CommitId, Option<LandReport>)>,
}

impl Replay {
    /// The records of round `round` in `log` (the events after its summary).
    pub(crate) fn from_log(log: &[PlanEvent], round: u32) -> Self {
        let mut replay = Replay::default();
        for event in log {
            let PlanEvent::Land { record, .. } = event else {
                continue;
            };
            match record {
                LandRecord::Verified {
                    round: r,
                    prefix,
                    passed,
                    ..
                } if *r == round => {
                    replay.verified.insert(*prefix, *passed);
                }
                LandRecord::Pushing {
                    round: r,
                    commit,
                    expected,
                    report,
                } if *r == round => {
                    let report = report.as_deref().cloned();
                    replay.pushing = Some((commit.clone(), expected.clone(), report));
                }
                _ => {}
            }
        }
        replay
    }
}

/// One round of a plan's landing.
pub(crate) struct LandJob {
    pub(crate) id: PlanId,
    /// The plan as this round ran it (its resolution is the round's).
    pub(crate) plan: Arc<Plan>,
    pub(crate) summary: PlanSummary,
    /// Per item: a gate of it failed.
    pub(crate) failed: Vec<bool>,
    pub(crate) spec: LandSpec,
    pub(crate) round: u32,
    pub(crate) replay: Replay,
    /// The plan's options (cache use, trace) for the `verify` runs and a next round.
    pub(crate) options: RunOptions,
}

/// What a landing job talks to.
pub(crate) struct LandEdges {
    pub(crate) scheduler: SchedulerHandle,
    pub(crate) sources: Arc<Sources>,
    /// To the registry: the steps to log.
    pub(crate) records: mpsc::UnboundedSender<LandMsg>,
    /// The registry's channel of plan outputs: a next round's events, and the `verify`
    /// runs' acknowledgements.
    pub(crate) outputs: mpsc::UnboundedSender<PlanOutput>,
    /// Fires when the plan is cancelled or the term ends.
    pub(crate) cancel: CancellationToken,
    /// Fires when the term ends.
    pub(crate) shutdown: CancellationToken,
}

/// Why a job stopped without finishing its landing (the next leader resumes it).
#[derive(Debug)]
enum Stop {
    /// The registry or the scheduler stopped (the term is over).
    Gone,
}

/// How a `verify` run ended.
enum Verified {
    /// All its gates passed, or not.
    Ran(bool),
    /// The plan was cancelled.
    Cancelled,
    /// It could not run (the mirror, the scheduler): not an outcome to bisect on.
    Failed(String),
}

impl LandJob {
    /// Drives the round to its end: the landing's report, or the next round started.
    pub(crate) async fn run(self, edges: LandEdges) {
        let id = self.id.clone();
        if let Err(Stop::Gone) = self.drive(&edges).await {
            tracing::info!(plan_id = %id, "landing stopped with the term; the next leader resumes it");
        }
    }

    async fn drive(self, edges: &LandEdges) -> Result<(), Stop> {
        let options = LandOptions {
            branch: self.spec.branch.clone(),
            dry_run: self.spec.dry_run,
            retries_left: self.spec.retries.saturating_sub(self.round),
        };
        let mut lander =
            match Lander::new(&self.plan, &self.summary.merge_order, &self.failed, options) {
                Ok(lander) => lander,
                Err(e) => {
                    tracing::warn!(plan_id = %self.id, error = %e, "cannot land the plan");
                    return self
                        .end(
                            edges,
                            self.base_commit(),
                            LandFailure::PushFailed {
                                error: e.to_string(),
                            },
                        )
                        .await;
                }
            };
        // A push the last leader logged may have happened: before anything else (a
        // cancel, a fetch that fails), the branch says whether it did. Until it can be
        // read, nothing is decided (retried until the term ends).
        let in_doubt = match &self.replay.pushing {
            Some((commit, _, Some(report))) => Some((commit.clone(), report.clone())),
            _ => None,
        };
        let mirror = match in_doubt {
            Some((commit, report)) => {
                let (mirror, holds) = self.read_in_doubt(edges, &commit).await?;
                if holds {
                    tracing::info!(plan_id = %self.id, %commit, "the logged push had landed; not pushing again");
                    return self.finish(edges, LandCommand::Finish(report)).await;
                }
                // It did not land: land as usual, under the same lease.
                mirror
            }
            None => match self.mirror(edges).await {
                Ok(mirror) => mirror,
                Err(error) => {
                    return self
                        .finish(edges, lander.abort(LandFailure::PushFailed { error }))
                        .await;
                }
            },
        };
        let mut cmd = lander.start();
        if self.summary.outcome == PlanOutcome::Cancelled {
            cmd = lander.abort(LandFailure::Cancelled);
        }
        let base = match self.plan.resolution().map(|r| r.base.clone()) {
            Some(Ok(base)) => base,
            _ => {
                return self
                    .finish(
                        edges,
                        lander.abort(LandFailure::PushFailed {
                            error: "the plan's base was not resolved".into(),
                        }),
                    )
                    .await;
            }
        };
        // A new leader's mirror may lack the plan's commits: fetch what is missing (by
        // id, then by the refs' names) before folding anything.
        if let Err(e) = self.fetch_commits(edges, &mirror, &base).await {
            return self
                .finish(
                    edges,
                    lander.abort(LandFailure::PushFailed {
                        error: format!("cannot fetch the plan's commits: {e}"),
                    }),
                )
                .await;
        }
        let mut speculator = Speculator::new();
        loop {
            if edges.cancel.is_cancelled() && !matches!(cmd, LandCommand::Finish(_)) {
                cmd = lander.abort(LandFailure::Cancelled);
            }
            let event = match cmd {
                LandCommand::Combine { commits } => {
                    let folded = speculator.states(&mirror, &base.commit, &commits).await;
                    match answers::combined(folded) {
                        Ok(event) => event,
                        Err(e) => {
                            cmd = lander.abort(LandFailure::PushFailed {
                                error: format!("cannot combine the items: {e}"),
                            });
                            continue;
                        }
                    }
                }
                LandCommand::Verify {
                    prefix,
                    items,
                    stack,
                    commit,
                } => {
                    let passed = match self.replay.verified.get(&(prefix as u32)) {
                        Some(&passed) => passed,
                        None => {
                            match self
                                .verify(edges, &mirror, &base, prefix, stack, commit.clone())
                                .await?
                            {
                                Verified::Ran(passed) => passed,
                                Verified::Cancelled => {
                                    cmd = lander.abort(LandFailure::Cancelled);
                                    continue;
                                }
                                Verified::Failed(error) => {
                                    cmd = lander.abort(LandFailure::PushFailed { error });
                                    continue;
                                }
                            }
                        }
                    };
                    let record = LandRecord::Verified {
                        round: self.round,
                        prefix: prefix as u32,
                        items,
                        commit,
                        passed,
                    };
                    if !self.replay.verified.contains_key(&(prefix as u32)) {
                        self.log(edges, record, false).await?;
                    }
                    LandEvent::Verified { prefix, passed }
                }
                LandCommand::Push {
                    commit, expected, ..
                } => {
                    let report = lander.report_if_pushed();
                    LandEvent::Pushed(self.push(edges, &mirror, commit, expected, report).await?)
                }
                LandCommand::Respeculate { now } => return self.next_round(edges, now).await,
                LandCommand::Finish(report) => {
                    return self.finish(edges, LandCommand::Finish(report)).await;
                }
            };
            cmd = lander.handle(event);
        }
    }

    /// Makes sure the mirror holds the base and every item's commit.
    async fn fetch_commits(
        &self,
        edges: &LandEdges,
        mirror: &Mirror,
        base: &gatehouse_common::source::Base,
    ) -> Result<(), gatehouse_source::MirrorError> {
        let mut ids = vec![base.commit.clone()];
        let mut names = vec![base.git_ref.clone()];
        if let Some(resolution) = self.plan.resolution() {
            for item in &resolution.items {
                if let (Some(commit), Some(name)) = (&item.commit, &item.git_ref) {
                    ids.push(commit.clone());
                    names.push(name.clone());
                }
            }
        }
        mirror
            .fetch(&ids, &names, edges.sources.fetch_timeout())
            .await
    }

    /// The mirror, and whether the branch holds `commit`, read until it can be (the
    /// answer decides whether a push happened); `Stop::Gone` when the term ends first.
    async fn read_in_doubt(
        &self,
        edges: &LandEdges,
        commit: &CommitId,
    ) -> Result<(Mirror, bool), Stop> {
        let mut backoff = gatehouse_common::backoff::Backoff::new(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(30),
        );
        loop {
            let error = match self.mirror(edges).await {
                Ok(mirror) => {
                    let timeout = edges.sources.fetch_timeout();
                    match mirror
                        .branch_holds(&self.spec.branch, commit, timeout)
                        .await
                    {
                        Ok(held) => return Ok((mirror, held.is_some_and(|(_, holds)| holds))),
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            tracing::warn!(plan_id = %self.id, %commit, error = %error, retry_in = ?delay,
                "cannot read the branch to tell whether the logged push landed");
            tokio::select! {
                () = edges.shutdown.cancelled() => return Err(Stop::Gone),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Ends a landing that cannot start or go on (between rounds), for `why`; its
    /// report names `base`.
    async fn end(
        &self,
        edges: &LandEdges,
        base: Option<CommitId>,
        why: LandFailure,
    ) -> Result<(), Stop> {
        let mut lander = Lander::empty(&self.spec.branch, self.spec.dry_run, base);
        self.finish(edges, lander.abort(why)).await
    }

    /// The base this round was resolved on, when it was.
    fn base_commit(&self) -> Option<CommitId> {
        let base = self.plan.resolution()?.base.as_ref().ok()?;
        Some(base.commit.clone())
    }

    async fn mirror(&self, edges: &LandEdges) -> Result<Mirror, String> {
        let source = self.plan.source.as_ref().ok_or("the plan has no source")?;
        edges.sources.mirrors().get(&source.repo).await
    }

    /// Logs `record`; with `durable`, returns once it is.
    async fn log(&self, edges: &LandEdges, record: LandRecord, durable: bool) -> Result<(), Stop> {
        let (tx, rx) = oneshot::channel();
        let msg = LandMsg {
            plan: self.id.clone(),
            record,
            durable: durable.then_some(tx),
        };
        edges.records.send(msg).map_err(|_| Stop::Gone)?;
        if durable {
            rx.await.map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }

    async fn finish(&self, edges: &LandEdges, cmd: LandCommand) -> Result<(), Stop> {
        let LandCommand::Finish(report) = cmd else {
            return Ok(());
        };
        self.log(edges, LandRecord::Finished(report), false).await
    }

    /// Runs the `verify` gates on a combination.
    async fn verify(
        &self,
        edges: &LandEdges,
        mirror: &Mirror,
        base: &gatehouse_common::source::Base,
        prefix: usize,
        stack: Vec<CommitId>,
        commit: CommitId,
    ) -> Result<Verified, Stop> {
        let Some(verify) = self.plan.verify.as_ref() else {
            return Ok(Verified::Failed(
                "landing asked for verify gates the plan does not have".into(),
            ));
        };
        let prepared =
            match gatehouse_source::prepare_verify(verify, mirror, base, stack, commit).await {
                Ok(plan) => Arc::new(plan),
                Err(e) => {
                    return Ok(Verified::Failed(format!(
                        "cannot prepare the verify gates: {e}"
                    )));
                }
            };
        let id = PlanId::new(format!("{}.verify-{}-{prefix}", self.id, self.round));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let options = RunOptions {
            blocked: prepared
                .resolution()
                .map(|r| r.blocked(&prepared))
                .unwrap_or_default(),
            land: None,
            ..self.options.clone()
        };
        match edges
            .scheduler
            .submit(id.clone(), prepared, options, tx)
            .await
        {
            Ok(_) => {}
            Err(SchedulerError::ShuttingDown) => return Err(Stop::Gone),
            Err(e) => {
                return Ok(Verified::Failed(format!(
                    "cannot run the verify gates: {e}"
                )));
            }
        }
        let mut cancelled = false;
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(PlanOutput::Event(PlanEvent::Finished(s))) => {
                        return Ok(if cancelled || s.outcome == PlanOutcome::Cancelled {
                            Verified::Cancelled
                        } else {
                            Verified::Ran(s.outcome == PlanOutcome::Passed)
                        });
                    }
                    Some(ack @ PlanOutput::Ack { .. }) => {
                        // Nothing of a verify run is logged: its results may be forgotten.
                        let _ = edges.outputs.send(ack);
                    }
                    // Its tests' facts are history like any other.
                    Some(tests @ PlanOutput::Tests(_)) => {
                        let _ = edges.outputs.send(tests);
                    }
                    Some(PlanOutput::Event(_)) => {}
                    None => return Err(Stop::Gone),
                },
                () = edges.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    let _ = edges.scheduler.cancel(id.clone(), true).await;
                }
            }
        }
    }

    /// Pushes with compare-and-swap, or reconciles a push a previous leader logged.
    async fn push(
        &self,
        edges: &LandEdges,
        mirror: &Mirror,
        commit: CommitId,
        expected: CommitId,
        report: Option<LandReport>,
    ) -> Result<PushOutcome, Stop> {
        let timeout = edges.sources.fetch_timeout();
        let branch = &self.spec.branch;
        let logged =
            matches!(&self.replay.pushing, Some((c, e, _)) if *c == commit && *e == expected);
        // A push the last leader logged, not found landed at the start, is made again
        // under the same lease (one that landed meanwhile reads as landed:
        // `update_branch`); any other is logged first, durably.
        if !logged {
            let record = LandRecord::Pushing {
                round: self.round,
                commit: commit.clone(),
                expected: expected.clone(),
                report: report.map(Box::new),
            };
            self.log(edges, record, true).await?;
        }
        let update = mirror
            .update_branch(branch, &expected, &commit, timeout)
            .await;
        Ok(answers::pushed(update))
    }

    /// The branch moved to `now`: resolves the plan again and runs it as the next round
    /// (the registry starts that round's landing after its summary).
    async fn next_round(&self, edges: &LandEdges, now: CommitId) -> Result<(), Stop> {
        let prepared = edges
            .sources
            .prepare((*self.plan).clone(), &self.plan.name)
            .await;
        let plan = match prepared {
            Ok(plan) => plan,
            Err(e) => {
                return self
                    .end(
                        edges,
                        Some(now.clone()),
                        LandFailure::PushFailed {
                            error: format!("cannot resolve the plan again on {now}: {e}"),
                        },
                    )
                    .await;
            }
        };
        let Some(resolution) = plan.resolution().cloned() else {
            return self
                .end(
                    edges,
                    Some(now.clone()),
                    LandFailure::PushFailed {
                        error: "the plan lost its source when resolved again".into(),
                    },
                )
                .await;
        };
        let record = LandRecord::Respeculated {
            round: self.round + 1,
            now: now.clone(),
            retries: self.spec.retries,
            resolution: Some(Box::new(resolution)),
        };
        self.log(edges, record, true).await?;
        // A cancel between the rounds: nothing more runs.
        if edges.cancel.is_cancelled() {
            return self.end(edges, Some(now), LandFailure::Cancelled).await;
        }
        let options = RunOptions {
            blocked: plan
                .resolution()
                .map(|r| r.blocked(&plan))
                .unwrap_or_default(),
            ..self.options.clone()
        };
        match edges
            .scheduler
            .submit(
                self.id.clone(),
                Arc::new(plan),
                options,
                edges.outputs.clone(),
            )
            .await
        {
            Ok(_) => {}
            Err(SchedulerError::ShuttingDown) => return Err(Stop::Gone),
            Err(e) => {
                return self
                    .end(
                        edges,
                        Some(now.clone()),
                        LandFailure::PushFailed {
                            error: format!("cannot run the plan again: {e}"),
                        },
                    )
                    .await;
            }
        }
        // A cancel that raced the submission reaches the new round here.
        if edges.cancel.is_cancelled() {
            let _ = edges.scheduler.cancel(self.id.clone(), false).await;
        }
        Ok(())
    }
}
