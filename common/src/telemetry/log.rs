//! The process's `tracing` subscriber: diagnostics on stderr (`pretty` or `json`) and,
//! when traces are exported, the layer that turns [`super::OTEL_TARGET`] spans into
//! OpenTelemetry spans.
//!
//! JSON lines carry `timestamp`, `level`, `target`, `message`, the event's fields at the
//! top level, `span` and `spans` (name and fields, root first) and, inside a traced
//! span, `trace_id` and `span_id`, so a log line can be found from its trace and back.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::OTEL_TARGET;

/// How diagnostics are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, colored when stderr is a terminal.
    Pretty,
    /// One JSON object per line (see the module docs).
    Json,
}

/// Installs the subscriber for the process. `RUST_LOG` wins over `level` when it is set
/// and valid; an invalid `level` is an error. With `tracer`, [`OTEL_TARGET`] spans are
/// exported through it whatever the log level.
pub fn init(
    level: &str,
    format: LogFormat,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
) -> Result<(), tracing_subscriber::filter::ParseError> {
    use std::io::IsTerminal;
    // The OpenTelemetry SDK logs an error per failed export batch; the exporter says it
    // once instead (`Watched`). RUST_LOG can still turn the SDK's own log on.
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(format!(
            "{level},opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,opentelemetry-otlp=off"
        ))?,
    };
    let json = JsonLines::default();
    let dispatch_cell = json.dispatch.clone();
    let stderr = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .fmt_fields(JsonFields::new())
            .event_format(json)
            .boxed(),
    };
    // Filters are per layer: the log level must not hide the exported spans, and the
    // exporter sees only its own target, plus warnings and errors inside those spans
    // (as span events). Both filters depend on metadata only, so `tracing` decides once
    // per callsite and a disabled one costs nothing.
    let otel = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            // Nothing reads the OpenTelemetry "current context" inside these spans;
            // attaching it on every poll of an instrumented future costs for nothing.
            .with_context_activation(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                if meta.is_span() {
                    meta.target() == OTEL_TARGET
                } else {
                    *meta.level() <= tracing::Level::WARN
                        && !meta.target().starts_with("opentelemetry")
                }
            }))
    });
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(stderr.with_filter(filter))
            .with(otel),
    );
    let _ = dispatch_cell.set(dispatch.downgrade());
    dispatch.init();
    Ok(())
}

/// The JSON event format (see the module docs). It holds the dispatcher it formats
/// for: while an event is dispatched, `tracing` hides the current one from lookups.
#[derive(Default)]
struct JsonLines {
    dispatch: Arc<OnceLock<tracing::dispatcher::WeakDispatch>>,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        obj.insert("level".into(), meta.level().as_str().into());
        obj.insert("target".into(), meta.target().into());
        event.record(&mut JsonVisitor(&mut obj));
        let mut ids = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            let mut spans = Vec::new();
            for span in scope.from_root() {
                let mut entry = Map::new();
                entry.insert("name".into(), span.name().into());
                {
                    let ext = span.extensions();
                    if let Some(fields) = ext.get::<FormattedFields<N>>()
                        && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                    {
                        entry.extend(map);
                    }
                }
                ids.push(span.id());
                spans.push(Value::Object(entry));
            }
            if let Some(last) = spans.last() {
                obj.insert("span".into(), last.clone());
            }
            obj.insert("spans".into(), Value::Array(spans));
        }
        // The innermost exported span names the trace (no extension guard is held here:
        // reading the OpenTelemetry context may take the span's extensions mutably).
        let dispatch = self.dispatch.get().and_then(|d| d.upgrade());
        if let Some((trace_id, span_id)) = dispatch.and_then(|d| innermost_trace(&d, &ids)) {
            obj.insert("trace_id".into(), trace_id.into());
            obj.insert("span_id".into(), span_id.into());
        }
        writeln!(writer, "{}", Value::Object(obj))
    }
}

/// Trace and span id of the innermost span of `ids` (root first) that is exported.
fn innermost_trace(
    dispatch: &tracing::Dispatch,
    ids: &[tracing::span::Id],
) -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt;
    ids.iter().rev().find_map(|id| {
        let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    })
}

/// Records an event's fields into a JSON object.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_fields_spans_and_the_trace_of_an_exported_span() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let buf = Buf::default();
        let json = JsonLines::default();
        let cell = json.dispatch.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(buf.clone())
                    .fmt_fields(JsonFields::new())
                    .event_format(json),
            )
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("t"))
                    .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                        !m.is_span() || m.target() == OTEL_TARGET
                    })),
            );
        let dispatch = tracing::Dispatch::new(subscriber);
        let _ = cell.set(dispatch.downgrade());
        let trace_id = tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(answer = 42, "outside");
            let rpc = tracing::info_span!(target: OTEL_TARGET, "rpc", method = "Submit");
            let _rpc = rpc.enter();
            let inner = tracing::info_span!("local", plan_id = "p1");
            let _inner = inner.enter();
            tracing::warn!(ok = true, "inside");
            super::super::current_traceparent()
        });
        let out = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["answer"], 42);
        assert!(lines[0].get("trace_id").is_none());
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["ok"], true);
        assert_eq!(lines[1]["span"]["name"], "local");
        assert_eq!(lines[1]["span"]["plan_id"], "p1");
        assert_eq!(lines[1]["spans"][0]["method"], "Submit");
        // The local span is not exported: the ids are the enclosing rpc span's, and
        // the traceparent seen inside names the same trace.
        let tid = lines[1]["trace_id"].as_str().expect("trace id");
        assert_eq!(tid.len(), 32);
        assert_eq!(lines[1]["span_id"].as_str().map(str::len), Some(16));
        assert!(trace_id.expect("traceparent inside").contains(tid));
    }
}
