//! Reconnect delays: exponential (doubling from `initial`, capped at `max`) with jitter,
//! reset once a session is established.
//!
//! Jitter draws the delay uniformly from `[d/2, d]`, so workers that lost the same
//! coordinator at the same moment spread their reconnects instead of arriving together.
//! The random bits come from std's per-instance randomly keyed `RandomState`, which is
//! plenty for jitter and avoids a dependency. Pure apart from that; owned by one task.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// The delay sequence of one worker.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// The first delay after a reset.
    initial: Duration,
    /// The cap of the undithered delay.
    max: Duration,
    /// The undithered delay the next call jitters.
    next: Duration,
    /// Counts draws, mixed into each random value.
    draws: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
            draws: 0,
        }
    }

    /// The delay to wait now; doubles the following one, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        self.draws = self.draws.wrapping_add(1);
        jittered(base, RandomState::new().hash_one(self.draws))
    }

    /// Starts again from `initial` (after a session was established).
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
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
    fn delays_double_up_to_the_cap_within_jitter_bounds() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(initial, max);
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
}
