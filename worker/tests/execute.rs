//! `execute` against real processes.

mod support;

use std::time::Duration;

use gatehouse_common::exec::{ExitStatus, GateResult, GateSpec};
use gatehouse_worker::{CancelSignal, ExecConfig, RunningGate, cancel_channel, execute};
use support::{DEADLINE, Monitor, alive, attempt, path_in, read_pid, spec, wait_for};

/// Runs `spec` with no cancellation, failing the test if it takes longer than `DEADLINE`.
async fn run_with(spec: &GateSpec, cfg: &ExecConfig, monitor: &Monitor) -> GateResult {
    let attempt = attempt(0, 1);
    let fut = execute(spec, &attempt, cfg, CancelSignal::never(), &monitor.handle);
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("execute returned within the deadline")
}

async fn run(run: &str) -> GateResult {
    let dir = tempfile::tempdir().expect("temp dir");
    let monitor = Monitor::start(Duration::from_millis(250));
    let result = run_with(&spec(run, dir.path()), &ExecConfig::default(), &monitor).await;
    monitor.stop().await;
    result
}

#[tokio::test]
async fn reports_exit_codes_and_signals() {
    let ok = run("echo hello; echo oops >&2").await;
    assert_eq!(ok.status, ExitStatus::Exited(0));
    assert_eq!(ok.stdout.bytes, b"hello\n");
    assert_eq!(ok.stderr.bytes, b"oops\n");
    assert_eq!(ok.stdout.dropped, 0);

    assert_eq!(run("exit 3").await.status, ExitStatus::Exited(3));
    assert_eq!(run("kill -9 $$").await.status, ExitStatus::Signaled(9));
}

#[tokio::test]
async fn exports_gatehouse_and_custom_env() {
    let dir = tempfile::tempdir().expect("temp dir");
    let monitor = Monitor::start(Duration::from_millis(250));
    let mut gate = spec(
        r#"printf '%s|%s|%s|%s|%s|%s' "$GATEHOUSE_PLAN" "$GATEHOUSE_ITEM" "$GATEHOUSE_GATE" "$GATEHOUSE_ATTEMPT" "$CUSTOM" "${HOME:+home}""#,
        dir.path(),
    );
    gate.env.insert("CUSTOM".to_owned(), "a b".to_owned());
    let (attempt, cfg) = (attempt(0, 2), ExecConfig::default());
    let fut = execute(
        &gate,
        &attempt,
        &cfg,
        CancelSignal::never(),
        &monitor.handle,
    );
    let result = tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("within deadline");
    assert_eq!(result.status, ExitStatus::Exited(0));
    let expected = if std::env::var_os("HOME").is_some() {
        "demo|pr-1|pr-1/lint|2|a b|home"
    } else {
        "demo|pr-1|pr-1/lint|2|a b|"
    };
    assert_eq!(String::from_utf8_lossy(&result.stdout.bytes), expected);

    gate.item = None;
    gate.run = r#"printf '[%s]' "${GATEHOUSE_ITEM-unset}""#.to_owned();
    let result = run_with(&gate, &ExecConfig::default(), &monitor).await;
    assert_eq!(result.stdout.bytes, b"[]", "flat gates get an empty item");
    monitor.stop().await;
}

#[tokio::test]
async fn runs_in_the_workdir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let monitor = Monitor::start(Duration::from_millis(250));
    let result = run_with(
        &spec("pwd -P", dir.path()),
        &ExecConfig::default(),
        &monitor,
    )
    .await;
    let expected = dir.path().canonicalize().expect("temp dir exists");
    assert_eq!(
        String::from_utf8_lossy(&result.stdout.bytes).trim_end(),
        expected.to_string_lossy()
    );
    monitor.stop().await;
}

#[tokio::test]
async fn missing_workdir_is_a_spawn_failure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope");
    let monitor = Monitor::start(Duration::from_millis(250));
    let result = run_with(&spec("true", &missing), &ExecConfig::default(), &monitor).await;
    match result.status {
        ExitStatus::SpawnFailed(msg) => {
            assert!(msg.contains("nope"), "message names the workdir: {msg}");
            assert!(msg.contains("pr-1/lint"), "message names the gate: {msg}");
        }
        other => panic!("expected a spawn failure, got {other:?}"),
    }
    monitor.stop().await;
}

#[tokio::test]
async fn keeps_only_the_tail_of_large_output() {
    let result = run("head -c 3000000 /dev/zero; printf TAIL; head -c 10 /dev/zero >&2").await;
    assert_eq!(result.status, ExitStatus::Exited(0));
    let limit = ExecConfig::default().tail_limit;
    assert_eq!(result.stdout.bytes.len(), limit);
    assert!(result.stdout.bytes.ends_with(b"\0\0TAIL"));
    assert_eq!(result.stdout.dropped, 3_000_004 - limit as u64);
    assert_eq!(result.stderr.bytes, vec![0u8; 10]);
    assert_eq!(result.stderr.dropped, 0);
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = path_in(&dir, "pid");
    let monitor = Monitor::start(Duration::from_millis(250));
    let mut gate = spec("sleep 300 & echo $! > pid; wait", dir.path());
    gate.timeout = Duration::from_millis(300);
    let result = run_with(&gate, &ExecConfig::default(), &monitor).await;
    assert_eq!(result.status, ExitStatus::TimedOut);
    assert!(result.duration >= Duration::from_millis(300));
    let grandchild = read_pid(&pidfile);
    wait_for("the timed-out gate's grandchild to die", || {
        !alive(grandchild)
    })
    .await;
    monitor.stop().await;
}

#[tokio::test]
async fn timeout_escalates_to_sigkill_after_the_grace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let monitor = Monitor::start(Duration::from_millis(250));
    let mut gate = spec("trap '' TERM; while :; do sleep 1; done", dir.path());
    gate.timeout = Duration::from_millis(100);
    let cfg = ExecConfig {
        kill_grace: Duration::from_millis(200),
        ..ExecConfig::default()
    };
    let result = run_with(&gate, &cfg, &monitor).await;
    assert_eq!(result.status, ExitStatus::TimedOut);
    assert!(result.duration >= Duration::from_millis(300));
    monitor.stop().await;
}

#[tokio::test]
async fn background_processes_die_when_the_shell_exits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = path_in(&dir, "pid");
    let monitor = Monitor::start(Duration::from_millis(250));
    let gate = spec("sleep 100 & echo $! > pid; exit 0", dir.path());
    let result = run_with(&gate, &ExecConfig::default(), &monitor).await;
    assert_eq!(result.status, ExitStatus::Exited(0));
    let grandchild = read_pid(&pidfile);
    wait_for("the background sleep to die", || !alive(grandchild)).await;
    monitor.stop().await;
}

#[tokio::test]
async fn a_process_that_left_the_group_does_not_hang_the_gate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = path_in(&dir, "pid");
    let monitor = Monitor::start(Duration::from_millis(250));
    // `setsid` puts the sleep in a new session, out of reach of the group kill, still
    // holding stdout open.
    let gate = spec("setsid sleep 60 & echo $! > pid; echo done", dir.path());
    let cfg = ExecConfig {
        pipe_drain: Duration::from_millis(200),
        ..ExecConfig::default()
    };
    let result = run_with(&gate, &cfg, &monitor).await;
    let escaped = read_pid(&pidfile);
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(escaped.to_string())
        .status();
    assert_eq!(result.status, ExitStatus::Exited(0));
    assert_eq!(result.stdout.bytes, b"done\n");
    monitor.stop().await;
}

#[tokio::test]
async fn cancel_with_grace_lets_the_gate_clean_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ready = path_in(&dir, "ready");
    let monitor = Monitor::start(Duration::from_millis(250));
    let gate = spec(
        "trap 'echo cleaned; exit 0' TERM; touch ready; while :; do sleep 1; done",
        dir.path(),
    );
    let (cancel, signal) = cancel_channel();
    let cfg = ExecConfig::default();
    let attempt = attempt(0, 1);
    let fut = execute(&gate, &attempt, &cfg, signal, &monitor.handle);
    let driver = async {
        wait_for("the gate to install its TERM trap", || ready.exists()).await;
        cancel.cancel(Duration::from_secs(60));
    };
    let (result, ()) = tokio::join!(tokio::time::timeout(DEADLINE, fut), driver);
    let result = result.expect("within deadline");
    assert_eq!(result.status, ExitStatus::Cancelled);
    assert_eq!(
        result.stdout.bytes, b"cleaned\n",
        "the trap ran before the group kill"
    );
    assert!(
        result.duration < Duration::from_secs(60),
        "ended without SIGKILL"
    );
    monitor.stop().await;
}

#[tokio::test]
async fn a_second_cancel_with_zero_grace_kills_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ready = path_in(&dir, "ready");
    let got_term = path_in(&dir, "got-term");
    let monitor = Monitor::start(Duration::from_millis(250));
    let gate = spec(
        "trap 'touch got-term' TERM; touch ready; while :; do sleep 1; done",
        dir.path(),
    );
    let (cancel, signal) = cancel_channel();
    let cfg = ExecConfig::default();
    let attempt = attempt(0, 1);
    let fut = execute(&gate, &attempt, &cfg, signal, &monitor.handle);
    let driver = async {
        wait_for("the gate to install its TERM trap", || ready.exists()).await;
        cancel.cancel(Duration::from_secs(600));
        wait_for("the gate to receive SIGTERM", || got_term.exists()).await;
        cancel.cancel(Duration::ZERO);
    };
    let (result, ()) = tokio::join!(tokio::time::timeout(DEADLINE, fut), driver);
    let result = result.expect("killed long before the 600 s grace");
    assert_eq!(result.status, ExitStatus::Cancelled);
    monitor.stop().await;
}

#[tokio::test]
async fn a_tree_over_twice_its_memory_request_is_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let monitor = Monitor::start(Duration::from_millis(50));
    // A child of the shell (so the tree, not just the root, is measured) holds 200 MiB.
    let mut gate = spec(
        r#"perl -e '$x = "a" x (200 * 1024 * 1024); sleep 60'; echo survived"#,
        dir.path(),
    );
    gate.memory = 32 * 1024 * 1024;
    let result = run_with(&gate, &ExecConfig::default(), &monitor).await;
    let limit = 64 * 1024 * 1024;
    match result.status {
        ExitStatus::MemoryExceeded { peak, limit: l } => {
            assert_eq!(l, limit);
            assert!(peak > limit, "peak {peak} above the limit");
        }
        other => panic!("expected MemoryExceeded, got {other:?}"),
    }
    assert!(result.peak_memory.is_some_and(|p| p > limit));
    assert!(result.stdout.bytes.is_empty(), "the whole group was killed");
    monitor.stop().await;
}

#[tokio::test]
async fn dropping_a_running_gate_kills_its_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = path_in(&dir, "pid");
    let monitor = Monitor::start(Duration::from_millis(250));
    let gate = spec("sleep 300 & echo $! > pid; wait", dir.path());
    let running = RunningGate::start(
        &gate,
        &attempt(0, 1),
        &ExecConfig::default(),
        &monitor.handle,
    )
    .await
    .expect("gate starts");
    wait_for("the gate to start its grandchild", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let grandchild = read_pid(&pidfile);
    drop(running);
    wait_for("the dropped gate's grandchild to die", || {
        !alive(grandchild)
    })
    .await;
    monitor.stop().await;
}
