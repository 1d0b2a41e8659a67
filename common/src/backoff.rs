//! The one retry delay sequence of every Gatehouse loop that waits and tries again
//! (the worker's reconnects, the coordinator's etcd connect and election campaign, the
//! journal's state-store commits, the CLI's leader search and watch resume):
//! exponential, doubling from `initial` up to `max`, optionally jittered, and reset
//! once the thing retried works again. Fixed pauses (the lease keep-alive's retries,
//! which its TTL bounds) are not backoffs and do not use it.
//!
//! Jitter draws each delay uniformly from `[d/2, d]`, so processes that lost the same
//! peer at the same moment spread their retries instead of arriving together. The
//! random bits come from std's per-instance randomly keyed `RandomState`, which is
//! plenty for jitter and avoids a dependency. A [`Backoff`] is plain data owned by the
//! one task that retries; [`Backoff::wait`] is its only `await`.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The delay sequence of one retrying loop.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The first delay after a reset.
    initial: Duration,
    /// The cap of the undithered delay.
    max: Duration,
    /// The undithered delay the next call returns (or jitters).
    next: Duration,
    /// Whether delays are drawn from `[d/2, d]` rather than exactly `d`.
    jitter: bool,
    /// Counts draws, mixed into each random value.
    draws: u64,
}

impl Backoff {
    /// Delays `initial`, `2·initial`, … up to `max`, without jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            next: initial,
            jitter: false,
            draws: 0,
        }
    }

    /// The same sequence, each delay drawn uniformly from `[d/2, d]`.
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The delay to wait now; doubles the following one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        if !self.jitter {
            return base;
        }
        self.draws = self.draws.wrapping_add(1);
        jittered(base, RandomState::new().hash_one(self.draws))
    }

    /// Starts again from `initial` (the retried operation worked).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps for [`Backoff::next_delay`]; `false` if `cancel` fired first (the caller
    /// stops retrying then).
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// `d/2 + (random mod d/2)`: a delay in `[d/2, d]`.
fn jittered(d: Duration, random: u64) -> Duration {
    let half = d / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    if span == 0 {
        return d;
    }
    half + Duration::from_nanos(random % (span + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jittered_delays_stay_within_half_and_whole_of_the_base() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(initial, max).with_jitter();
        let mut base = initial;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} not in [{:?}, {base:?}]",
                base / 2
            );
            base = (base * 2).min(max);
        }
        assert_eq!(base, max);
        b.reset();
        assert!(b.next_delay() <= initial);
    }

    #[test]
    fn jitter_covers_its_range() {
        let d = Duration::from_millis(10);
        assert_eq!(jittered(d, 0), Duration::from_millis(5));
        assert_eq!(jittered(d, 5_000_000), d);
        assert_eq!(jittered(Duration::ZERO, 7), Duration::ZERO);
        assert_eq!(
            jittered(Duration::from_nanos(1), 7),
            Duration::from_nanos(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_delay_or_stops_on_cancel() {
        let cancel = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let start = tokio::time::Instant::now();
        assert!(b.wait(&cancel).await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        cancel.cancel();
        assert!(!b.wait(&cancel).await, "a cancelled wait says stop");
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "and returns at once"
        );
    }
}
