//! The one way Gatehouse spawns tasks: every task carries the tracing span of the code
//! that spawned it (plus a `task` field naming it), so its logs can be attributed.
//! Callers own the returned [`tokio::task::JoinHandle`] (or spawn into a `JoinSet`)
//! and await it; nothing is fire-and-forget.

use std::future::Future;

use tracing::Instrument;

/// Spawns `fut` on the current runtime inside a span named after `task`.
pub fn spawn_named<F>(task: &'static str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let span = tracing::info_span!("task", task);
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(fut.instrument(span))
}

/// Spawns `fut` into `set` inside a span named after `task`.
pub fn spawn_in<F, T>(
    set: &mut tokio::task::JoinSet<T>,
    task: &'static str,
    fut: F,
) -> tokio::task::AbortHandle
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::info_span!("task", task);
    set.spawn(fut.instrument(span))
}

/// Spawns `fut` on `tracker` (whose owner waits for it at shutdown) inside a span named
/// after `task`. For per-connection and per-stream tasks of servers.
pub fn spawn_tracked<F>(
    tracker: &tokio_util::task::TaskTracker,
    task: &'static str,
    fut: F,
) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let span = tracing::info_span!("task", task);
    tracker.spawn(fut.instrument(span))
}
