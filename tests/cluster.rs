//! Integration tests of the cluster shape: a real coordinator and real worker processes
//! on loopback, ephemeral ports, readiness through the gRPC health service.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use gatehouse_proto::v1;
use support::cluster::{Cluster, summary, terminals};
use support::{RunResult, process_alive, read_pid, wait_until};

fn state_name(s: i32) -> String {
    let name = v1::GateState::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("?");
    name.trim_start_matches("GATE_STATE_").to_lowercase()
}

#[test]
fn pyramid_on_two_workers_matches_gatehouse_run() {
    let mut c = Cluster::start();
    // The cluster resolves relative workdirs against the worker's workspace; point it
    // at the example's directory so its `inputs` are there, as for `gatehouse run`.
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    c.add_worker("w1", &["--slots", "2", "--workspace", examples]);
    c.add_worker("w2", &["--slots", "2", "--workspace", examples]);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/merge-pyramid.yaml"
    );
    let local = RunResult::from_output(
        c.ws.cmd(&["run", "--json", "--no-cache", example])
            .output()
            .expect("run"),
    );
    let local_states: BTreeMap<String, String> = local
        .lines
        .iter()
        .filter(|l| l["event"] == "gate" && support::is_terminal(&l["state"]))
        .map(|l| {
            (
                l["gate"].as_str().expect("gate").to_string(),
                l["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    let document = std::fs::read_to_string(example).expect("example");
    let id = c.submit(&document).expect("submit");
    let events = c.watch(&id, 0);
    let remote: BTreeMap<String, String> = terminals(&events)
        .into_iter()
        .map(|(g, e)| (g, state_name(e.state)))
        .collect();
    assert_eq!(remote, local_states);
    let s = summary(&events);
    assert_eq!(
        s.merge_order,
        local.summary()["merge_order"]
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_str().expect("str").to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(s.outcome, v1::PlanOutcome::Failed as i32);
    let used: std::collections::BTreeSet<String> = terminals(&events)
        .values()
        .map(|e| e.worker_id.clone())
        .filter(|w| !w.is_empty())
        .collect();
    assert_eq!(used.len(), 2, "both workers ran gates: {used:?}");
}

#[test]
fn killed_worker_gate_reruns_on_the_other_worker() {
    let mut c = Cluster::start();
    c.add_worker("w1", &["--slots", "1"]);
    c.add_worker("w2", &["--slots", "1"]);
    let dir = c.ws.path().display().to_string();
    let plan = format!(
        "version: 1\nname: kill\ngates:\n  - id: slow\n    workdir: {dir}\n    run: \"touch started-$GATEHOUSE_ATTEMPT; sleep 2\"\n"
    );
    let id = c.submit(&plan).expect("submit");
    let started = c.ws.path().join("started-1");
    wait_until("attempt 1 to start", Duration::from_secs(20), || {
        started.exists()
    });
    let busy = c
        .list_workers()
        .into_iter()
        .find(|w| w.slots_used > 0)
        .map(|w| w.worker_id);
    let (victim, other) = match busy.as_deref() {
        Some("w1") => (0, "w2"),
        Some("w2") => (1, "w1"),
        // The heartbeat may not have reported the slot yet: ask the plan.
        _ => {
            let g = c.get(&id);
            match g.gates[0].worker_id.as_str() {
                "w1" => (0, "w2"),
                _ => (1, "w1"),
            }
        }
    };
    c.workers[victim].signal("KILL");
    let events = c.watch(&id, 0);
    let t = terminals(&events);
    let slow = &t["slow"];
    assert_eq!(state_name(slow.state), "passed");
    assert_eq!(slow.worker_id, other);
    assert!(slow.attempt >= 2, "re-run as a new attempt: {slow:?}");
    assert!(!slow.flaky, "a lost worker is not a failed attempt");
}

#[test]
fn sigterm_drains_the_worker_which_finishes_its_gate_and_exits_0() {
    let mut c = Cluster::start();
    let w = c.add_worker("w1", &["--slots", "1", "--drain-grace", "20s"]);
    let dir = c.ws.path().display().to_string();
    let plan = format!(
        "version: 1\nname: drain\ngates:\n  - id: work\n    workdir: {dir}\n    run: \"touch began; sleep 1; echo done > finished\"\n"
    );
    let id = c.submit(&plan).expect("submit");
    let began = c.ws.path().join("began");
    wait_until("the gate to start", Duration::from_secs(20), || {
        began.exists()
    });
    c.workers[w].signal("TERM");
    assert_eq!(c.workers[w].wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        c.ws.path().join("finished").exists(),
        "the running gate finished"
    );
    let events = c.watch(&id, 0);
    let work = &terminals(&events)["work"];
    assert_eq!(state_name(work.state), "passed");
    assert_eq!(
        (work.worker_id.as_str(), work.attempt),
        ("w1", 1),
        "finished where it ran"
    );
}

#[test]
fn memory_admission_respects_small_workers_and_reports_waiting() {
    let mut c = Cluster::start();
    c.add_worker("small", &["--slots", "4", "--memory", "300Mi"]);
    c.add_worker("big", &["--slots", "4", "--memory", "8Gi"]);
    let mut plan = String::from("version: 1\nname: mem\ngates:\n");
    for i in 0..6 {
        plan.push_str(&format!(
            "  - {{ id: big{i}, run: 'sleep 0.2', memory: 1Gi }}\n"
        ));
    }
    let id = c.submit(&plan).expect("submit");
    let events = c.watch(&id, 0);
    for (gate, e) in terminals(&events) {
        assert_eq!(state_name(e.state), "passed", "{gate}");
        assert_eq!(
            e.worker_id, "big",
            "{gate} needs 1Gi: only 'big' can hold it"
        );
    }
    let huge = c
        .submit("version: 1\nname: huge\ngates:\n  - { id: huge, run: 'true', memory: 64Gi }\n")
        .expect("submit");
    let mut reason = String::new();
    wait_until(
        "the huge gate to be reported waiting",
        Duration::from_secs(20),
        || {
            let g = c.get(&huge);
            reason = g.gates[0].reason.clone();
            state_name(g.gates[0].state) == "waiting"
        },
    );
    assert!(
        reason.contains("64Gi") && reason.contains("8Gi"),
        "reason says why: {reason}"
    );
}

#[test]
fn watch_resumes_from_a_sequence_number_without_gaps_or_repeats() {
    let mut c = Cluster::start();
    c.add_worker("w1", &["--slots", "2"]);
    let mut plan = String::from("version: 1\nname: seq\ngates:\n");
    for i in 0..10 {
        plan.push_str(&format!("  - {{ id: g{i}, run: 'true' }}\n"));
    }
    let id = c.submit(&plan).expect("submit");
    let all = c.watch(&id, 0);
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    let k = (all.len() / 2) as u64;
    let resumed = c.watch(&id, k);
    assert_eq!(
        resumed,
        all[k as usize..].to_vec(),
        "resume after {k} gives exactly the rest"
    );
    summary(&resumed);
    let end = all.len() as u64;
    assert!(
        c.watch(&id, end).is_empty(),
        "resuming after the summary ends at once"
    );
    let mut client = c.client();
    let beyond = v1::WatchPlanRequest {
        plan_id: id.clone(),
        after_seq: end + 5,
    };
    let err =
        c.rt.block_on(client.watch_plan(beyond))
            .expect_err("beyond the end");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{}", err.message());
}

#[test]
fn invalid_and_oversize_plans_are_refused_and_nothing_is_kept() {
    let c = Cluster::start();
    let cycle = "version: 1\nname: x\ngates:\n  - { id: a, run: 'true', needs: [b] }\n  - { id: b, run: 'true', needs: [a] }\n";
    let err = c.submit(cycle).expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("cycle") && err.message().contains("plan.yaml"),
        "{}",
        err.message()
    );
    let big = "#".repeat(64 * 1024 * 1024 + 1);
    let err = c.submit(&big).expect_err("refused");
    assert_eq!(
        err.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        err.message()
    );
    let mut client = c.client();
    let plans =
        c.rt.block_on(client.list_plans(v1::ListPlansRequest {}))
            .expect("list")
            .into_inner()
            .plans;
    assert!(
        plans.is_empty(),
        "nothing half-submitted is kept: {plans:?}"
    );
}

#[test]
fn cancel_kills_running_gates_on_the_worker() {
    let mut c = Cluster::start();
    c.add_worker("w1", &["--slots", "2"]);
    let dir = c.ws.path().display().to_string();
    let plan = format!(
        "version: 1\nname: cancel\ngates:\n  - id: long\n    workdir: {dir}\n    run: \"sleep 300 & echo $! > grandchild.pid; wait\"\n  - {{ id: after, run: 'true', needs: [long] }}\n"
    );
    let id = c.submit(&plan).expect("submit");
    let pid_file = c.ws.path().join("grandchild.pid");
    wait_until(
        "the gate to start its grandchild",
        Duration::from_secs(20),
        || read_pid(&pid_file).is_some(),
    );
    let grandchild = read_pid(&pid_file).expect("pid");
    let mut client = c.client();
    let req = v1::CancelPlanRequest {
        plan_id: id.clone(),
        force: false,
    };
    assert!(
        c.rt.block_on(client.cancel_plan(req))
            .expect("cancel")
            .into_inner()
            .cancelled
    );
    let events = c.watch(&id, 0);
    assert_eq!(summary(&events).outcome, v1::PlanOutcome::Cancelled as i32);
    let t = terminals(&events);
    assert_eq!(state_name(t["long"].state), "cancelled");
    assert_eq!(state_name(t["after"].state), "cancelled");
    wait_until("the grandchild to be gone", Duration::from_secs(10), || {
        !process_alive(grandchild)
    });
}

#[test]
fn a_silent_worker_is_declared_lost_and_rejoins_fresh_when_it_comes_back() {
    let mut c = Cluster::start();
    let stopped = c.add_worker("w1", &["--slots", "1"]);
    let dir = c.ws.path().display().to_string();
    let plan = format!(
        "version: 1\nname: stop\ngates:\n  - id: g\n    workdir: {dir}\n    run: \"touch started-$GATEHOUSE_ATTEMPT; sleep 1\"\n"
    );
    let id = c.submit(&plan).expect("submit");
    wait_until("attempt 1 to start", Duration::from_secs(20), || {
        c.ws.path().join("started-1").exists()
    });
    // Freeze the worker: no heartbeats, but its connection stays open.
    c.workers[stopped].signal("STOP");
    c.add_worker("w2", &["--slots", "1"]);
    wait_until("w1 to be declared lost", Duration::from_secs(20), || {
        !c.list_workers().iter().any(|w| w.worker_id == "w1")
    });
    let events = c.watch(&id, 0);
    let g = &terminals(&events)["g"];
    assert_eq!(
        (state_name(g.state).as_str(), g.worker_id.as_str()),
        ("passed", "w2")
    );
    assert_eq!(g.attempt, 2, "re-queued as a new attempt");
    c.workers[stopped].signal("CONT");
    wait_until(
        "w1 to rejoin as a fresh worker",
        Duration::from_secs(30),
        || {
            c.list_workers()
                .iter()
                .any(|w| w.worker_id == "w1" && w.slots_used == 0)
        },
    );
}

#[test]
fn health_and_reflection_serve_generic_grpc_tools() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let c = Cluster::start();
    let names = c.rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(c.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut client = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .expect("reflection")
            .into_inner();
        match stream
            .message()
            .await
            .expect("answer")
            .and_then(|r| r.message_response)
        {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("unexpected reflection answer: {other:?}"),
        }
    });
    for wanted in [
        "gatehouse.v1.PlanService",
        "gatehouse.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
}

#[test]
fn an_unreachable_coordinator_is_one_line_and_exit_3() {
    let ws = support::Workspace::new();
    let out = ws
        .cmd(&[
            "plans",
            "--coordinator",
            "http://127.0.0.1:1",
            "--failover-timeout",
            "1s",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}

/// The status code of `GET path` on `addr` (HTTP/1.1, bounded by 5 s), or 0 if no
/// answer.
fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn http_probes_say_alive_and_ready_and_a_draining_worker_is_not_ready() {
    let mut c = Cluster::start();
    let ports = support::etcd::free_ports::<2>();
    let (coord_http, worker_http) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    // The harness's coordinator has no --http: a standalone coordinator of its own
    // (own state directory) shows the coordinator's probes; it leads, so it is ready.
    let mut probe = support::cluster::Proc::spawn(
        "probe-coordinator",
        c.ws.path(),
        &[
            "coordinator".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            c.ws.path().join("probe-state").display().to_string(),
            "--http".into(),
            coord_http.clone(),
        ],
    );
    wait_until("the coordinator's /readyz", Duration::from_secs(20), || {
        http_status(&coord_http, "/readyz") == 200
    });
    assert_eq!(http_status(&coord_http, "/healthz"), 200);
    assert_eq!(http_status(&coord_http, "/nope"), 404);
    probe.signal("TERM");
    assert_eq!(probe.wait_exit(Duration::from_secs(20)), Some(0));

    // A worker: ready once its session is welcomed, not ready while it drains.
    let w = c.add_worker("w1", &["--http", &worker_http, "--drain-grace", "30s"]);
    wait_until("the worker's /readyz", Duration::from_secs(20), || {
        http_status(&worker_http, "/readyz") == 200
    });
    assert_eq!(http_status(&worker_http, "/healthz"), 200);
    let id = c
        .submit("version: 1\nname: slow\ngates:\n  - id: a\n    run: sleep 3\n")
        .expect("submit");
    wait_until("the gate to run", Duration::from_secs(20), || {
        c.get(&id)
            .gates
            .iter()
            .any(|g| g.state == v1::GateState::Running as i32)
    });
    c.workers[w].signal("TERM");
    wait_until(
        "the draining worker to be unready",
        Duration::from_secs(10),
        || http_status(&worker_http, "/readyz") == 503,
    );
    assert_eq!(
        http_status(&worker_http, "/healthz"),
        200,
        "alive while draining"
    );
    assert_eq!(c.workers[w].wait_exit(Duration::from_secs(30)), Some(0));
}
