//! A real single-member etcd for integration tests: free loopback ports chosen here, a
//! temp data dir, its log in a file there, readiness through `GET /health`. Killed on
//! drop; on a failing test the tail of its log is printed.
//!
//! `etcd` and `etcdctl` are found by [`super::tools::find`] (Debian `etcd-server` and
//! `etcd-client`, installed by `scripts/test-deps.sh`). `GATEHOUSE_SKIP_ETCD=1` makes
//! [`EtcdServer::start`] return `None` (the test returns early) and prints `SKIPPED` for
//! the test; without it a missing `etcd` binary is a test failure, not a silent skip.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::log_tail;

/// How long etcd may take to answer `/health` after starting.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One etcd process (and its data, which outlives [`EtcdServer::stop`]).
pub struct EtcdServer {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd and waits until it is healthy; `None` when `GATEHOUSE_SKIP_ETCD=1`.
    /// If another process took one of the chosen ports first, tries new ones.
    pub fn start() -> Option<EtcdServer> {
        if super::tools::skipping("GATEHOUSE_SKIP_ETCD") {
            return None;
        }
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let [client_port, peer_port] = free_ports();
            let mut server = EtcdServer {
                dir: tempfile::tempdir().expect("create temp dir"),
                client_port,
                peer_port,
                child: None,
            };
            server.spawn();
            match server.wait_healthy() {
                Ok(()) => return Some(server),
                Err(why)
                    if attempt < ATTEMPTS
                        && server.log_tail().contains("address already in use") =>
                {
                    eprintln!("{why}: a port was taken; retrying on new ports");
                }
                // Dropping the server while panicking prints its log's tail.
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The process id of the running etcd (panics if stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd is running").id()
    }

    /// Kills etcd (SIGKILL) and waits for it; the data dir is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir and waits until it is healthy.
    pub fn start_again(&mut self) {
        self.spawn();
        if let Err(why) = self.wait_healthy() {
            panic!("{why}");
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd log");
        let err = log.try_clone().expect("clone log");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(etcd())
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    /// The last lines of etcd's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), 40)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Polls `/health` until etcd is healthy, exits, or [`START_TIMEOUT`] passes.
    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let child = self.child.as_mut().expect("etcd was started");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!("etcd exited ({status}) while starting"));
            }
            if health(self.client_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd did not report healthy on {} within {START_TIMEOUT:?}",
                    self.endpoint()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("----- etcd log (tail) -----\n{}", self.log_tail());
        }
    }
}

/// The etcd binary (panics, saying how to install it, if missing).
pub fn etcd() -> PathBuf {
    super::tools::find("etcd")
}

/// The etcdctl binary (panics, saying how to install it, if missing).
pub fn etcdctl() -> PathBuf {
    super::tools::find("etcdctl")
}

/// Distinct loopback ports that were free a moment ago (bound together, then released).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"));
    listeners.map(|l| l.local_addr().expect("local addr").port())
}

/// Whether etcd answers `GET /health` with `"health":"true"`.
fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(2));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") && response.contains(r#""health":"true""#)
}
