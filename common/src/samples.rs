//! Sample values of the published types, for the tests of every crate that converts or
//! renders them (the wire conversions, the CLI's rendering), so they all check the same
//! events. Compiled only with the `testing` feature, which those crates enable as a
//! dev-dependency.

use std::path::Path;
use std::time::Duration;

use crate::events::{GateEvent, GateStatus, Terminal};
use crate::exec::{ExitStatus, GateResult, OutputTail};
use crate::ids::{GateIdx, PlanId, WorkerId};
use crate::plan::{Plan, PlanFormat, parse_plan};

/// A result with `status`, `out\n` on stdout and `stderr` (of which `dropped` bytes
/// were cut) on stderr.
pub fn result(status: ExitStatus, stderr: &str, dropped: u64) -> GateResult {
    GateResult {
        status,
        duration: Duration::from_millis(1234),
        peak_memory: Some(3_600_000),
        stdout: OutputTail {
            bytes: b"out\n".to_vec(),
            dropped: 0,
        },
        stderr: OutputTail {
            bytes: stderr.as_bytes().to_vec(),
            dropped,
        },
        tests: None,
    }
}

/// An event of `gate` of plan `p-1`, attempt 1 on worker `w-1`.
pub fn event(gate: u32, status: GateStatus) -> GateEvent {
    let worker = Some(WorkerId::new("w-1"));
    GateEvent::new(PlanId::new("p-1"), GateIdx(gate), status, 1, worker)
}

/// One event of every kind the core emits, with the fields each carries.
pub fn every_kind_of_event() -> Vec<GateEvent> {
    let failed = |status| Some(result(status, "boom\nbad things\n", 0));
    vec![
        event(0, GateStatus::Dispatched),
        event(0, GateStatus::Running),
        GateEvent {
            attempt: 2,
            result: failed(ExitStatus::Exited(3)),
            reason: Some("exit_code"),
            ..event(
                0,
                GateStatus::Retrying {
                    backoff: Duration::from_millis(1500),
                },
            )
        },
        GateEvent {
            worker: None,
            attempt: 0,
            reason: Some("unschedulable"),
            ..event(
                1,
                GateStatus::Waiting {
                    reason: "needs 64Gi; no worker has that much".into(),
                },
            )
        },
        GateEvent {
            attempt: 3,
            flaky: true,
            result: Some(result(ExitStatus::Exited(0), "", 0)),
            ..event(0, GateStatus::Finished(Terminal::Passed))
        },
        GateEvent {
            attempt: 0,
            cached: true,
            worker: None,
            result: Some(result(ExitStatus::Exited(0), "", 0)),
            ..event(3, GateStatus::Finished(Terminal::Passed))
        },
        GateEvent {
            result: Some(result(
                ExitStatus::Exited(2),
                "line\n".repeat(30).as_str(),
                77,
            )),
            reason: Some("exit_code"),
            ..event(1, GateStatus::Finished(Terminal::Failed))
        },
        GateEvent {
            result: failed(ExitStatus::Signaled(9)),
            reason: Some("signal"),
            ..event(1, GateStatus::Finished(Terminal::Failed))
        },
        GateEvent {
            // The wire has one peak field: an executor reports the peak that crossed
            // the limit as the attempt's sampled peak too.
            result: Some(GateResult {
                peak_memory: Some(9 << 30),
                ..result(
                    ExitStatus::MemoryExceeded {
                        peak: 9 << 30,
                        limit: 4 << 30,
                    },
                    "killed\n",
                    0,
                )
            }),
            reason: Some("memory"),
            ..event(1, GateStatus::Finished(Terminal::Failed))
        },
        GateEvent {
            result: failed(ExitStatus::SpawnFailed("no such directory".into())),
            reason: Some("spawn_failed"),
            ..event(1, GateStatus::Finished(Terminal::Failed))
        },
        GateEvent {
            result: failed(ExitStatus::TimedOut),
            reason: Some("timeout"),
            ..event(1, GateStatus::Finished(Terminal::TimedOut))
        },
        GateEvent {
            worker: None,
            attempt: 0,
            reason: Some("dependency_failed"),
            cause: Some(GateIdx(1)),
            ..event(2, GateStatus::Finished(Terminal::Skipped))
        },
        GateEvent {
            worker: None,
            attempt: 0,
            reason: Some("fail_fast"),
            ..event(2, GateStatus::Finished(Terminal::Skipped))
        },
        GateEvent {
            result: failed(ExitStatus::Cancelled),
            reason: Some("cancelled"),
            ..event(0, GateStatus::Finished(Terminal::Cancelled))
        },
        GateEvent {
            worker: None,
            attempt: 0,
            reason: Some("cancelled"),
            ..event(3, GateStatus::Finished(Terminal::Cancelled))
        },
        GateEvent {
            worker: None,
            result: failed(ExitStatus::Exited(1)),
            reason: Some("worker_lost"),
            ..event(3, GateStatus::Finished(Terminal::Failed))
        },
    ]
}

/// An item-form plan: a three-item pyramid.
pub const ITEMS: &str = r#"
version: 1
name: pyramid
items:
  - id: pr-1
    gates:
      - { id: lint, run: "true" }
      - { id: test, run: "true", needs: [lint] }
  - id: pr-2
    deps: [pr-1]
    gates:
      - { id: test, run: "true" }
  - id: pr-3
    gates:
      - { id: build, run: "true" }
"#;

/// A flat-form plan of two gates.
pub const FLAT: &str = r#"
version: 1
name: flat
gates:
  - { id: a, run: "true" }
  - { id: b, run: "true", needs: [a] }
"#;

/// A validated plan from YAML `text` (panics if invalid: these are test samples).
pub fn plan(text: &str) -> Plan {
    parse_plan(text, PlanFormat::Yaml, "plan.yaml", Path::new("/")).expect("valid plan")
}
