//! The Gatehouse gate executor: runs one shell gate attempt at a time per task, each in
//! its own process group, and reports a [`GateResult`](gatehouse_common::exec::GateResult).
//!
//! Pieces, from the bottom up:
//! - [`execute()`] / [`RunningGate`]: spawn `sh -c <run>` in a fresh process group, capture
//!   the tails of stdout and stderr, enforce the timeout, cancellation and memory limit by
//!   signalling the whole group, and always kill the group once the shell has exited so no
//!   background grandchild outlives its gate.
//! - [`monitor`]: the memory monitor actor that samples the resident memory of every
//!   registered process tree, only while at least one is registered.
//! - [`checkout`]: for a gate of a source-aware plan, a fresh checkout of exactly the
//!   speculative commit it was keyed on, from a per-repository mirror.
//! - [`local`]: [`LocalWorker`], the in-process executor `gatehouse run` drives with
//!   [`ToWorker`](gatehouse_common::exec::ToWorker) messages.
//! - [`remote`]: the remote worker, a session layer that connects a [`LocalWorker`] to a
//!   coordinator's gRPC `WorkerService.Session` stream. It also runs the worker's part
//!   of the shared result cache, both from `gatehouse_cache`: a
//!   [`ClusterCache`](gatehouse_cache::ClusterCache) following the membership its
//!   sessions receive, through which every worker writes the results of passed gates
//!   that carry a cache key, and with `--cache-listen` a cache node
//!   ([`start_node`](gatehouse_cache::node::start_node)), started before the first
//!   session and stopped after the last.
//!
//! This crate owns no global state. Every process it starts is owned by exactly one
//! [`RunningGate`], which kills the process group if it is dropped before the gate ended.

pub mod argv;
pub mod cancel;
pub mod checkout;
pub mod execute;
pub mod local;
pub mod metrics;
pub mod monitor;
mod pgroup;
pub mod remote;
mod tail;

use std::sync::Arc;
use std::time::Duration;

pub use cancel::{CancelHandle, CancelSignal, cancel_channel};
pub use execute::{ExecError, RunningGate, execute};
pub use local::LocalWorker;
pub use monitor::{MemoryExceeded, MemoryMonitorHandle, MonitorError, TreeId, TreeWatch};

/// Executor settings shared by every attempt an executor runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecConfig {
    /// How many bytes of the end of stdout, and separately of stderr, are kept per
    /// attempt; earlier bytes are dropped and counted. Default 1 MiB.
    pub tail_limit: usize,
    /// Time between SIGTERM and SIGKILL when a gate times out, and the grace used for
    /// cancellations on executor shutdown. Default 5 s.
    pub kill_grace: Duration,
    /// How often the memory monitor samples the registered process trees while any
    /// gate runs. Default 250 ms.
    pub monitor_interval: Duration,
    /// How long to keep reading stdout/stderr after the process group was killed. Only
    /// a process that left the group (for example with `setsid`) can hold the pipes open
    /// that long; its further output is lost. Default 1 s.
    pub pipe_drain: Duration,
    /// Mirrors and checkouts for gates of source-aware plans; `None`: such a gate fails
    /// with reason `source` (this executor cannot check code out).
    pub checkouts: Option<Arc<checkout::Checkouts>>,
    /// Bounds on reading a gate's test reports (file size, nesting, cases kept,
    /// message bytes); see `gatehouse_common::reports::Limits` for the defaults.
    pub report_limits: gatehouse_common::reports::Limits,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            tail_limit: 1024 * 1024,
            kill_grace: Duration::from_secs(5),
            monitor_interval: Duration::from_millis(250),
            pipe_drain: Duration::from_secs(1),
            checkouts: None,
            report_limits: gatehouse_common::reports::Limits::default(),
        }
    }
}
