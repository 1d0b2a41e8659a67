//! Real git repositories for the tests: working repositories committed to with the git
//! CLI ([`Repo`]), and a real `git daemon` serving them on an ephemeral loopback port
//! ([`GitDaemon`]).
//!
//! The daemon runs in inetd mode, one `git daemon --inetd` process per connection, fed
//! by a listener this process binds on port 0: no fixed port, no race for one. One
//! thread accepts (blocking) and hands each connection to another, which starts the
//! daemons; both wait on events, never on a timer, and end when the [`GitDaemon`]
//! drops.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

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

    /// A bare copy of this repository (every branch) at `dest`: what a test serves.
    pub fn clone_bare(&self, dest: &Path) {
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        let dest = dest.to_str().expect("utf-8");
        self.git(&[
            "clone",
            "--quiet",
            "--bare",
            self.dir.to_str().expect("utf-8"),
            dest,
        ]);
    }

    /// A `file://` URL of this repository.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// Installs `script` as hook `name` (`pre-receive`, `post-receive`...) of the bare
/// repository `bare`.
pub fn install_hook(bare: &Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let hook = bare.join("hooks").join(name);
    std::fs::write(&hook, script).expect("write hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod hook");
}

/// A real `git daemon` exporting every repository under a base directory.
pub struct GitDaemon {
    addr: SocketAddr,
    /// Set when it drops: the acceptor stops at the next connection.
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    served: Arc<AtomicU32>,
    /// Connections accepted from this count on are held, unanswered, until
    /// [`GitDaemon::release`] (`u32::MAX`: none is held).
    hold_from: Arc<AtomicU32>,
    /// To the thread that serves connections.
    wake: mpsc::Sender<Wake>,
    threads: Vec<JoinHandle<()>>,
}

/// What the serving thread is told.
enum Wake {
    /// A connection was accepted.
    Conn(TcpStream),
    /// Held connections may be served.
    Release,
    /// The daemon is dropped.
    Stop,
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
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU32::new(0));
        let hold_from = Arc::new(AtomicU32::new(u32::MAX));
        let (wake, woken) = mpsc::channel();
        let acceptor = {
            let (stop, wake) = (stop.clone(), wake.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if wake.send(Wake::Conn(stream)).is_err() {
                        break;
                    }
                }
            })
        };
        let server = {
            let (served, hold_from) = (served.clone(), hold_from.clone());
            let daemon = Daemon {
                git: tools::find("git"),
                base: base.to_path_buf(),
                writable,
            };
            std::thread::spawn(move || {
                let mut children = Vec::new();
                let mut held = Vec::new();
                for msg in woken {
                    match msg {
                        Wake::Conn(stream) => {
                            let n = served.fetch_add(1, Ordering::Relaxed);
                            if n >= hold_from.load(Ordering::Relaxed) {
                                held.push(stream);
                            } else {
                                children.push(daemon.serve(stream));
                            }
                        }
                        Wake::Release => {
                            children.extend(held.drain(..).map(|s| daemon.serve(s)));
                        }
                        Wake::Stop => break,
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
            wake,
            threads: vec![acceptor, server],
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
        let _ = self.wake.send(Wake::Release);
    }
}

/// How one connection is served: a `git daemon --inetd` on it.
struct Daemon {
    git: PathBuf,
    base: PathBuf,
    writable: bool,
}

impl Daemon {
    fn serve(&self, stream: TcpStream) -> std::process::Child {
        let input: OwnedFd = stream.try_clone().expect("clone").into();
        let output: OwnedFd = stream.into();
        let mut daemon = Command::new(&self.git);
        daemon.arg("daemon").arg("--inetd").arg("--export-all");
        if self.writable {
            daemon.arg("--enable=receive-pack");
        }
        daemon
            .arg(format!("--base-path={}", self.base.display()))
            .arg(&self.base)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(output))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn git daemon --inetd")
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(Wake::Stop);
        // The acceptor blocks in `accept`: one last connection wakes it to see `stop`.
        let _ = TcpStream::connect(self.addr);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
