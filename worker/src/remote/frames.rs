//! Translation between session frames (`gatehouse.v1` worker messages) and the
//! executor's [`ToWorker`](gatehouse_common::exec::ToWorker) /
//! [`FromWorker`] messages. Pure functions apart from
//! [`prepare_assignment`], which creates the attempt's scratch directory.
//!
//! Decoding never trusts the coordinator: a frame that cannot be understood is an error
//! value, never a panic. An assignment whose attempt decodes but whose spec does not is
//! still an assignment, so it can be answered with `AttemptFinished { SpawnFailed }`.

use std::time::Duration;

use gatehouse_cache::Membership;
use gatehouse_common::cache::CacheKey;
use gatehouse_common::exec::{Assignment, AttemptRef, ExitStatus, FromWorker, GateResult};
use gatehouse_proto::cache::key_from_wire;
use gatehouse_proto::convert::{WireError, attempt_from_wire, gate_spec_from_wire};
use gatehouse_proto::v1::{self, coordinator_message, worker_message};
use tempfile::TempDir;

use crate::remote::memory::MemorySample;
use crate::remote::workspace::Workspace;

/// Heartbeat interval used when `Welcome` leaves it at 0.
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// The shortest heartbeat interval honoured, so a bad `Welcome` cannot make us spin.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// What the coordinator told us in `Welcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Welcome {
    /// How often to send a heartbeat.
    pub(crate) heartbeat: Duration,
    /// How long the coordinator waits for a heartbeat before declaring us lost (logged).
    pub(crate) liveness: Duration,
}

/// A decoded coordinator frame.
// Assignments are most of the frames a worker receives: boxing them would cost an
// allocation each to shrink the rare ones.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Inbound {
    Welcome(Welcome),
    /// The spec is decoded by [`prepare_assignment`], whose failure is reported back.
    Assign {
        attempt: AttemptRef,
        spec: Option<v1::GateSpec>,
        /// Where to cache the result if it passes (a malformed key is dropped).
        cache_key: Option<CacheKey>,
        /// The coordinator's gate span, when the plan is traced.
        traceparent: Option<String>,
        /// Tests whose passes the result lists (malformed keys are dropped).
        watch: std::sync::Arc<[gatehouse_common::reports::TestKey]>,
    },
    Cancel {
        attempt: AttemptRef,
        grace: Duration,
    },
    /// The coordinator durably recorded these attempts' results.
    Ack(Vec<AttemptRef>),
    /// The cache's current membership.
    CacheMembers(Membership),
}

/// Decodes one coordinator frame.
pub(crate) fn decode(msg: v1::CoordinatorMessage) -> Result<Inbound, WireError> {
    match msg.msg.ok_or(WireError::Missing("msg"))? {
        coordinator_message::Msg::Welcome(w) => Ok(Inbound::Welcome(Welcome {
            heartbeat: match w.heartbeat_interval_ms {
                0 => DEFAULT_HEARTBEAT,
                ms => Duration::from_millis(ms).max(MIN_HEARTBEAT),
            },
            liveness: Duration::from_millis(w.liveness_timeout_ms),
        })),
        coordinator_message::Msg::Assign(a) => Ok(Inbound::Assign {
            attempt: attempt_from_wire(a.attempt)?,
            spec: a.spec,
            cache_key: match a.cache_key.is_empty() {
                true => None,
                false => key_from_wire(&a.cache_key).ok(),
            },
            traceparent: Some(a.traceparent).filter(|t| !t.is_empty()),
            watch: a
                .watch
                .iter()
                .filter_map(|k| {
                    gatehouse_proto::convert::reports::key_from_wire(k, "assign.watch").ok()
                })
                .collect(),
        }),
        coordinator_message::Msg::CacheMembers(m) => {
            Ok(Inbound::CacheMembers(Membership::from_wire(&m)?))
        }
        coordinator_message::Msg::Cancel(c) => Ok(Inbound::Cancel {
            attempt: attempt_from_wire(c.attempt)?,
            grace: Duration::from_millis(c.grace_ms),
        }),
        coordinator_message::Msg::Ack(a) => Ok(Inbound::Ack(
            a.attempts
                .into_iter()
                .map(|r| attempt_from_wire(Some(r)))
                .collect::<Result<_, _>>()?,
        )),
    }
}

/// An assignment ready for the executor, with what the session tracks about it.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) assignment: Assignment,
    /// The gate's memory request, counted against a simulated total.
    pub(crate) memory: u64,
    /// The attempt's scratch directory, removed after it finished.
    pub(crate) scratch: Option<TempDir>,
}

/// Decodes an assignment's spec and gives it its working directory; the error text
/// becomes the `SpawnFailed` reason reported to the coordinator.
pub(crate) fn prepare_assignment(
    workspace: &Workspace,
    attempt: AttemptRef,
    spec: Option<v1::GateSpec>,
    traceparent: Option<String>,
) -> Result<Prepared, String> {
    let spec = spec.ok_or_else(|| WireError::Missing("spec").to_string())?;
    let dir = workspace
        .for_attempt(&spec.gate_id)
        .map_err(|e| format!("cannot create a scratch directory: {e}"))?;
    let memory = spec.memory_bytes;
    let spec = gate_spec_from_wire(spec, &dir.base).map_err(|e| e.to_string())?;
    Ok(Prepared {
        assignment: Assignment {
            attempt,
            spec: spec.into(),
            cache_key: None,
            traceparent,
            watch: Default::default(),
        },
        memory,
        scratch: dir.scratch,
    })
}

/// The first frame of a session: the configuration, the attempts still running and
/// the unacknowledged results that fit (see [`Unacked`](crate::remote::unacked::Unacked)).
pub(crate) fn hello<'a>(
    cfg: &crate::remote::RemoteWorkerConfig,
    cache_url: Option<&str>,
    hostname: &str,
    memory_total: u64,
    running: impl IntoIterator<Item = &'a AttemptRef>,
    finished: &[(AttemptRef, GateResult)],
) -> v1::WorkerMessage {
    frame(worker_message::Msg::Hello(v1::Hello {
        worker_id: cfg.id.to_string(),
        hostname: hostname.to_owned(),
        slots: cfg.slots,
        memory_total_bytes: memory_total,
        labels: cfg.labels.clone().into_iter().collect(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        running: running.into_iter().map(v1::AttemptRef::from).collect(),
        memory_pressure: cfg.memory_pressure.unwrap_or(0.0),
        cache_url: cache_url.unwrap_or_default().to_owned(),
        finished: finished
            .iter()
            .map(|(attempt, result)| finished_message(attempt, result))
            .collect(),
    }))
}

/// A heartbeat.
pub(crate) fn heartbeat<'a>(
    free_slots: u32,
    memory: MemorySample,
    running: impl IntoIterator<Item = &'a AttemptRef>,
) -> v1::WorkerMessage {
    frame(worker_message::Msg::Heartbeat(v1::Heartbeat {
        free_slots,
        memory_used_bytes: memory.used,
        memory_available_bytes: memory.available,
        running: running.into_iter().map(v1::AttemptRef::from).collect(),
    }))
}

/// An executor report as a frame.
pub(crate) fn report(report: &FromWorker) -> v1::WorkerMessage {
    match report {
        FromWorker::Started { attempt } => {
            frame(worker_message::Msg::Started(v1::AttemptStarted {
                attempt: Some(attempt.into()),
            }))
        }
        FromWorker::Finished { attempt, result } => finished(attempt, result),
    }
}

/// `AttemptFinished` for `attempt`.
pub(crate) fn finished(attempt: &AttemptRef, result: &GateResult) -> v1::WorkerMessage {
    frame(worker_message::Msg::Finished(finished_message(
        attempt, result,
    )))
}

fn finished_message(attempt: &AttemptRef, result: &GateResult) -> v1::AttemptFinished {
    v1::AttemptFinished {
        attempt: Some(attempt.into()),
        result: Some(result.into()),
    }
}

/// `Draining { grace_ms }`.
pub(crate) fn draining(grace: Duration) -> v1::WorkerMessage {
    frame(worker_message::Msg::Draining(v1::Draining {
        grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
    }))
}

/// The result of an attempt that never ran.
pub(crate) fn not_run(status: ExitStatus) -> GateResult {
    GateResult {
        status,
        duration: Duration::ZERO,
        peak_memory: None,
        stdout: Default::default(),
        stderr: Default::default(),
        tests: None,
    }
}

fn frame(msg: worker_message::Msg) -> v1::WorkerMessage {
    v1::WorkerMessage { msg: Some(msg) }
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
