//! Harness for integration tests that run the real `gatehouse` binary: a temp dir per
//! test, plan files written into it, NDJSON output parsed, and waits with deadlines.

#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod git;
pub mod ha;
pub mod otlp;
pub mod tools;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the binary under test (built by cargo for this test target).
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

/// A test workspace: a temp dir holding plans, inputs and the cache.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `content` to `name` (creating parent dirs) and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&p, content).expect("write file");
        p
    }

    /// A `gatehouse` command run inside the workspace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args).current_dir(self.path()).stdin(Stdio::null());
        c.env_remove("GATEHOUSE_CACHE_DIR").env_remove("RUST_LOG");
        c
    }

    /// Runs `gatehouse run --json PLAN extra...` and parses stdout.
    pub fn run_json(&self, plan: &str, extra: &[&str]) -> RunResult {
        let mut args = vec!["run", "--json", plan];
        args.extend_from_slice(extra);
        let out = self.cmd(&args).output().expect("run gatehouse");
        RunResult::from_output(out)
    }
}

/// Exit code and parsed NDJSON of one run.
pub struct RunResult {
    pub code: i32,
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl RunResult {
    pub fn from_output(out: Output) -> Self {
        let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines = stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("stdout line is not JSON ({e}): {l:?}\nstderr: {stderr}")
                })
            })
            .collect();
        Self {
            code: out.status.code().unwrap_or(-1),
            lines,
            stderr,
        }
    }

    /// The one terminal line of `gate` (panics unless exactly one).
    pub fn terminal(&self, gate: &str) -> &Value {
        let t: Vec<&Value> = self
            .lines
            .iter()
            .filter(|l| l["event"] == "gate" && l["gate"] == gate && is_terminal(&l["state"]))
            .collect();
        assert_eq!(
            t.len(),
            1,
            "terminal lines of {gate}: {t:?}\nstderr: {}",
            self.stderr
        );
        t[0]
    }

    pub fn state(&self, gate: &str) -> String {
        self.terminal(gate)["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The summary line (must be the last line, or the last before landing's lines).
    pub fn summary(&self) -> &Value {
        let at = self
            .lines
            .iter()
            .rposition(|l| l["event"] == "summary")
            .unwrap_or_else(|| panic!("no summary; stderr: {}\n{:?}", self.stderr, self.lines));
        for after in &self.lines[at + 1..] {
            let landing = ["verify", "landed", "land"]
                .contains(&after["event"].as_str().unwrap_or(""))
                || after["gate"]
                    .as_str()
                    .is_some_and(|g| g.starts_with("verify/"));
            assert!(landing, "only landing follows the summary: {after}");
        }
        &self.lines[at]
    }

    /// Every line of `event`, in order.
    pub fn events(&self, event: &str) -> Vec<&Value> {
        self.lines.iter().filter(|l| l["event"] == event).collect()
    }

    /// The landing report (must be the last line).
    pub fn land(&self) -> &Value {
        let last = self
            .lines
            .last()
            .unwrap_or_else(|| panic!("no output; stderr: {}", self.stderr));
        assert_eq!(last["event"], "land", "last line is the landing: {last}");
        last
    }
}

pub fn is_terminal(state: &Value) -> bool {
    matches!(
        state.as_str(),
        Some("passed" | "failed" | "timed_out" | "skipped" | "cancelled")
    )
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // State is the field after the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Reads a pid written by a gate.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kills a child on drop so a failing test leaves nothing behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/metrics` of `addr` in the classic text format (no Accept header).
pub fn scrape(addr: &str) -> String {
    http_get(addr, "/metrics", None)
}

pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of one sample (`name{labels}`, labels as written), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
