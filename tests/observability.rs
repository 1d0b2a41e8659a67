//! Observability end to end, with real processes and real tools:
//!
//! - traces: a coordinator, a worker and `gatehouse submit` export over OTLP/gRPC to a
//!   real receiver on loopback, the `GrpcSink` of the `oteltest` package (PyPI; see
//!   `tests/support/otlp_sink.py`), and one plan must be one trace with the right tree;
//! - metrics: `/metrics` of a coordinator and a worker is scraped during and after a
//!   plan; the counters must match the plan's outcomes, and both exposition formats
//!   must pass real parsers: `promtool check metrics` (Prometheus text format) and the
//!   OpenMetrics parser of the `prometheus-client` Python package.
//!
//! The tools come from `scripts/test-deps.sh`; see `support::otlp`.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse_proto::v1;
use serde_json::Value;
use support::cluster::Cluster;
use support::otlp::{OtlpSink, promtool, python};
use support::{http_get, sample, scrape, wait_until};

/// The submitter's own (remote) span: the trace every span of the plan must be in.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00f067aa0ba902b7";
/// The second submission's trace.
const TRACE_ID_2: &str = "5cf92f3577b34da6a3ce929d0e0e4737";

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"][key].as_str()
}

fn attr_i(span: &Value, key: &str) -> Option<i64> {
    match &span["attributes"][key] {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

#[test]
fn one_plan_is_one_trace_with_plan_gate_and_execute_spans() {
    let Some(sink) = OtlpSink::start() else {
        return;
    };
    let endpoint = sink.endpoint();
    // Export every 100 ms instead of 5 s, so the test need not wait.
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let mut c = Cluster::start_with_options("1500ms", &["--otlp-endpoint", &endpoint], &env);
    c.add_worker_with_env(
        "w1",
        &[
            "--otlp-endpoint",
            &endpoint,
            "--slots",
            "2",
            "--log-format",
            "json",
            "--cache-listen",
            "127.0.0.1:0",
        ],
        &env,
    );
    let marker = c.ws.path().join("flaked-once");
    let plan = format!(
        "version: 1\nname: traced\npolicy:\n  retry_backoff: 50ms\ngates:\n\
         \x20 - id: lint\n    run: \"true\"\n\
         \x20 - id: flaky\n    needs: [lint]\n    retries: 1\n    run: test -f {m} || {{ touch {m}; exit 1; }}\n\
         \x20 - id: unit\n    needs: [lint]\n    reports: [u.xml]\n    \
         run: \"printf '<testsuite name=\\\"s\\\"><testcase classname=\\\"pkg.T\\\" name=\\\"t\\\"><failure message=\\\"boom\\\"/></testcase></testsuite>' > u.xml; exit 3\"\n\
         \x20 - id: deploy\n    needs: [unit]\n    run: \"true\"\n",
        m = marker.display()
    );
    let path = c.ws.write("traced.yaml", &plan);
    let submit = |trace_id: &str| -> String {
        let out = c
            .cli(&[
                "--otlp-endpoint",
                &endpoint,
                "submit",
                "--json",
                "--watch",
                path.to_str().expect("utf-8"),
            ])
            .env("TRACEPARENT", format!("00-{trace_id}-{CLIENT_PARENT}-01"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .output()
            .expect("run submit");
        assert_eq!(out.status.code(), Some(1), "one gate fails by design");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|e| e["plan_id"].as_str().map(str::to_string))
            .expect("the plan id in submit's output")
    };
    let plan_id = submit(TRACE_ID);
    // Again, in another trace: lint passed, so it is cached now; flaky passed only on
    // its retry, and a flaky pass is not cached, so it runs again.
    let again = submit(TRACE_ID_2);
    // Every process's spans are in the receiver before the second plan's span is: the
    // submit processes exported theirs before they exited; stopping the worker makes it
    // export what it still holds; and the coordinator exports its spans in the order
    // they ended, one batch at a time, the second plan's span last.
    c.workers[0].signal("TERM");
    assert_eq!(c.workers[0].wait_exit(Duration::from_secs(30)), Some(0));
    sink.wait_for("the second plan's span", Duration::from_secs(30), |spans| {
        spans
            .iter()
            .any(|s| s["name"] == "plan" && attr(s, "gatehouse.plan.id") == Some(again.as_str()))
    });
    let all = sink.spans();

    // Attempts: lint 1, flaky 2 (fails, then passes), unit 1; deploy is skipped.
    let ours = |spans: &[Value]| -> Vec<Value> {
        spans
            .iter()
            .filter(|s| s["traceId"] == TRACE_ID)
            .cloned()
            .collect()
    };
    let spans = ours(&all);
    let by_id: BTreeMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["spanId"].as_str().expect("span id"), s))
        .collect();
    let parent_of = |s: &Value| by_id.get(s["parentSpanId"].as_str().unwrap_or("")).copied();
    let named =
        |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };

    // Every span of this plan is in the submitter's trace.
    for s in &all {
        if attr(s, "gatehouse.plan.id") == Some(plan_id.as_str()) {
            assert_eq!(
                s["traceId"], TRACE_ID,
                "a span of the plan in another trace: {s}"
            );
        }
    }
    // The client's call continues TRACEPARENT, the coordinator's call continues the
    // client's, and the plan span is a child of the coordinator's call.
    let client: Vec<&Value> = named("gatehouse.v1.PlanService/SubmitPlan")
        .into_iter()
        .filter(|s| s["service"] == "gatehouse-cli")
        .collect();
    assert_eq!(client.len(), 1, "{spans:#?}");
    assert_eq!(client[0]["parentSpanId"], CLIENT_PARENT);
    assert_eq!(client[0]["kind"], "SPAN_KIND_CLIENT");
    let server: Vec<&Value> = named("gatehouse.v1.PlanService/SubmitPlan")
        .into_iter()
        .filter(|s| s["service"] == "gatehouse-coordinator")
        .collect();
    assert_eq!(server.len(), 1);
    assert_eq!(server[0]["parentSpanId"], client[0]["spanId"]);
    assert_eq!(server[0]["kind"], "SPAN_KIND_SERVER");
    assert_eq!(attr(server[0], "rpc.system"), Some("grpc"));
    assert_eq!(attr(server[0], "rpc.method"), Some("SubmitPlan"));

    let plans = named("plan");
    assert_eq!(plans.len(), 1, "one plan span");
    let plan_span = plans[0];
    assert_eq!(plan_span["service"], "gatehouse-coordinator");
    assert_eq!(plan_span["parentSpanId"], server[0]["spanId"]);
    assert_eq!(attr(plan_span, "gatehouse.plan.id"), Some(plan_id.as_str()));
    assert_eq!(attr(plan_span, "gatehouse.outcome"), Some("failed"));
    assert_eq!(attr_i(plan_span, "gatehouse.plan.gates"), Some(4));
    assert_eq!(attr_i(plan_span, "gatehouse.plan.skipped"), Some(1));

    // One gate span per attempt, each under the plan span.
    let gates = named("gate");
    let mut attempts: Vec<(String, i64, String)> = gates
        .iter()
        .map(|g| {
            assert_eq!(
                g["parentSpanId"], plan_span["spanId"],
                "gate under the plan: {g}"
            );
            (
                attr(g, "gatehouse.gate.id").expect("gate id").to_string(),
                attr_i(g, "gatehouse.attempt").expect("attempt"),
                attr(g, "gatehouse.outcome").expect("outcome").to_string(),
            )
        })
        .collect();
    attempts.sort();
    let want = [
        ("flaky", 1, "retrying"),
        ("flaky", 2, "passed"),
        ("lint", 1, "passed"),
        ("unit", 1, "failed"),
    ];
    let want: Vec<(String, i64, String)> = want
        .iter()
        .map(|(g, a, o)| (g.to_string(), *a, o.to_string()))
        .collect();
    assert_eq!(attempts, want);
    let unit = gates
        .iter()
        .find(|g| attr(g, "gatehouse.gate.id") == Some("unit"))
        .expect("unit");
    assert_eq!(attr_i(unit, "process.exit.code"), Some(3));
    assert_eq!(unit["status"]["code"], "STATUS_CODE_ERROR");
    // Its report's failed test is an event of its span.
    let failed_tests: Vec<&Value> = unit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["name"] == "test failed")
        .collect();
    assert_eq!(failed_tests.len(), 1, "{unit}");
    let test_attrs = failed_tests[0]["attributes"].to_string();
    assert!(
        test_attrs.contains("pkg.T::t") && test_attrs.contains("boom"),
        "{test_attrs}"
    );
    for g in &gates {
        // Worker ids carry the session's incarnation (`w1#1`).
        assert!(attr(g, "gatehouse.worker.id").is_some_and(|w| w.starts_with("w1#")));
        assert_eq!(g["attributes"]["gatehouse.cached"], false);
    }

    // Each attempt says when it was dispatched and how long it queued; the cache
    // lookups are children of the first attempts.
    for g in &gates {
        let events = g["events"].as_array().expect("events");
        let dispatched: Vec<&Value> = events
            .iter()
            .filter(|e| e["name"] == "dispatched")
            .collect();
        assert_eq!(dispatched.len(), 1, "{g}");
        assert!(
            dispatched[0]["attributes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|kv| kv["key"] == "gatehouse.queue_ms")),
            "{g}"
        );
        assert!(attr_i(g, "gatehouse.queue_ms").is_some_and(|ms| ms >= 0));
    }
    let lookups = named("cache.lookup");
    assert_eq!(lookups.len(), 3, "one lookup per gate that became ready");
    for l in &lookups {
        let g = parent_of(l).expect("lookup parent");
        assert_eq!(g["name"], "gate");
        assert_eq!(attr_i(g, "gatehouse.attempt"), Some(1));
        assert_eq!(attr(l, "gatehouse.cache.result"), Some("miss"));
    }

    // The worker's execute spans continue the attempts' spans.
    let execs = named("gate.execute");
    assert_eq!(execs.len(), 4);
    for e in &execs {
        assert_eq!(e["service"], "gatehouse-worker");
        let g = parent_of(e).expect("the execute span's parent is exported");
        assert_eq!(g["name"], "gate", "{e}");
        assert_eq!(attr(e, "gatehouse.gate.id"), attr(g, "gatehouse.gate.id"));
        assert_eq!(
            attr_i(e, "gatehouse.attempt"),
            attr_i(g, "gatehouse.attempt")
        );
        assert!(attr_i(e, "process.pid").is_some_and(|p| p > 0));
    }
    // The worker's JSON log lines inside an execute span carry its trace and span ids.
    let log = std::fs::read_to_string(&c.workers[0].log).expect("worker log");
    let finished: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "attempt finished" && l["plan_id"] == plan_id.as_str())
        .collect();
    assert_eq!(finished.len(), 4, "one log line per attempt:\n{log}");
    for line in &finished {
        assert_eq!(line["trace_id"], TRACE_ID, "{line}");
        let exec = execs
            .iter()
            .find(|e| e["spanId"] == line["span_id"])
            .unwrap_or_else(|| panic!("no execute span has the log line's span id: {line}"));
        assert_eq!(attr(exec, "gatehouse.gate.id"), line["gate"].as_str());
    }
    // Execute spans lie within their attempt's span.
    for e in &execs {
        let g = parent_of(e).expect("parent");
        let t = |s: &Value, k: &str| s[k].as_str().and_then(|v| v.parse::<u128>().ok());
        assert!(t(e, "startTimeUnixNano") >= t(g, "startTimeUnixNano"));
        assert!(t(e, "endTimeUnixNano") <= t(g, "endTimeUnixNano"));
    }

    // The second plan: a cached gate has one span, attempt 0, holding its lookup; unit
    // runs (and fails) again.
    let second: Vec<Value> = all
        .iter()
        .filter(|s| s["traceId"] == TRACE_ID_2)
        .cloned()
        .collect();
    let gate_spans = |id: &str| -> Vec<&Value> {
        second
            .iter()
            .filter(|s| s["name"] == "gate" && attr(s, "gatehouse.gate.id") == Some(id))
            .collect()
    };
    let flaky = gate_spans("flaky");
    assert_eq!(flaky.len(), 1, "{flaky:#?}");
    assert_eq!(flaky[0]["attributes"]["gatehouse.cached"], false);
    assert_eq!(attr(flaky[0], "gatehouse.outcome"), Some("passed"));
    assert!(
        second
            .iter()
            .any(|s| s["name"] == "gate.execute" && attr(s, "gatehouse.gate.id") == Some("flaky")),
        "the flaky pass was measured again"
    );
    {
        let cached = "lint";
        let spans = gate_spans(cached);
        assert_eq!(spans.len(), 1, "{cached}: {spans:#?}");
        let g = spans[0];
        assert_eq!(g["attributes"]["gatehouse.cached"], true, "{g}");
        assert_eq!(attr_i(g, "gatehouse.attempt"), Some(0));
        assert_eq!(attr(g, "gatehouse.outcome"), Some("passed"));
        let lookups: Vec<&Value> = second
            .iter()
            .filter(|s| s["name"] == "cache.lookup" && s["parentSpanId"] == g["spanId"])
            .collect();
        assert_eq!(
            lookups.len(),
            1,
            "{cached}: one lookup under the cached gate"
        );
        assert!(
            !second.iter().any(
                |s| s["name"] == "gate.execute" && attr(s, "gatehouse.gate.id") == Some(cached)
            ),
            "{cached} did not run again"
        );
    }
    assert_eq!(gate_spans("unit").len(), 1);
    assert_eq!(
        attr(gate_spans("unit")[0], "gatehouse.outcome"),
        Some("failed")
    );
}

/// The trace a plan is in is part of its stored state: a coordinator that resumes the
/// plan after the one that accepted it died (here a standalone coordinator restarted on
/// its state directory; an HA takeover reads the same record from etcd) carries on in
/// the submitter's trace.
#[test]
fn a_plan_resumed_after_its_coordinator_died_stays_in_its_trace() {
    let Some(sink) = OtlpSink::start() else {
        return;
    };
    let endpoint = sink.endpoint();
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let mut c = Cluster::start_on_fixed_port_with_options(&["--otlp-endpoint", &endpoint], &env);
    c.add_worker("w1", &["--slots", "1"]);
    let plan = "version: 1\nname: resumed\ngates:\n\
                \x20 - { id: a, run: sleep 0.4 }\n\
                \x20 - { id: b, run: sleep 0.4, needs: [a] }\n\
                \x20 - { id: c, run: sleep 0.4, needs: [b] }\n\
                \x20 - { id: d, run: sleep 0.4, needs: [c] }\n";
    let path = c.ws.write("resumed.yaml", plan);
    let out = c
        .cli(&["submit", path.to_str().expect("utf-8")])
        .env("TRACEPARENT", format!("00-{TRACE_ID}-{CLIENT_PARENT}-01"))
        .output()
        .expect("run submit");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let plan_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let server_span = |spans: &[Value]| -> Option<Value> {
        spans
            .iter()
            .find(|s| {
                s["name"] == "gatehouse.v1.PlanService/SubmitPlan" && s["traceId"] == TRACE_ID
            })
            .cloned()
    };
    sink.wait_for("the SubmitPlan span", Duration::from_secs(20), |spans| {
        server_span(spans).is_some()
    });
    wait_until("gate a to pass", Duration::from_secs(20), || {
        c.get(&plan_id)
            .gates
            .iter()
            .any(|g| g.gate_id == "a" && g.state == v1::GateState::Passed as i32)
    });
    c.coordinator.signal("KILL");
    c.coordinator.wait_exit(Duration::from_secs(10));
    c.restart_coordinator();
    let events = c.watch(&plan_id, 0);
    assert_eq!(
        support::cluster::summary(&events).outcome,
        v1::PlanOutcome::Passed as i32
    );
    let is_resumed_plan = |s: &Value| {
        s["name"] == "plan"
            && attr(s, "gatehouse.plan.id") == Some(plan_id.as_str())
            && s["attributes"]["gatehouse.plan.resumed"] == true
    };
    sink.wait_for(
        "the resumed plan's span",
        Duration::from_secs(20),
        |spans| spans.iter().any(is_resumed_plan),
    );
    let all = sink.spans();
    let server = server_span(&all).expect("SubmitPlan span");
    let resumed: Vec<&Value> = all.iter().filter(|s| is_resumed_plan(s)).collect();
    assert_eq!(resumed.len(), 1, "{resumed:#?}");
    let resumed = resumed[0];
    assert_eq!(
        resumed["traceId"], TRACE_ID,
        "the resumed plan left the trace: {resumed}"
    );
    assert_eq!(
        resumed["parentSpanId"], server["spanId"],
        "the resumed plan span is a child of the call that submitted the plan"
    );
    assert_eq!(attr(resumed, "gatehouse.outcome"), Some("passed"));
    // No span of the plan is in another trace; the gates that ran after the restart are
    // children of the resumed plan span.
    for s in all
        .iter()
        .filter(|s| attr(s, "gatehouse.plan.id") == Some(plan_id.as_str()))
    {
        assert_eq!(
            s["traceId"], TRACE_ID,
            "a span of the plan in another trace: {s}"
        );
    }
    let mut after: Vec<String> = all
        .iter()
        .filter(|s| s["name"] == "gate" && s["parentSpanId"] == resumed["spanId"])
        .map(|s| {
            assert_eq!(s["traceId"], TRACE_ID, "{s}");
            attr(s, "gatehouse.gate.id").expect("gate id").to_string()
        })
        .collect();
    after.sort();
    assert!(
        after.ends_with(&["c".to_string(), "d".to_string()]),
        "the gates after the restart are under the resumed plan: {after:?}"
    );
}

/// The sample of worker `w1` of `kind` (labelled by worker id, without the session
/// generation the coordinator tracks it by).
fn worker_sample(text: &str, metric: &str, kind: &str) -> Option<f64> {
    sample(text, &format!("{metric}{{worker=\"w1\",kind=\"{kind}\"}}"))
}

/// Runs `program args` with `input` on its stdin and returns its output.
fn with_stdin(program: &std::path::Path, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

/// `promtool check metrics` on `text` must pass (it parses and lints).
fn promtool_accepts(promtool: &std::path::Path, text: &str) {
    let out = with_stdin(promtool, &["check", "metrics"], text);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The OpenMetrics exposition must parse with the `prometheus-client` (Python) parser;
/// returns `family -> samples` as it parsed them.
fn openmetrics_parse(python: &std::path::Path, text: &str) -> Value {
    let code = "import json, sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = {}\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   out[f.name] = {'type': f.type, 'samples': [[s.name, s.labels, s.value] for s in f.samples]}\n\
        print(json.dumps(out))\n";
    let out = with_stdin(python, &["-c", code], text);
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition:\n{}\n--- input ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

#[test]
fn metrics_match_the_gate_outcomes_during_and_after_a_plan_and_parse() {
    let (Some(promtool), Some(python)) = (promtool(), python()) else {
        return;
    };
    let ports = support::etcd::free_ports::<2>();
    let coord_http = format!("127.0.0.1:{}", ports[0]);
    let worker_http = format!("127.0.0.1:{}", ports[1]);
    let mut c = Cluster::start_with_options("1500ms", &["--http", &coord_http], &[]);
    // A cache node too, so its metrics are exposed (the dashboard uses them).
    c.add_worker(
        "w1",
        &[
            "--http",
            &worker_http,
            "--slots",
            "2",
            "--cache-listen",
            "127.0.0.1:0",
        ],
    );
    wait_until(
        "the coordinator to count the worker",
        Duration::from_secs(10),
        || sample(&scrape(&coord_http), "gatehouse_workers{state=\"ready\"}") == Some(1.0),
    );
    let before = scrape(&coord_http);
    assert_eq!(sample(&before, "gatehouse_is_leader"), Some(1.0));
    assert_eq!(
        worker_sample(&before, "gatehouse_worker_slots", "total"),
        Some(2.0)
    );
    assert!(
        worker_sample(&before, "gatehouse_worker_memory_bytes", "total").is_some_and(|b| b > 0.0)
    );

    // passed: a, b; failed: c; skipped: d; slow holds the plan open while we look.
    let gate = c.ws.path().join("gate-open");
    let plan = format!(
        "version: 1\nname: counted\ngates:\n\
         \x20 - id: a\n    run: \"true\"\n\
         \x20 - id: b\n    needs: [a]\n    run: \"true\"\n\
         \x20 - id: c\n    needs: [a]\n    run: exit 2\n\
         \x20 - id: d\n    needs: [c]\n    run: \"true\"\n\
         \x20 - id: slow\n    run: while [ ! -f {g} ]; do sleep 0.05; done\n",
        g = gate.display()
    );
    // With the cache on: every gate that becomes ready is looked up.
    let id = support::cluster::submit_with(&c.rt, &c.url(), &plan, true).expect("submit");
    // During: the slow gate runs, the plan is live.
    wait_until("the other gates to end", Duration::from_secs(20), || {
        let m = scrape(&coord_http);
        sample(&m, "gatehouse_gates_total{outcome=\"skipped\"}") == Some(1.0)
            && sample(&m, "gatehouse_running_gates") == Some(1.0)
    });
    let during = scrape(&coord_http);
    assert_eq!(
        sample(&during, "gatehouse_plans{state=\"running\"}"),
        Some(1.0)
    );
    assert_eq!(
        worker_sample(&during, "gatehouse_worker_slots", "used"),
        Some(1.0)
    );
    assert_eq!(
        sample(&during, "gatehouse_gates_total{outcome=\"passed\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&during, "gatehouse_gates_total{outcome=\"failed\"}"),
        Some(1.0)
    );
    let worker_during = scrape(&worker_http);
    assert_eq!(
        sample(&worker_during, "gatehouse_worker_running_gates"),
        Some(1.0)
    );
    promtool_accepts(&promtool, &during);
    promtool_accepts(&promtool, &worker_during);

    std::fs::write(&gate, "").expect("open the gate");
    let events = c.watch(&id, 0);
    let summary = support::cluster::summary(&events);
    let counts = summary.counts.expect("counts");
    assert_eq!(
        (counts.passed, counts.failed, counts.skipped),
        (3, 1, 1),
        "the plan's own counts"
    );
    wait_until(
        "the plan to leave the gauges",
        Duration::from_secs(10),
        || sample(&scrape(&coord_http), "gatehouse_plans{state=\"running\"}") == Some(0.0),
    );
    let after = scrape(&coord_http);
    let count = |outcome: &str| {
        sample(
            &after,
            &format!("gatehouse_gates_total{{outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("passed"), f64::from(counts.passed));
    assert_eq!(count("failed"), f64::from(counts.failed));
    assert_eq!(count("skipped"), f64::from(counts.skipped));
    assert_eq!(count("timed_out") + count("cancelled"), 0.0);
    assert_eq!(
        sample(&after, "gatehouse_plans_finished_total{outcome=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&after, "gatehouse_running_gates"), Some(0.0));
    assert_eq!(sample(&after, "gatehouse_ready_gates"), Some(0.0));
    // Executed attempts: a, b, c, slow (d never ran).
    let ran = sample(
        &after,
        "gatehouse_gate_duration_seconds_count{outcome=\"passed\"}",
    )
    .unwrap_or(0.0)
        + sample(
            &after,
            "gatehouse_gate_duration_seconds_count{outcome=\"failed\"}",
        )
        .unwrap_or(0.0);
    assert_eq!(ran, 4.0);
    assert_eq!(
        sample(&after, "gatehouse_gate_queue_seconds_count"),
        Some(4.0)
    );
    // Every gate that became ready was looked up (nothing cached yet: all misses).
    assert_eq!(
        sample(&after, "gatehouse_cache_requests_total{result=\"miss\"}"),
        Some(4.0),
        "{after}"
    );
    assert!(
        sample(
            &after,
            "gatehouse_state_store_txn_seconds_count{op=\"apply\"}"
        )
        .is_some_and(|n| n >= 1.0)
    );
    let worker_after = scrape(&worker_http);
    assert_eq!(
        sample(
            &worker_after,
            "gatehouse_executions_total{outcome=\"passed\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &worker_after,
            "gatehouse_executions_total{outcome=\"failed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&worker_after, "gatehouse_worker_running_gates"),
        Some(0.0)
    );
    assert_eq!(sample(&worker_after, "gatehouse_worker_ready"), Some(1.0));
    assert_eq!(
        worker_sample(&after, "gatehouse_worker_slots", "used"),
        Some(0.0)
    );
    promtool_accepts(&promtool, &after);
    promtool_accepts(&promtool, &worker_after);

    // The OpenMetrics format (what Prometheus asks for) parses and says the same.
    let om = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let parsed = openmetrics_parse(&python, &http_get(&coord_http, "/metrics", Some(om)));
    let gates = &parsed["gatehouse_gates"];
    assert_eq!(gates["type"], "counter");
    let passed = gates["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .find(|s| s[0] == "gatehouse_gates_total" && s[1]["outcome"] == "passed")
        .expect("passed sample");
    assert_eq!(passed[2], f64::from(counts.passed));
    assert_eq!(
        parsed["gatehouse_gate_duration_seconds"]["type"],
        "histogram"
    );
    openmetrics_parse(&python, &http_get(&worker_http, "/metrics", Some(om)));

    // The Grafana dashboard only uses metrics that exist.
    let exposed: String = [after, worker_after].concat();
    for name in dashboard_metrics() {
        assert!(
            exposed.lines().any(|l| l.starts_with(&name)),
            "deploy/grafana/gatehouse.json uses {name}, which no /metrics exposes"
        );
    }
}

/// Every `gatehouse_*` metric name in the dashboard's queries.
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/gatehouse.json"
    );
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = Vec::new();
    let mut stack = vec![&dashboard];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(expr)) = m.get("expr") {
                    let mut rest = expr.as_str();
                    while let Some(i) = rest.find("gatehouse_") {
                        let tail = &rest[i..];
                        let end = tail
                            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .unwrap_or(tail.len());
                        names.push(tail[..end].to_string());
                        rest = &tail[end..];
                    }
                }
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    assert!(
        names.len() >= 10,
        "the dashboard queries few metrics: {names:?}"
    );
    names
}

#[test]
fn an_unreachable_collector_neither_slows_nor_hangs_a_run() {
    // A collector that accepts connections and never answers: the worst case (export
    // calls wait for their timeout instead of failing at once).
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = blackhole.local_addr().expect("addr");
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for conn in blackhole.incoming().take(8).flatten() {
            conns.push(conn);
        }
        conns
    });
    let ws = support::Workspace::new();
    let mut plan = String::from("version: 1\nname: many\ngates:\n");
    for i in 0..200 {
        plan.push_str(&format!("  - id: g{i}\n    run: \"true\"\n"));
    }
    let path = ws.write("many.yaml", &plan);
    // The 200-gate plan exporting to `collector`: its output and how long it took.
    let run_exporting_to = |collector: std::net::SocketAddr| {
        let start = std::time::Instant::now();
        let out = ws
            .cmd(&[
                "--otlp-endpoint",
                &format!("http://{collector}"),
                "run",
                "--no-cache",
                "--json",
                path.to_str().expect("utf-8"),
            ])
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        (stderr, start.elapsed())
    };
    let (_, took) = run_exporting_to(addr);
    // 200 gates take well under a second here; the bound is the documented 5 s wait
    // for pending spans at exit plus a generous margin, not the 10 s export timeout.
    assert!(took < Duration::from_secs(9), "the run took {took:?}");
    drop(held);

    // A collector that refuses connections: exports fail at once, and a process whose
    // last export failed waits only briefly for its pending spans.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = refused.local_addr().expect("addr");
    drop(refused);
    let (stderr, took) = run_exporting_to(dead);
    assert_eq!(
        stderr.matches("cannot export traces").count(),
        1,
        "one warning, not one per batch:\n{stderr}"
    );
    assert!(took < Duration::from_secs(4), "the run took {took:?}");
}
