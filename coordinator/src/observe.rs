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

use gatehouse_common::ids::{GateIdx, PlanId, SessionKey};
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
    /// Gates whose open span was dispatched: a second dispatch without an end means
    /// the attempt was lost with its worker (the core re-queues it silently).
    dispatched: std::collections::HashSet<GateIdx>,
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
                dispatched: std::collections::HashSet::new(),
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
        worker: &SessionKey,
    ) -> Option<String> {
        let (Some(tracer), Some(trace)) = (&self.tracer, self.plans.get_mut(id)) else {
            return None;
        };
        let queued = queued.unwrap_or_default();
        let now = SystemTime::now();
        let ready_at = now.checked_sub(queued).unwrap_or(now);
        if !trace.dispatched.insert(gate)
            && let Some(lost) = trace.gates.remove(&gate)
        {
            let span = lost.span();
            span.set_attributes([
                KeyValue::new("gatehouse.outcome", "lost"),
                KeyValue::new("gatehouse.reason", "worker_lost"),
            ]);
            span.set_status(Status::error("worker_lost"));
            span.end();
        }
        let gate_cx = trace
            .gates
            .entry(gate)
            .or_insert_with(|| start_gate(tracer, &trace.cx, plan, gate, Some(ready_at)));
        let span = gate_cx.span();
        let queue_ms = KeyValue::new("gatehouse.queue_ms", queued.as_millis() as i64);
        span.add_event("dispatched", vec![queue_ms.clone()]);
        span.set_attributes([
            queue_ms,
            KeyValue::new("gatehouse.worker.id", worker.to_string()),
        ]);
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
                if let (Some(r), Some(_)) = (&ev.result, &ev.worker) {
                    self.metrics
                        .attempt_ran(attempt_outcome(&r.status), r.duration);
                    if let Some(tests) = &r.tests {
                        self.metrics.tests_ran(&tests.results);
                    }
                }
                let backoff = *backoff;
                self.end_gate(ev, "retrying", |span| {
                    span.set_attribute(KeyValue::new(
                        "gatehouse.retry_backoff_ms",
                        backoff.as_millis() as i64,
                    ));
                    failed_test_events(ev, span);
                });
            }
            GateStatus::Finished(terminal) => {
                self.metrics.gate_finished(*terminal, ev.cached, ev.flaky);
                // Only a result fresh from an executor is an attempt that ran: a cached
                // one, or the last failure repeated when a plan stops during a retry's
                // backoff (no worker), was counted already or never ran.
                if let (Some(r), Some(_), false) = (&ev.result, &ev.worker, ev.cached) {
                    self.metrics
                        .attempt_ran(attempt_outcome(&r.status), r.duration);
                    if let Some(tests) = &r.tests {
                        self.metrics.tests_ran(&tests.results);
                    }
                }
                if let (Some(verdict), false) = (&ev.verdict, ev.cached) {
                    self.metrics.tests_judged(verdict);
                }
                self.end_gate(ev, terminal.as_str(), |span| failed_test_events(ev, span));
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

    /// The scheduler stops with plans still live (shutdown, or the term ended): their
    /// open spans end as `interrupted`, with an error status, instead of being exported
    /// on drop as if they had succeeded.
    pub fn interrupt_all(&mut self) {
        for (_, trace) in self.plans.drain() {
            for (_, cx) in trace.lookups.into_iter().chain(trace.gates) {
                let span = cx.span();
                span.set_attribute(KeyValue::new("gatehouse.outcome", "interrupted"));
                span.set_status(Status::error("interrupted"));
                span.end();
            }
            let span = trace.cx.span();
            span.set_attribute(KeyValue::new("gatehouse.outcome", "interrupted"));
            span.set_status(Status::error("interrupted"));
            span.end();
        }
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
        // Dispatched here: the span names the worker's session already.
        let dispatched = trace.dispatched.remove(&ev.gate);
        let Some(cx) = trace.gates.remove(&ev.gate) else {
            return;
        };
        let span = cx.span();
        span.set_attributes([
            KeyValue::new("gatehouse.attempt", i64::from(ev.attempt)),
            KeyValue::new("gatehouse.cached", ev.cached),
            KeyValue::new("gatehouse.outcome", outcome),
        ]);
        if let (false, Some(w)) = (dispatched, &ev.worker) {
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

/// Most `test failed` events on one gate span.
const MAX_TEST_EVENTS: usize = 100;

/// One `test failed` span event per failed test of the attempt (at most
/// [`MAX_TEST_EVENTS`]), and one `test quarantined` per quarantined test.
fn failed_test_events(ev: &GateEvent, span: &opentelemetry::trace::SpanRef<'_>) {
    let failed = ev
        .result
        .as_ref()
        .and_then(|r| r.tests.as_deref())
        .into_iter()
        .flat_map(|t| t.results.failures());
    for case in failed.take(MAX_TEST_EVENTS) {
        let mut attributes = vec![
            KeyValue::new("test.name", case.id.name_for_humans()),
            KeyValue::new("test.outcome", case.outcome.as_str()),
        ];
        if let Some(message) = &case.message {
            attributes.push(KeyValue::new("test.message", message.clone()));
        }
        span.add_event("test failed", attributes);
    }
    let quarantined = ev.verdict.iter().flat_map(|v| v.quarantined.iter());
    for case in quarantined.take(MAX_TEST_EVENTS) {
        span.add_event(
            "test quarantined",
            vec![KeyValue::new("test.name", case.id.name_for_humans())],
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use gatehouse_common::exec::ExitStatus;
    use gatehouse_common::ids::WorkerId;
    use gatehouse_common::plan::Policy;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

    use super::*;
    use crate::core::testkit::{flat, g, result};

    /// Collects finished spans (a fake exporter behind the SDK's trait).
    #[derive(Clone, Debug, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.lock().expect("lock").extend(batch);
            Ok(())
        }
    }

    fn observer() -> (Observer, Collect, prometheus_client::registry::Registry) {
        let spans = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let metrics = Metrics::default();
        let mut registry = gatehouse_common::telemetry::metrics::registry();
        metrics.register(&mut registry);
        (
            Observer::new(metrics, Some(provider.tracer("test"))),
            spans,
            registry,
        )
    }

    fn session() -> SessionKey {
        SessionKey::new(WorkerId::new("w1"), 1)
    }

    fn event(gate: u32, status: GateStatus, attempt: u32, worker: bool) -> GateEvent {
        let worker = worker.then(|| WorkerId::new("w1"));
        GateEvent::new(PlanId::new("p"), GateIdx(gate), status, attempt, worker)
    }

    fn outcomes(spans: &Collect) -> Vec<String> {
        spans
            .0
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.name == "gate")
            .map(|s| {
                s.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "gatehouse.outcome")
                    .map(|kv| kv.value.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn an_attempt_lost_with_its_worker_ends_its_span_and_the_next_gets_its_own() {
        let (mut o, spans, _) = observer();
        let plan = flat(Policy::default(), &[g("a", &[])]);
        let id = PlanId::new("p");
        o.plan_started(&id, &plan, None, false);
        assert!(
            o.dispatching(&plan, &id, GateIdx(0), None, &session())
                .is_some()
        );
        // The worker is lost: the core re-queues the gate without an event.
        o.dispatching(
            &plan,
            &id,
            GateIdx(0),
            Some(Duration::from_millis(3)),
            &session(),
        );
        let mut done = event(0, GateStatus::Finished(Terminal::Passed), 2, true);
        done.result = Some(result(ExitStatus::Exited(0)));
        o.gate_event(&done);
        assert_eq!(outcomes(&spans), vec!["lost", "passed"]);
    }

    #[test]
    fn a_failure_repeated_when_a_plan_stops_in_backoff_is_not_counted_twice() {
        let (mut o, _, registry) = observer();
        let mut retrying = event(
            0,
            GateStatus::Retrying {
                backoff: Duration::from_millis(100),
            },
            1,
            true,
        );
        retrying.result = Some(result(ExitStatus::Exited(1)));
        o.gate_event(&retrying);
        // Cancelled during the backoff: the last failure comes again, without a worker.
        let mut cancelled = event(0, GateStatus::Finished(Terminal::Cancelled), 1, false);
        cancelled.result = Some(result(ExitStatus::Exited(1)));
        o.gate_event(&cancelled);
        let text = gatehouse_common::telemetry::metrics::encode(&registry);
        assert!(
            text.contains("gatehouse_gate_duration_seconds_count{outcome=\"failed\"} 1"),
            "{text}"
        );
        assert!(text.contains("gatehouse_gates_total{outcome=\"cancelled\"} 1"));
    }

    #[test]
    fn spans_still_open_when_the_scheduler_stops_end_as_interrupted() {
        let (mut o, spans, _) = observer();
        let plan = flat(Policy::default(), &[g("a", &[]), g("b", &[])]);
        let id = PlanId::new("p");
        o.plan_started(&id, &plan, None, false);
        o.dispatching(&plan, &id, GateIdx(0), None, &session());
        o.lookup_started(&plan, &id, GateIdx(1));
        o.interrupt_all();
        let spans = spans.0.lock().expect("lock");
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(spans.len(), 4, "{names:?}");
        for s in spans.iter() {
            let outcome = s
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "gatehouse.outcome")
                .map(|kv| kv.value.to_string());
            assert_eq!(outcome.as_deref(), Some("interrupted"), "{}", s.name);
            assert!(matches!(s.status, Status::Error { .. }), "{}", s.name);
        }
    }
}
