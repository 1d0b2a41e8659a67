//! Wire <-> domain conversions of landing's records: `gatehouse.v1` `LandStep` and
//! `LandReport` against [`gatehouse_common::land`]. Items are named by id on the wire,
//! so these convert together with their plan ([`InPlan`]), like the plan's other events.
//!
//! A re-speculation's new resolution stays with the coordinator: the wire says where
//! the branch moved, and it decodes with no resolution. Decoding never panics: an
//! unknown item, reason, error kind or a malformed commit id is a [`WireError`].

use gatehouse_common::ids::ItemIdx;
use gatehouse_common::land::{LandFailure, LandRecord, LandReport, LeftOut};
use gatehouse_common::plan::Plan;
use gatehouse_common::source::CommitId;

use super::WireError;
use super::events::{InPlan, PlanIndex};
use crate::v1;

fn item_id(plan: &Plan, item: ItemIdx) -> String {
    plan.items
        .get(item.ix())
        .map(|i| i.id.to_string())
        .unwrap_or_default()
}

fn item_of<P: PlanIndex + ?Sized>(
    plan: &P,
    field: &'static str,
    id: &str,
) -> Result<ItemIdx, WireError> {
    plan.item_index(id).ok_or_else(|| WireError::Unknown {
        field,
        value: id.to_string(),
    })
}

fn commit(field: &'static str, text: &str) -> Result<CommitId, WireError> {
    CommitId::parse(text).ok_or_else(|| WireError::Invalid {
        field,
        reason: format!("{text:?} is not a commit id"),
    })
}

impl From<InPlan<'_, Plan, &LandRecord>> for v1::LandStep {
    fn from(InPlan { plan, msg }: InPlan<'_, Plan, &LandRecord>) -> Self {
        use v1::land_step::Step;
        let step = match msg {
            LandRecord::Verified {
                round,
                items,
                commit,
                passed,
                ..
            } => Step::Verify(v1::LandVerify {
                round: *round,
                items: items.iter().map(|&i| item_id(plan, i)).collect(),
                commit: commit.to_string(),
                passed: *passed,
            }),
            LandRecord::Pushing {
                round,
                commit,
                expected,
                ..
            } => Step::Pushing(v1::LandPushing {
                round: *round,
                commit: commit.to_string(),
                expected: expected.to_string(),
            }),
            LandRecord::Respeculated {
                round,
                now,
                retries,
                ..
            } => Step::Respeculate(v1::LandRespeculate {
                round: *round,
                now: now.to_string(),
                retries: *retries,
            }),
            LandRecord::Finished(report) => Step::Report(InPlan::new(plan, report).into()),
        };
        Self { step: Some(step) }
    }
}

impl From<InPlan<'_, Plan, &LandReport>> for v1::LandReport {
    fn from(InPlan { plan, msg: r }: InPlan<'_, Plan, &LandReport>) -> Self {
        let (error_kind, error_detail) = match &r.error {
            None => (String::new(), String::new()),
            Some(LandFailure::BaseMoved { now }) => (
                "base_moved".to_string(),
                now.as_ref().map(ToString::to_string).unwrap_or_default(),
            ),
            Some(LandFailure::Refused { reason }) => ("refused".to_string(), reason.clone()),
            Some(LandFailure::PushFailed { error }) => ("push_failed".to_string(), error.clone()),
            Some(LandFailure::Cancelled) => ("cancelled".to_string(), String::new()),
        };
        Self {
            branch: r.branch.clone(),
            dry_run: r.dry_run,
            base: r.base.to_string(),
            commit: r.tip.as_ref().map(ToString::to_string).unwrap_or_default(),
            landed: r
                .landed
                .iter()
                .map(|(item, commit)| v1::LandedItem {
                    item_id: item_id(plan, *item),
                    commit: commit.to_string(),
                })
                .collect(),
            left_out: r
                .left_out
                .iter()
                .map(|(item, why)| {
                    let (paths, related) = match why {
                        LeftOut::Conflict { paths } | LeftOut::CombinationConflict { paths } => {
                            (paths.clone(), String::new())
                        }
                        LeftOut::Below { item } => (Vec::new(), item_id(plan, *item)),
                        LeftOut::AfterCulprit { culprit } => (Vec::new(), item_id(plan, *culprit)),
                        _ => (Vec::new(), String::new()),
                    };
                    v1::LeftOutItem {
                        item_id: item_id(plan, *item),
                        reason: why.as_str().to_string(),
                        paths,
                        related_item: related,
                    }
                })
                .collect(),
            verify_runs: r.verify_runs,
            error_kind,
            error_detail,
        }
    }
}

impl<P: PlanIndex + ?Sized> TryFrom<InPlan<'_, P, v1::LandReport>> for LandReport {
    type Error = WireError;

    fn try_from(InPlan { plan, msg: r }: InPlan<'_, P, v1::LandReport>) -> Result<Self, WireError> {
        let landed = r
            .landed
            .iter()
            .map(|l| {
                Ok((
                    item_of(plan, "landed.item_id", &l.item_id)?,
                    commit("landed.commit", &l.commit)?,
                ))
            })
            .collect::<Result<_, WireError>>()?;
        let left_out = r
            .left_out
            .iter()
            .map(|l| {
                let item = item_of(plan, "left_out.item_id", &l.item_id)?;
                let related = || item_of(plan, "left_out.related_item", &l.related_item);
                let why = match l.reason.as_str() {
                    "failed" => LeftOut::Failed,
                    "skipped" => LeftOut::Skipped,
                    "conflict" => LeftOut::Conflict {
                        paths: l.paths.clone(),
                    },
                    "source" => LeftOut::Source,
                    "combination_conflict" => LeftOut::CombinationConflict {
                        paths: l.paths.clone(),
                    },
                    "below_left_out" => LeftOut::Below { item: related()? },
                    "culprit" => LeftOut::Culprit,
                    "after_culprit" => LeftOut::AfterCulprit {
                        culprit: related()?,
                    },
                    "not_pushed" => LeftOut::NotPushed,
                    other => {
                        return Err(WireError::Invalid {
                            field: "left_out.reason",
                            reason: format!("unknown reason {other:?}"),
                        });
                    }
                };
                Ok((item, why))
            })
            .collect::<Result<_, WireError>>()?;
        let error = match r.error_kind.as_str() {
            "" => None,
            "base_moved" => Some(LandFailure::BaseMoved {
                now: match r.error_detail.as_str() {
                    "" => None,
                    now => Some(commit("error_detail", now)?),
                },
            }),
            "refused" => Some(LandFailure::Refused {
                reason: r.error_detail,
            }),
            "push_failed" => Some(LandFailure::PushFailed {
                error: r.error_detail,
            }),
            "cancelled" => Some(LandFailure::Cancelled),
            other => {
                return Err(WireError::Invalid {
                    field: "error_kind",
                    reason: format!("unknown kind {other:?}"),
                });
            }
        };
        Ok(LandReport {
            branch: r.branch,
            base: commit("base", &r.base)?,
            tip: match r.commit.as_str() {
                "" => None,
                c => Some(commit("commit", c)?),
            },
            landed,
            left_out,
            verify_runs: r.verify_runs,
            dry_run: r.dry_run,
            error,
        })
    }
}

impl<P: PlanIndex + ?Sized> TryFrom<InPlan<'_, P, v1::LandStep>> for LandRecord {
    type Error = WireError;

    fn try_from(InPlan { plan, msg }: InPlan<'_, P, v1::LandStep>) -> Result<Self, WireError> {
        use v1::land_step::Step;
        Ok(match msg.step.ok_or(WireError::Missing("step"))? {
            Step::Verify(v) => LandRecord::Verified {
                round: v.round,
                prefix: v.items.len() as u32,
                items: v
                    .items
                    .iter()
                    .map(|i| item_of(plan, "verify.items", i))
                    .collect::<Result<_, _>>()?,
                commit: commit("verify.commit", &v.commit)?,
                passed: v.passed,
            },
            Step::Pushing(p) => LandRecord::Pushing {
                round: p.round,
                commit: commit("pushing.commit", &p.commit)?,
                expected: commit("pushing.expected", &p.expected)?,
                report: None,
            },
            Step::Respeculate(r) => LandRecord::Respeculated {
                round: r.round,
                now: commit("respeculate.now", &r.now)?,
                retries: r.retries,
                resolution: None,
            },
            Step::Report(r) => LandRecord::Finished(InPlan::new(plan, r).try_into()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use gatehouse_common::ids::{GateIdx, PlanId};
    use gatehouse_common::plan::{PlanFormat, parse_plan};

    use super::*;

    struct Index(Plan, PlanId);

    impl PlanIndex for Index {
        fn plan_id(&self) -> &PlanId {
            &self.1
        }
        fn gate_index(&self, _: &str) -> Option<GateIdx> {
            None
        }
        fn item_index(&self, id: &str) -> Option<ItemIdx> {
            self.0
                .items
                .iter()
                .position(|i| i.id.as_str() == id)
                .map(|i| ItemIdx(i as u32))
        }
    }

    fn id(c: char) -> CommitId {
        CommitId::parse(&c.to_string().repeat(40)).expect("id")
    }

    #[test]
    fn reports_and_steps_round_trip() {
        let plan = parse_plan(
            "version: 1\nname: p\nsource: { repo: 'file:///r', base: main }\nitems:\n- { id: a, ref: a, gates: [ { id: t, run: x } ] }\n- { id: b, ref: b, gates: [ { id: t, run: x } ] }\n- { id: c, ref: c, deps: [b], gates: [ { id: t, run: x } ] }\n",
            PlanFormat::Yaml,
            "p",
            Path::new("/"),
        )
        .expect("plan");
        let report = LandReport {
            branch: "main".into(),
            base: id('a'),
            tip: Some(id('b')),
            landed: vec![(ItemIdx(0), id('b'))],
            left_out: vec![
                (
                    ItemIdx(1),
                    LeftOut::CombinationConflict {
                        paths: vec!["x".into()],
                    },
                ),
                (ItemIdx(2), LeftOut::Below { item: ItemIdx(1) }),
            ],
            verify_runs: 2,
            dry_run: false,
            error: Some(LandFailure::BaseMoved { now: Some(id('c')) }),
        };
        let index = Index(plan.clone(), PlanId::new("p"));
        let records = [
            LandRecord::Verified {
                round: 1,
                prefix: 2,
                items: vec![ItemIdx(0), ItemIdx(1)],
                commit: id('d'),
                passed: false,
            },
            LandRecord::Pushing {
                round: 0,
                commit: id('b'),
                expected: id('a'),
                report: None,
            },
            LandRecord::Respeculated {
                round: 1,
                now: id('c'),
                retries: 3,
                resolution: None,
            },
            LandRecord::Finished(report),
        ];
        for record in records {
            let wire: v1::LandStep = InPlan::new(&plan, &record).into();
            let back: LandRecord = InPlan::new(&index, wire).try_into().expect("decode");
            assert_eq!(back, record);
        }
        let bad = v1::LandStep {
            step: Some(v1::land_step::Step::Verify(v1::LandVerify {
                round: 0,
                items: vec!["nope".into()],
                commit: "a".repeat(40),
                passed: true,
            })),
        };
        let err = LandRecord::try_from(InPlan::new(&index, bad)).expect_err("unknown item");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
