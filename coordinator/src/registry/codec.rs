//! The encoding of what the registry stores: a plan's record (its document, as
//! submitted, and options) and chunks of its event log.
//!
//! Every value is framed as `[format version][compression][payload]`: the payload is
//! bincode (serde, standard config) of a private, versioned shape (so the in-memory
//! types can change without breaking stored state), zstd-compressed when it is larger
//! than [`COMPRESS_ABOVE`] bytes (stdout/stderr tails compress well). A value of an
//! unknown version or that does not decode is [`CodecError`], never a panic.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::exec::GateResult;
use gatehouse_common::ids::{GateIdx, ItemIdx, PlanId, WorkerId};
use gatehouse_common::plan::PlanFormat;
use gatehouse_common::source::Resolution;
use serde::{Deserialize, Serialize};

use crate::core::{
    Counts, GateEvent, GateStatus, PlanEvent, PlanOutcome, PlanSummary, RunOptions, Terminal,
};

/// Format version of event chunks, written in the first byte of each. Version 2 added
/// landing's records (a new event variant), version 3 per-test results (a `Tests`
/// entry after the gate event they belong to); older chunks are still read.
const EVENTS_VERSION: u8 = 3;
/// Format version of plan records, written in the first byte of each. Version 2 added
/// the trace context, version 3 a source plan's resolution, version 4 landing; older
/// records are still read (as having none of what came later).
const RECORD_VERSION: u8 = 4;
/// Payloads larger than this are compressed.
pub const COMPRESS_ABOVE: usize = 512;
const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// zstd level: fast; the payloads are small and written on the scheduling path.
const ZSTD_LEVEL: i32 = 1;

/// A stored value that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

/// The plan as submitted: enough to parse and validate it again on restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanSource {
    /// The plan document.
    pub document: String,
    /// Its format.
    pub format: PlanFormat,
    /// The name used in validation messages.
    pub name: String,
    /// A source plan's resolution, made once at submission: a later leader uses the
    /// recorded commits and never resolves again.
    pub resolution: Option<Arc<Resolution>>,
}

/// What is stored once per plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRecord {
    pub source: PlanSource,
    pub options: RunOptions,
    pub submitted_unix_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct RecordV1 {
    document: String,
    json: bool,
    name: String,
    use_cache: bool,
    submitted_unix_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct RecordV2 {
    document: String,
    json: bool,
    name: String,
    use_cache: bool,
    submitted_unix_ms: u64,
    /// The W3C `traceparent` the plan's span was started under, so that a replica
    /// resuming the plan keeps it in the same trace.
    trace_parent: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RecordV3 {
    document: String,
    json: bool,
    name: String,
    use_cache: bool,
    submitted_unix_ms: u64,
    trace_parent: Option<String>,
    /// The resolution as JSON (its own serde shape, which tolerates added fields).
    resolution: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RecordV4 {
    v3: RecordV3,
    /// Landing asked at submission, as JSON (`LandSpec`).
    land: Option<String>,
}

/// A log chunk: which leadership term wrote it, and the events.
#[derive(Serialize, Deserialize)]
struct ChunkV1 {
    term: i64,
    events: Vec<EventV1>,
}

#[derive(Serialize, Deserialize)]
enum EventV1 {
    Gate {
        gate: u32,
        status: StatusV1,
        attempt: u32,
        worker: Option<String>,
        cached: bool,
        flaky: bool,
        result: Option<ResultV1>,
        reason: Option<String>,
        cause: Option<u32>,
    },
    Finished {
        outcome: u8,
        counts: [u32; 8],
        merge_order: Vec<u32>,
        duration_ms: u64,
    },
    /// A landing step, as JSON (`LandRecord`'s own serde shape).
    Land(String),
    /// Per-test results of the gate event just before it, as JSON (their own serde
    /// shapes, which tolerate added fields): the attempt's reports (`GateTests`) and
    /// the scheduler's verdict (`TestVerdict`).
    Tests {
        result: Option<String>,
        verdict: Option<String>,
    },
}

/// A gate result as version 1 and 2 chunks hold it (the shape of `GateResult` before
/// per-test results), so those chunks keep decoding.
#[derive(Serialize, Deserialize)]
struct ResultV1 {
    status: gatehouse_common::exec::ExitStatus,
    duration: Duration,
    peak_memory: Option<u64>,
    stdout: gatehouse_common::exec::OutputTail,
    stderr: gatehouse_common::exec::OutputTail,
}

impl ResultV1 {
    fn of(r: &GateResult) -> Self {
        Self {
            status: r.status.clone(),
            duration: r.duration,
            peak_memory: r.peak_memory,
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
        }
    }

    fn into_result(self) -> GateResult {
        GateResult {
            status: self.status,
            duration: self.duration,
            peak_memory: self.peak_memory,
            stdout: self.stdout,
            stderr: self.stderr,
            tests: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum StatusV1 {
    Dispatched,
    Running,
    Retrying { backoff_ms: u64 },
    Waiting { reason: String },
    Finished(u8),
}

/// Encodes a plan record.
pub fn encode_record(record: &PlanRecord) -> Vec<u8> {
    frame(
        RECORD_VERSION,
        &RecordV4 {
            v3: RecordV3 {
                document: record.source.document.clone(),
                json: record.source.format == PlanFormat::Json,
                name: record.source.name.clone(),
                use_cache: record.options.use_cache,
                submitted_unix_ms: record.submitted_unix_ms,
                trace_parent: record.options.trace_parent.clone(),
                resolution: record.source.resolution.as_ref().map(|r| {
                    serde_json::to_string(r.as_ref()).expect("a resolution always serializes")
                }),
            },
            land: record
                .options
                .land
                .as_ref()
                .map(|l| serde_json::to_string(l).expect("a landing spec always serializes")),
        },
    )
}

/// Decodes a plan record (of format version 1 to 4).
pub fn decode_record(bytes: &[u8]) -> Result<PlanRecord, CodecError> {
    let (version, payload) = unframe(bytes, &[1, 2, 3, RECORD_VERSION])?;
    let mut land = None;
    let r = match version {
        1 => {
            let r: RecordV1 = decode(&payload)?;
            RecordV3 {
                document: r.document,
                json: r.json,
                name: r.name,
                use_cache: r.use_cache,
                submitted_unix_ms: r.submitted_unix_ms,
                trace_parent: None,
                resolution: None,
            }
        }
        2 => {
            let r: RecordV2 = decode(&payload)?;
            RecordV3 {
                document: r.document,
                json: r.json,
                name: r.name,
                use_cache: r.use_cache,
                submitted_unix_ms: r.submitted_unix_ms,
                trace_parent: r.trace_parent,
                resolution: None,
            }
        }
        3 => decode(&payload)?,
        _ => {
            let r: RecordV4 = decode(&payload)?;
            land = r.land;
            r.v3
        }
    };
    let land = match land {
        None => None,
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| CodecError(format!("the stored landing does not decode: {e}")))?,
        ),
    };
    let resolution = match r.resolution {
        None => None,
        Some(text) => Some(Arc::new(
            serde_json::from_str::<Resolution>(&text)
                .map_err(|e| CodecError(format!("the stored resolution does not decode: {e}")))?,
        )),
    };
    Ok(PlanRecord {
        source: PlanSource {
            document: r.document,
            format: if r.json {
                PlanFormat::Json
            } else {
                PlanFormat::Yaml
            },
            name: r.name,
            resolution,
        },
        options: RunOptions {
            use_cache: r.use_cache,
            trace_parent: r.trace_parent,
            // Filled from the resolution once the document is parsed again (restore).
            blocked: Vec::new(),
            land,
        },
        submitted_unix_ms: r.submitted_unix_ms,
    })
}

/// Encodes consecutive events of one plan, written in leadership term `term` (the
/// leader's election-key create revision; 0 for a standalone coordinator).
pub fn encode_events<'a>(term: i64, events: impl IntoIterator<Item = &'a PlanEvent>) -> Vec<u8> {
    let mut encoded = Vec::new();
    for event in events {
        encoded.push(event_to_v1(event));
        if let PlanEvent::Gate(g) = event {
            let result = g.result.as_ref().and_then(|r| r.tests.as_deref());
            if result.is_some() || g.verdict.is_some() {
                encoded.push(EventV1::Tests {
                    result: result.map(to_json),
                    verdict: g.verdict.as_deref().map(to_json),
                });
            }
        }
    }
    let events = encoded;
    frame(EVENTS_VERSION, &ChunkV1 { term, events })
}

/// Decodes a chunk of events of plan `plan`.
pub fn decode_events(plan: &PlanId, bytes: &[u8]) -> Result<Vec<PlanEvent>, CodecError> {
    let chunk: ChunkV1 = decode(&unframe(bytes, &[1, 2, EVENTS_VERSION])?.1)?;
    let mut events: Vec<PlanEvent> = Vec::with_capacity(chunk.events.len());
    for e in chunk.events {
        if let EventV1::Tests { result, verdict } = e {
            let Some(PlanEvent::Gate(g)) = events.last_mut() else {
                return Err(CodecError("test results that follow no gate event".into()));
            };
            let bad = |e: serde_json::Error| CodecError(format!("test results do not decode: {e}"));
            if let (Some(text), Some(r)) = (result, g.result.as_mut()) {
                r.tests = Some(Box::new(serde_json::from_str(&text).map_err(bad)?));
            }
            if let Some(text) = verdict {
                g.verdict = Some(Box::new(serde_json::from_str(&text).map_err(bad)?));
            }
            continue;
        }
        events.push(event_from_v1(plan, e)?);
    }
    Ok(events)
}

/// JSON of a plain data type (no maps with non-string keys), which cannot fail.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data always serializes")
}

/// The term that wrote a chunk, and how many entries it holds (for audits and tests;
/// a gate event's test results are an entry of their own).
pub fn chunk_term(bytes: &[u8]) -> Result<(i64, usize), CodecError> {
    let chunk: ChunkV1 = decode(&unframe(bytes, &[1, 2, EVENTS_VERSION])?.1)?;
    Ok((chunk.term, chunk.events.len()))
}

/// Format version of a test-history record: the registry's framing of the bincode of
/// a `TestRun`. Version 1, JSON after the version byte, is still read.
const TESTS_VERSION: u8 = 2;
const TESTS_VERSION_JSON: u8 = 1;

/// Encodes a test-history fact.
pub fn encode_test_run(run: &gatehouse_common::reports::history::TestRun) -> Vec<u8> {
    frame(TESTS_VERSION, run)
}

/// Decodes a test-history fact.
pub fn decode_test_run(
    bytes: &[u8],
) -> Result<gatehouse_common::reports::history::TestRun, CodecError> {
    if let Some((&TESTS_VERSION_JSON, json)) = bytes.split_first() {
        return serde_json::from_slice(json).map_err(|e| CodecError(format!("cannot decode: {e}")));
    }
    decode(&unframe(bytes, &[TESTS_VERSION])?.1)
}

fn frame<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let payload = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("the stored shapes contain only serializable data");
    let mut out = Vec::with_capacity(payload.len().min(COMPRESS_ABOVE) + 2);
    out.push(version);
    if payload.len() > COMPRESS_ABOVE
        && let Ok(compressed) = zstd::bulk::compress(&payload, ZSTD_LEVEL)
        && compressed.len() < payload.len()
    {
        out.push(ZSTD);
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&compressed);
        return out;
    }
    out.push(RAW);
    out.extend_from_slice(&payload);
    out
}

/// Largest decompressed payload accepted (guards against a corrupt length).
const MAX_PAYLOAD: u64 = 256 << 20;

/// Checks a value's framing: returns its format version (one of `accepted`) and its
/// payload, decompressed.
fn unframe<'a>(bytes: &'a [u8], accepted: &[u8]) -> Result<(u8, Cow<'a, [u8]>), CodecError> {
    let (&version, rest) = bytes
        .split_first()
        .ok_or_else(|| CodecError("empty value".into()))?;
    if !accepted.contains(&version) {
        let reads: Vec<String> = accepted.iter().map(u8::to_string).collect();
        return Err(CodecError(format!(
            "stored format version {version} is not supported (this build reads {})",
            reads.join(" and ")
        )));
    }
    let (&compression, rest) = rest
        .split_first()
        .ok_or_else(|| CodecError("truncated value".into()))?;
    let payload = match compression {
        RAW => Cow::Borrowed(rest),
        ZSTD => {
            let (len, data) = rest
                .split_at_checked(8)
                .ok_or_else(|| CodecError("truncated value".into()))?;
            let len = u64::from_le_bytes(len.try_into().expect("split at 8 bytes"));
            if len > MAX_PAYLOAD {
                return Err(CodecError(format!("payload of {len} bytes is too large")));
            }
            Cow::Owned(
                zstd::bulk::decompress(data, len as usize)
                    .map_err(|e| CodecError(format!("cannot decompress: {e}")))?,
            )
        }
        other => return Err(CodecError(format!("unknown compression {other}"))),
    };
    Ok((version, payload))
}

/// Decodes a payload that must hold exactly one value.
fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map_err(|e| CodecError(format!("cannot decode: {e}")))?;
    if used != payload.len() {
        return Err(CodecError("trailing bytes after the value".into()));
    }
    Ok(value)
}

fn terminal_code(t: Terminal) -> u8 {
    match t {
        Terminal::Passed => 0,
        Terminal::Failed => 1,
        Terminal::TimedOut => 2,
        Terminal::Skipped => 3,
        Terminal::Cancelled => 4,
    }
}

fn terminal_from(code: u8) -> Result<Terminal, CodecError> {
    Ok(match code {
        0 => Terminal::Passed,
        1 => Terminal::Failed,
        2 => Terminal::TimedOut,
        3 => Terminal::Skipped,
        4 => Terminal::Cancelled,
        other => return Err(CodecError(format!("unknown terminal state {other}"))),
    })
}

fn event_to_v1(event: &PlanEvent) -> EventV1 {
    match event {
        PlanEvent::Gate(g) => EventV1::Gate {
            gate: g.gate.0,
            status: match &g.status {
                GateStatus::Dispatched => StatusV1::Dispatched,
                GateStatus::Running => StatusV1::Running,
                GateStatus::Retrying { backoff } => StatusV1::Retrying {
                    backoff_ms: backoff.as_millis() as u64,
                },
                GateStatus::Waiting { reason } => StatusV1::Waiting {
                    reason: reason.clone(),
                },
                GateStatus::Finished(t) => StatusV1::Finished(terminal_code(*t)),
            },
            attempt: g.attempt,
            worker: g.worker.as_ref().map(|w| w.to_string()),
            cached: g.cached,
            flaky: g.flaky,
            result: g.result.as_ref().map(ResultV1::of),
            reason: g.reason.map(str::to_owned),
            cause: g.cause.map(|c| c.0),
        },
        PlanEvent::Finished(s) => {
            let c = s.counts;
            EventV1::Finished {
                outcome: match s.outcome {
                    PlanOutcome::Passed => 0,
                    PlanOutcome::Failed => 1,
                    PlanOutcome::Cancelled => 2,
                },
                counts: [
                    c.total,
                    c.passed,
                    c.failed,
                    c.timed_out,
                    c.skipped,
                    c.cancelled,
                    c.cached,
                    c.flaky,
                ],
                merge_order: s.merge_order.iter().map(|i| i.0).collect(),
                duration_ms: s.duration.as_millis() as u64,
            }
        }
        PlanEvent::Land { record, .. } => EventV1::Land(to_json(record)),
    }
}

/// Logs written before events named workers by id stored the session as
/// `id#generation`; a worker id never contains `#` (see `ids::is_valid_id`).
fn worker_id_of(mut stored: String) -> String {
    if let Some(at) = stored.find('#') {
        stored.truncate(at);
    }
    stored
}

fn event_from_v1(plan: &PlanId, event: EventV1) -> Result<PlanEvent, CodecError> {
    Ok(match event {
        EventV1::Gate {
            gate,
            status,
            attempt,
            worker,
            cached,
            flaky,
            result,
            reason,
            cause,
        } => PlanEvent::Gate(GateEvent {
            plan: plan.clone(),
            gate: GateIdx(gate),
            status: match status {
                StatusV1::Dispatched => GateStatus::Dispatched,
                StatusV1::Running => GateStatus::Running,
                StatusV1::Retrying { backoff_ms } => GateStatus::Retrying {
                    backoff: Duration::from_millis(backoff_ms),
                },
                StatusV1::Waiting { reason } => GateStatus::Waiting { reason },
                StatusV1::Finished(t) => GateStatus::Finished(terminal_from(t)?),
            },
            attempt,
            worker: worker.map(|w| WorkerId::new(worker_id_of(w))),
            cached,
            flaky,
            result: result.map(ResultV1::into_result),
            reason: reason
                .as_deref()
                .map(gatehouse_common::events::known_reason),
            cause: cause.map(GateIdx),
            // An observation for metrics and traces at dispatch time; not journaled.
            queued: None,
            verdict: None,
        }),
        EventV1::Finished {
            outcome,
            counts: c,
            merge_order,
            duration_ms,
        } => PlanEvent::Finished(PlanSummary {
            plan: plan.clone(),
            outcome: match outcome {
                0 => PlanOutcome::Passed,
                1 => PlanOutcome::Failed,
                2 => PlanOutcome::Cancelled,
                other => return Err(CodecError(format!("unknown plan outcome {other}"))),
            },
            counts: Counts {
                total: c[0],
                passed: c[1],
                failed: c[2],
                timed_out: c[3],
                skipped: c[4],
                cancelled: c[5],
                cached: c[6],
                flaky: c[7],
            },
            merge_order: merge_order.into_iter().map(ItemIdx).collect(),
            duration: Duration::from_millis(duration_ms),
        }),
        EventV1::Tests { .. } => {
            return Err(CodecError("test results that follow no gate event".into()));
        }
        EventV1::Land(text) => PlanEvent::Land {
            plan: plan.clone(),
            record: serde_json::from_str(&text)
                .map_err(|e| CodecError(format!("a landing record does not decode: {e}")))?,
        },
    })
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
