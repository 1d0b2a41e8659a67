//! Running the `git` CLI: the reference implementation of everything Gatehouse does
//! with a repository.
//!
//! [`Git`] is the binary found at start, with its version checked
//! ([`MIN_VERSION`]: `merge-tree --write-tree` and `--stdin`). Every command runs with
//! settings pinned so that a tree means the same bytes everywhere (no line-ending
//! conversion, no hooks, no pager, no prompt for credentials; commands that need no
//! credentials read no system or user configuration at all, [`Run::isolated`], so no
//! smudge or clean filter applies), in its own process group, with a deadline: at the deadline the whole
//! group (git and the helpers it started: `ssh`, `git-remote-https`) is killed and the
//! command fails with [`GitError::TimedOut`]. Credentials come from git's own mechanisms
//! (ssh keys, credential helpers, `GIT_ASKPASS`); nothing here logs a command's output,
//! and URLs are only ever shown redacted ([`crate::RepoUrl`]).
//!
//! Concurrency: a [`Git`] is plain data, cheap to clone; commands are independent
//! processes. Callers serialize what must not race (see [`crate::Mirror`]).

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The oldest git this crate works with.
pub const MIN_VERSION: GitVersion = GitVersion(2, 38, 0);

/// Bytes of a failed command's stderr kept for its error.
const STDERR_KEPT: usize = 2048;

/// A git version (`major.minor.patch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GitVersion(pub u32, pub u32, pub u32);

impl fmt::Display for GitVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl GitVersion {
    /// Parses `git version 2.47.3` (and vendor suffixes such as `2.39.5.windows.1` or
    /// `2.50.1 (Apple Git-155)`).
    pub fn parse(output: &str) -> Option<Self> {
        let rest = output.trim().strip_prefix("git version ")?;
        let mut parts = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u32>().ok());
        Some(Self(
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }
}

/// Why a git command failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// No usable `git` binary.
    #[error("git not found: {0} (install git {MIN_VERSION} or newer)")]
    Missing(String),
    /// The binary is older than [`MIN_VERSION`].
    #[error("git {found} is too old: Gatehouse needs git {MIN_VERSION} or newer")]
    TooOld {
        /// The version found.
        found: GitVersion,
    },
    /// It could not be started or waited for.
    #[error("cannot run git {what}: {source}")]
    Spawn {
        /// The subcommand.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran past its deadline and was killed.
    #[error("git {what} did not finish within {after:?}")]
    TimedOut {
        /// The subcommand.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// It exited non-zero.
    #[error("git {what} failed ({status}): {stderr}")]
    Failed {
        /// The subcommand.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
}

/// The output of a command that ran to its end (successfully or not).
#[derive(Debug)]
pub struct Output {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// The end of its stderr.
    pub stderr: String,
}

impl Output {
    /// Stdout as text, trimmed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }
}

/// The `git` binary, checked.
#[derive(Clone, Debug)]
pub struct Git {
    bin: PathBuf,
    version: GitVersion,
}

/// One command to run.
pub struct Run {
    cmd: Command,
    what: String,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl Git {
    /// Finds `git` on `PATH` (or the `GATEHOUSE_GIT` binary) and checks its version.
    pub async fn find() -> Result<Self, GitError> {
        let bin = std::env::var_os("GATEHOUSE_GIT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("git"));
        Self::at(bin).await
    }

    /// The git at `bin`, with its version checked.
    pub async fn at(bin: PathBuf) -> Result<Self, GitError> {
        let out = Command::new(&bin)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| GitError::Missing(format!("{}: {e}", bin.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = GitVersion::parse(&text).ok_or_else(|| {
            GitError::Missing(format!("{} printed no version: {text:?}", bin.display()))
        })?;
        if version < MIN_VERSION {
            return Err(GitError::TooOld { found: version });
        }
        Ok(Self { bin, version })
    }

    /// The git program.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Its version.
    pub fn version(&self) -> GitVersion {
        self.version
    }

    /// A command `git <args>` in `dir`, with the pinned settings, failing after
    /// `timeout`.
    pub fn run<I, S>(&self, dir: &Path, args: I, timeout: Duration) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let what = args
            .iter()
            .find(|a| !a.to_string_lossy().starts_with('-'))
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(dir)
            // A tree means the same bytes everywhere.
            .args(["-c", "core.autocrlf=false", "-c", "core.eol=lf"])
            .args(["-c", "core.safecrlf=false", "-c", "core.symlinks=true"])
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "advice.detachedHead=false",
            ])
            .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
            .args(&args)
            // Never ask a person for anything: fail instead.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_PAGER", "cat")
            .env("LC_ALL", "C")
            // Attributes may still name filters a checkout must not run.
            .env("GIT_ATTR_NOSYSTEM", "1")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        Run {
            cmd,
            what,
            stdin: None,
            timeout,
        }
    }
}

impl Run {
    /// Reads no system or user configuration: for commands that need no credentials
    /// (merges, trees, checkouts), so no filter or setting of this machine's can change
    /// the bytes of a tree.
    pub fn isolated(mut self) -> Self {
        self.cmd
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Feeds `input` on stdin.
    pub fn stdin(mut self, input: Vec<u8>) -> Self {
        self.cmd.stdin(Stdio::piped());
        self.stdin = Some(input);
        self
    }

    /// Runs it to its end or its deadline; any exit status is an [`Output`].
    pub async fn output(mut self) -> Result<Output, GitError> {
        let what = self.what.clone();
        let spawn_err = |source| GitError::Spawn {
            what: what.clone(),
            source,
        };
        let mut child = self.cmd.spawn().map_err(spawn_err)?;
        let group = child
            .id()
            .and_then(|pid| Pid::from_raw(i32::try_from(pid).ok()?));
        if let (Some(input), Some(mut stdin)) = (self.stdin.take(), child.stdin.take()) {
            // A command that stops reading early makes this fail; its exit says why.
            let _ = stdin.write_all(&input).await;
        }
        let waited = tokio::time::timeout(self.timeout, child.wait_with_output()).await;
        let out = match waited {
            Ok(out) => out.map_err(spawn_err)?,
            Err(_) => {
                if let Some(pgid) = group {
                    // ESRCH: the group is gone already.
                    let _ = kill_process_group(pgid, Signal::KILL);
                }
                return Err(GitError::TimedOut {
                    what,
                    after: self.timeout,
                });
            }
        };
        let cut = out.stderr.len().saturating_sub(STDERR_KEPT);
        Ok(Output {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr[cut..])
                .trim()
                .to_string(),
        })
    }

    /// Runs it and requires exit status 0.
    pub async fn ok(self) -> Result<Output, GitError> {
        let what = self.what.clone();
        let out = self.output().await?;
        match out.code {
            Some(0) => Ok(out),
            code => Err(GitError::Failed {
                what,
                status: code.map_or("killed by a signal".into(), |c| format!("exit {c}")),
                stderr: out.stderr,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_vendor_suffixes() {
        assert_eq!(
            GitVersion::parse("git version 2.47.3\n"),
            Some(GitVersion(2, 47, 3))
        );
        assert_eq!(
            GitVersion::parse("git version 2.39.5.windows.1"),
            Some(GitVersion(2, 39, 5))
        );
        assert_eq!(
            GitVersion::parse("git version 2.50.1 (Apple Git-155)"),
            Some(GitVersion(2, 50, 1))
        );
        assert_eq!(
            GitVersion::parse("git version 3.0"),
            Some(GitVersion(3, 0, 0))
        );
        assert_eq!(GitVersion::parse("hg 6.1"), None);
        assert!(GitVersion(2, 37, 9) < MIN_VERSION);
    }

    #[tokio::test]
    async fn the_git_here_is_found_and_a_command_past_its_deadline_is_killed() {
        let git = Git::find().await.expect("git on PATH");
        assert!(git.version() >= MIN_VERSION);
        let dir = tempfile::tempdir().expect("tempdir");
        // `git -c alias.wait='!sleep 30' wait`: a shell alias, killed with its group.
        let slow = git
            .run(
                dir.path(),
                ["-c", "alias.wait=!sleep 30", "wait"],
                Duration::from_millis(300),
            )
            .output()
            .await;
        assert!(matches!(slow, Err(GitError::TimedOut { .. })), "{slow:?}");
        let failed = git
            .run(dir.path(), ["rev-parse", "HEAD"], Duration::from_secs(10))
            .ok()
            .await;
        assert!(matches!(failed, Err(GitError::Failed { .. })), "{failed:?}");
    }
}
