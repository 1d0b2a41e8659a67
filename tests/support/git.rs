//! Real git repositories for the tests: working repositories committed to with the git
//! CLI ([`Repo`]), and a real `git daemon` serving them on an ephemeral loopback port
//! ([`GitDaemon`]).
//!
//! The daemon runs in inetd mode, one `git daemon --inetd` process per connection, fed
//! by a listener this process binds on port 0: no fixed port, no race for one. The
//! accept loop is bounded (it polls a stop flag) and ends when the [`GitDaemon`] drops.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::tools;

/// A git command with no system or global configuration and a fixed identity.
pub fn git(dir: &Path) -> Command {
    let mut c = Command::new(tools::find("git"));
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .stdin(Stdio::null());
    c
}

/// A working repository under a test's directory.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    /// A new repository at `dir` with an empty `main`.
    pub fn init(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir repo");
        let repo = Self {
            dir: dir.to_path_buf(),
        };
        repo.git(&["init", "--quiet", "-b", "main"]);
        repo
    }

    /// Runs git here; panics with its stderr on failure; returns trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let out = git(&self.dir).args(args).output().expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes `files` (path, content), commits everything, returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            let p = self.dir.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, content).expect("write");
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Checks out branch `name`, created (or reset) at `from`.
    pub fn branch(&self, name: &str, from: &str) {
        self.git(&["checkout", "--quiet", "-B", name, from]);
    }

    /// Checks out the existing branch `name`.
    pub fn switch(&self, name: &str) {
        self.git(&["checkout", "--quiet", name]);
    }

    /// A `file://` URL of this repository.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// A real `git daemon` exporting every repository under a base directory.
pub struct GitDaemon {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    served: Arc<AtomicU32>,
    /// Connections accepted from this count on are held, unanswered, until
    /// [`GitDaemon::release`] (`u32::MAX`: none is held).
    hold_from: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl GitDaemon {
    /// Serves the repositories under `base` (`git://ADDR/<name>` is `base/<name>`),
    /// for fetching only.
    pub fn serve(base: &Path) -> Self {
        Self::start(base, false)
    }

    /// Serves the repositories under `base` for fetching and for pushing
    /// (`--enable=receive-pack`): what a landing pushes to.
    pub fn serve_writable(base: &Path) -> Self {
        Self::start(base, true)
    }

    fn start(base: &Path, writable: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind git daemon port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU32::new(0));
        let hold_from = Arc::new(AtomicU32::new(u32::MAX));
        let base = base.to_path_buf();
        let git_bin = tools::find("git");
        let thread = {
            let (stop, served, hold_from) = (stop.clone(), served.clone(), hold_from.clone());
            std::thread::spawn(move || {
                let mut children = Vec::new();
                let mut held = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let accepted = match listener.accept() {
                        Ok((stream, _)) => {
                            let n = served.fetch_add(1, Ordering::Relaxed);
                            if n >= hold_from.load(Ordering::Relaxed) {
                                held.push(stream);
                                continue;
                            }
                            Ok(stream)
                        }
                        Err(e) => Err(e),
                    };
                    // Held connections are served once released.
                    let next = if hold_from.load(Ordering::Relaxed) == u32::MAX && !held.is_empty()
                    {
                        Some(Ok(held.remove(0)))
                    } else {
                        None
                    };
                    for accepted in next.into_iter().chain(std::iter::once(accepted)) {
                        match accepted {
                            Ok(stream) => {
                                stream.set_nonblocking(false).expect("blocking stream");
                                let input: OwnedFd = stream.try_clone().expect("clone").into();
                                let output: OwnedFd = stream.into();
                                let mut daemon = Command::new(&git_bin);
                                daemon.arg("daemon").arg("--inetd").arg("--export-all");
                                if writable {
                                    daemon.arg("--enable=receive-pack");
                                }
                                let child = daemon
                                    .arg(format!("--base-path={}", base.display()))
                                    .arg(&base)
                                    .env("GIT_CONFIG_NOSYSTEM", "1")
                                    .env("GIT_CONFIG_GLOBAL", "/dev/null")
                                    .stdin(Stdio::from(input))
                                    .stdout(Stdio::from(output))
                                    .stderr(Stdio::null())
                                    .spawn()
                                    .expect("spawn git daemon --inetd");
                                children.push(child);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            Err(e) => panic!("git daemon accept failed: {e}"),
                        }
                    }
                    children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                }
                for mut c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            })
        };
        Self {
            addr,
            stop,
            served,
            hold_from,
            thread: Some(thread),
        }
    }

    /// `git://ADDR/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("git://{}/{name}", self.addr)
    }

    /// Connections accepted so far.
    pub fn served(&self) -> u32 {
        self.served.load(Ordering::Relaxed)
    }

    /// Serves `n` more connections, then holds every later one, unanswered (a client
    /// waits in its fetch), until [`GitDaemon::release`].
    pub fn hold_after(&self, n: u32) {
        self.hold_from.store(self.served() + n, Ordering::Relaxed);
    }

    /// Serves the held connections and every later one.
    pub fn release(&self) {
        self.hold_from.store(u32::MAX, Ordering::Relaxed);
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
