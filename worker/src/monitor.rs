//! The memory monitor actor: samples the resident memory (RSS) of every registered
//! process tree, keeps each tree's peak, and tells the tree's executor when the tree
//! exceeds its limit so it can kill the process group.
//!
//! State it owns: the registered trees (root pid, limit, peak, the notification sender)
//! and one `sysinfo::System`, created lazily on the first sample.
//!
//! Accepts [`MemoryMonitorHandle::register`] (after a gate's shell is spawned) and
//! [`MemoryMonitorHandle::unregister`] (after it ended, returning the peak). Sends one
//! [`MemoryExceeded`] per tree at most, on the tree's [`TreeWatch::exceeded`].
//!
//! Concurrency: sampling happens only while at least one tree is registered, every
//! `interval`, the first one `interval` after the set became non-empty (so a gate
//! shorter than that costs two mailbox round trips and nothing else). One sample reads
//! `/proc` once for all registered trees (every process, memory only, no threads) and
//! sums RSS over each tree of `Process::parent()` links rooted at the registered pid;
//! it is blocking work and runs in `spawn_blocking`, with at most one sample in flight,
//! while the actor keeps serving its mailbox. A process that left the tree (reparented
//! to init by a double fork) is not counted; the executor still kills it with the group.
//!
//! Mailbox: bounded at [`MAILBOX`]; each running gate has at most one request in it.
//!
//! Failure and shutdown: if `sysinfo` cannot read processes, no sample is taken (peaks
//! stay `None`, limits are not enforced) and a warning is logged. The actor stops when
//! its token fires or every handle is dropped; it waits for an in-flight sample (one
//! `/proc` scan), and queued requests are dropped, so their callers get
//! [`MonitorError::Stopped`].

use std::collections::{HashMap, HashSet};
use std::future::pending;
use std::time::Duration;

use gatehouse_common::spawn::spawn_named;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// Mailbox capacity: far above the number of gates one executor runs at once.
pub const MAILBOX: usize = 1024;

/// Errors talking to the monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The actor has stopped (shutdown), so the request was not served.
    #[error("memory monitor has stopped")]
    Stopped,
}

/// Identifies one registration (pids can be reused; registrations cannot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TreeId(u64);

/// A tree went over its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryExceeded {
    /// Highest RSS sampled for the tree, in bytes (above `limit`).
    pub peak: u64,
    /// The limit it went over, in bytes.
    pub limit: u64,
}

/// What the executor keeps for one registered tree.
#[derive(Debug)]
pub struct TreeWatch {
    /// Pass to [`MemoryMonitorHandle::unregister`].
    pub id: TreeId,
    /// Resolves once if the tree exceeds its limit; closed without a value otherwise
    /// (unregistered, no limit, or the monitor stopped).
    pub exceeded: oneshot::Receiver<MemoryExceeded>,
}

/// Requests to the monitor.
#[derive(Debug)]
pub(crate) enum MonitorMsg {
    Register {
        pid: u32,
        limit: Option<u64>,
        exceeded: oneshot::Sender<MemoryExceeded>,
        reply: oneshot::Sender<TreeId>,
    },
    Unregister {
        id: TreeId,
        reply: oneshot::Sender<Option<u64>>,
    },
}

/// Cheap to clone; talks to the monitor actor.
#[derive(Clone, Debug)]
pub struct MemoryMonitorHandle {
    tx: mpsc::Sender<MonitorMsg>,
}

impl MemoryMonitorHandle {
    /// Starts watching the process tree rooted at `pid`; `limit` (bytes) is enforced if set.
    pub async fn register(&self, pid: u32, limit: Option<u64>) -> Result<TreeWatch, MonitorError> {
        let (exceeded, exceeded_rx) = oneshot::channel();
        let (reply, reply_rx) = oneshot::channel();
        let msg = MonitorMsg::Register {
            pid,
            limit,
            exceeded,
            reply,
        };
        self.tx.send(msg).await.map_err(|_| MonitorError::Stopped)?;
        let id = reply_rx.await.map_err(|_| MonitorError::Stopped)?;
        Ok(TreeWatch {
            id,
            exceeded: exceeded_rx,
        })
    }

    /// Stops watching a tree; returns its peak RSS in bytes, `None` if never sampled.
    pub async fn unregister(&self, id: TreeId) -> Result<Option<u64>, MonitorError> {
        let (reply, reply_rx) = oneshot::channel();
        let msg = MonitorMsg::Unregister { id, reply };
        self.tx.send(msg).await.map_err(|_| MonitorError::Stopped)?;
        reply_rx.await.map_err(|_| MonitorError::Stopped)
    }
}

/// Starts the monitor, sampling every `interval` while any tree is registered.
pub fn spawn(
    interval: Duration,
    cancel: CancellationToken,
) -> (MemoryMonitorHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(MAILBOX);
    let actor = MonitorActor {
        rx,
        cancel,
        interval,
        trees: HashMap::new(),
        next_id: 0,
        system: None,
        sampling: None,
        next_sample: None,
    };
    let task = spawn_named("memory-monitor", actor.run());
    (MemoryMonitorHandle { tx }, task)
}

/// One registered tree.
#[derive(Debug)]
struct Tree {
    /// Root of the tree (the gate's shell).
    pid: Pid,
    /// RSS limit in bytes, if enforced.
    limit: Option<u64>,
    /// Highest RSS sampled so far.
    peak: Option<u64>,
    /// Taken when the notification is sent, so it is sent at most once.
    exceeded: Option<oneshot::Sender<MemoryExceeded>>,
}

/// What a blocking sample hands back: the `System` (reused for the next sample) and the
/// RSS of each tree whose root still existed.
type Sample = (System, Vec<(TreeId, u64)>);

struct MonitorActor {
    rx: mpsc::Receiver<MonitorMsg>,
    cancel: CancellationToken,
    interval: Duration,
    trees: HashMap<TreeId, Tree>,
    /// Next [`TreeId`] to hand out.
    next_id: u64,
    /// `None` before the first sample and while a sample is in flight.
    system: Option<System>,
    /// The in-flight sample, if any.
    sampling: Option<JoinHandle<Sample>>,
    /// When to take the next sample; `None` while idle or while sampling.
    next_sample: Option<Instant>,
}

impl MonitorActor {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                joined = join_opt(&mut self.sampling) => self.finish_sample(joined),
                () = sleep_until_opt(self.next_sample) => self.start_sample(),
            }
        }
        if let Some(sampling) = self.sampling.take() {
            // Bounded: one `/proc` scan. The result is of no use any more.
            let _ = sampling.await;
        }
        tracing::debug!(trees = self.trees.len(), "memory monitor stopped");
    }

    fn handle(&mut self, msg: MonitorMsg) {
        match msg {
            MonitorMsg::Register {
                pid,
                limit,
                exceeded,
                reply,
            } => {
                let id = TreeId(self.next_id);
                self.next_id += 1;
                let tree = Tree {
                    pid: Pid::from_u32(pid),
                    limit,
                    peak: None,
                    exceeded: Some(exceeded),
                };
                self.trees.insert(id, tree);
                if self.next_sample.is_none() && self.sampling.is_none() {
                    self.next_sample = Some(Instant::now() + self.interval);
                }
                // The caller may have given up waiting; the tree is pruned on the next sample.
                let _ = reply.send(id);
            }
            MonitorMsg::Unregister { id, reply } => {
                let peak = self.trees.remove(&id).and_then(|tree| tree.peak);
                if self.trees.is_empty() {
                    self.next_sample = None;
                }
                let _ = reply.send(peak);
            }
        }
    }

    fn start_sample(&mut self) {
        self.next_sample = None;
        // A tree whose watcher is gone (executor dropped without unregistering) is stale.
        self.trees
            .retain(|_, tree| tree.exceeded.as_ref().is_none_or(|tx| !tx.is_closed()));
        if self.trees.is_empty() {
            return;
        }
        let mut system = match self.system.take() {
            Some(system) => system,
            None => match System::new() {
                Ok(system) => system,
                Err(error) => {
                    tracing::warn!(%error, "cannot read process memory; memory limits are not enforced");
                    self.next_sample = Some(Instant::now() + self.interval);
                    return;
                }
            },
        };
        let roots: Vec<(TreeId, Pid)> = self
            .trees
            .iter()
            .map(|(id, tree)| (*id, tree.pid))
            .collect();
        self.sampling = Some(gatehouse_common::spawn::spawn_blocking_named(
            "memory-sample",
            move || {
                let rss = measure(&mut system, &roots);
                (system, rss)
            },
        ));
    }

    fn finish_sample(&mut self, joined: Result<Sample, JoinError>) {
        self.sampling = None;
        match joined {
            Ok((system, rss)) => {
                self.system = Some(system);
                for (id, bytes) in rss {
                    if let Some(tree) = self.trees.get_mut(&id) {
                        tree.observe(bytes);
                    }
                }
            }
            // The `System` is lost with the panicked task; a new one is made next time.
            Err(error) => tracing::error!(%error, "memory sample failed"),
        }
        if !self.trees.is_empty() {
            self.next_sample = Some(Instant::now() + self.interval);
        }
    }
}

impl Tree {
    fn observe(&mut self, bytes: u64) {
        let peak = self.peak.map_or(bytes, |p| p.max(bytes));
        self.peak = Some(peak);
        if let Some(limit) = self.limit
            && peak > limit
            && let Some(tx) = self.exceeded.take()
        {
            tracing::info!(
                pid = self.pid.as_u32(),
                peak,
                limit,
                "process tree exceeded its memory limit"
            );
            let _ = tx.send(MemoryExceeded { peak, limit });
        }
    }
}

/// Refreshes every process (memory only) and sums RSS over each tree; trees whose root
/// no longer exists are left out. Blocking.
fn measure(system: &mut System, roots: &[(TreeId, Pid)]) -> Vec<(TreeId, u64)> {
    system.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_memory().without_tasks(),
    );
    let processes = system.processes();
    let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for (pid, process) in processes {
        // Threads share their process's memory; counting them would double it.
        if process.thread_kind().is_some() {
            continue;
        }
        if let Some(parent) = process.parent() {
            children.entry(parent).or_default().push(*pid);
        }
    }
    let mut out = Vec::with_capacity(roots.len());
    for &(id, root) in roots {
        if !processes.contains_key(&root) {
            continue;
        }
        let mut total = 0u64;
        let mut seen = HashSet::new();
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            if !seen.insert(pid) {
                continue;
            }
            if let Some(process) = processes.get(&pid) {
                total = total.saturating_add(process.memory());
            }
            if let Some(kids) = children.get(&pid) {
                stack.extend(kids.iter().copied());
            }
        }
        out.push((id, total));
    }
    out
}

/// Awaits the in-flight sample, or never resolves if there is none.
async fn join_opt(sampling: &mut Option<JoinHandle<Sample>>) -> Result<Sample, JoinError> {
    match sampling {
        Some(handle) => handle.await,
        None => pending().await,
    }
}

/// Sleeps until `at`, or forever if `None`.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn reports_a_tree_over_its_limit_and_its_peak() {
        let cancel = CancellationToken::new();
        let (monitor, task) = spawn(Duration::from_millis(10), cancel.clone());
        // The test process itself is a tree with far more than 1 byte resident.
        let watch = monitor
            .register(std::process::id(), Some(1))
            .await
            .expect("monitor is running");
        let exceeded = tokio::time::timeout(DEADLINE, watch.exceeded)
            .await
            .expect("a sample within 10 s")
            .expect("the monitor notifies before closing");
        assert_eq!(exceeded.limit, 1);
        assert!(exceeded.peak > 1);
        let peak = monitor
            .unregister(watch.id)
            .await
            .expect("monitor is running");
        assert!(peak.is_some_and(|p| p >= exceeded.peak));
        cancel.cancel();
        task.await.expect("monitor task ends cleanly");
    }

    #[tokio::test]
    async fn samples_only_while_something_is_registered() {
        let (_tx, rx) = mpsc::channel(1);
        let mut actor = MonitorActor {
            rx,
            cancel: CancellationToken::new(),
            interval: Duration::from_secs(1),
            trees: HashMap::new(),
            next_id: 0,
            system: None,
            sampling: None,
            next_sample: None,
        };
        let (exceeded, _exceeded_rx) = oneshot::channel();
        let (reply, reply_rx) = oneshot::channel();
        actor.handle(MonitorMsg::Register {
            pid: std::process::id(),
            limit: None,
            exceeded,
            reply,
        });
        let id = reply_rx.await.expect("replied");
        assert!(
            actor.next_sample.is_some(),
            "a registered tree schedules a sample"
        );
        let (reply, reply_rx) = oneshot::channel();
        actor.handle(MonitorMsg::Unregister { id, reply });
        assert_eq!(reply_rx.await.expect("replied"), None, "never sampled");
        assert!(actor.next_sample.is_none(), "idle: no sample scheduled");
        assert!(actor.system.is_none(), "idle: /proc never read");
    }

    #[tokio::test]
    async fn handles_fail_after_shutdown() {
        let cancel = CancellationToken::new();
        let (monitor, task) = spawn(Duration::from_millis(10), cancel.clone());
        cancel.cancel();
        task.await.expect("monitor task ends cleanly");
        assert!(matches!(
            monitor.register(1, None).await,
            Err(MonitorError::Stopped)
        ));
    }
}
