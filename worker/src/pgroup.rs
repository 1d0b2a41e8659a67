//! Signalling a gate's process group, and noticing that the group leader (the shell)
//! exited *without reaping it*.
//!
//! Why not reap first: while the exited shell is an unreaped zombie it still holds its
//! pid, and so its process-group id, so `killpg` after exit can only reach processes of
//! this gate. Once it is reaped, an empty group's id could in theory be reused by an
//! unrelated process group. So the executor notices the exit with `waitid(WNOWAIT)`,
//! kills the group, and only then reaps. If that is unavailable it falls back to
//! reap-then-kill, which leaves that (theoretical: the pid would have to be recycled
//! within microseconds) window open.
//!
//! Everything here goes through `rustix`'s safe wrappers, so the crate needs no
//! `unsafe` (the workspace denies it).

use std::process::ExitStatus;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process_group, waitid};
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};

/// A process group created for one gate (its id is the shell's pid).
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    /// The group id, equal to the leader's pid.
    pgid: Pid,
}

impl ProcessGroup {
    /// The group led by `pid`, a process spawned with `process_group(0)`.
    pub(crate) fn led_by(pid: u32) -> Option<Self> {
        let pgid = Pid::from_raw(i32::try_from(pid).ok()?)?;
        Some(Self { pgid })
    }

    /// The group id, for logs.
    pub(crate) fn id(&self) -> i32 {
        self.pgid.as_raw_nonzero().get()
    }

    /// SIGTERM to every process of the group.
    pub(crate) fn terminate(&self) {
        self.signal(Signal::TERM);
    }

    /// SIGKILL to every process of the group.
    pub(crate) fn kill(&self) {
        self.signal(Signal::KILL);
    }

    fn signal(&self, signal: Signal) {
        match kill_process_group(self.pgid, signal) {
            // ESRCH: nobody is left in the group, which is what we wanted.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(error) => {
                tracing::warn!(pgid = self.id(), ?signal, %error, "failed to signal gate process group");
            }
        }
    }
}

/// Waits for the group leader to exit without reaping it: on every SIGCHLD, a
/// `waitid(WEXITED | WNOHANG | WNOWAIT)` on the leader's pid tells whether it exited while
/// leaving it a zombie. (A pidfd would avoid the wakeups of unrelated SIGCHLDs, but
/// registering one with tokio needs `unsafe`; a SIGCHLD costs one syscall per running gate.)
#[derive(Debug)]
pub(crate) struct ExitWatch {
    pid: Pid,
    /// `None` if no SIGCHLD listener could be installed or `waitid` failed: waiting then
    /// means reaping, and the group kill comes after it.
    sigchld: Option<tokio::signal::unix::Signal>,
}

impl ExitWatch {
    /// Call right after spawning, before the first [`ExitWatch::exited`], so that no
    /// exit can slip between the first check and the listener.
    pub(crate) fn new(group: &ProcessGroup) -> Self {
        let sigchld = match signal(SignalKind::child()) {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(pid = group.id(), %error, "no SIGCHLD listener; reaping before the group kill");
                None
            }
        };
        Self {
            pid: group.pgid,
            sigchld,
        }
    }

    /// Resolves once `child` has exited: `None` if it is still unreaped, or the result of
    /// reaping it (fallback). Cancel-safe.
    pub(crate) async fn exited(
        &mut self,
        child: &mut Child,
    ) -> Option<std::io::Result<ExitStatus>> {
        if let Some(sigchld) = &mut self.sigchld {
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
            loop {
                match waitid(WaitId::Pid(self.pid), options) {
                    Ok(Some(_exited)) => return None,
                    Ok(None) | Err(rustix::io::Errno::INTR) => {}
                    Err(error) => {
                        tracing::debug!(pid = ?self.pid, %error, "waitid failed; reaping instead");
                        break;
                    }
                }
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
            self.sigchld = None;
        }
        Some(child.wait().await)
    }
}
