use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use gatehouse_common::exec::OutputTail;
use gatehouse_common::ids::{GateIdx, PlanId, WorkerId};

use super::*;
use crate::remote::RemoteWorkerConfig;

fn attempt(gate: u32, n: u32) -> AttemptRef {
    AttemptRef {
        plan: PlanId::new("p1"),
        gate: GateIdx(gate),
        attempt: n,
    }
}

fn wire_spec(workdir: &str) -> v1::GateSpec {
    v1::GateSpec {
        plan_name: "demo".into(),
        gate_id: "pr-1/lint".into(),
        item_id: "pr-1".into(),
        run: "echo hi".into(),
        env: HashMap::from([("A".to_owned(), "1".to_owned())]),
        workdir: workdir.into(),
        timeout_ms: 60_000,
        memory_bytes: 512,
        checkout: None,
        reports: Vec::new(),
    }
}

fn coordinator(msg: coordinator_message::Msg) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage { msg: Some(msg) }
}

#[test]
fn welcome_timings_fall_back_and_are_floored() {
    let welcome = |hb, lv| {
        decode(coordinator(coordinator_message::Msg::Welcome(
            v1::Welcome {
                heartbeat_interval_ms: hb,
                liveness_timeout_ms: lv,
            },
        )))
        .expect("decodes")
    };
    assert_eq!(
        welcome(250, 1000),
        Inbound::Welcome(Welcome {
            heartbeat: Duration::from_millis(250),
            liveness: Duration::from_secs(1),
        })
    );
    assert!(matches!(welcome(0, 0), Inbound::Welcome(w) if w.heartbeat == DEFAULT_HEARTBEAT));
    assert!(matches!(welcome(1, 0), Inbound::Welcome(w) if w.heartbeat == MIN_HEARTBEAT));
}

#[test]
fn assignments_and_cancels_decode_and_bad_frames_are_errors() {
    let a = attempt(3, 2);
    let assign = decode(coordinator(coordinator_message::Msg::Assign(
        v1::Assignment {
            attempt: Some((&a).into()),
            spec: Some(wire_spec("sub")),
            ..Default::default()
        },
    )))
    .expect("decodes");
    assert_eq!(
        assign,
        Inbound::Assign {
            attempt: a.clone(),
            spec: Some(wire_spec("sub")),
            cache_key: None,
            traceparent: None,
            watch: Default::default(),
        }
    );
    // A cache key travels as 32 bytes; anything else is dropped, not an error.
    let keyed = |key: Vec<u8>| {
        decode(coordinator(coordinator_message::Msg::Assign(
            v1::Assignment {
                attempt: Some((&a).into()),
                spec: Some(wire_spec("sub")),
                cache_key: key,
                ..Default::default()
            },
        )))
        .expect("decodes")
    };
    let Inbound::Assign { cache_key, .. } = keyed(vec![7; 32]) else {
        panic!("not an assignment");
    };
    assert_eq!(cache_key, Some(gatehouse_common::cache::CacheKey([7; 32])));
    let Inbound::Assign { cache_key, .. } = keyed(vec![7; 31]) else {
        panic!("not an assignment");
    };
    assert_eq!(cache_key, None);
    let cancel = decode(coordinator(coordinator_message::Msg::Cancel(
        v1::CancelAttempt {
            attempt: Some((&a).into()),
            grace_ms: 1500,
        },
    )))
    .expect("decodes");
    assert_eq!(
        cancel,
        Inbound::Cancel {
            attempt: a.clone(),
            grace: Duration::from_millis(1500),
        }
    );
    let ack = decode(coordinator(coordinator_message::Msg::Ack(v1::ResultAck {
        attempts: vec![(&a).into(), (&attempt(4, 1)).into()],
    })))
    .expect("decodes");
    assert_eq!(ack, Inbound::Ack(vec![a.clone(), attempt(4, 1)]));
    let bad_ack = coordinator(coordinator_message::Msg::Ack(v1::ResultAck {
        attempts: vec![v1::AttemptRef::default()],
    }));
    assert!(decode(bad_ack).is_err());
    assert!(decode(v1::CoordinatorMessage { msg: None }).is_err());
    let no_attempt = coordinator(coordinator_message::Msg::Cancel(v1::CancelAttempt {
        attempt: None,
        grace_ms: 0,
    }));
    assert!(decode(no_attempt).is_err());
}

#[test]
fn shared_workspace_assignments_resolve_relative_workdirs() {
    let ws = Workspace::Shared(PathBuf::from("/srv/ws"));
    let prepared =
        prepare_assignment(&ws, attempt(0, 1), Some(wire_spec("./sub")), None).expect("ok");
    let spec = &prepared.assignment.spec;
    assert_eq!(spec.workdir, PathBuf::from("/srv/ws/sub"));
    assert_eq!(spec.run, "echo hi");
    assert_eq!(spec.env, BTreeMap::from([("A".to_owned(), "1".to_owned())]));
    assert_eq!(prepared.memory, 512);
    assert_eq!(prepared.assignment.attempt, attempt(0, 1));
    assert!(prepared.scratch.is_none());

    let abs = prepare_assignment(&ws, attempt(0, 1), Some(wire_spec("/abs")), None).expect("ok");
    assert_eq!(abs.assignment.spec.workdir, PathBuf::from("/abs"));
}

#[test]
fn scratch_assignments_get_their_own_directory() {
    let root = tempfile::tempdir().expect("tempdir");
    let ws = Workspace::Scratch {
        root: root.path().to_path_buf(),
    };
    let prepared = prepare_assignment(&ws, attempt(0, 1), Some(wire_spec("")), None).expect("ok");
    let scratch = prepared.scratch.as_ref().expect("scratch mode");
    assert_eq!(prepared.assignment.spec.workdir, scratch.path());
    assert!(scratch.path().starts_with(root.path()));
}

#[test]
fn undecodable_specs_are_reasons_not_panics() {
    let ws = Workspace::Shared(PathBuf::from("/srv/ws"));
    let missing = prepare_assignment(&ws, attempt(0, 1), None, None).expect_err("no spec");
    assert!(missing.contains("spec"), "{missing}");
    let bad = v1::GateSpec {
        run: String::new(),
        ..wire_spec(".")
    };
    let err = prepare_assignment(&ws, attempt(0, 1), Some(bad), None).expect_err("no run");
    assert!(err.contains("spec.run"), "{err}");
}

#[test]
fn hello_advertises_the_configuration() {
    let mut cfg = RemoteWorkerConfig::new(vec!["http://h:1".into()], WorkerId::new("w-1"));
    cfg.slots = 4;
    cfg.labels = BTreeMap::from([("arch".to_owned(), "arm64".to_owned())]);
    let running = attempt(0, 2);
    let done = (attempt(1, 1), not_run(ExitStatus::Exited(3)));
    let msg = hello(
        &cfg,
        Some("http://10.0.0.1:7701"),
        "host-a",
        4096,
        [&running],
        std::slice::from_ref(&done),
    );
    let Some(worker_message::Msg::Hello(h)) = msg.msg else {
        panic!("not a hello");
    };
    assert_eq!(
        (
            h.worker_id.as_str(),
            h.hostname.as_str(),
            h.slots,
            h.memory_total_bytes
        ),
        ("w-1", "host-a", 4, 4096)
    );
    assert_eq!(h.labels.get("arch").map(String::as_str), Some("arm64"));
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(h.cache_url, "http://10.0.0.1:7701");
    assert_eq!(h.running, vec![v1::AttemptRef::from(&running)]);
    assert_eq!(h.finished.len(), 1);
    let f = h.finished[0].clone();
    assert_eq!(attempt_from_wire(f.attempt).expect("attempt"), done.0);
    let result = GateResult::try_from(f.result.expect("result")).expect("decodes");
    assert_eq!(result, done.1);
}

#[test]
fn reports_heartbeats_and_draining_encode() {
    let a = attempt(1, 1);
    let Some(worker_message::Msg::Started(s)) =
        report(&FromWorker::Started { attempt: a.clone() }).msg
    else {
        panic!("not started");
    };
    assert_eq!(attempt_from_wire(s.attempt).expect("ok"), a);

    let result = GateResult {
        stdout: OutputTail {
            bytes: b"hi\n".to_vec(),
            dropped: 0,
        },
        ..not_run(ExitStatus::Exited(0))
    };
    let msg = report(&FromWorker::Finished {
        attempt: a.clone(),
        result: result.clone(),
    });
    let Some(worker_message::Msg::Finished(f)) = msg.msg else {
        panic!("not finished");
    };
    assert_eq!(attempt_from_wire(f.attempt).expect("ok"), a);
    let back = GateResult::try_from(f.result.expect("result")).expect("decodes");
    assert_eq!(back, result);

    let mem = MemorySample {
        used: 10,
        available: 90,
    };
    let Some(worker_message::Msg::Heartbeat(h)) = heartbeat(3, mem, [&a]).msg else {
        panic!("not a heartbeat");
    };
    assert_eq!(
        (h.free_slots, h.memory_used_bytes, h.memory_available_bytes),
        (3, 10, 90)
    );
    assert_eq!(h.running, vec![v1::AttemptRef::from(&a)]);

    let Some(worker_message::Msg::Draining(d)) = draining(Duration::from_secs(30)).msg else {
        panic!("not draining");
    };
    assert_eq!(d.grace_ms, 30_000);
}
