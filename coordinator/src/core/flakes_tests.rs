//! What the core decides from test reports: flaky tests, the cache, quarantine and
//! `retry_on: flaky`.

use gatehouse_common::cache::CacheEntry;
use gatehouse_common::exec::{ExitStatus, GateResult};
use gatehouse_common::ids::{GateId, GateIdx};
use gatehouse_common::plan::{Policy, Quarantine, QuarantinedTest, RetryOn};
use gatehouse_common::reports::history::{FailedTest, TestRun};
use gatehouse_common::reports::{GateTests, Outcome, TestCase, TestId, TestVerdict};

use super::testkit::*;
use super::*;

fn id(name: &str) -> TestId {
    TestId {
        suite: "pytest".into(),
        class: "tests.t".into(),
        name: name.into(),
    }
}

fn failed(name: &str) -> TestCase {
    TestCase {
        id: id(name),
        outcome: Outcome::Failed,
        duration_ms: 1,
        message: Some(format!("{name} broke")),
        reruns_failed: 0,
        file: None,
        line: None,
    }
}

/// A result with reports: `failed` tests failed, `passed` watched tests passed.
fn with_tests(code: i32, failed_tests: &[&str], passed: &[&str]) -> GateResult {
    let mut r = result(ExitStatus::Exited(code));
    let mut tests = GateTests {
        files: 1,
        read_unix_ms: 1_000,
        ..GateTests::default()
    };
    tests.results.failed = failed_tests.len() as u64;
    tests.results.passed = 10;
    tests.results.notable = failed_tests.iter().map(|n| failed(n)).collect();
    tests.results.watched_passed = passed.iter().map(|n| id(n).key()).collect();
    r.tests = Some(Box::new(tests));
    r
}

/// One gate with reports and `retries`, submitted with the cache on; its key is key(1).
fn one_gate(policy: Policy, retries: u32, retry_on: RetryOn) -> Sim {
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 1, 4096 * MI)]);
    let mut spec = g("test", &[]);
    spec.retries = retries;
    let mut plan = Arc::unwrap_or_clone(flat(policy, &[spec]));
    plan.gates[0].reports = vec!["junit.xml".into()];
    plan.gates[0].retry_on = retry_on;
    sim.submit(Arc::new(plan), true);
    sim.feed(Event::CacheChecked {
        plan: sim.plan.clone(),
        gate: GateIdx(0),
        key: Some(key(1)),
        hit: None,
    });
    sim
}

fn stored(cmds: &[Command]) -> Option<&Option<TestVerdict>> {
    cmds.iter().find_map(|c| match c {
        Command::StoreResult { flaky, .. } => Some(flaky),
        _ => None,
    })
}

fn policy() -> Policy {
    Policy {
        retry_backoff: std::time::Duration::from_millis(1),
        ..Policy::default()
    }
}

#[test]
fn a_retry_that_passes_a_failed_test_flags_it_and_keeps_the_pass_out_of_the_cache() {
    let mut sim = one_gate(policy(), 1, RetryOn::Any);
    assert_eq!(sim.assignment(0).cache_key, Some(key(1)));
    assert!(sim.assignment(0).watch.is_empty(), "nothing failed before");
    let first = sim.finish_with(0, with_tests(1, &["flaky", "other"], &[]));
    assert!(
        first
            .iter()
            .any(|c| matches!(c, Command::RecordTests(r) if r.failed.len() == 2))
    );
    sim.fire_timer();
    let retry = sim.assignment(0);
    assert_eq!(
        retry.cache_key, None,
        "a retry's pass is the core's to store"
    );
    assert!(retry.watch.contains(&id("flaky").key()));
    let end = sim.finish_with(0, with_tests(0, &[], &["flaky", "other"]));
    let ev = sim.terminal(0);
    assert_eq!(ev.status, GateStatus::Finished(Terminal::Passed));
    assert!(ev.flaky);
    let verdict = ev.verdict.as_deref().expect("a verdict");
    let names: Vec<&str> = verdict.flaky.iter().map(|c| c.id.name.as_str()).collect();
    assert_eq!(names, ["flaky", "other"]);
    assert_eq!(verdict.flaky[0].message.as_deref(), Some("flaky broke"));
    assert_eq!(stored(&end), None, "a flaky pass is not cached by default");
    // The next run watches both and knows them flaky.
    assert!(sim.core.history().is_flaky(&id("flaky").key()));
}

#[test]
fn cache_flaky_stores_the_flaky_pass_with_its_tests_and_a_hit_keeps_them() {
    let mut sim = one_gate(
        Policy {
            cache_flaky: true,
            ..policy()
        },
        1,
        RetryOn::Any,
    );
    sim.finish_with(0, with_tests(1, &["flaky"], &[]));
    sim.fire_timer();
    let end = sim.finish_with(0, with_tests(0, &[], &["flaky"]));
    let verdict = stored(&end)
        .expect("stored")
        .clone()
        .expect("as a flaky pass");
    assert_eq!(verdict.flaky[0].id, id("flaky"));
    // A later plan's hit on that entry reports the gate flaky, with its tests.
    let mut later = Sim::new(CoreConfig::default(), &[worker("w", 1, 4096 * MI)]);
    later.submit(flat(policy(), &[g("test", &[])]), true);
    later.feed(Event::CacheChecked {
        plan: later.plan.clone(),
        gate: GateIdx(0),
        key: Some(key(1)),
        hit: Some(Box::new(CacheEntry {
            result: with_tests(0, &[], &[]),
            producer: GateId::new("test"),
            created_unix_ms: 1,
            flaky: Some(verdict.clone()),
        })),
    });
    let ev = later.terminal(0);
    assert!(ev.cached && ev.flaky);
    assert_eq!(ev.verdict.as_deref(), Some(&verdict));
}

/// A history in which `name` flipped on key(1).
fn flaky_history(name: &str) -> Event {
    let fact = |failed: bool| TestRun {
        plan: "earlier".into(),
        gate: "test".into(),
        inputs: key(1).0,
        unix_ms: 10,
        failed: if failed {
            vec![FailedTest::of(&self::failed(name))]
        } else {
            vec![]
        },
        passed: if failed { vec![] } else { vec![id(name).key()] },
        ..TestRun::default()
    };
    Event::HistoryLoaded(vec![fact(true), fact(false)])
}

#[test]
fn retry_on_flaky_retries_only_when_every_failed_test_is_known_flaky() {
    // A real failure next to the flaky one: no retry.
    let mut sim = one_gate(policy(), 2, RetryOn::Flaky);
    sim.feed(flaky_history("flaky"));
    sim.finish_with(0, with_tests(1, &["flaky", "real"], &[]));
    assert_eq!(sim.state(0), Terminal::Failed);
    assert!(sim.timers.is_empty(), "no retry was scheduled");
    // Only the flaky one: retried.
    let mut sim = one_gate(policy(), 2, RetryOn::Flaky);
    sim.feed(flaky_history("flaky"));
    sim.finish_with(0, with_tests(1, &["flaky"], &[]));
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(e.status, GateStatus::Retrying { .. }))
    );
    // A failure without reports (it did not get to its tests) is never retried.
    let mut sim = one_gate(policy(), 2, RetryOn::Flaky);
    sim.feed(flaky_history("flaky"));
    sim.finish(0, ExitStatus::Exited(2));
    assert_eq!(sim.state(0), Terminal::Failed);
}

fn quarantine(tests: &[&str], until_unix_ms: u64) -> Policy {
    Policy {
        quarantine: Quarantine {
            threshold: None,
            tests: tests
                .iter()
                .map(|t| QuarantinedTest {
                    test: (*t).into(),
                    until_unix_ms,
                })
                .collect(),
        },
        ..policy()
    }
}

#[test]
fn a_failure_of_quarantined_tests_only_passes_the_gate_uncached() {
    let mut sim = one_gate(quarantine(&["*::known"], 5_000), 0, RetryOn::Any);
    let end = sim.finish_with(0, with_tests(1, &["known"], &[]));
    let ev = sim.terminal(0);
    assert_eq!(ev.status, GateStatus::Finished(Terminal::Passed));
    assert!(ev.flaky);
    let verdict = ev.verdict.as_deref().expect("verdict");
    assert_eq!(verdict.quarantined[0].id, id("known"));
    assert_eq!(stored(&end), None, "a quarantined pass is never cached");
    assert!(
        end.iter()
            .any(|c| matches!(c, Command::RecordTests(r) if r.quarantined == [id("known").key()]))
    );
}

#[test]
fn quarantine_covers_only_what_it_can_see_whole_and_in_time() {
    let cases: [(&str, GateResult); 4] = [
        ("another test failed", with_tests(1, &["known", "new"], &[])),
        ("the run is after the end date", {
            let mut r = with_tests(1, &["known"], &[]);
            if let Some(t) = r.tests.as_mut() {
                t.read_unix_ms = 6_000;
            }
            r
        }),
        ("a report is missing", {
            let mut r = with_tests(1, &["known"], &[]);
            if let Some(t) = r.tests.as_mut() {
                t.missing = vec!["other.xml".into()];
            }
            r
        }),
        ("it timed out", {
            let mut r = with_tests(1, &["known"], &[]);
            r.status = ExitStatus::TimedOut;
            r
        }),
    ];
    for (why, result) in cases {
        let mut sim = one_gate(quarantine(&["*::known"], 5_000), 0, RetryOn::Any);
        sim.finish_with(0, result);
        assert_ne!(sim.state(0), Terminal::Passed, "{why}");
    }
}

#[test]
fn a_flake_score_over_the_threshold_quarantines() {
    let threshold = Policy {
        quarantine: Quarantine {
            threshold: Some(0.2),
            tests: vec![],
        },
        ..policy()
    };
    let mut sim = one_gate(threshold.clone(), 0, RetryOn::Any);
    sim.feed(flaky_history("flaky"));
    sim.finish_with(0, with_tests(1, &["flaky"], &[]));
    assert_eq!(sim.state(0), Terminal::Passed);
    // An unknown test is not.
    let mut sim = one_gate(threshold, 0, RetryOn::Any);
    sim.finish_with(0, with_tests(1, &["flaky"], &[]));
    assert_eq!(sim.state(0), Terminal::Failed);
}

#[test]
fn a_timeout_is_not_retried_under_retry_on_flaky_even_with_flaky_reports() {
    let mut sim = one_gate(policy(), 2, RetryOn::Flaky);
    sim.feed(flaky_history("flaky"));
    let mut timed_out = with_tests(1, &["flaky"], &[]);
    timed_out.status = ExitStatus::TimedOut;
    sim.finish_with(0, timed_out);
    assert_eq!(sim.state(0), Terminal::TimedOut);
}

#[test]
fn an_uncached_gates_key_is_not_its_inputs() {
    // "t" failed on key(1) before; an uncached gate keyed key(1) (its key covers its
    // command, not its code) passes it: that is no flip.
    let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 1, 4096 * MI)]);
    let mut plan = Arc::unwrap_or_clone(flat(policy(), &[g("test", &[])]));
    plan.gates[0].reports = vec!["junit.xml".into()];
    plan.gates[0].cache = false;
    sim.submit(Arc::new(plan), true);
    sim.feed(Event::HistoryLoaded(vec![TestRun {
        plan: "earlier".into(),
        gate: "test".into(),
        inputs: key(1).0,
        unix_ms: 10,
        failed: vec![FailedTest::of(&failed("t"))],
        ..TestRun::default()
    }]));
    sim.feed(Event::CacheChecked {
        plan: sim.plan.clone(),
        gate: GateIdx(0),
        key: Some(key(1)),
        hit: None,
    });
    assert!(
        sim.assignment(0).watch.contains(&id("t").key()),
        "still watched"
    );
    sim.finish_with(0, with_tests(0, &[], &["t"]));
    let ev = sim.terminal(0);
    assert!(ev.verdict.is_none(), "{:?}", ev.verdict);
    assert!(!sim.core.history().is_flaky(&id("t").key()));
}

#[test]
fn a_flaky_pass_is_shared_with_waiters_only_when_cached_and_then_as_flaky() {
    for cache_flaky in [false, true] {
        let mut sim = Sim::new(CoreConfig::default(), &[worker("w", 2, 4096 * MI)]);
        let mut leader = g("a", &[]);
        leader.retries = 1;
        let mut plan = Arc::unwrap_or_clone(flat(
            Policy {
                cache_flaky,
                ..policy()
            },
            &[leader, g("b", &[])],
        ));
        for gate in &mut plan.gates {
            gate.reports = vec!["junit.xml".into()];
        }
        sim.submit(Arc::new(plan), true);
        for gate in [0, 1] {
            sim.feed(Event::CacheChecked {
                plan: sim.plan.clone(),
                gate: GateIdx(gate),
                key: Some(key(1)),
                hit: None,
            });
        }
        assert_eq!(
            sim.running_gates(),
            [0],
            "b waits for a, which leads key(1)"
        );
        sim.finish_with(0, with_tests(1, &["flaky"], &[]));
        sim.fire_timer();
        sim.finish_with(0, with_tests(0, &[], &["flaky"]));
        if cache_flaky {
            let b = sim.terminal(1);
            assert!(b.cached && b.flaky, "served as a flaky pass");
            assert_eq!(b.verdict.as_deref().map(|v| v.flaky.len()), Some(1));
        } else {
            assert_eq!(sim.running_gates(), [1], "not shared: b runs itself");
        }
    }
}
