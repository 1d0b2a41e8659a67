//! Landing in `gatehouse run` (`--land`, `--dry-run`, `policy.land`): the driver around
//! [`Lander`]. It carries the lander's commands out in this process: folds through the
//! run's own mirror ([`Speculator`]), `verify` runs as plans on the same scheduler and
//! executor (so they are cached by tree like any gate), and the compare-and-swap push
//! ([`gatehouse_source::Mirror::update_branch`]). It decides nothing itself.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gatehouse_common::events::{PlanOutcome, PlanSummary};
use gatehouse_common::ids::PlanId;
use gatehouse_common::plan::Plan;
use gatehouse_coordinator::land::{
    LandCommand, LandEvent, LandOptions, LandReport, Lander, answers,
};
use gatehouse_source::Speculator;
use gatehouse_worker::checkout::Checkouts;

use crate::render::land::LandRenderer;
use crate::render::{PlanView, Renderer};
use crate::run::{PlanRunner, Signals};
use crate::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_LANDED, EXIT_PASSED};

use gatehouse_common::land::LandSpec;
pub use gatehouse_common::land::target_branch;

/// The exit code of a run that landed: 0 only when every item landed; 4 when every
/// gate passed but nothing could be pushed; 130 when it was cancelled; 1 otherwise (a
/// gate failed, a culprit).
pub fn exit_code(report: &LandReport, outcome: Option<PlanOutcome>) -> u8 {
    let passed = outcome == Some(PlanOutcome::Passed);
    let cancelled = outcome == Some(PlanOutcome::Cancelled)
        || report.error == Some(gatehouse_common::land::LandFailure::Cancelled);
    if cancelled {
        EXIT_INTERRUPTED
    } else if report.all_landed() && passed {
        EXIT_PASSED
    } else if report.error.is_some() && passed {
        EXIT_NOT_LANDED
    } else {
        EXIT_FAILED
    }
}

/// How a landing attempt ended.
pub enum LandEnd {
    /// Over: landed, or why not.
    Done(LandReport),
    /// The branch moved: run the plan again on it and land again.
    Again,
    /// A signal stopped it (nothing was pushed after it).
    Interrupted,
}

/// One landing attempt's driver.
pub struct LandDriver<'a> {
    pub runner: &'a PlanRunner,
    pub landing: &'a LandSpec,
    pub checkouts: &'a Arc<Checkouts>,
    pub fetch_timeout: Duration,
}

impl LandDriver<'_> {
    /// Lands `plan`, whose run ended with `summary` (`failed[i]`: a gate of item `i`
    /// failed); `round` is how many times the branch already moved.
    pub async fn land(
        &self,
        plan: &Arc<Plan>,
        summary: &PlanSummary,
        failed: &[bool],
        round: u32,
        signals: &mut Signals,
    ) -> anyhow::Result<LandEnd> {
        let options = LandOptions {
            branch: self.landing.branch.clone(),
            dry_run: self.landing.dry_run,
            retries_left: self.landing.retries.saturating_sub(round),
        };
        let render = LandRenderer::new(
            self.runner.mode,
            PlanView::from_plan(plan),
            self.landing.branch.clone(),
        );
        let mut lander = Lander::new(plan, &summary.merge_order, failed, options)?;
        let source = plan.source.as_ref().context("the plan has no source")?;
        let base = plan
            .resolution()
            .and_then(|r| r.base.as_ref().ok())
            .context("the plan's base was not resolved")?;
        let mirror = self
            .checkouts
            .mirrors()
            .get(&source.repo)
            .await
            .map_err(anyhow::Error::msg)?;
        let mut speculator = Speculator::new();
        let mut verify_round = 0u32;
        let mut cmd = lander.start();
        loop {
            // A signal between two steps stops the landing; nothing is pushed after it
            // (a push already under way completes).
            if !matches!(cmd, LandCommand::Finish(_)) && signals.arrived() {
                return Ok(LandEnd::Interrupted);
            }
            let event = match cmd {
                LandCommand::Combine { commits } => {
                    let folded = speculator.states(&mirror, &base.commit, &commits).await;
                    answers::combined(folded).context("cannot combine the items that passed")?
                }
                LandCommand::Verify {
                    prefix,
                    items,
                    stack,
                    commit,
                } => {
                    let verify = plan
                        .verify
                        .as_ref()
                        .context("landing asked for verify gates the plan does not have")?;
                    render.verifying(&items, &commit);
                    let prepared = gatehouse_source::prepare_verify(
                        verify,
                        &mirror,
                        base,
                        stack,
                        commit.clone(),
                    )
                    .await
                    .context("cannot prepare the verify gates")?;
                    let prepared = Arc::new(prepared);
                    verify_round += 1;
                    let id = PlanId::new(format!(
                        "run-{}-{}-{round}-verify-{verify_round}",
                        std::process::id(),
                        gatehouse_common::cache::unix_ms_now()
                    ));
                    let mut renderer =
                        Renderer::new(self.runner.mode, PlanView::from_plan(&prepared));
                    let end = self
                        .runner
                        .run(id, &prepared, &mut renderer, signals, false)
                        .await?;
                    renderer.finish();
                    let outcome = end.summary.map(|s| s.outcome);
                    if signals.count > 0 || outcome.is_none_or(|o| o == PlanOutcome::Cancelled) {
                        return Ok(LandEnd::Interrupted);
                    }
                    let passed = outcome == Some(PlanOutcome::Passed);
                    render.verified(&items, &commit, passed);
                    LandEvent::Verified { prefix, passed }
                }
                LandCommand::Push {
                    commit, expected, ..
                } => {
                    let pushed = mirror
                        .update_branch(&self.landing.branch, &expected, &commit, self.fetch_timeout)
                        .await;
                    LandEvent::Pushed(answers::pushed(pushed))
                }
                LandCommand::Respeculate { now } => {
                    render.respeculating(&now, round + 1, self.landing.retries);
                    return Ok(LandEnd::Again);
                }
                LandCommand::Finish(report) => {
                    render.report(&report);
                    return Ok(LandEnd::Done(report));
                }
            };
            cmd = lander.handle(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_common::ids::ItemIdx;
    use gatehouse_common::land::{LandFailure, LeftOut};
    use gatehouse_common::source::CommitId;

    use super::*;

    fn report(left_out: Vec<(ItemIdx, LeftOut)>, error: Option<LandFailure>) -> LandReport {
        LandReport {
            branch: "main".into(),
            base: CommitId::parse(&"a".repeat(40)).expect("id"),
            tip: None,
            landed: Vec::new(),
            left_out,
            verify_runs: 0,
            dry_run: false,
            error,
        }
    }

    #[test]
    fn exit_codes_say_whether_everything_landed_and_why_not() {
        let passed = Some(PlanOutcome::Passed);
        let failed = Some(PlanOutcome::Failed);
        assert_eq!(exit_code(&report(vec![], None), passed), EXIT_PASSED);
        let culprit = vec![(ItemIdx(0), LeftOut::Culprit)];
        assert_eq!(exit_code(&report(culprit, None), passed), EXIT_FAILED);
        let refused = Some(LandFailure::Refused {
            reason: "no".into(),
        });
        let not_pushed = vec![(ItemIdx(0), LeftOut::NotPushed)];
        assert_eq!(
            exit_code(&report(not_pushed.clone(), refused.clone()), passed),
            EXIT_NOT_LANDED
        );
        // A gate failed: that is the answer, whatever the push did.
        assert_eq!(
            exit_code(&report(not_pushed.clone(), refused), failed),
            EXIT_FAILED
        );
        // Cancelled, during the gates or the landing: as for any cancelled plan.
        let cancelled = Some(LandFailure::Cancelled);
        assert_eq!(
            exit_code(&report(not_pushed.clone(), cancelled), passed),
            EXIT_INTERRUPTED
        );
        assert_eq!(
            exit_code(&report(not_pushed, None), Some(PlanOutcome::Cancelled)),
            EXIT_INTERRUPTED
        );
    }
}
