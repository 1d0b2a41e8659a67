//! Runs one gate attempt: `sh -c <run>` in its own process group, to a [`GateResult`].
//!
//! State it owns: the child process and its group, the two output tails, the memory
//! registration. A [`RunningGate`] is owned by the one task that awaits it; nothing is
//! shared.
//!
//! The attempt ends when the shell exits. Before that, three things can stop it, each
//! by signalling the whole process group; the first one decides the status:
//! - the timeout (`spec.timeout`): SIGTERM, SIGKILL after `cfg.kill_grace` -> `TimedOut`;
//! - a cancellation ([`CancelSignal`]): SIGTERM, SIGKILL after the requested grace (a later
//!   request with a shorter grace shortens it; zero kills at once) -> `Cancelled`;
//! - the memory monitor reporting the tree above twice `spec.memory`: SIGKILL at once ->
//!   `MemoryExceeded`. A `memory` of 0 means no limit.
//!
//! Whatever the reason, once the shell has exited the group gets SIGKILL, so background
//! processes (`sleep 100 & exit 0`) never outlive their gate (see the `pgroup` module for why
//! this happens before the shell is reaped). stdout and stderr are read concurrently the
//! whole time; after the group kill they are read for at most `cfg.pipe_drain`, since only
//! a process that left the group (`setsid`) can still hold them open.
//!
//! Failure: a spawn failure becomes `ExitStatus::SpawnFailed` (never a panic). If the
//! [`RunningGate`] is dropped before it ended (its task aborted), the group is killed.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use gatehouse_common::exec::{AttemptRef, ExitStatus, GateResult, GateSpec, OutputTail};
use gatehouse_common::ids::GateId;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::time::Instant;

use crate::ExecConfig;
use crate::cancel::CancelSignal;
use crate::monitor::{MemoryExceeded, MemoryMonitorHandle, TreeWatch, sleep_until_opt};
use crate::pgroup::{ExitWatch, ProcessGroup};
use crate::tail::{TailBuf, pump};

/// The shell gates run under, by absolute path as POSIX specifies it (no `PATH` search,
/// which would cost a failed `execve` per `PATH` entry on every gate).
pub const SHELL: &str = "/bin/sh";

/// Errors starting an attempt.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `sh` could not be started (missing workdir, no `sh`, fork failure...).
    #[error("failed to start gate {gate} in {}: {source}", workdir.display())]
    Spawn {
        gate: GateId,
        workdir: PathBuf,
        source: std::io::Error,
    },
    /// The spawned process had already been reaped, so it has no pid to watch.
    #[error("gate {gate} exited before it could be watched")]
    NoPid { gate: GateId },
}

impl ExecError {
    /// The result reported for an attempt that could not start.
    pub fn into_result(self) -> GateResult {
        GateResult {
            status: ExitStatus::SpawnFailed(self.to_string()),
            duration: Duration::ZERO,
            peak_memory: None,
            stdout: OutputTail::default(),
            stderr: OutputTail::default(),
            tests: None,
        }
    }
}

/// Runs one attempt to its end: [`RunningGate::start`] then [`RunningGate::wait`].
pub async fn execute(
    spec: &GateSpec,
    attempt: &AttemptRef,
    cfg: &ExecConfig,
    cancel: CancelSignal,
    monitor: &MemoryMonitorHandle,
) -> GateResult {
    match RunningGate::start(spec, attempt, cfg, monitor).await {
        Ok(running) => running.wait(cancel).await,
        Err(error) => error.into_result(),
    }
}

/// The attempt's process: `program` with `args`, in the gate's workdir and environment,
/// in a process group of its own, with no stdin and both outputs piped.
fn command(
    spec: &GateSpec,
    attempt: &AttemptRef,
    program: &std::ffi::OsStr,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(&spec.env)
        .env("GATEHOUSE_PLAN", &spec.plan_name)
        .env(
            "GATEHOUSE_ITEM",
            spec.item.as_ref().map_or("", |item| item.as_str()),
        )
        .env("GATEHOUSE_GATE", spec.gate.as_str())
        .env("GATEHOUSE_ATTEMPT", attempt.attempt.to_string())
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Why Gatehouse stopped an attempt before its shell exited on its own.
#[derive(Clone, Copy, Debug)]
enum Stop {
    TimedOut,
    Cancelled,
    Memory(MemoryExceeded),
}

/// A spawned attempt, not yet finished.
#[derive(Debug)]
pub struct RunningGate {
    gate: GateId,
    child: Child,
    /// `None` once the shell has been reaped: from then on its id may be reused.
    group: Option<ProcessGroup>,
    exit: ExitWatch,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// `None` if the monitor has stopped: the attempt then runs without a memory limit.
    memory: Option<TreeWatch>,
    monitor: MemoryMonitorHandle,
    cfg: ExecConfig,
    started: Instant,
    /// `started + spec.timeout`; `None` if that is beyond what an `Instant` can hold.
    deadline: Option<Instant>,
}

impl RunningGate {
    /// Spawns the attempt (its program, or the shell) and registers its tree with the
    /// memory monitor.
    pub async fn start(
        spec: &GateSpec,
        attempt: &AttemptRef,
        cfg: &ExecConfig,
        monitor: &MemoryMonitorHandle,
    ) -> Result<Self, ExecError> {
        // A plain command runs without the shell (see `argv`); if it cannot be started
        // that way, the shell runs it and reports why, as it would have.
        let mut child = match crate::argv::direct(&spec.run) {
            Some(words) => {
                // A relative path with a slash is the shell's: relative to the workdir.
                let program = match words[0].contains('/') && !words[0].starts_with('/') {
                    true => spec.workdir.join(words[0]).into_os_string(),
                    false => words[0].into(),
                };
                match command(spec, attempt, &program, &words[1..]).spawn() {
                    Ok(child) => Ok(child),
                    Err(_) => command(spec, attempt, SHELL.as_ref(), &["-c", &spec.run]).spawn(),
                }
            }
            None => command(spec, attempt, SHELL.as_ref(), &["-c", &spec.run]).spawn(),
        }
        .map_err(|source| ExecError::Spawn {
            gate: spec.gate.clone(),
            workdir: spec.workdir.clone(),
            source,
        })?;
        let started = Instant::now();
        let no_pid = || ExecError::NoPid {
            gate: spec.gate.clone(),
        };
        let pid = child.id().ok_or_else(no_pid)?;
        let group = ProcessGroup::led_by(pid).ok_or_else(no_pid)?;
        let exit = ExitWatch::new(&group);
        let limit = (spec.memory > 0).then(|| spec.memory.saturating_mul(2));
        let memory = match monitor.register(pid, limit).await {
            Ok(watch) => Some(watch),
            Err(error) => {
                tracing::warn!(gate = %spec.gate, %error, "running gate without a memory limit");
                None
            }
        };
        tracing::debug!(gate = %spec.gate, attempt = attempt.attempt, pid, "gate started");
        Ok(Self {
            gate: spec.gate.clone(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            group: Some(group),
            exit,
            memory,
            monitor: monitor.clone(),
            cfg: cfg.clone(),
            started,
            deadline: started.checked_add(spec.timeout),
        })
    }

    /// The gate's pid (also its process-group id).
    pub fn pid(&self) -> Option<u32> {
        self.group.as_ref().and_then(|g| u32::try_from(g.id()).ok())
    }

    /// Waits for the attempt to end (see the module docs) and returns its result.
    pub async fn wait(mut self, mut cancel: CancelSignal) -> GateResult {
        let mut stdout = TailBuf::new(self.cfg.tail_limit);
        let mut stderr = TailBuf::new(self.cfg.tail_limit);
        let pipe_drain = self.cfg.pipe_drain;
        let (out_pipe, err_pipe) = (self.stdout.take(), self.stderr.take());
        let (status, duration) = {
            let mut pumps = std::pin::pin!(async {
                tokio::join!(pump(out_pipe, &mut stdout), pump(err_pipe, &mut stderr));
            });
            let mut supervise = std::pin::pin!(self.supervise(&mut cancel));
            let mut pumps_done = false;
            let ended = loop {
                tokio::select! {
                    ended = &mut supervise => break ended,
                    () = &mut pumps, if !pumps_done => pumps_done = true,
                }
            };
            if !pumps_done && tokio::time::timeout(pipe_drain, &mut pumps).await.is_err() {
                tracing::warn!(
                    ?pipe_drain,
                    "gate output still open after its process group was killed; \
                     a process left the group and its further output is lost"
                );
            }
            ended
        };
        let peak_memory = self.finish_memory(&status).await;
        GateResult {
            status,
            duration,
            peak_memory,
            stdout: stdout.into_tail(),
            stderr: stderr.into_tail(),
            tests: None,
        }
    }

    /// Runs until the shell exited and the group was killed; returns the status and the
    /// wall time.
    async fn supervise(&mut self, cancel: &mut CancelSignal) -> (ExitStatus, Duration) {
        let Some(group) = self.group.as_ref() else {
            // Unreachable: `group` is only cleared below, after which we return.
            return (ExitStatus::Exited(-1), Duration::ZERO);
        };
        let mut stop: Option<Stop> = None;
        let mut kill_at: Option<Instant> = None;
        let mut killed = false;
        let mut cancel_open = true;
        let mut memory_open = self.memory.is_some();
        let reaped = loop {
            tokio::select! {
                biased;
                reaped = self.exit.exited(&mut self.child) => break reaped,
                exceeded = recv_exceeded(&mut self.memory), if memory_open => {
                    memory_open = false;
                    if let Some(exceeded) = exceeded {
                        stop.get_or_insert(Stop::Memory(exceeded));
                        group.kill();
                        killed = true;
                    }
                }
                grace = cancel.requested(), if cancel_open => match grace {
                    Some(grace) => {
                        if stop.is_none() {
                            stop = Some(Stop::Cancelled);
                            group.terminate();
                        }
                        kill_at = earliest(kill_at, Instant::now().checked_add(grace));
                    }
                    None => cancel_open = false,
                },
                () = sleep_until_opt(self.deadline), if stop.is_none() => {
                    tracing::info!(gate = %self.gate, "gate timed out");
                    stop = Some(Stop::TimedOut);
                    group.terminate();
                    kill_at = earliest(kill_at, Instant::now().checked_add(self.cfg.kill_grace));
                }
                () = sleep_until_opt(kill_at), if !killed => {
                    group.kill();
                    killed = true;
                }
            }
        };
        // The shell exited: nothing of this gate may outlive it.
        group.kill();
        let reaped = match reaped {
            Some(reaped) => reaped,
            None => self.child.wait().await,
        };
        self.group = None;
        let duration = self.started.elapsed();
        let status = match stop {
            Some(Stop::TimedOut) => ExitStatus::TimedOut,
            Some(Stop::Cancelled) => ExitStatus::Cancelled,
            Some(Stop::Memory(m)) => ExitStatus::MemoryExceeded {
                peak: m.peak,
                limit: m.limit,
            },
            None => self.exit_status(reaped),
        };
        (status, duration)
    }

    fn exit_status(&self, reaped: std::io::Result<std::process::ExitStatus>) -> ExitStatus {
        match reaped {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => ExitStatus::Exited(code),
                (None, Some(signal)) => ExitStatus::Signaled(signal),
                (None, None) => {
                    tracing::warn!(gate = %self.gate, ?status, "unexpected wait status");
                    ExitStatus::Exited(-1)
                }
            },
            Err(error) => {
                tracing::error!(gate = %self.gate, %error, "failed to reap gate shell");
                ExitStatus::Exited(-1)
            }
        }
    }

    /// Unregisters from the monitor; returns the peak RSS seen.
    async fn finish_memory(&mut self, status: &ExitStatus) -> Option<u64> {
        let watch = self.memory.take();
        let sampled = match watch {
            Some(watch) => self.monitor.unregister(watch.id).await.ok().flatten(),
            None => None,
        };
        match status {
            ExitStatus::MemoryExceeded { peak, .. } => Some(sampled.unwrap_or(0).max(*peak)),
            _ => sampled,
        }
    }
}

impl Drop for RunningGate {
    fn drop(&mut self) {
        // Only while the shell is unreaped (`wait` did not finish): kill its whole group.
        if let Some(group) = self.group.take() {
            tracing::debug!(gate = %self.gate, pgid = group.id(), "gate dropped while running; killing it");
            group.kill();
        }
    }
}

/// Waits for the monitor's notification; `None` if it will never come.
async fn recv_exceeded(watch: &mut Option<TreeWatch>) -> Option<MemoryExceeded> {
    match watch {
        Some(watch) => (&mut watch.exceeded).await.ok(),
        None => std::future::pending().await,
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
