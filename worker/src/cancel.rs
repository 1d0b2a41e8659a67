//! Cancellation of one running attempt, carrying the grace period between SIGTERM and
//! SIGKILL.
//!
//! [`cancel_channel`] returns the two ends of a `watch` channel holding the shortest grace
//! requested so far (`None` until the first request). The value only ever decreases, so
//! a second request with a shorter grace (for example zero, "kill now") is never lost to
//! an earlier, longer one, however the two race. Dropping the [`CancelHandle`] without
//! cancelling means "never cancelled".

use std::time::Duration;

use tokio::sync::watch;

/// The sending end: requests cancellation of one attempt.
#[derive(Debug)]
pub struct CancelHandle {
    /// Shortest grace requested so far; `None` until the first request.
    tx: watch::Sender<Option<Duration>>,
}

/// The receiving end, consumed by [`RunningGate::wait`](crate::RunningGate::wait).
#[derive(Debug)]
pub struct CancelSignal {
    /// Mirrors [`CancelHandle::tx`].
    rx: watch::Receiver<Option<Duration>>,
}

/// Creates a connected cancellation pair.
pub fn cancel_channel() -> (CancelHandle, CancelSignal) {
    let (tx, rx) = watch::channel(None);
    (CancelHandle { tx }, CancelSignal { rx })
}

impl CancelHandle {
    /// Requests cancellation: SIGTERM to the process group now, SIGKILL after `grace`
    /// (or earlier, if an earlier request asked for a shorter grace).
    pub fn cancel(&self, grace: Duration) {
        self.tx.send_modify(|current| {
            *current = Some(current.map_or(grace, |old| old.min(grace)));
        });
    }

    /// Whether the attempt's [`CancelSignal`] is gone (the attempt ended).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl CancelSignal {
    /// A signal that never fires, for callers that never cancel.
    pub fn never() -> Self {
        cancel_channel().1
    }

    /// Waits for a cancellation request not yet seen and returns its grace, or `None`
    /// once the handle is dropped (no request can come any more).
    pub(crate) async fn requested(&mut self) -> Option<Duration> {
        loop {
            if self.rx.changed().await.is_err() {
                return None;
            }
            if let Some(grace) = *self.rx.borrow_and_update() {
                return Some(grace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_shortest_grace() {
        let (handle, mut signal) = cancel_channel();
        handle.cancel(Duration::from_secs(0));
        handle.cancel(Duration::from_secs(60));
        assert_eq!(signal.requested().await, Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn dropped_handle_means_never() {
        let (handle, mut signal) = cancel_channel();
        drop(handle);
        assert_eq!(signal.requested().await, None);
        assert_eq!(CancelSignal::never().requested().await, None);
    }
}
