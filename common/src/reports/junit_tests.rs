//! The JUnit reader on the shapes real runners write (fixtures in the shape of each;
//! real pytest and cargo-nextest output is read in the integration tests), on broken
//! and hostile input, and on arbitrary bytes.

use proptest::prelude::*;

use super::*;

/// Every test case of a report, as read (up to `max_cases`), and how many more.
#[derive(Debug)]
struct Report {
    cases: Vec<TestCase>,
    dropped: u64,
}

fn parse(input: &[u8], limits: &Limits) -> Result<Report, ReportError> {
    let mut report = Report {
        cases: Vec::new(),
        dropped: 0,
    };
    let max = limits.max_cases as usize;
    super::read(input, limits, &mut |case| {
        if report.cases.len() < max {
            report.cases.push(case.to_owned());
        } else {
            report.dropped += 1;
        }
    })?;
    Ok(report)
}

fn read(xml: &str) -> Report {
    parse(xml.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{e}\n{xml}"))
}

fn err(xml: &[u8], limits: &Limits) -> String {
    match parse(xml, limits) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn case<'r>(r: &'r Report, name: &str) -> &'r TestCase {
    r.cases
        .iter()
        .find(|c| c.id.name == name)
        .unwrap_or_else(|| panic!("no case {name}: {r:?}"))
}

#[test]
fn pytest_shape() {
    let r = read(
        r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="0.052" timestamp="2026-12-07T10:00:00" hostname="h"><testcase classname="tests.test_math" name="test_add" time="0.001" /><testcase classname="tests.test_math" name="test_div[0-1]" time="0.002"><failure message="assert 1 == 2&#10;  + where 1 = f()">def test_div():
&gt;       assert f() == 2
E       assert 1 == 2</failure></testcase><testcase classname="tests.test_math" name="test_skip" time="0.000"><skipped type="pytest.skip" message="not today">tests/test_math.py:9: not today</skipped></testcase><testcase classname="tests.test_io" name="test_open" time="0.010"><error message="failed on setup with &quot;OSError&quot;">fixture error</error><system-out>out</system-out></testcase></testsuite></testsuites>"#,
    );
    assert_eq!(r.cases.len(), 4);
    let add = case(&r, "test_add");
    assert_eq!(add.outcome, Outcome::Passed);
    assert_eq!(
        add.id,
        TestId {
            suite: "pytest".into(),
            class: "tests.test_math".into(),
            name: "test_add".into()
        }
    );
    let div = case(&r, "test_div[0-1]");
    assert_eq!(div.outcome, Outcome::Failed);
    assert_eq!(
        div.message.as_deref(),
        Some("assert 1 == 2"),
        "first line only"
    );
    assert_eq!(div.duration_ms, 2);
    assert_eq!(case(&r, "test_skip").outcome, Outcome::Skipped);
    let open = case(&r, "test_open");
    assert_eq!(open.outcome, Outcome::Errored);
    assert_eq!(
        open.message.as_deref(),
        Some("failed on setup with \"OSError\"")
    );
}

#[test]
fn nextest_shape_with_retries_as_flaky_failures() {
    // cargo-nextest writes one suite per test binary, and a test that passed on a
    // retry with `flakyFailure` elements for the failed tries.
    let r = read(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="3" failures="1" errors="0" uuid="x" timestamp="t" time="0.5">
    <testsuite name="app::tests" tests="3" disabled="0" errors="0" failures="1">
        <testcase name="parse::empty" classname="app::tests" timestamp="t" time="0.010">
        </testcase>
        <testcase name="net::retry" classname="app::tests" timestamp="t" time="0.200">
            <flakyFailure timestamp="t" time="0.1" type="test failure">
                <stackTrace>thread panicked</stackTrace>
                <system-out></system-out>
            </flakyFailure>
        </testcase>
        <testcase name="net::down" classname="app::tests" timestamp="t" time="0.020">
            <failure type="test failure with exit code 101">thread &apos;net::down&apos; panicked at src/net.rs:9:5:
connection refused</failure>
            <rerunFailure timestamp="t" time="0.02" type="test failure"/>
        </testcase>
    </testsuite>
</testsuites>"#,
    );
    let retry = case(&r, "net::retry");
    assert_eq!(retry.outcome, Outcome::Passed);
    assert!(retry.flaky());
    let down = case(&r, "net::down");
    assert_eq!(down.outcome, Outcome::Failed);
    assert_eq!(down.reruns_failed, 1);
    assert!(!down.flaky());
    assert_eq!(
        down.message.as_deref(),
        Some("thread 'net::down' panicked at src/net.rs:9:5:")
    );
    assert_eq!(down.id.suite, "app::tests");
}

#[test]
fn surefire_jest_and_phpunit_shapes() {
    // Surefire: a `<testsuite>` root with properties and reruns.
    let r = read(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" name="com.acme.AppTest" time="1.2" tests="2" errors="0" skipped="0" failures="0">
  <properties><property name="java.version" value="21"/></properties>
  <testcase name="works" classname="com.acme.AppTest" time="0.1"/>
  <testcase name="sometimes" classname="com.acme.AppTest" time="0.3">
    <flakyFailure message="expected:&lt;1&gt; but was:&lt;2&gt;" type="org.opentest4j.AssertionFailedError"><![CDATA[org.opentest4j.AssertionFailedError: expected:<1>]]></flakyFailure>
    <flakyError message="timeout" type="java.io.IOException"/>
  </testcase>
</testsuite>"#,
    );
    assert_eq!(case(&r, "sometimes").reruns_failed, 2);
    assert!(case(&r, "sometimes").flaky());
    assert_eq!(case(&r, "works").id.suite, "com.acme.AppTest");

    // jest-junit: suites named after files, test names with spaces.
    let r = read(
        r#"<testsuites name="jest tests" tests="2" failures="1" time="1.1"><testsuite name="src/sum.test.js" tests="2" failures="1" skipped="0" time="0.5"><testcase classname="sum  adds   numbers" name="sum adds numbers" time="0.002"></testcase><testcase classname="sum rejects strings" name="sum rejects strings" time="0.003"><failure>Error: expect(received).toThrow()

Received function did not throw
    at Object.&lt;anonymous&gt; (src/sum.test.js:9:5)</failure></testcase></testsuite></testsuites>"#,
    );
    assert_eq!(
        case(&r, "sum adds numbers").id.class,
        "sum adds numbers",
        "whitespace collapsed"
    );
    assert_eq!(
        case(&r, "sum rejects strings").message.as_deref(),
        Some("Error: expect(received).toThrow()")
    );

    // PHPUnit: nested suites (suite, class, data provider), file and line.
    let r = read(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="" tests="2">
    <testsuite name="Unit" tests="2">
      <testsuite name="Tests\MathTest" file="/app/tests/MathTest.php" tests="2">
        <testsuite name="Tests\MathTest::testAdd" tests="2">
          <testcase name="testAdd with data set #0" class="Tests\MathTest" classname="Tests.MathTest" file="/app/tests/MathTest.php" line="12" assertions="1" time="0.001"/>
          <testcase name="testAdd with data set #1" class="Tests\MathTest" classname="Tests.MathTest" file="/app/tests/MathTest.php" line="12" assertions="1" time="0.001">
            <failure type="PHPUnit\Framework\ExpectationFailedException">Tests\MathTest::testAdd with data set #1
Failed asserting that 3 matches expected 4.</failure>
          </testcase>
        </testsuite>
      </testsuite>
    </testsuite>
  </testsuite>
</testsuites>"#,
    );
    let failed = case(&r, "testAdd with data set #1");
    assert_eq!(
        failed.id.suite,
        r"Unit/Tests\MathTest/Tests\MathTest::testAdd"
    );
    assert_eq!(failed.line, Some(12));
    assert_eq!(failed.file.as_deref(), Some("/app/tests/MathTest.php"));
    assert_eq!(failed.outcome, Outcome::Failed);

    // go-junit-report: a skip with a message, and package-level suites.
    let r = read(
        r#"<testsuites tests="2"><testsuite name="example.com/app/pkg" tests="2" failures="0" errors="0" id="0" hostname="h" time="0.010" timestamp="t"><properties><property name="go.version" value="go1.22"></property></properties><testcase name="TestA" classname="example.com/app/pkg" time="0.000"></testcase><testcase name="TestB" classname="example.com/app/pkg" time="0.000"><skipped message="needs network"></skipped></testcase></testsuite></testsuites>"#,
    );
    assert_eq!(case(&r, "TestB").outcome, Outcome::Skipped);
    assert_eq!(case(&r, "TestB").message.as_deref(), Some("needs network"));
}

#[test]
fn identity_and_the_first_failure_win() {
    let r = read(
        r#"<testsuite name=" s  one "><testcase name="t" classname="c"><skipped/><failure message="first"/><error message="second"/></testcase></testsuite>"#,
    );
    let t = case(&r, "t");
    assert_eq!(t.outcome, Outcome::Failed, "a failure outweighs a skip");
    assert_eq!(t.message.as_deref(), Some("first"));
    assert_eq!(t.id.suite, "s one");
}

#[test]
fn limits_are_kept_and_broken_input_is_an_error_with_its_reason() {
    let limits = Limits::default();
    // Not JUnit.
    assert!(err(b"<html><body/></html>", &limits).contains("root element is <html>"));
    // Truncated.
    assert!(
        err(
            b"<testsuites><testsuite name=\"a\"><testcase name=\"x\">",
            &limits
        )
        .contains("truncated")
    );
    assert!(err(b"", &limits).contains("truncated"));
    // Mismatched tags.
    assert!(
        err(b"<testsuites><testsuite></testcase></testsuites>", &limits).contains("invalid XML")
    );
    // No DTD, so no entity can be defined, let alone expanded a billion times.
    let bomb = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><testsuites>&lol2;</testsuites>"#;
    assert!(err(bomb, &limits).contains("document type"));
    assert!(
        err(b"<testsuites>&custom;</testsuites>", &limits).contains("undefined entity &custom;")
    );
    // Too deep.
    let deep = format!(
        "<testsuites>{}{}</testsuites>",
        "<a>".repeat(60),
        "</a>".repeat(60)
    );
    assert!(err(deep.as_bytes(), &limits).contains("deeper than the limit of 50"));
    // Too large: the reading stops at the limit.
    let small = Limits {
        max_bytes: 64,
        ..limits
    };
    let big = format!("<testsuites>{}</testsuites>", "<testsuite/>".repeat(20));
    assert!(err(big.as_bytes(), &small).contains("larger than the limit of 64 bytes"));
    // Cases beyond the limit are counted; messages are cut on a char boundary.
    let few = Limits {
        max_cases: 2,
        max_message_bytes: 5,
        ..limits
    };
    let xml = r#"<testsuite><testcase name="a"><failure message="ééééé"/></testcase><testcase name="b"/><testcase name="c"/></testsuite>"#;
    let r = parse(xml.as_bytes(), &few).expect("read");
    assert_eq!((r.cases.len(), r.dropped), (2, 1));
    assert_eq!(r.cases[0].message.as_deref(), Some("éé"));
}

#[test]
fn times_read_leniently() {
    assert_eq!(seconds_to_ms("1.5"), 1500);
    assert_eq!(seconds_to_ms("1,234.5"), 1_234_500);
    assert_eq!(seconds_to_ms("-1"), 0);
    assert_eq!(seconds_to_ms("NaN"), 0);
    assert_eq!(seconds_to_ms("soon"), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic, and never yield more than the limits allow.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let limits = Limits { max_bytes: 1024, max_depth: 8, max_cases: 4, max_message_bytes: 16, ..Limits::default() };
        if let Ok(r) = parse(bytes.as_slice(), &limits) {
            prop_assert!(r.cases.len() <= 4);
            prop_assert!(r.cases.iter().all(|c| c.message.as_ref().is_none_or(|m| m.len() <= 16)));
        }
    }

    /// Well-formed reports mutated by one byte never panic either.
    #[test]
    fn mutated_reports_never_panic(at in 0usize..400, byte in any::<u8>()) {
        let mut xml = br#"<testsuites><testsuite name="s"><testcase name="a" classname="c" time="0.1"><failure message="m &amp; n">text</failure></testcase><testcase name="b"/></testsuite></testsuites>"#.to_vec();
        let at = at % xml.len();
        xml[at] = byte;
        let _ = parse(xml.as_slice(), &Limits::default());
    }
}

#[test]
fn results_keep_what_did_not_simply_pass_and_the_keys_of_watched_passes() {
    use crate::reports::TestResults;
    let xml = r#"<testsuite name="s"><testcase name="a"/><testcase name="e"/><testcase name="b"><failure message="no"/></testcase><testcase name="c"><flakyFailure/></testcase><testcase name="d"><skipped/></testcase></testsuite>"#;
    let a = TestId {
        suite: "s".into(),
        class: String::new(),
        name: "a".into(),
    };
    let mut unwatched = TestResults::default();
    unwatched
        .add_report(xml.as_bytes(), &Limits::default(), &Default::default())
        .expect("read");
    assert!(unwatched.watched_passed.is_empty());
    let mut results = TestResults::default();
    let watch = [a.key()].into_iter().collect();
    results
        .add_report(xml.as_bytes(), &Limits::default(), &watch)
        .expect("read");
    assert_eq!(
        (
            results.passed,
            results.failed,
            results.skipped,
            results.flaky
        ),
        (3, 1, 1, 1)
    );
    let notable: Vec<&str> = results.notable.iter().map(|c| c.id.name.as_str()).collect();
    assert_eq!(notable, ["b", "c"]);
    // Listing stops at its byte budget: the rest is counted.
    let tight = Limits {
        max_listed_bytes: 100,
        ..Limits::default()
    };
    let mut few = TestResults::default();
    let many = format!(
        "<testsuite name='s'>{}</testsuite>",
        (0..10)
            .map(|i| format!("<testcase name='t{i}'><failure message='boom'/></testcase>"))
            .collect::<String>()
    );
    few.add_report(many.as_bytes(), &tight, &Default::default())
        .expect("read");
    assert_eq!((few.failed, few.notable.len(), few.dropped), (10, 1, 9));
    let failures: Vec<&str> = results.failures().map(|c| c.id.name.as_str()).collect();
    assert_eq!(failures, ["b"]);
    assert_eq!(results.watched_passed, vec![a.key()]);
    // Keys tell identities apart, and do not let parts run together.
    let other = TestId {
        suite: "s".into(),
        class: "a".into(),
        name: String::new(),
    };
    assert_ne!(a.key(), other.key());
}

proptest! {
    /// The fast path of `normalize` gives what the slow one does.
    #[test]
    fn normalize_is_whitespace_collapsing(s in "[ a\\t\\n\u{a0}b]{0,12}") {
        prop_assert_eq!(normalize(s.as_str().into()).into_owned(), s.split_whitespace().collect::<Vec<_>>().join(" "));
    }
}
