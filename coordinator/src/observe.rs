//! What the scheduler driver reports about its work: metrics and the plan's trace.
//!
//! The driver calls [`Observer`] with the core's commands and events as it carries them
//! out, so observing never changes scheduling. The span tree of one plan:
//!
//! ```text
//! plan                       submission .. summary (parent: the submitter's span)
//! ├── gate                   one per attempt: ready .. result (attempt 1 of a cached
//! │   │                      gate starts at its cache lookup); event `dispatched` and
//! │   │                      attribute gatehouse.queue_ms: the wait from ready
//! │   ├── cache.lookup       the lookup, result hit|miss|error|uncached
//! │   └── gate.execute       on the worker (continued from Assignment.traceparent)
//! ```
//!
//! The queue wait is an event and an attribute rather than a span of its own: every
//! dispatch has one, and a third span per attempt was a measurable share of the tracing
//! overhead (docs/performance.md).
//!
//! Spans are made with the OpenTelemetry API because their start times are known only
//! later (a dispatch tells how long the gate queued). With no tracer nothing is made.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use gatehouse_common::ids::{GateIdx, PlanId};
use gatehouse_common::plan::Plan;
use gatehouse_common::telemetry::{Tracer, context_from_traceparent, traceparent};
use opentelemetry::trace::{Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};

use crate::core::{GateEvent, GateStatus, PlanSummary, Terminal};
use crate::metrics::{CacheResult, Metrics, attempt_outcome};

/// The spans of one live plan.
struct PlanTrace {
    /// Holds the plan span.
    cx: Context,
    /// The open span of each gate's current attempt.
    gates: HashMap<GateIdx, Context>,
    /// Open cache lookups.
    lookups: HashMap<GateIdx, Context>,
}

/// Metrics and spans of the scheduler driver.
pub struct Observer {
    pub metrics: Metrics,
    tracer: Tracer,
    plans: HashMap<PlanId, PlanTrace>,
    /// The core's throttle count last exported.
    throttled_seen: u64,
}

impl Observer {
    pub fn new(metrics: Metrics, tracer: Tracer) -> Self {
        Self {
            metrics,
            tracer,
            plans: HashMap::new(),
            throttled_seen: 0,
        }
    }

    /// A plan went live: its span starts, a child of `parent` (a W3C traceparent).
    pub fn plan_started(&mut self, id: &PlanId, plan: &Plan, parent: Option<&str>, resumed: bool) {
        let Some(tracer) = &self.tracer else {
            return;
        };
        let parent_cx = parent.map(context_from_traceparent).unwrap_or_default();
        let mut attrs = vec![
            KeyValue::new("gatehouse.plan.id", id.to_string()),
            KeyValue::new("gatehouse.plan.name", plan.name.clone()),
            KeyValue::new("gatehouse.plan.gates", plan.gates.len() as i64),
            KeyValue::new("gatehouse.plan.items", plan.items.len() as i64),
        ];
        if resumed {
            attrs.push(KeyValue::new("gatehouse.plan.resumed", true));
        }
        let span = tracer
            .span_builder("plan")
            .with_attributes(attrs)
            .start_with_context(tracer, &parent_cx);
        self.plans.insert(
            id.clone(),
            PlanTrace {
                cx: parent_cx.with_span(span),
                gates: HashMap::new(),
                lookups: HashMap::new(),
            },
        );
    }

    /// The driver starts the cache check of a ready gate: attempt 1's gate span starts,
    /// with a lookup child.
    pub fn lookup_started(&mut self, plan: &Plan, id: &PlanId, gate: GateIdx) {
        let (Some(tracer), Some(trace)) = (&self.tracer, self.plans.get_mut(id)) else {
            return;
        };
        let gate_cx = trace
            .gates
            .entry(gate)
            .or_insert_with(|| start_gate(tracer, &trace.cx, plan, gate, None))
            .clone();
        let lookup = tracer
            .span_builder("cache.lookup")
            .start_with_context(tracer, &gate_cx);
        trace.lookups.insert(gate, gate_cx.with_span(lookup));
    }

    /// A cache check ended (`None`: the gate is not looked up, e.g. `cache: false`).
    pub fn lookup_done(&mut self, id: &PlanId, gate: GateIdx, result: Option<CacheResult>) {
        if let Some(result) = result {
            self.metrics.cache_request(result);
        }
        let Some(cx) = self.plans.get_mut(id).and_then(|t| t.lookups.remove(&gate)) else {
            return;
        };
        let label = match result {
            Some(CacheResult::Hit) => "hit",
            Some(CacheResult::Miss) => "miss",
            Some(CacheResult::Error) => "error",
            None => "uncached",
        };
        let span = cx.span();
        span.set_attribute(KeyValue::new("gatehouse.cache.result", label));
        span.end();
    }

    /// An assignment is about to be sent: returns the traceparent the worker continues.
    pub fn dispatching(
        &mut self,
        plan: &Plan,
        id: &PlanId,
        gate: GateIdx,
        queued: Option<Duration>,
    ) -> Option<String> {
        let (Some(tracer), Some(trace)) = (&self.tracer, self.plans.get_mut(id)) else {
            return None;
        };
        let queued = queued.unwrap_or_default();
        let now = SystemTime::now();
        let ready_at = now.checked_sub(queued).unwrap_or(now);
        let gate_cx = trace
            .gates
            .entry(gate)
            .or_insert_with(|| start_gate(tracer, &trace.cx, plan, gate, Some(ready_at)));
        let span = gate_cx.span();
        let queue_ms = KeyValue::new("gatehouse.queue_ms", queued.as_millis() as i64);
        span.add_event("dispatched", vec![queue_ms.clone()]);
        span.set_attribute(queue_ms);
        traceparent(gate_cx)
    }

    /// A gate event is published.
    pub fn gate_event(&mut self, ev: &GateEvent) {
        match &ev.status {
            GateStatus::Dispatched => {
                if let Some(q) = ev.queued {
                    self.metrics.dispatched(q);
                }
            }
            // The worker's gate.execute span shows when the attempt started.
            GateStatus::Running => {}
            GateStatus::Waiting { reason } => {
                if let Some(trace) = self.plans.get(&ev.plan) {
                    trace.cx.span().add_event(
                        "gate waiting",
                        vec![
                            KeyValue::new("gatehouse.gate.index", i64::from(ev.gate.0)),
                            KeyValue::new("gatehouse.reason", reason.clone()),
                        ],
                    );
                }
            }
            GateStatus::Retrying { backoff } => {
                self.metrics.gate_retried();
                if let Some(r) = &ev.result {
                    self.metrics
                        .attempt_ran(attempt_outcome(&r.status), r.duration);
                }
                let backoff = *backoff;
                self.end_gate(ev, "retrying", |span| {
                    span.set_attribute(KeyValue::new(
                        "gatehouse.retry_backoff_ms",
                        backoff.as_millis() as i64,
                    ));
                });
            }
            GateStatus::Finished(terminal) => {
                self.metrics.gate_finished(*terminal, ev.cached, ev.flaky);
                if let (Some(r), false) = (&ev.result, ev.cached) {
                    self.metrics
                        .attempt_ran(attempt_outcome(&r.status), r.duration);
                }
                self.end_gate(ev, terminal.as_str(), |_| {});
            }
        }
    }

    /// A plan ended.
    pub fn plan_finished(&mut self, s: &PlanSummary) {
        self.metrics.plan_finished(s.outcome.as_str());
        let Some(trace) = self.plans.remove(&s.plan) else {
            return;
        };
        // Attempts still open (none normally) end with the plan.
        for (_, cx) in trace.lookups.into_iter().chain(trace.gates) {
            cx.span().end();
        }
        let span = trace.cx.span();
        let c = s.counts;
        span.set_attributes([
            KeyValue::new("gatehouse.outcome", s.outcome.as_str()),
            KeyValue::new("gatehouse.plan.passed", i64::from(c.passed)),
            KeyValue::new("gatehouse.plan.failed", i64::from(c.failed + c.timed_out)),
            KeyValue::new("gatehouse.plan.skipped", i64::from(c.skipped)),
            KeyValue::new("gatehouse.plan.cancelled", i64::from(c.cancelled)),
            KeyValue::new("gatehouse.plan.cached", i64::from(c.cached)),
            KeyValue::new("gatehouse.plan.flaky", i64::from(c.flaky)),
        ]);
        if s.outcome != crate::core::PlanOutcome::Passed {
            span.set_status(Status::error(s.outcome.as_str()));
        }
        span.end();
    }

    /// The core's gauges and throttle count after a batch of events.
    pub fn core_state(&mut self, gauges: &crate::core::Gauges, throttled_total: u64) {
        self.metrics.set_gauges(gauges);
        self.metrics
            .throttled(throttled_total.saturating_sub(self.throttled_seen));
        self.throttled_seen = throttled_total;
    }

    /// Ends the gate's open attempt span with the event's outcome.
    fn end_gate(
        &mut self,
        ev: &GateEvent,
        outcome: &'static str,
        extra: impl FnOnce(&opentelemetry::trace::SpanRef<'_>),
    ) {
        let Some(trace) = self.plans.get_mut(&ev.plan) else {
            return;
        };
        let Some(cx) = trace.gates.remove(&ev.gate) else {
            return;
        };
        let span = cx.span();
        span.set_attributes([
            KeyValue::new("gatehouse.attempt", i64::from(ev.attempt)),
            KeyValue::new("gatehouse.cached", ev.cached),
            KeyValue::new("gatehouse.outcome", outcome),
        ]);
        if let Some(w) = &ev.worker {
            span.set_attribute(KeyValue::new("gatehouse.worker.id", w.to_string()));
        }
        if let Some(reason) = ev.reason {
            span.set_attribute(KeyValue::new("gatehouse.reason", reason));
        }
        if ev.flaky {
            span.set_attribute(KeyValue::new("gatehouse.flaky", true));
        }
        if let Some(r) = &ev.result
            && let gatehouse_common::exec::ExitStatus::Exited(code) = r.status
        {
            span.set_attribute(KeyValue::new("process.exit.code", i64::from(code)));
        }
        extra(&span);
        let failed = matches!(
            ev.status,
            GateStatus::Retrying { .. }
                | GateStatus::Finished(Terminal::Failed | Terminal::TimedOut)
        );
        if failed {
            span.set_status(Status::error(ev.reason.unwrap_or(outcome)));
        }
        span.end();
    }
}

/// Starts a gate attempt span under the plan span.
fn start_gate(
    tracer: &opentelemetry_sdk::trace::SdkTracer,
    plan_cx: &Context,
    plan: &Plan,
    gate: GateIdx,
    start: Option<SystemTime>,
) -> Context {
    let g = plan.gate(gate);
    let mut attrs = vec![KeyValue::new("gatehouse.gate.id", g.id.to_string())];
    if let Some(item) = g.item {
        attrs.push(KeyValue::new(
            "gatehouse.item.id",
            plan.item(item).id.to_string(),
        ));
    }
    let mut builder = tracer.span_builder("gate").with_attributes(attrs);
    if let Some(t) = start {
        builder = builder.with_start_time(t);
    }
    let span = builder.start_with_context(tracer, plan_cx);
    plan_cx.with_span(span)
}
