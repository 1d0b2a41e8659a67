//! The test tools from PyPI: an OTLP/gRPC trace receiver (`oteltest`'s `GrpcSink`, run
//! by `tests/support/otlp_sink.py`) and the OpenMetrics parser of `prometheus-client`,
//! both in the venv `scripts/test-deps.sh` makes (`target/test-venv`, or the Python
//! named by `GATEHOUSE_TEST_PYTHON`). Also `promtool` (Debian `prometheus`), found by
//! [`super::tools::find`]. All are listed in `tests/tools.txt`.
//!
//! `GATEHOUSE_SKIP_OBSERVABILITY=1` makes the lookups return `None` (the test returns
//! early) and prints `SKIPPED` for the test; without it a missing tool is a test
//! failure, never a silent skip.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

fn skipping() -> bool {
    super::tools::skipping("GATEHOUSE_SKIP_OBSERVABILITY")
}

/// The test venv's Python; `None` when skipping. Panics if it is missing.
pub fn python() -> Option<PathBuf> {
    if skipping() {
        return None;
    }
    let path = match std::env::var_os("GATEHOUSE_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => super::tools::venv().join("bin/python"),
    };
    assert!(
        path.exists(),
        "the test venv is missing ({}): it holds the PyPI packages {}; scripts/test-deps.sh \
         makes it (scripts/test.sh does, then runs the whole suite)",
        path.display(),
        super::tools::pypi_packages()
    );
    Some(path)
}

/// `promtool`; `None` when skipping. Panics, saying how to install it, if missing.
pub fn promtool() -> Option<PathBuf> {
    if skipping() {
        return None;
    }
    Some(super::tools::find("promtool"))
}

/// A running OTLP receiver and the spans it has received (one JSON object each, see
/// `otlp_sink.py`).
pub struct OtlpSink {
    child: Child,
    /// Held open: the sink ends when it closes.
    _stdin: ChildStdin,
    pub port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl OtlpSink {
    /// Starts the receiver on a free loopback port; `None` when skipping.
    pub fn start() -> Option<Self> {
        let python = python()?;
        let port = super::etcd::free_ports::<1>()[0];
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/support/otlp_sink.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP sink");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(
            first,
            format!("listening {port}"),
            "the OTLP sink did not start"
        );
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let span: Value = serde_json::from_str(&line).expect("a span as JSON");
                sink.lock().expect("lock").push(span);
            }
        });
        Some(Self {
            child,
            _stdin: stdin,
            port,
            spans,
        })
    }

    /// The endpoint to export to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for the spans received.
    pub fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) {
        super::wait_until(what, timeout, || done(&self.spans()));
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
