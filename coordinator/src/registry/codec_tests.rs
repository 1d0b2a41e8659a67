//! Tests of the registry's encodings: round trips, older versions, damage.

use gatehouse_common::exec::ExitStatus;

use super::*;

fn gate_event(status: GateStatus, output: usize) -> PlanEvent {
    let mut result = crate::core::testkit::result(ExitStatus::Exited(2));
    result.stderr.bytes = vec![b'e'; output];
    PlanEvent::Gate(GateEvent {
        plan: PlanId::new("p-1"),
        gate: GateIdx(7),
        status,
        attempt: 2,
        worker: Some(WorkerId::new("w-1")),
        cached: false,
        flaky: true,
        result: Some(result),
        reason: Some("exit_code"),
        cause: Some(GateIdx(3)),
        queued: None,
        verdict: None,
    })
}

#[test]
fn events_round_trip_small_and_compressed() {
    let plan = PlanId::new("p-1");
    let events = vec![
        gate_event(GateStatus::Running, 0),
        gate_event(
            GateStatus::Retrying {
                backoff: Duration::from_millis(1500),
            },
            10,
        ),
        gate_event(GateStatus::Finished(Terminal::TimedOut), 100_000),
        PlanEvent::Finished(PlanSummary {
            plan: plan.clone(),
            outcome: PlanOutcome::Failed,
            counts: Counts {
                total: 9,
                failed: 1,
                ..Counts::default()
            },
            merge_order: vec![ItemIdx(0), ItemIdx(2)],
            duration: Duration::from_millis(1234),
        }),
    ];
    let bytes = encode_events(7, &events);
    assert!(
        bytes.len() < 10_000,
        "100 kB of output compresses: {}",
        bytes.len()
    );
    assert_eq!(chunk_term(&bytes).expect("term"), (7, 4));
    let back = decode_events(&plan, &bytes).expect("decodes");
    assert_eq!(format!("{back:?}"), format!("{events:?}"));
}

#[test]
fn test_results_ride_after_their_gate_event() {
    use gatehouse_common::reports::{GateTests, TestCase, TestId, TestVerdict};
    let plan = PlanId::new("p-1");
    let case = TestCase {
        id: TestId {
            suite: "s".into(),
            class: "c".into(),
            name: "t".into(),
        },
        outcome: gatehouse_common::reports::Outcome::Failed,
        duration_ms: 1,
        message: Some("no".into()),
        reruns_failed: 0,
        file: None,
        line: None,
    };
    let mut with_tests = gate_event(GateStatus::Finished(Terminal::Passed), 10);
    let PlanEvent::Gate(g) = &mut with_tests else {
        unreachable!("a gate event")
    };
    let mut tests = GateTests::default();
    tests.results.failed = 1;
    tests.results.notable = vec![case.clone()];
    tests.missing = vec!["x.xml".into()];
    if let Some(r) = g.result.as_mut() {
        r.tests = Some(Box::new(tests));
    }
    g.verdict = Some(Box::new(TestVerdict {
        flaky: vec![],
        quarantined: vec![case],
    }));
    let events = vec![
        gate_event(GateStatus::Running, 0),
        with_tests,
        gate_event(GateStatus::Finished(Terminal::Failed), 0),
    ];
    let bytes = encode_events(3, &events);
    assert_eq!(bytes[0], EVENTS_VERSION);
    // Four entries (the tests ride as one), three events back.
    assert_eq!(chunk_term(&bytes).expect("term"), (3, 4));
    let back = decode_events(&plan, &bytes).expect("decodes");
    assert_eq!(format!("{back:?}"), format!("{events:?}"));
    // A chunk of the previous version, written before results had tests, still reads.
    let old: Vec<EventV1> = [gate_event(GateStatus::Running, 5)]
        .iter()
        .map(event_to_v1)
        .collect();
    let old = frame(
        2,
        &ChunkV1 {
            term: 1,
            events: old,
        },
    );
    assert_eq!(decode_events(&plan, &old).expect("decodes").len(), 1);
    // Tests that follow nothing are damage, not a panic.
    let orphan = frame(
        EVENTS_VERSION,
        &ChunkV1 {
            term: 1,
            events: vec![EventV1::Tests {
                result: None,
                verdict: None,
            }],
        },
    );
    assert!(decode_events(&plan, &orphan).is_err());
}

fn resolution() -> Resolution {
    use gatehouse_common::source::{Base, CommitId, GateTree, TreeId};
    let tree = TreeId::parse(&"e".repeat(40)).expect("tree");
    Resolution {
        base: Ok(Base {
            git_ref: "main".into(),
            commit: CommitId::parse(&"a".repeat(40)).expect("commit"),
            tree: tree.clone(),
        }),
        items: Vec::new(),
        gates: vec![Some(GateTree::Whole(tree))],
    }
}

#[test]
fn records_round_trip() {
    let record = PlanRecord {
        source: PlanSource {
            document: "gates: []\n".repeat(200),
            format: PlanFormat::Json,
            name: "plan.json".into(),
            resolution: Some(Arc::new(resolution())),
        },
        options: RunOptions {
            use_cache: true,
            trace_parent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..RunOptions::default()
        },
        submitted_unix_ms: 42,
    };
    let bytes = encode_record(&record);
    assert_eq!(bytes[0], RECORD_VERSION);
    assert_eq!(decode_record(&bytes).expect("decodes"), record);
}

#[test]
fn version_1_records_still_read_without_a_trace() {
    let v1 = frame(
        1,
        &RecordV1 {
            document: "version: 1\n".into(),
            json: false,
            name: "plan.yaml".into(),
            use_cache: false,
            submitted_unix_ms: 7,
        },
    );
    let back = decode_record(&v1).expect("a version 1 record decodes");
    assert_eq!(back.source.document, "version: 1\n");
    assert_eq!(back.source.format, PlanFormat::Yaml);
    assert!(!back.options.use_cache);
    assert_eq!(back.options.trace_parent, None);
    assert_eq!(back.submitted_unix_ms, 7);
}

#[test]
fn damaged_values_are_errors_not_panics() {
    let good = encode_events(1, &[gate_event(GateStatus::Running, 2000)]);
    let plan = PlanId::new("p-1");
    let mut wrong_version = good.clone();
    wrong_version[0] = 9;
    let err = decode_events(&plan, &wrong_version).expect_err("version");
    assert!(err.to_string().contains("version 9"), "{err}");
    for cut in [0, 1, 5, good.len() / 2, good.len() - 1] {
        assert!(decode_events(&plan, &good[..cut]).is_err(), "cut at {cut}");
    }
    let mut flipped = good;
    let last = flipped.len() - 3;
    flipped[last] ^= 0xff;
    assert!(decode_events(&plan, &flipped).is_err());
    assert!(decode_record(b"\x01\x00\xff\xff").is_err());
    let err = decode_record(b"\x05\x00").expect_err("version 5");
    assert!(
        err.to_string().contains("reads 1 and 2 and 3 and 4"),
        "{err}"
    );
    // A chunk is not a record, whatever its version byte says.
    assert!(decode_record(&encode_events(1, &[])).is_err());
}

#[test]
fn landing_records_and_specs_round_trip() {
    let plan = PlanId::new("p-1");
    let id =
        |c: char| gatehouse_common::source::CommitId::parse(&c.to_string().repeat(40)).expect("id");
    let events = vec![PlanEvent::Land {
        plan: plan.clone(),
        record: gatehouse_common::land::LandRecord::Pushing {
            round: 1,
            commit: id('b'),
            expected: id('a'),
            report: None,
        },
    }];
    let bytes = encode_events(3, &events);
    assert_eq!(decode_events(&plan, &bytes).expect("decode"), events);
    let mut record = PlanRecord {
        source: PlanSource {
            document: "version: 1".into(),
            format: PlanFormat::Yaml,
            name: "plan.yaml".into(),
            resolution: None,
        },
        options: RunOptions::default(),
        submitted_unix_ms: 7,
    };
    record.options.land = Some(gatehouse_common::land::LandSpec {
        branch: "main".into(),
        dry_run: true,
        retries: 2,
    });
    assert_eq!(
        decode_record(&encode_record(&record)).expect("decode"),
        record
    );
}

#[test]
fn unknown_reasons_read_back_as_unknown() {
    assert_eq!(
        gatehouse_common::events::known_reason("worker_lost"),
        "worker_lost"
    );
    assert_eq!(
        gatehouse_common::events::known_reason("something_new"),
        "unknown"
    );
}
