//! `LocalWorker` driven through its inbox, as `gatehouse run` drives it.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::exec::{
    Assignment, AttemptRef, ExitStatus, FromWorker, GateResult, GateSpec, ToWorker,
};
use gatehouse_worker::{ExecConfig, LocalWorker};
use support::{DEADLINE, alive, attempt, path_in, read_pid, spec, wait_for};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Harness {
    inbox: mpsc::UnboundedSender<ToWorker>,
    reports: mpsc::Receiver<FromWorker>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    /// Reports received so far, per attempt, in order.
    seen: HashMap<AttemptRef, Vec<FromWorker>>,
}

impl Harness {
    fn start() -> Self {
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let task = LocalWorker::spawn(
            ExecConfig::default(),
            inbox_rx,
            reports_tx,
            shutdown.clone(),
        );
        Self {
            inbox,
            reports,
            shutdown,
            task,
            seen: HashMap::new(),
        }
    }

    fn assign(&self, attempt: &AttemptRef, spec: GateSpec) {
        let assignment = Assignment {
            attempt: attempt.clone(),
            spec: Arc::new(spec),
            cache_key: None,
            traceparent: None,
            watch: Default::default(),
        };
        self.inbox
            .send(ToWorker::Assign(assignment))
            .expect("worker is running");
    }

    /// Receives reports until `attempt` has one matching `done`.
    async fn until(
        &mut self,
        attempt: &AttemptRef,
        what: &str,
        done: impl Fn(&FromWorker) -> bool,
    ) {
        while !self.seen.get(attempt).is_some_and(|r| r.iter().any(&done)) {
            let report = tokio::time::timeout(DEADLINE, self.reports.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("worker is running");
            let key = match &report {
                FromWorker::Started { attempt } | FromWorker::Finished { attempt, .. } => {
                    attempt.clone()
                }
            };
            self.seen.entry(key).or_default().push(report);
        }
    }

    async fn finished(&mut self, attempt: &AttemptRef) -> GateResult {
        self.until(attempt, "a Finished report", |r| {
            matches!(r, FromWorker::Finished { .. })
        })
        .await;
        let reports = &self.seen[attempt];
        let mut results = reports.iter().filter_map(|r| match r {
            FromWorker::Finished { result, .. } => Some(result.clone()),
            FromWorker::Started { .. } => None,
        });
        let result = results.next().expect("one Finished");
        assert!(results.next().is_none(), "exactly one Finished");
        result
    }

    fn started(&self, attempt: &AttemptRef) -> bool {
        self.seen
            .get(attempt)
            .is_some_and(|r| matches!(r.first(), Some(FromWorker::Started { .. })))
    }

    async fn shut_down(self) -> mpsc::Receiver<FromWorker> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("worker stops within the deadline")
            .expect("worker task ends cleanly");
        self.reports
    }
}

#[tokio::test]
async fn runs_assignments_and_reports_started_then_finished() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut h = Harness::start();
    let (a, b) = (attempt(0, 1), attempt(1, 1));
    h.assign(&a, spec("echo a", dir.path()));
    h.assign(&b, spec("exit 3", dir.path()));
    let ra = h.finished(&a).await;
    let rb = h.finished(&b).await;
    assert_eq!(ra.status, ExitStatus::Exited(0));
    assert_eq!(ra.stdout.bytes, b"a\n");
    assert_eq!(rb.status, ExitStatus::Exited(3));
    assert!(h.started(&a) && h.started(&b), "Started comes first");
    assert_eq!(h.seen[&a].len(), 2);
    assert_eq!(h.seen[&b].len(), 2);
    let mut reports = h.shut_down().await;
    assert!(
        reports.try_recv().is_err(),
        "nothing reported after the end"
    );
}

#[tokio::test]
async fn a_spawn_failure_is_finished_without_started() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut h = Harness::start();
    let a = attempt(0, 1);
    h.assign(&a, spec("true", &dir.path().join("missing")));
    let result = h.finished(&a).await;
    assert!(matches!(result.status, ExitStatus::SpawnFailed(_)));
    assert_eq!(h.seen[&a].len(), 1);
    h.shut_down().await;
}

#[tokio::test]
async fn cancel_goes_through_the_inbox() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ready = path_in(&dir, "ready");
    let mut h = Harness::start();
    let (a, other) = (attempt(0, 1), attempt(7, 1));
    // Unknown attempts are ignored.
    h.inbox
        .send(ToWorker::Cancel {
            attempt: other.clone(),
            grace: Duration::ZERO,
        })
        .expect("worker is running");
    h.assign(
        &a,
        spec("touch ready; while :; do sleep 1; done", dir.path()),
    );
    h.until(&a, "Started", |r| matches!(r, FromWorker::Started { .. }))
        .await;
    wait_for("the gate to run", || ready.exists()).await;
    h.inbox
        .send(ToWorker::Cancel {
            attempt: a.clone(),
            grace: Duration::from_secs(5),
        })
        .expect("worker is running");
    assert_eq!(h.finished(&a).await.status, ExitStatus::Cancelled);
    assert!(!h.seen.contains_key(&other));
    h.shut_down().await;
}

#[tokio::test]
async fn shutdown_cancels_running_gates_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = path_in(&dir, "pid");
    let mut h = Harness::start();
    let a = attempt(0, 1);
    h.assign(&a, spec("sleep 300 & echo $! > pid; wait", dir.path()));
    h.until(&a, "Started", |r| matches!(r, FromWorker::Started { .. }))
        .await;
    wait_for("the gate to start its grandchild", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let grandchild = read_pid(&pidfile);
    let mut reports = h.shut_down().await;
    let mut finished = Vec::new();
    while let Ok(report) = reports.try_recv() {
        if let FromWorker::Finished { attempt, result } = report {
            finished.push((attempt, result.status));
        }
    }
    assert_eq!(finished, vec![(a, ExitStatus::Cancelled)]);
    wait_for("the grandchild to die", || !alive(grandchild)).await;
}
