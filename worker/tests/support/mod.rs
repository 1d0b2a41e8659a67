//! Shared helpers for the executor tests: specs, a monitor, and waiting on real
//! observable state with deadlines.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatehouse_common::exec::{AttemptRef, GateSpec};
use gatehouse_common::ids::{GateId, GateIdx, ItemId, PlanId};
use gatehouse_worker::MemoryMonitorHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any awaited event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn spec(run: &str, workdir: &Path) -> GateSpec {
    GateSpec {
        plan_name: "demo".to_owned(),
        gate: GateId::new("pr-1/lint"),
        item: Some(ItemId::new("pr-1")),
        run: run.to_owned(),
        env: BTreeMap::new(),
        workdir: workdir.to_path_buf(),
        workdir_rel: ".".into(),
        timeout: Duration::from_secs(120),
        memory: 0,
        checkout: None,
        reports: Vec::new(),
    }
}

pub fn attempt(gate: u32, attempt: u32) -> AttemptRef {
    AttemptRef {
        plan: PlanId::new("p1"),
        gate: GateIdx(gate),
        attempt,
    }
}

/// A running memory monitor that stops when dropped.
pub struct Monitor {
    pub handle: MemoryMonitorHandle,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Monitor {
    pub fn start(interval: Duration) -> Self {
        let cancel = CancellationToken::new();
        let (handle, task) = gatehouse_worker::monitor::spawn(interval, cancel.clone());
        Self {
            handle,
            cancel,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("monitor ends cleanly");
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Waits until `cond` holds, polling real state, or panics saying what was expected.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` is a live process (a zombie counts as dead: it runs nothing).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself hold ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Reads a pid written by a gate (`echo $! > file`).
pub fn read_pid(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path).expect("gate wrote its pid file");
    text.trim().parse().expect("pid file holds a pid")
}

pub fn path_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
