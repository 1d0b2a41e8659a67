//! TLS end to end, with real processes on loopback: a coordinator serving mutual TLS, a
//! worker that connects to it over TLS and serves its cache node over TLS, and the CLI
//! submitting, watching and reading cache stats over TLS; then what is refused: a
//! plaintext client, a client that does not trust the server, a client without a
//! certificate or with one of another CA, and unusable `--tls-*` flags.
//!
//! The certificates are `proto/testdata/tls` (two CAs, each with a leaf for
//! `gatehouse.test`, `localhost` and 127.0.0.1; see `make.sh` there).

mod support;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::cluster::Proc;
use support::{Workspace, wait_until};

fn certs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/testdata/tls")
}

/// `--tls-*` flags: certificate `cert` (`test`, `other` or none), trusting CA `ca`.
fn tls_flags(cert: Option<&str>, ca: &str) -> Vec<String> {
    let dir = certs();
    let mut flags = vec![
        "--tls-ca".to_string(),
        dir.join(format!("{ca}-ca.pem")).display().to_string(),
    ];
    if let Some(cert) = cert {
        flags.extend([
            "--tls-cert".to_string(),
            dir.join(format!("{cert}.pem")).display().to_string(),
            "--tls-key".to_string(),
            dir.join(format!("{cert}-key.pem")).display().to_string(),
        ]);
    }
    flags
}

struct TlsCluster {
    ws: Workspace,
    /// `https://127.0.0.1:PORT`.
    url: String,
    procs: Vec<Proc>,
}

impl TlsCluster {
    fn start() -> Self {
        let ws = Workspace::new();
        let ready = ws.path().join("coordinator.addr");
        let mut args: Vec<String> = [
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            ready.to_str().expect("utf-8"),
            "--heartbeat-interval",
            "200ms",
            "--tls-client-auth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(tls_flags(Some("test"), "test"));
        let coordinator = Proc::spawn("coordinator", ws.path(), &args);
        let mut c = Self {
            ws,
            url: String::new(),
            procs: vec![coordinator],
        };
        wait_until(
            "the coordinator's ready file",
            Duration::from_secs(20),
            || ready.exists(),
        );
        let addr = std::fs::read_to_string(&ready).expect("ready file");
        c.url = format!("https://{addr}");
        let mut args: Vec<String> = [
            "worker",
            "--coordinator",
            &c.url,
            "--id",
            "w1",
            "--slots",
            "2",
            "--cache-listen",
            "127.0.0.1:0",
            "--tls-client-auth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(tls_flags(Some("test"), "test"));
        let worker = Proc::spawn("worker", c.ws.path(), &args);
        c.procs.push(worker);
        wait_until(
            "the worker to join over TLS",
            Duration::from_secs(20),
            || {
                let out = c.cli(Some("test"), "test", &["workers", "--json"]);
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"w1")
            },
        );
        c
    }

    /// A `gatehouse` client command with certificate `cert` trusting CA `ca`, against
    /// this coordinator.
    fn cli(&self, cert: Option<&str>, ca: &str, args: &[&str]) -> Output {
        self.cli_at(&self.url, cert, ca, args)
    }

    fn cli_at(&self, url: &str, cert: Option<&str>, ca: &str, args: &[&str]) -> Output {
        let mut cmd = self.ws.cmd(args);
        cmd.args(tls_flags(cert, ca))
            .args(["--coordinator", url, "--failover-timeout", "1s"]);
        cmd.output().expect("run gatehouse")
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!("----- {} log (tail) -----\n{}", p.name, p.tail());
            }
        }
    }
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_cluster_runs_over_mutual_tls_and_refuses_whom_it_does_not_trust() {
    let c = TlsCluster::start();
    let plan = c.ws.write(
        "tls.yaml",
        "version: 1\nname: tls\ngates:\n\
         \x20 - { id: build, run: echo built }\n\
         \x20 - { id: test, run: \"true\", needs: [build] }\n",
    );
    let plan = plan.to_str().expect("utf-8");

    // A plan submitted and watched over TLS passes; run again, it is served from the
    // worker's cache node, which the coordinator reads (and the worker wrote) over TLS.
    for round in 0..2 {
        let out = c.cli(Some("test"), "test", &["submit", "--watch", "--json", plan]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let lines = json_lines(&out);
        let summary = lines
            .iter()
            .find(|l| l["event"] == "summary")
            .unwrap_or_else(|| panic!("no summary: {lines:?}"));
        assert_eq!(summary["gates"]["passed"], 2, "{summary}");
        assert_eq!(
            summary["gates"]["cached"],
            if round == 0 { 0 } else { 2 },
            "round {round}: {summary}"
        );
    }
    let out = c.cli(Some("test"), "test", &["cache", "stats", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stats: Value = serde_json::from_slice(&out.stdout).expect("cache stats JSON");
    let nodes = stats["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{stats}");
    assert!(
        nodes[0]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://127.0.0.1:")),
        "the cache node advertises https: {stats}"
    );
    assert_eq!(nodes[0]["puts"], 2, "{stats}");

    // Refused: each is exit status 3 (unreachable), with what to check on stderr.
    let plain = c.url.replacen("https://", "http://", 1);
    for (what, url, cert, ca, says) in [
        (
            "plaintext",
            plain.as_str(),
            Some("test"),
            "test",
            "use https://",
        ),
        (
            "server not trusted",
            &c.url,
            Some("test"),
            "other",
            "check --tls-ca",
        ),
        (
            "no client certificate",
            &c.url,
            None,
            "test",
            "give --tls-cert",
        ),
        (
            "certificate of another CA",
            &c.url,
            Some("other"),
            "test",
            // A refused certificate is an alert or, racing it, a closed connection;
            // both hints name the CA.
            "does the server trust the CA of --tls-cert?",
        ),
    ] {
        let out = c.cli_at(url, cert, ca, &["workers"]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{what}: nothing listed");
        assert!(stderr(&out).contains(says), "{what}: {}", stderr(&out));
    }
    // A submission whose certificate is refused was never accepted, and says so (not
    // "may have been accepted").
    let out = c.cli(None, "test", &["submit", plan]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("give --tls-cert"), "{}", stderr(&out));
    let out = c.cli(Some("test"), "test", &["plans", "--json"]);
    let plans: Value = serde_json::from_slice(&out.stdout).expect("plans JSON");
    assert_eq!(plans["plans"].as_array().map(Vec::len), Some(2), "{plans}");
}

#[test]
fn unusable_tls_flags_are_refused_before_anything_starts() {
    let ws = Workspace::new();
    let dir = certs();
    let cert = dir.join("test.pem");
    let key = dir.join("test-key.pem");
    let not_pem = ws.write("not.pem", "hello\n");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--tls-cert".into(), cert.display().to_string()],
            "--tls-cert needs --tls-key",
        ),
        (
            vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                not_pem.display().to_string(),
            ],
            "no usable PEM private key",
        ),
        (
            vec![
                "--tls-ca".into(),
                ws.path().join("missing.pem").display().to_string(),
            ],
            "missing.pem",
        ),
        (
            vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
                "--tls-client-auth".into(),
            ],
            "--tls-client-auth needs --tls-ca",
        ),
    ];
    // A key that is not the certificate's.
    let other_key = dir.join("other-key.pem");
    let mismatched = vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        other_key.display().to_string(),
    ];
    // An advertised URL whose scheme is not what the process serves.
    let with_cert = vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    for (args, needle) in [
        (
            vec!["coordinator", "--listen", "127.0.0.1:0"],
            "not the key of the certificate",
        ),
        (
            vec![
                "coordinator",
                "--listen",
                "127.0.0.1:0",
                "--etcd",
                "http://127.0.0.1:1",
                "--advertise",
                "http://127.0.0.1:7700",
            ],
            "does not match",
        ),
        (
            vec![
                "worker",
                "--coordinator",
                "https://127.0.0.1:1",
                "--cache-listen",
                "127.0.0.1:0",
                "--cache-advertise",
                "http://127.0.0.1:7800",
            ],
            "does not match",
        ),
    ] {
        let flags = if needle.starts_with("not the key") {
            &mismatched
        } else {
            &with_cert
        };
        let out = ws.cmd(&args).args(flags).output().expect("run gatehouse");
        assert!(
            !out.status.success() && stderr(&out).contains(needle),
            "{args:?}: {:?} {}",
            out.status,
            stderr(&out)
        );
    }
    for (flags, needle) in cases {
        for command in [
            vec!["coordinator", "--listen", "127.0.0.1:0"],
            vec!["worker", "--coordinator", "https://127.0.0.1:1"],
            vec!["workers", "--coordinator", "https://127.0.0.1:1"],
        ] {
            let out = ws
                .cmd(&command)
                .args(&flags)
                .output()
                .expect("run gatehouse");
            assert_eq!(out.status.code(), Some(2), "{command:?} {flags:?}");
            assert!(
                stderr(&out).contains(needle),
                "{command:?} {flags:?}: {}",
                stderr(&out)
            );
        }
    }
}
