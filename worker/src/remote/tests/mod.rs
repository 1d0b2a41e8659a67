//! End-to-end tests of the remote worker against an in-process fake coordinator.

mod fake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use gatehouse_common::exec::{AttemptRef, ExitStatus, GateResult};
use gatehouse_common::ids::{GateIdx, PlanId, WorkerId};
use gatehouse_common::spawn::spawn_named;
use gatehouse_proto::convert::attempt_from_wire;
use gatehouse_proto::v1::{self, coordinator_message, worker_message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{RemoteWorkerConfig, RemoteWorkerError, WorkerListeners, run};
use fake::{Conn, DEADLINE, Fake};
use gatehouse_cache::node::{CacheNodeConfig, StoreConfig};

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
        checkout: None,
        reports: Vec::new(),
    }
}

/// Accepts the worker's session, assigns `spec` as attempt 1 of gate 0, waits until it
/// started, then drops the session with the attempt still running.
async fn lose_session_while_running(fake: &mut Fake, spec: v1::GateSpec) -> AttemptRef {
    let mut conn = fake.accept().await;
    conn.handshake().await;
    let a1 = attempt(0, 1);
    conn.assign(&a1, spec).await;
    conn.expect_started(&a1).await;
    drop(conn);
    a1
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
        Self::start_on(cfg, WorkerListeners::default())
    }

    /// Starts a worker serving `listeners`.
    fn start_on(cfg: RemoteWorkerConfig, listeners: WorkerListeners) -> Self {
        let shutdown = CancellationToken::new();
        let drain = CancellationToken::new();
        let task = spawn_named(
            "remote-worker",
            run(cfg, listeners, shutdown.clone(), drain.clone()),
        );
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

fn stdout_text(result: &GateResult) -> String {
    String::from_utf8_lossy(&result.stdout.bytes).into_owned()
}

/// The attempts a `Hello` lists as running.
fn hello_running(hello: &v1::Hello) -> Vec<AttemptRef> {
    hello
        .running
        .iter()
        .map(|a| attempt_from_wire(Some(a.clone())).expect("attempt"))
        .collect()
}

/// The results a `Hello` carries.
fn hello_finished(hello: &v1::Hello) -> Vec<(AttemptRef, GateResult)> {
    hello
        .finished
        .iter()
        .map(|f| {
            let attempt = attempt_from_wire(f.attempt.clone()).expect("attempt");
            let result = f
                .result
                .clone()
                .expect("result")
                .try_into()
                .expect("result");
            (attempt, result)
        })
        .collect()
}

/// Accepts sessions and closes each before `Welcome` (so the worker stays offline and
/// reconnects) until one's `Hello` satisfies `pred`; returns it, not yet welcomed.
async fn hello_where(
    fake: &mut Fake,
    what: &str,
    pred: impl Fn(&v1::Hello) -> bool,
) -> (Conn, v1::Hello) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a hello with {what}"
        );
        let mut conn = fake.accept().await;
        let hello = conn.hello().await;
        if pred(&hello) {
            return (conn, hello);
        }
    }
}

/// A gate that waits for the file `go` in `dir`, then appends a line to `runs` and
/// prints `done`: it runs as long as the test wants, and says how often it ran.
struct Gated {
    dir: tempfile::TempDir,
}

impl Gated {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn spec(&self) -> v1::GateSpec {
        let d = self.dir.path().display();
        let run = format!(
            "while [ ! -e '{d}/go' ]; do sleep 0.02; done; echo run >> '{d}/runs'; echo done"
        );
        spec("g", &run, "")
    }

    fn release(&self) {
        std::fs::write(self.dir.path().join("go"), "").expect("write go");
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
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
async fn invalid_configuration_fails_at_once() {
    let never = CancellationToken::new();
    let err = run(
        config(vec!["localhost:7700".into()]),
        WorkerListeners::default(),
        never.clone(),
        never.clone(),
    )
    .await
    .expect_err("no scheme");
    assert!(matches!(err, RemoteWorkerError::InvalidUrl { .. }), "{err}");
    assert!(err.to_string().contains("localhost:7700"), "{err}");

    let mut cfg = config(vec!["http://127.0.0.1:1".into()]);
    cfg.workspace = Some("/nonexistent/gatehouse-workspace".into());
    let err = run(
        cfg,
        WorkerListeners::default(),
        never.clone(),
        never.clone(),
    )
    .await
    .expect_err("no workspace");
    assert!(matches!(err, RemoteWorkerError::Workspace { .. }), "{err}");

    let listeners = WorkerListeners {
        cache: Some(loopback().await),
        http: None,
    };
    let cfg = config(vec!["http://127.0.0.1:1".into()]);
    let err = run(cfg, listeners, never.clone(), never.clone())
        .await
        .expect_err("a cache listener without a cache node");
    assert!(matches!(err, RemoteWorkerError::CacheListener), "{err}");
    let mut cfg = config(vec!["http://127.0.0.1:1".into()]);
    cfg.cache_node = Some(CacheNodeConfig {
        advertise: None,
        store: StoreConfig::default(),
        tls: Default::default(),
    });
    let err = run(cfg, WorkerListeners::default(), never.clone(), never)
        .await
        .expect_err("a cache node without its listener");
    assert!(matches!(err, RemoteWorkerError::CacheListener), "{err}");
}

/// A listener on a free loopback port.
async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// The status code of `GET path` on the HTTP server at `addr`.
async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The worker serves the listeners its caller bound (port 0 here, as for the
/// coordinator): its `Hello` advertises the cache node at the bound port, and its
/// `/readyz` turns ready once the session is welcomed.
#[tokio::test]
async fn serves_the_listeners_it_is_given() {
    let (cache, http) = (loopback().await, loopback().await);
    let cache_addr = cache.local_addr().expect("addr");
    let http_addr = http.local_addr().expect("addr");
    let mut fake = Fake::start().await;
    let mut cfg = config(vec![fake.url.clone()]);
    cfg.cache_node = Some(CacheNodeConfig {
        advertise: None,
        store: StoreConfig::default(),
        tls: Default::default(),
    });
    let listeners = WorkerListeners {
        cache: Some(cache),
        http: Some(http),
    };
    let worker = Running::start_on(cfg, listeners);
    let mut conn = fake.accept().await;
    let hello = conn.hello().await;
    assert_eq!(hello.cache_url, format!("http://{cache_addr}"));
    assert_eq!(http_status(http_addr, "/healthz").await, 200);
    assert_eq!(
        http_status(http_addr, "/readyz").await,
        503,
        "not ready before the welcome"
    );
    conn.welcome().await;
    let deadline = Instant::now() + DEADLINE;
    while http_status(http_addr, "/readyz").await != 200 {
        assert!(Instant::now() < deadline, "timed out waiting for /readyz");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown.cancel();
    assert!(worker.join().await.is_ok());
    fake.stop().await;
}

#[tokio::test]
async fn a_lost_session_keeps_its_attempts_and_hands_them_to_the_next_session() {
    // A port nobody listens on: bound, then released.
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let mut fake = Fake::start().await;
    let worker = Running::start(config(vec![dead, fake.url.clone()]));
    let gate = Gated::new();
    let a1 = lose_session_while_running(&mut fake, gate.spec()).await;

    let mut again = fake.accept().await;
    let hello = again.hello().await;
    assert_eq!(
        hello_running(&hello),
        vec![a1.clone()],
        "the attempt still runs"
    );
    assert!(hello.finished.is_empty());
    // Finishing before or after the welcome, the result arrives once, after it.
    gate.release();
    again.welcome().await;
    let result = again.expect_finished(&a1).await;
    assert_eq!(result.status, ExitStatus::Exited(0));
    assert_eq!(stdout_text(&result), "done\n");
    assert_eq!(gate.runs(), 1);
    let beat = again.heartbeat_where(|_| true).await;
    assert!(beat.running.is_empty());

    worker.shutdown.cancel();
    assert!(worker.join().await.is_ok());
    fake.stop().await;
}

#[tokio::test]
async fn results_are_offered_in_every_hello_until_acknowledged() {
    let mut fake = Fake::start().await;
    let worker = Running::start(config(vec![fake.url.clone()]));
    let gate = Gated::new();
    let a1 = lose_session_while_running(&mut fake, gate.spec()).await;

    // The attempt finishes while no session is welcomed.
    gate.release();
    let (conn, hello) = hello_where(&mut fake, "a1 finished", |h| !h.finished.is_empty()).await;
    assert!(hello.running.is_empty());
    let finished = hello_finished(&hello);
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].0, a1);
    assert_eq!(finished[0].1.status, ExitStatus::Exited(0));
    assert_eq!(stdout_text(&finished[0].1), "done\n");

    // Not acknowledged: offered again. Assigned again: answered, not run twice.
    let mut conn = conn;
    conn.welcome().await;
    conn.assign(&a1, gate.spec()).await;
    let answer = conn.expect_finished(&a1).await;
    assert_eq!(answer, finished[0].1);
    assert_eq!(
        gate.runs(),
        1,
        "an attempt with a kept result never runs again"
    );
    drop(conn);
    let mut conn = fake.accept().await;
    let hello = conn.hello().await;
    assert_eq!(hello_finished(&hello), finished, "re-sent without an ack");

    // Acknowledged: forgotten.
    conn.welcome().await;
    conn.ack(&[&a1]).await;
    drop(conn);
    let mut conn = fake.accept().await;
    let hello = conn.hello().await;
    assert!(
        hello.finished.is_empty(),
        "an acknowledged result is not re-sent"
    );
    conn.welcome().await;

    worker.shutdown.cancel();
    assert!(worker.join().await.is_ok());
    fake.stop().await;
}

#[tokio::test]
async fn the_orphan_grace_cancels_attempts_no_session_took_over() {
    let mut fake = Fake::start().await;
    let mut cfg = config(vec![fake.url.clone()]);
    cfg.orphan_grace = Duration::from_millis(300);
    let worker = Running::start(cfg);
    let a1 = lose_session_while_running(&mut fake, spec("g", "sleep 600", "")).await;

    let (mut conn, hello) =
        hello_where(&mut fake, "a1 cancelled", |h| !h.finished.is_empty()).await;
    assert!(hello.running.is_empty(), "nothing runs any more");
    let finished = hello_finished(&hello);
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].0, a1);
    assert_eq!(finished[0].1.status, ExitStatus::Cancelled);
    conn.welcome().await;
    let beat = conn.heartbeat_where(|_| true).await;
    assert_eq!(beat.free_slots, 2);

    worker.shutdown.cancel();
    assert!(worker.join().await.is_ok());
    fake.stop().await;
}

#[tokio::test]
async fn a_drain_while_disconnected_waits_for_the_attempts_and_delivers_their_results() {
    let mut fake = Fake::start().await;
    let worker = Running::start(config(vec![fake.url.clone()]));
    let gate = Gated::new();
    let a1 = lose_session_while_running(&mut fake, gate.spec()).await;

    worker.drain.cancel();
    gate.release();
    let (mut conn, hello) = hello_where(&mut fake, "a1 finished", |h| !h.finished.is_empty()).await;
    assert_eq!(hello_finished(&hello)[0].0, a1);
    conn.welcome().await;
    match conn.next_event().await {
        Some(worker_message::Msg::Draining(d)) => assert!(d.grace_ms <= 30_000),
        other => panic!("expected draining, got {other:?}"),
    }
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
async fn a_drain_while_disconnected_with_nothing_to_deliver_returns_at_once() {
    let fake = Fake::start().await;
    let url = fake.url.clone();
    fake.stop().await;
    let worker = Running::start(config(vec![url]));
    worker.drain.cancel();
    assert!(worker.join().await.is_ok());
}

#[tokio::test]
async fn a_not_leader_answer_sends_the_worker_to_the_leader_it_names() {
    let mut leader = Fake::start().await;
    let mut follower = Fake::follower(Some(&leader.url)).await;
    // Only the follower is configured: reaching the leader takes the redirect.
    let worker = Running::start(config(vec![follower.url.clone()]));
    follower.accept().await;
    let mut conn = leader.accept().await;
    let hello = conn.handshake().await;
    assert_eq!(hello.worker_id, "w-test");
    let a1 = attempt(0, 1);
    conn.assign(&a1, spec("g", "true", "")).await;
    conn.expect_started(&a1).await;
    assert_eq!(
        conn.expect_finished(&a1).await.status,
        ExitStatus::Exited(0)
    );

    worker.shutdown.cancel();
    assert!(worker.join().await.is_ok());
    follower.stop().await;
    leader.stop().await;
}

#[tokio::test]
async fn a_not_leader_answer_without_a_leader_moves_on_to_the_next_url() {
    let mut leader = Fake::start().await;
    let mut follower = Fake::follower(None).await;
    let worker = Running::start(config(vec![follower.url.clone(), leader.url.clone()]));
    follower.accept().await;
    let mut conn = leader.accept().await;
    conn.handshake().await;
    conn.heartbeat_where(|_| true).await;

    worker.shutdown.cancel();
    assert!(worker.join().await.is_ok());
    follower.stop().await;
    leader.stop().await;
}
