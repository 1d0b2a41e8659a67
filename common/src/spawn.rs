//! The one way Gatehouse spawns tasks: every task carries the tracing span of the code
//! that spawned it (plus a `task` field naming it), so its logs can be attributed.
//! Callers own the returned [`tokio::task::JoinHandle`] (or spawn into a `JoinSet`)
//! and await it; nothing is fire-and-forget.
//!
//! Blocking work goes through [`spawn_blocking_named`] or [`spawn_blocking_in`], which
//! enter the same kind of span inside the closure on the blocking pool.
//!
//! `clippy.toml` at the repository root disallows `tokio::spawn`, `tokio::task::spawn`,
//! `tokio::task::spawn_blocking`, `Handle::spawn{,_blocking}` and
//! `JoinSet::spawn_blocking` everywhere else; the helpers here are the only callers.

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

/// Runs the blocking `f` on tokio's blocking pool inside a span named after `task`
/// (entered in the closure, so the caller's span is its parent).
pub fn spawn_blocking_named<F, R>(task: &'static str, f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::info_span!("task", task);
    #[allow(clippy::disallowed_methods)]
    tokio::task::spawn_blocking(move || span.in_scope(f))
}

/// Runs the blocking `f` on tokio's blocking pool, owned by `set`, inside a span named
/// after `task`.
pub fn spawn_blocking_in<F, T>(
    set: &mut tokio::task::JoinSet<T>,
    task: &'static str,
    f: F,
) -> tokio::task::AbortHandle
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::info_span!("task", task);
    #[allow(clippy::disallowed_methods)]
    set.spawn_blocking(move || span.in_scope(f))
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::Subscriber;
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    use super::*;

    /// Records, for every event, the names of the spans it is in (innermost first).
    #[derive(Clone, Default)]
    struct Scopes(Arc<Mutex<Vec<Vec<String>>>>);

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Scopes {
        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            let names = ctx
                .event_scope(event)
                .map(|scope| scope.map(|s| s.name().to_string()).collect())
                .unwrap_or_default();
            self.0.lock().expect("not poisoned").push(names);
        }
    }

    #[tokio::test]
    async fn blocking_work_runs_in_the_callers_span() {
        let scopes = Scopes::default();
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(scopes.clone()));
        // The blocking pool's threads get the same subscriber inside each closure.
        let _guard = tracing::dispatcher::set_default(&dispatch);
        let outer = tracing::info_span!("caller");
        let (one, mut set) = {
            let _entered = outer.enter();
            let d = dispatch.clone();
            let one = spawn_blocking_named("alone", move || {
                tracing::dispatcher::with_default(&d, || tracing::info!("alone"));
                1
            });
            let mut set = tokio::task::JoinSet::new();
            let d = dispatch.clone();
            spawn_blocking_in(&mut set, "in-set", move || {
                tracing::dispatcher::with_default(&d, || tracing::info!("in set"));
                2
            });
            (one, set)
        };
        assert_eq!(one.await.expect("joins"), 1);
        assert_eq!(set.join_next().await.expect("one task").expect("joins"), 2);
        let seen = scopes.0.lock().expect("not poisoned").clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        for names in seen {
            assert_eq!(
                names,
                ["task", "caller"],
                "the task span, under the caller's"
            );
        }
    }
}
