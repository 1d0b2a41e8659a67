//! Traces, logs and metrics plumbing shared by every role (see docs/observability.md).
//!
//! - [`Traces`]: the OTLP/gRPC trace export, on when an endpoint is configured
//!   (`--otlp-endpoint` or the standard `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`). It runs
//!   on a runtime of its own (one thread) behind the SDK's batch processor, so a slow or
//!   unreachable collector never blocks or slows the caller: when the batch queue is
//!   full, spans are dropped.
//! - [`log`]: the stderr subscriber (`--log-format pretty|json`), joined to the traces.
//! - [`metrics`]: the Prometheus registry served on `--http` at `/metrics`.
//! - Propagation: W3C `traceparent` strings ([`traceparent`], [`context_from_traceparent`]),
//!   carried in assignments and gRPC metadata.
//!
//! Domain spans (plan, gate, execute) are made with the OpenTelemetry API on a
//! [`Tracer`] handed to the component (`None`: tracing off, no cost). Their start times
//! are known only after the fact (a gate's queue wait starts when it became ready), which
//! `tracing` spans cannot express. Code spans (gRPC calls) are `tracing` spans with the
//! target [`OTEL_TARGET`]; only those are exported.

pub mod log;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The tracer domain spans are made with; `None` when traces are off.
pub type Tracer = Option<opentelemetry_sdk::trace::SdkTracer>;

/// Target of the `tracing` spans that are exported as OpenTelemetry spans (gRPC calls).
/// Every other `tracing` span stays local to the logs.
pub const OTEL_TARGET: &str = "gatehouse::otel";

/// How long [`Traces::shutdown`] waits for pending spans to be exported by default.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long it waits instead when the last export failed (the collector is down or
/// unreachable): pending spans would most likely be lost anyway, and a command should
/// not linger for them.
pub const SHUTDOWN_TIMEOUT_FAILING: Duration = Duration::from_millis(250);

/// Errors of setting up the trace export.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The export runtime could not start.
    #[error("cannot start the trace export thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// The OTLP exporter rejected its configuration (e.g. an invalid endpoint).
    #[error("invalid OTLP trace export configuration: {0}")]
    Exporter(String),
}

/// The running trace export: a tracer provider and the runtime its exporter uses.
pub struct Traces {
    provider: SdkTracerProvider,
    /// Whether the last export succeeded (or none was tried yet).
    healthy: Arc<AtomicBool>,
    /// Kept alive for the exporter's connection tasks; dropped after shutdown.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

/// Whether the environment turns the SDK or the trace exporter off
/// (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
fn disabled_by_env() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default().to_ascii_lowercase();
    var("OTEL_SDK_DISABLED") == "true" || var("OTEL_TRACES_EXPORTER") == "none"
}

/// The endpoint the standard variables configure, if any.
fn endpoint_from_env() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok())
    .find(|v| !v.trim().is_empty())
}

impl Traces {
    /// Starts the export for `service` (the default `service.name`; `OTEL_SERVICE_NAME`
    /// and `OTEL_RESOURCE_ATTRIBUTES` win) when an endpoint is configured: `endpoint`
    /// (the `--otlp-endpoint` flag), else the standard variables. `Ok(None)`: traces off.
    /// Batching, sampling and timeouts follow the standard `OTEL_BSP_*`,
    /// `OTEL_TRACES_SAMPLER[_ARG]` and `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` variables.
    pub fn start(service: &str, endpoint: Option<&str>) -> Result<Option<Traces>, TelemetryError> {
        if disabled_by_env() {
            return Ok(None);
        }
        let endpoint = endpoint
            .map(str::to_string)
            .filter(|e| !e.trim().is_empty());
        if endpoint.is_none() && endpoint_from_env().is_none() {
            return Ok(None);
        }
        // The exporter's channel spawns its connection tasks on the runtime it is built
        // in: a runtime of its own keeps export off the scheduling threads.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(TelemetryError::Runtime)?;
        let exporter = runtime.block_on(async {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            let builder = match &endpoint {
                Some(e) => builder.with_endpoint(e.clone()),
                None => builder,
            };
            builder.build()
        });
        let exporter = exporter.map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let healthy = Arc::new(AtomicBool::new(true));
        let exporter = Watched {
            inner: exporter,
            healthy: healthy.clone(),
            endpoint: endpoint.or_else(endpoint_from_env).unwrap_or_default(),
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(service))
            .build();
        Ok(Some(Traces {
            provider,
            healthy,
            runtime: Some(runtime),
        }))
    }

    /// A tracer for domain spans and the `tracing` layer.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        use opentelemetry::trace::TracerProvider;
        self.provider.tracer("gatehouse")
    }

    /// Exports what is pending and stops, waiting at most `timeout` (at most
    /// [`SHUTDOWN_TIMEOUT_FAILING`] when the last export failed). Call it outside any
    /// Tokio runtime (at the end of `main`).
    pub fn shutdown(mut self, timeout: Duration) {
        let timeout = match self.healthy.load(Ordering::Relaxed) {
            true => timeout,
            false => timeout.min(SHUTDOWN_TIMEOUT_FAILING),
        };
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "pending spans were not all exported at shutdown");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

/// The OTLP exporter, remembering whether its last export succeeded. It says so once
/// when exports start failing and once when they work again (the SDK's own log, one
/// error per failed batch, is off by default; see [`log::init`]).
#[derive(Debug)]
struct Watched {
    inner: opentelemetry_otlp::SpanExporter,
    healthy: Arc<AtomicBool>,
    endpoint: String,
}

impl opentelemetry_sdk::trace::SpanExporter for Watched {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let result = self.inner.export(batch).await;
        let was = self.healthy.swap(result.is_ok(), Ordering::Relaxed);
        match (&result, was) {
            (Err(e), true) => tracing::warn!(endpoint = %self.endpoint, error = %e,
                "cannot export traces; spans are dropped until the collector answers"),
            (Ok(()), false) => {
                tracing::warn!(endpoint = %self.endpoint, "trace export works again")
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The resource: `service.name` (unless the environment names it), `service.version`,
/// `process.pid`, plus `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(service: &str) -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let builder = Resource::builder().with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("process.pid", i64::from(std::process::id())),
    ]);
    let builder = if named_by_env {
        builder
    } else {
        builder.with_service_name(service.to_string())
    };
    builder.build()
}

/// The W3C `traceparent` of `cx`'s span, if it has a valid one (version 00, as the
/// propagator writes it; formatted directly, as it is made once per dispatch).
pub fn traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    Some(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
}

/// The remote span context a `traceparent` names (an empty context if it is malformed:
/// a bad header starts a new trace, never an error).
pub fn context_from_traceparent(traceparent: &str) -> Context {
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` (an [`OTEL_TARGET`] span) a child of the remote span `traceparent`
/// names. Does nothing when traces are off.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = context_from_traceparent(traceparent);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` of the innermost exported `tracing` span around the caller.
pub fn current_traceparent() -> Option<String> {
    use tracing_subscriber::registry::LookupSpan;
    let current = tracing::Span::current();
    let id = current.id()?;
    tracing::dispatcher::get_default(|dispatch| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let ids: Vec<tracing::span::Id> = registry.span(&id)?.scope().map(|s| s.id()).collect();
        ids.iter().find_map(|id| {
            let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
            traceparent(&cx)
        })
    })
}

/// The context in `traceparent`/`tracestate` headers, if any.
pub fn extract_headers(get: impl Fn(&str) -> Option<String>) -> Option<Context> {
    let tp = get("traceparent")?;
    let mut carrier = HashMap::from([("traceparent".to_string(), tp)]);
    if let Some(ts) = get("tracestate") {
        carrier.insert("tracestate".to_string(), ts);
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The `traceparent`/`tracestate` headers of `cx` (empty if it has no valid span).
pub fn inject_headers(cx: &Context) -> Vec<(&'static str, String)> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    let mut out = Vec::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(v) = carrier.remove(key).filter(|v| !v.is_empty()) {
            out.push((key, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn traceparent_round_trips_and_bad_input_starts_a_new_trace() {
        let sc = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc.clone());
        let tp = traceparent(&cx).expect("valid context");
        assert_eq!(
            tp,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let back = context_from_traceparent(&tp);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
        assert!(traceparent(&context_from_traceparent("garbage")).is_none());
        assert!(traceparent(&Context::new()).is_none());
        assert!(extract_headers(|_| Some("00-zz".into())).is_none());
        let headers = inject_headers(&cx);
        assert_eq!(headers, vec![("traceparent", tp)]);
    }
}
