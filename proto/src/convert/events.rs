//! Wire <-> domain conversions of the events a plan publishes: `gatehouse.v1`
//! `PlanEvent`, `GateEvent`, `PlanSummary`, `Counts`, `GateState` and `PlanOutcome`
//! against [`gatehouse_common::events`]. The coordinator encodes with them (`WatchPlan`,
//! `GetPlan`); clients decode with them (`gatehouse submit --watch`, `watch`). There is
//! one `From`/`TryFrom` pair per message and no other copy of these mappings.
//!
//! Domain events address gates and items by their index in the plan, wire events by id,
//! so a gate event, a summary or a plan event converts together with its plan, as an
//! [`InPlan`]: encoding reads the ids from the validated [`Plan`]; decoding looks them
//! up through a [`PlanIndex`] (a client builds one from its `GetPlan` answer).
//!
//! Decoding never trusts the peer and never panics: a missing field, an enum value this
//! build does not know, or an id the plan does not have is a [`WireError`] naming the
//! field. Two readings are lenient on purpose: absent `counts` read as zero (proto3's
//! default message), and a reason this build does not know reads as `unknown`
//! ([`known_reason`]). The wire does not carry a dispatch's queue wait (`queued`, which
//! only feeds metrics; it decodes as `None`), and a gate event's `item_id` and a
//! summary's `name` and `levels` are written for readers without the plan but not read
//! back (the plan knows them).

use std::time::Duration;

use gatehouse_common::events::{
    Counts, GateEvent, GateStatus, PlanEvent, PlanOutcome, PlanSummary, Terminal, known_reason,
};
use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::{GateIdx, ItemIdx, PlanId, WorkerId};
use gatehouse_common::plan::Plan;
use gatehouse_common::reports::TestVerdict;

use super::reports::{cases_from_wire, cases_to_wire};
use super::{WireError, ms};
use crate::v1;

/// A message of one plan's event stream, together with that plan: a validated [`Plan`]
/// to encode, a [`PlanIndex`] to decode.
pub struct InPlan<'a, P: ?Sized, T> {
    /// The plan the message belongs to.
    pub plan: &'a P,
    /// The message.
    pub msg: T,
}

impl<'a, P: ?Sized, T> InPlan<'a, P, T> {
    /// `msg`, of `plan`.
    pub fn new(plan: &'a P, msg: T) -> Self {
        Self { plan, msg }
    }
}

/// Finds a plan's gates and items by the ids the wire names them with: what decoding
/// needs of the plan a stream belongs to.
pub trait PlanIndex {
    /// The plan's id (wire gate events do not repeat it).
    fn plan_id(&self) -> &PlanId;
    /// The index of the gate with this full id (`item/gate`, or `gate` in the flat form).
    fn gate_index(&self, id: &str) -> Option<GateIdx>;
    /// The index of the item with this id.
    fn item_index(&self, id: &str) -> Option<ItemIdx>;
}

/// Levels of the merge pyramid as the wire lists them: item ids per level (gate ids in
/// the flat form).
pub fn levels(plan: &Plan) -> Vec<v1::Level> {
    plan.level_ids()
        .into_iter()
        .map(|ids| v1::Level { ids })
        .collect()
}

/// A wire enum field: `Ok(None)` when unspecified, an error when this build does not
/// know the value.
fn enum_field<E>(value: i32, field: &'static str, unspecified: E) -> Result<Option<E>, WireError>
where
    E: TryFrom<i32> + PartialEq,
{
    let e = E::try_from(value).map_err(|_| WireError::Invalid {
        field,
        reason: format!("unknown value {value}"),
    })?;
    Ok((e != unspecified).then_some(e))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<Terminal> for v1::GateState {
    fn from(t: Terminal) -> Self {
        match t {
            Terminal::Passed => v1::GateState::Passed,
            Terminal::Failed => v1::GateState::Failed,
            Terminal::TimedOut => v1::GateState::TimedOut,
            Terminal::Skipped => v1::GateState::Skipped,
            Terminal::Cancelled => v1::GateState::Cancelled,
        }
    }
}

impl TryFrom<v1::GateState> for Terminal {
    type Error = WireError;

    fn try_from(s: v1::GateState) -> Result<Self, WireError> {
        Ok(match s {
            v1::GateState::Passed => Terminal::Passed,
            v1::GateState::Failed => Terminal::Failed,
            v1::GateState::TimedOut => Terminal::TimedOut,
            v1::GateState::Skipped => Terminal::Skipped,
            v1::GateState::Cancelled => Terminal::Cancelled,
            v1::GateState::Unspecified => return Err(WireError::Missing("state")),
            other @ (v1::GateState::Pending
            | v1::GateState::Running
            | v1::GateState::Retrying
            | v1::GateState::Waiting) => {
                return Err(WireError::Invalid {
                    field: "state",
                    reason: format!("{} is not a terminal state", other.as_str_name()),
                });
            }
        })
    }
}

/// The wire state of a status; a retry's backoff and a wait's reason travel in their own
/// fields of [`v1::GateEvent`] and are decoded with it.
impl From<&GateStatus> for v1::GateState {
    fn from(s: &GateStatus) -> Self {
        match s {
            GateStatus::Dispatched => v1::GateState::Pending,
            GateStatus::Running => v1::GateState::Running,
            GateStatus::Retrying { .. } => v1::GateState::Retrying,
            GateStatus::Waiting { .. } => v1::GateState::Waiting,
            GateStatus::Finished(t) => (*t).into(),
        }
    }
}

impl From<PlanOutcome> for v1::PlanOutcome {
    fn from(o: PlanOutcome) -> Self {
        match o {
            PlanOutcome::Passed => v1::PlanOutcome::Passed,
            PlanOutcome::Failed => v1::PlanOutcome::Failed,
            PlanOutcome::Cancelled => v1::PlanOutcome::Cancelled,
        }
    }
}

impl TryFrom<v1::PlanOutcome> for PlanOutcome {
    type Error = WireError;

    fn try_from(o: v1::PlanOutcome) -> Result<Self, WireError> {
        match o {
            v1::PlanOutcome::Passed => Ok(PlanOutcome::Passed),
            v1::PlanOutcome::Failed => Ok(PlanOutcome::Failed),
            v1::PlanOutcome::Cancelled => Ok(PlanOutcome::Cancelled),
            v1::PlanOutcome::Unspecified => Err(WireError::Missing("outcome")),
        }
    }
}

/// The state of a finished plan in `PlanInfo` (a plan without a summary is running).
impl From<PlanOutcome> for v1::PlanState {
    fn from(o: PlanOutcome) -> Self {
        match o {
            PlanOutcome::Passed => v1::PlanState::Passed,
            PlanOutcome::Failed => v1::PlanState::Failed,
            PlanOutcome::Cancelled => v1::PlanState::Cancelled,
        }
    }
}

impl From<Counts> for v1::Counts {
    fn from(c: Counts) -> Self {
        Self {
            total: c.total,
            passed: c.passed,
            failed: c.failed,
            timed_out: c.timed_out,
            skipped: c.skipped,
            cancelled: c.cancelled,
            cached: c.cached,
            flaky: c.flaky,
        }
    }
}

impl From<v1::Counts> for Counts {
    fn from(c: v1::Counts) -> Self {
        Self {
            total: c.total,
            passed: c.passed,
            failed: c.failed,
            timed_out: c.timed_out,
            skipped: c.skipped,
            cancelled: c.cancelled,
            cached: c.cached,
            flaky: c.flaky,
        }
    }
}

/// The published form of a gate event. The worker is written as the event names it.
impl From<InPlan<'_, Plan, &GateEvent>> for v1::GateEvent {
    fn from(InPlan { plan, msg: ev }: InPlan<'_, Plan, &GateEvent>) -> Self {
        let gate_id = |g: GateIdx| {
            plan.gates
                .get(g.ix())
                .map(|gate| gate.id.to_string())
                .unwrap_or_default()
        };
        let item_id = plan
            .gates
            .get(ev.gate.ix())
            .and_then(|gate| gate.item)
            .and_then(|i| plan.items.get(i.ix()))
            .map(|item| item.id.to_string())
            .unwrap_or_default();
        let (backoff_ms, waiting_for) = match &ev.status {
            GateStatus::Retrying { backoff } => (ms(*backoff), String::new()),
            GateStatus::Waiting { reason } => (0, reason.clone()),
            _ => (0, String::new()),
        };
        Self {
            gate_id: gate_id(ev.gate),
            item_id,
            state: v1::GateState::from(&ev.status) as i32,
            attempt: ev.attempt,
            cached: ev.cached,
            flaky: ev.flaky,
            worker_id: ev
                .worker
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            reason: ev.reason.unwrap_or_default().to_string(),
            cause: ev.cause.map(gate_id).unwrap_or_default(),
            result: ev.result.as_ref().map(v1::AttemptResult::from),
            backoff_ms,
            waiting_for,
            flaky_tests: ev
                .verdict
                .as_ref()
                .map(|v| cases_to_wire(&v.flaky))
                .unwrap_or_default(),
            quarantined_tests: ev
                .verdict
                .as_ref()
                .map(|v| cases_to_wire(&v.quarantined))
                .unwrap_or_default(),
        }
    }
}

impl<P: PlanIndex + ?Sized> TryFrom<InPlan<'_, P, v1::GateEvent>> for GateEvent {
    type Error = WireError;

    fn try_from(InPlan { plan, msg: ev }: InPlan<'_, P, v1::GateEvent>) -> Result<Self, WireError> {
        let state = enum_field(ev.state, "state", v1::GateState::Unspecified)?
            .ok_or(WireError::Missing("state"))?;
        let status = match state {
            v1::GateState::Pending => GateStatus::Dispatched,
            v1::GateState::Running => GateStatus::Running,
            v1::GateState::Retrying => GateStatus::Retrying {
                backoff: Duration::from_millis(ev.backoff_ms),
            },
            v1::GateState::Waiting => GateStatus::Waiting {
                reason: ev.waiting_for,
            },
            terminal => GateStatus::Finished(terminal.try_into()?),
        };
        let find = |field: &'static str, id: String| {
            plan.gate_index(&id)
                .ok_or(WireError::Unknown { field, value: id })
        };
        let gate = find(
            "gate_id",
            non_empty(ev.gate_id).ok_or(WireError::Missing("gate_id"))?,
        )?;
        let cause = non_empty(ev.cause)
            .map(|id| find("cause", id))
            .transpose()?;
        let result = ev.result.map(GateResult::try_from).transpose()?;
        let verdict = TestVerdict {
            flaky: cases_from_wire(ev.flaky_tests)?,
            quarantined: cases_from_wire(ev.quarantined_tests)?,
        };
        Ok(Self {
            plan: plan.plan_id().clone(),
            gate,
            status,
            attempt: ev.attempt,
            worker: non_empty(ev.worker_id).map(WorkerId::new),
            cached: ev.cached,
            flaky: ev.flaky,
            result,
            reason: non_empty(ev.reason).map(|r| known_reason(&r)),
            cause,
            queued: None,
            verdict: (!verdict.is_empty()).then(|| Box::new(verdict)),
        })
    }
}

impl From<InPlan<'_, Plan, &PlanSummary>> for v1::PlanSummary {
    fn from(InPlan { plan, msg: s }: InPlan<'_, Plan, &PlanSummary>) -> Self {
        Self {
            plan_id: s.plan.to_string(),
            name: plan.name.clone(),
            outcome: v1::PlanOutcome::from(s.outcome) as i32,
            counts: Some(s.counts.into()),
            merge_order: s
                .merge_order
                .iter()
                .filter_map(|i| plan.items.get(i.ix()))
                .map(|item| item.id.to_string())
                .collect(),
            levels: levels(plan),
            duration_ms: ms(s.duration),
        }
    }
}

impl<P: PlanIndex + ?Sized> TryFrom<InPlan<'_, P, v1::PlanSummary>> for PlanSummary {
    type Error = WireError;

    fn try_from(
        InPlan { plan, msg: s }: InPlan<'_, P, v1::PlanSummary>,
    ) -> Result<Self, WireError> {
        let id = non_empty(s.plan_id).ok_or(WireError::Missing("plan_id"))?;
        let outcome = enum_field(s.outcome, "outcome", v1::PlanOutcome::Unspecified)?
            .ok_or(WireError::Missing("outcome"))?
            .try_into()?;
        let merge_order = s
            .merge_order
            .into_iter()
            .map(|id| {
                plan.item_index(&id).ok_or(WireError::Unknown {
                    field: "merge_order",
                    value: id,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            plan: PlanId::new(id),
            outcome,
            counts: s.counts.unwrap_or_default().into(),
            merge_order,
            duration: Duration::from_millis(s.duration_ms),
        })
    }
}

/// The published form of the event numbered `seq` in its plan's log.
impl From<InPlan<'_, Plan, (u64, &PlanEvent)>> for v1::PlanEvent {
    fn from(
        InPlan {
            plan,
            msg: (seq, ev),
        }: InPlan<'_, Plan, (u64, &PlanEvent)>,
    ) -> Self {
        let event = match ev {
            PlanEvent::Gate(g) => v1::plan_event::Event::Gate(InPlan::new(plan, g).into()),
            PlanEvent::Finished(s) => v1::plan_event::Event::Summary(InPlan::new(plan, s).into()),
            PlanEvent::Land { record, .. } => {
                v1::plan_event::Event::Land(InPlan::new(plan, record).into())
            }
        };
        Self {
            seq,
            event: Some(event),
        }
    }
}

/// A streamed event and its sequence number.
impl<P: PlanIndex + ?Sized> TryFrom<InPlan<'_, P, v1::PlanEvent>> for (u64, PlanEvent) {
    type Error = WireError;

    fn try_from(InPlan { plan, msg: ev }: InPlan<'_, P, v1::PlanEvent>) -> Result<Self, WireError> {
        let event = match ev.event.ok_or(WireError::Missing("event"))? {
            v1::plan_event::Event::Gate(g) => PlanEvent::Gate(InPlan::new(plan, g).try_into()?),
            v1::plan_event::Event::Summary(s) => {
                PlanEvent::Finished(InPlan::new(plan, s).try_into()?)
            }
            v1::plan_event::Event::Land(step) => PlanEvent::Land {
                plan: plan.plan_id().clone(),
                record: InPlan::new(plan, step).try_into()?,
            },
        };
        Ok((ev.seq, event))
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
