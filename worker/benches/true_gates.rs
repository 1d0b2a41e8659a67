//! Per-gate executor overhead: runs `true` gates bare (tokio `Command`), through
//! `execute` sequentially, and through a `LocalWorker` with a few concurrent slots, and
//! prints the wall times; also the cost of one memory-monitor sample.
//! Run with `cargo bench -p gatehouse-worker --bench true_gates [-- N]` (default 1000).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_common::exec::{Assignment, AttemptRef, FromWorker, GateSpec, ToWorker};
use gatehouse_common::ids::{GateId, GateIdx, PlanId};
use gatehouse_worker::{CancelSignal, ExecConfig, LocalWorker, execute, monitor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn spec(workdir: &std::path::Path) -> GateSpec {
    GateSpec {
        plan_name: "bench".to_owned(),
        gate: GateId::new("true"),
        item: None,
        run: "true".to_owned(),
        env: BTreeMap::new(),
        workdir: workdir.to_path_buf(),
        workdir_rel: ".".into(),
        timeout: Duration::from_secs(60),
        memory: 64 * 1024 * 1024,
        checkout: None,
        reports: Vec::new(),
    }
}

fn attempt(i: u32) -> AttemptRef {
    AttemptRef {
        plan: PlanId::new("bench"),
        gate: GateIdx(i),
        attempt: 1,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let spec = spec(dir.path());
    let cfg = ExecConfig::default();

    let start = Instant::now();
    for _ in 0..n {
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("true")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "baseline `true` failed");
    }
    let base = start.elapsed();
    println!(
        "baseline (bare tokio Command): {n} `sh -c true` in {base:?} ({:?}/gate)",
        base / n
    );

    let mut system = sysinfo::System::new()?;
    let refresh = sysinfo::ProcessRefreshKind::nothing()
        .with_memory()
        .without_tasks();
    let start = Instant::now();
    let samples = 20u32;
    for _ in 0..samples {
        system.refresh_processes_specifics(sysinfo::ProcessesToUpdate::All, true, refresh);
    }
    println!(
        "one memory sample (all {} processes): {:?}",
        system.processes().len(),
        start.elapsed() / samples
    );

    let cancel = CancellationToken::new();
    let (mon, mon_task) = monitor::spawn(cfg.monitor_interval, cancel.clone());
    let start = Instant::now();
    for i in 0..n {
        let result = execute(&spec, &attempt(i), &cfg, CancelSignal::never(), &mon).await;
        anyhow::ensure!(
            result.status.passed(),
            "gate {i} failed: {:?}",
            result.status
        );
    }
    let seq = start.elapsed();
    cancel.cancel();
    mon_task.await?;
    println!(
        "sequential execute: {n} `true` gates in {seq:?} ({:?}/gate)",
        seq / n
    );

    let slots = 4u32;
    let (inbox, inbox_rx) = mpsc::unbounded_channel();
    let (reports_tx, mut reports) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let worker = LocalWorker::spawn(cfg.clone(), inbox_rx, reports_tx, shutdown.clone());
    let spec = Arc::new(spec);
    let assign = |i: u32| {
        inbox.send(ToWorker::Assign(Assignment {
            attempt: attempt(i),
            spec: Arc::clone(&spec),
            cache_key: None,
            traceparent: None,
            watch: Default::default(),
        }))
    };
    let start = Instant::now();
    let mut next = 0;
    while next < n.min(slots) {
        assign(next)?;
        next += 1;
    }
    let mut done = 0;
    while done < n {
        match reports.recv().await {
            Some(FromWorker::Finished { result, .. }) => {
                anyhow::ensure!(result.status.passed(), "gate failed: {:?}", result.status);
                done += 1;
                if next < n {
                    assign(next)?;
                    next += 1;
                }
            }
            Some(FromWorker::Started { .. }) => {}
            None => anyhow::bail!("worker stopped early"),
        }
    }
    let par = start.elapsed();
    shutdown.cancel();
    worker.await?;
    println!(
        "LocalWorker, {slots} slots: {n} `true` gates in {par:?} ({:?}/gate)",
        par / n
    );
    Ok(())
}
