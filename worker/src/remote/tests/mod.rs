//! End-to-end tests of the remote worker against an in-process fake coordinator.

mod fake;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gatehouse_common::exec::{AttemptRef, ExitStatus};
use gatehouse_common::ids::{GateIdx, PlanId, WorkerId};
use gatehouse_common::spawn::spawn_named;
use gatehouse_proto::v1::{self, coordinator_message, worker_message};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{RemoteWorkerConfig, RemoteWorkerError, run};
use fake::{DEADLINE, Fake};

const MIB: u64 = 1024 * 1024;

fn attempt(gate: u32, n: u32) -> AttemptRef {
    AttemptRef {
        plan: PlanId::new("p1"),
        gate: GateIdx(gate),
        attempt: n,
    }
}

fn spec(gate: &str, run: &str, workdir: &str) -> v1::GateSpec {
    v1::GateSpec {
        plan_name: "demo".into(),
        gate_id: gate.into(),
        item_id: String::new(),
        run: run.into(),
        env: HashMap::new(),
        workdir: workdir.into(),
        timeout_ms: 60_000,
        memory_bytes: 100 * MIB,
    }
}

fn config(urls: Vec<String>) -> RemoteWorkerConfig {
    let mut cfg = RemoteWorkerConfig::new(urls, WorkerId::new("w-test"));
    cfg.slots = 2;
    cfg.memory_total = Some(1024 * MIB);
    cfg.reconnect_initial = Duration::from_millis(10);
    cfg.reconnect_max = Duration::from_millis(50);
    cfg.exec.kill_grace = Duration::from_secs(1);
    cfg
}

/// A running worker and its tokens.
struct Running {
    shutdown: CancellationToken,
    drain: CancellationToken,
    task: JoinHandle<Result<(), RemoteWorkerError>>,
}

impl Running {
    fn start(cfg: RemoteWorkerConfig) -> Self {
        let shutdown = CancellationToken::new();
        let drain = CancellationToken::new();
        let task = spawn_named("remote-worker", run(cfg, shutdown.clone(), drain.clone()));
        Self {
            shutdown,
            drain,
            task,
        }
    }

    async fn join(self) -> Result<(), RemoteWorkerError> {
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("worker returns in time")
            .expect("worker task does not panic")
    }
}

/// Waits until `cond` holds, polling real state, or panics saying what was expected.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stdout_text(result: &gatehouse_common::exec::GateResult) -> String {
    String::from_utf8_lossy(&result.stdout.bytes).into_owned()
}

#[tokio::test]
async fn runs_assignments_in_scratch_dirs_and_cancels_on_request() {
    let mut fake = Fake::start().await;
    let worker = Running::start(config(vec![fake.url.clone()]));
    let mut conn = fake.accept().await;
    let hello = conn.handshake().await;
    assert_eq!((hello.worker_id.as_str(), hello.slots), ("w-test", 2));
    assert_eq!(hello.memory_total_bytes, 1024 * MIB);
    assert_eq!(hello.version, env!("CARGO_PKG_VERSION"));

    let a1 = attempt(0, 1);
    conn.assign(&a1, spec("pr-1/echo", "echo hi; pwd", ""))
        .await;
    conn.expect_started(&a1).await;
    let result = conn.expect_finished(&a1).await;
    assert_eq!(result.status, ExitStatus::Exited(0));
    let out = stdout_text(&result);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hi"));
    let scratch = Path::new(lines.next().expect("pwd printed")).to_path_buf();
    let name = scratch
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name");
    assert!(name.starts_with("gatehouse-pr-1_echo-"), "{name}");
    wait_for("the scratch directory to be removed", || !scratch.exists()).await;

    let a2 = attempt(1, 1);
    conn.assign(&a2, spec("pr-1/sleep", "sleep 30", "")).await;
    conn.expect_started(&a2).await;
    let beat = conn.heartbeat_where(|h| !h.running.is_empty()).await;
    assert_eq!(beat.running, vec![v1::AttemptRef::from(&a2)]);
    assert_eq!(beat.free_slots, 1);
    assert_eq!(
        (beat.memory_used_bytes, beat.memory_available_bytes),
        (100 * MIB, 1024 * MIB)
    );
    conn.send(coordinator_message::Msg::Cancel(v1::CancelAttempt {
        attempt: Some((&a2).into()),
        grace_ms: 0,
    }))
    .await;
    let result = conn.expect_finished(&a2).await;
    assert_eq!(result.status, ExitStatus::Cancelled);
    let beat = conn.heartbeat_where(|_| true).await;
    assert!(beat.running.is_empty());
    assert_eq!(
        (beat.free_slots, beat.memory_available_bytes),
        (2, 1024 * MIB)
    );

    worker.shutdown.cancel();
    assert!(worker.join().await.is_ok());
    fake.stop().await;
}

#[tokio::test]
async fn shared_workspaces_resolve_workdirs_and_bad_specs_fail_to_spawn() {
    let ws = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(ws.path().join("sub")).expect("mkdir");
    let mut fake = Fake::start().await;
    let mut cfg = config(vec![fake.url.clone()]);
    cfg.workspace = Some(ws.path().to_path_buf());
    let worker = Running::start(cfg);
    let mut conn = fake.accept().await;
    conn.handshake().await;

    let a1 = attempt(0, 1);
    conn.assign(&a1, spec("g", "echo made > out.txt", "sub"))
        .await;
    conn.expect_started(&a1).await;
    assert_eq!(
        conn.expect_finished(&a1).await.status,
        ExitStatus::Exited(0)
    );
    let written = std::fs::read_to_string(ws.path().join("sub/out.txt")).expect("gate wrote");
    assert_eq!(written, "made\n");

    let a2 = attempt(1, 1);
    conn.assign(&a2, spec("g2", "", "")).await;
    let result = conn.expect_finished(&a2).await;
    assert!(
        matches!(&result.status, ExitStatus::SpawnFailed(m) if m.contains("spec.run")),
        "{result:?}"
    );

    worker.shutdown.cancel();
    assert!(worker.join().await.is_ok());
    assert!(
        ws.path().join("sub/out.txt").exists(),
        "a shared workspace is kept"
    );
    fake.stop().await;
}

#[tokio::test]
async fn drain_lets_running_gates_finish_then_returns() {
    let mut fake = Fake::start().await;
    let worker = Running::start(config(vec![fake.url.clone()]));
    let mut conn = fake.accept().await;
    conn.handshake().await;
    let a1 = attempt(0, 1);
    conn.assign(&a1, spec("g", "sleep 0.2", "")).await;
    conn.expect_started(&a1).await;

    worker.drain.cancel();
    match conn.next_event().await {
        Some(worker_message::Msg::Draining(d)) => assert_eq!(d.grace_ms, 30_000),
        other => panic!("expected draining, got {other:?}"),
    }
    assert_eq!(
        conn.expect_finished(&a1).await.status,
        ExitStatus::Exited(0)
    );
    assert_eq!(
        conn.next_event().await,
        None,
        "the worker closes the stream"
    );
    drop(conn);
    assert!(worker.join().await.is_ok());
    fake.stop().await;
}

#[tokio::test]
async fn drain_refuses_new_work_and_cancels_after_the_grace() {
    let mut fake = Fake::start().await;
    let mut cfg = config(vec![fake.url.clone()]);
    cfg.drain_grace = Duration::from_secs(1);
    let worker = Running::start(cfg);
    let mut conn = fake.accept().await;
    conn.handshake().await;
    let a1 = attempt(0, 1);
    conn.assign(&a1, spec("g", "sleep 30", "")).await;
    conn.expect_started(&a1).await;

    worker.drain.cancel();
    assert!(matches!(
        conn.next_event().await,
        Some(worker_message::Msg::Draining(_))
    ));
    let beat = conn.heartbeat_where(|_| true).await;
    assert_eq!(
        beat.free_slots, 0,
        "a draining worker advertises no free slot"
    );
    let a2 = attempt(1, 1);
    conn.assign(&a2, spec("g2", "echo never", "")).await;
    let refused = conn.expect_finished(&a2).await;
    assert_eq!(refused.status, ExitStatus::Cancelled);
    assert!(
        refused.stdout.bytes.is_empty(),
        "a refused assignment never runs"
    );
    assert_eq!(
        conn.expect_finished(&a1).await.status,
        ExitStatus::Cancelled
    );
    assert_eq!(conn.next_event().await, None);
    drop(conn);
    assert!(worker.join().await.is_ok());
    fake.stop().await;
}

#[tokio::test]
async fn a_lost_session_kills_its_attempts_and_reconnects_as_a_fresh_worker() {
    // A port nobody listens on: bound, then released.
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let mut fake = Fake::start().await;
    let worker = Running::start(config(vec![dead, fake.url.clone()]));
    let mut conn = fake.accept().await;
    conn.handshake().await;
    let a1 = attempt(0, 1);
    conn.assign(&a1, spec("g", "sleep 30", "")).await;
    conn.expect_started(&a1).await;
    drop(conn);

    let mut again = fake.accept().await;
    let hello = again.handshake().await;
    assert!(hello.running.is_empty(), "says hello as a fresh worker");
    let beat = again.heartbeat_where(|_| true).await;
    assert!(
        beat.running.is_empty(),
        "the lost session's attempt was killed"
    );
    assert_eq!(beat.free_slots, 2);
    let a2 = attempt(0, 2);
    again.assign(&a2, spec("g", "true", "")).await;
    again.expect_started(&a2).await;
    assert_eq!(
        again.expect_finished(&a2).await.status,
        ExitStatus::Exited(0)
    );

    worker.shutdown.cancel();
    assert!(worker.join().await.is_ok());
    fake.stop().await;
}

#[tokio::test]
async fn invalid_configuration_fails_at_once() {
    let never = CancellationToken::new();
    let err = run(
        config(vec!["localhost:7700".into()]),
        never.clone(),
        never.clone(),
    )
    .await
    .expect_err("no scheme");
    assert!(matches!(err, RemoteWorkerError::InvalidUrl { .. }), "{err}");
    assert!(err.to_string().contains("localhost:7700"), "{err}");

    let mut cfg = config(vec!["http://127.0.0.1:1".into()]);
    cfg.workspace = Some("/nonexistent/gatehouse-workspace".into());
    let err = run(cfg, never.clone(), never)
        .await
        .expect_err("no workspace");
    assert!(matches!(err, RemoteWorkerError::Workspace { .. }), "{err}");
}
