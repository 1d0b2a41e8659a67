//! [`Unacked`]: the results of finished attempts that no coordinator has acknowledged
//! yet (`ResultAck`), kept so that a result survives a coordinator change.
//!
//! A result enters when its attempt finishes (or is answered without running) and
//! leaves when an `Ack` names it. Until then it is offered in the `Hello.finished` of
//! every new session (see [`Unacked::split_for_hello`]), so a coordinator that went away
//! before recording it does not lose it.
//!
//! Bounds: at most [`MAX_UNACKED`] results and [`MAX_UNACKED_BYTES`] of (approximate)
//! encoded size. Past either, the oldest results are dropped with a warning; a dropped
//! result is one the coordinator never hears of, so it re-runs that gate once it declares
//! the attempt lost. Only a coordinator that never acknowledges makes this happen: one
//! that does acknowledges within a round trip of receiving each result.
//!
//! Plain data, owned by [`Attempts`](crate::remote::attempts::Attempts); no I/O, no
//! clock.

use std::collections::{BTreeMap, HashMap};

use gatehouse_common::exec::{AttemptRef, GateResult};

/// Most results kept unacknowledged.
pub(crate) const MAX_UNACKED: usize = 10_000;
/// Most bytes (approximate encoded size) of results kept unacknowledged: a few hundred
/// results with full 1 MiB output tails, or thousands of typical ones.
pub(crate) const MAX_UNACKED_BYTES: usize = 256 << 20;
/// Most bytes of results carried in one `Hello`: well under the 4 MiB a gRPC server
/// accepts per message by default, so a `Hello` is never refused for its size. Results
/// that do not fit follow as `AttemptFinished` frames once the session is welcomed.
pub(crate) const HELLO_FINISHED_BYTES: usize = 2 << 20;

/// Bytes an encoded result takes beyond its output tails and texts (attempt fields,
/// tags, durations): a generous estimate.
const ENTRY_OVERHEAD: usize = 128;

/// Unacknowledged results, oldest first.
#[derive(Debug)]
pub(crate) struct Unacked {
    /// Results by insertion number, so the oldest is first.
    by_seq: BTreeMap<u64, (AttemptRef, GateResult)>,
    /// Insertion number of each attempt's result.
    seq_of: HashMap<AttemptRef, u64>,
    /// The next insertion number.
    next_seq: u64,
    /// Sum of [`approx_size`] over the kept results.
    bytes: usize,
    /// Bound on the number of results.
    max_entries: usize,
    /// Bound on `bytes`.
    max_bytes: usize,
}

/// The results a `Hello` carries and the ones left for after the `Welcome`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct HelloSplit {
    /// Carried in `Hello.finished`, oldest first.
    pub(crate) in_hello: Vec<(AttemptRef, GateResult)>,
    /// Sent as `AttemptFinished` frames once welcomed, oldest first.
    pub(crate) after_welcome: Vec<AttemptRef>,
}

impl Default for Unacked {
    fn default() -> Self {
        Self::new(MAX_UNACKED, MAX_UNACKED_BYTES)
    }
}

impl Unacked {
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            by_seq: BTreeMap::new(),
            seq_of: HashMap::new(),
            next_seq: 0,
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// The kept result of `attempt`.
    pub(crate) fn get(&self, attempt: &AttemptRef) -> Option<&GateResult> {
        let seq = self.seq_of.get(attempt)?;
        self.by_seq.get(seq).map(|(_, result)| result)
    }

    /// Keeps `attempt`'s result (replacing an earlier one in place, which the session
    /// never produces); drops the oldest results past the bounds and returns them.
    pub(crate) fn insert(&mut self, attempt: AttemptRef, result: GateResult) -> Vec<AttemptRef> {
        let size = approx_size(&attempt, &result);
        if let Some(seq) = self.seq_of.get(&attempt) {
            if let Some(entry) = self.by_seq.get_mut(seq) {
                self.bytes = self.bytes - approx_size(&entry.0, &entry.1) + size;
                entry.1 = result;
            }
        } else {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.seq_of.insert(attempt.clone(), seq);
            self.by_seq.insert(seq, (attempt, result));
            self.bytes += size;
        }
        let mut dropped = Vec::new();
        // The newest result is kept even when it alone exceeds the byte bound.
        while self.by_seq.len() > 1
            && (self.by_seq.len() > self.max_entries || self.bytes > self.max_bytes)
        {
            let Some((_, (old, result))) = self.by_seq.pop_first() else {
                break;
            };
            self.seq_of.remove(&old);
            self.bytes -= approx_size(&old, &result);
            dropped.push(old);
        }
        if !dropped.is_empty() {
            tracing::warn!(dropped = dropped.len(), kept = self.by_seq.len(),
                first = ?dropped[0], "too many unacknowledged results; dropped the oldest \
                (the coordinator re-runs their gates)");
        }
        dropped
    }

    /// The attempts whose results are kept, oldest first.
    pub(crate) fn attempts(&self) -> impl Iterator<Item = &AttemptRef> {
        self.by_seq.values().map(|(attempt, _)| attempt)
    }

    /// Forgets `attempt`'s result; whether one was kept.
    pub(crate) fn ack(&mut self, attempt: &AttemptRef) -> bool {
        let Some(seq) = self.seq_of.remove(attempt) else {
            return false;
        };
        if let Some((attempt, result)) = self.by_seq.remove(&seq) {
            self.bytes -= approx_size(&attempt, &result);
        }
        true
    }

    /// Every kept result, oldest first, split into those a `Hello` carries (up to
    /// `budget` bytes, taken in order, skipping any that would overflow it) and the rest.
    pub(crate) fn split_for_hello(&self, budget: usize) -> HelloSplit {
        let mut split = HelloSplit::default();
        let mut used = 0usize;
        for (attempt, result) in self.by_seq.values() {
            let size = approx_size(attempt, result);
            if used + size <= budget {
                used += size;
                split.in_hello.push((attempt.clone(), result.clone()));
            } else {
                split.after_welcome.push(attempt.clone());
            }
        }
        split
    }
}

/// An upper estimate of a result's encoded size.
fn approx_size(attempt: &AttemptRef, result: &GateResult) -> usize {
    let status_text = match &result.status {
        gatehouse_common::exec::ExitStatus::SpawnFailed(reason) => reason.len(),
        _ => 0,
    };
    ENTRY_OVERHEAD
        + attempt.plan.as_str().len()
        + result.stdout.bytes.len()
        + result.stderr.bytes.len()
        + status_text
        + result.tests.as_ref().map_or(0, |t| t.approx_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gatehouse_common::exec::{ExitStatus, OutputTail};
    use gatehouse_common::ids::{GateIdx, PlanId};

    use super::*;

    fn attempt(gate: u32) -> AttemptRef {
        AttemptRef {
            plan: PlanId::new("p1"),
            gate: GateIdx(gate),
            attempt: 1,
        }
    }

    fn result(stdout_bytes: usize) -> GateResult {
        GateResult {
            status: ExitStatus::Exited(0),
            duration: Duration::from_millis(5),
            peak_memory: None,
            stdout: OutputTail {
                bytes: vec![b'x'; stdout_bytes],
                dropped: 0,
            },
            stderr: OutputTail::default(),
            tests: None,
        }
    }

    fn size(stdout_bytes: usize) -> usize {
        approx_size(&attempt(0), &result(stdout_bytes))
    }

    #[test]
    fn results_stay_until_acknowledged() {
        let mut u = Unacked::default();
        assert!(u.insert(attempt(0), result(1)).is_empty());
        assert!(u.insert(attempt(1), result(2)).is_empty());
        assert_eq!(u.len(), 2);
        assert_eq!(u.get(&attempt(1)), Some(&result(2)));
        assert!(u.ack(&attempt(0)));
        assert!(!u.ack(&attempt(0)), "a second ack finds nothing");
        assert!(
            !u.ack(&attempt(7)),
            "an ack for an unknown attempt is harmless"
        );
        assert_eq!(u.get(&attempt(0)), None);
        assert_eq!(u.len(), 1);
        assert!(u.ack(&attempt(1)));
        assert!(u.is_empty());
        assert_eq!(u.bytes, 0);
    }

    #[test]
    fn the_oldest_results_are_dropped_past_the_entry_bound() {
        let mut u = Unacked::new(3, usize::MAX);
        for gate in 0..3 {
            assert!(u.insert(attempt(gate), result(0)).is_empty());
        }
        assert_eq!(u.insert(attempt(3), result(0)), vec![attempt(0)]);
        assert_eq!(u.len(), 3);
        assert_eq!(u.get(&attempt(0)), None);
        let order: Vec<_> = u.split_for_hello(usize::MAX).in_hello;
        let gates: Vec<u32> = order.iter().map(|(a, _)| a.gate.0).collect();
        assert_eq!(gates, [1, 2, 3], "oldest first");
    }

    #[test]
    fn the_oldest_results_are_dropped_past_the_byte_bound_but_the_newest_stays() {
        let mut u = Unacked::new(100, 2 * size(1000));
        assert!(u.insert(attempt(0), result(1000)).is_empty());
        assert!(u.insert(attempt(1), result(1000)).is_empty());
        assert_eq!(u.insert(attempt(2), result(10)), vec![attempt(0)]);
        assert_eq!(
            u.insert(attempt(3), result(10_000)),
            vec![attempt(1), attempt(2)]
        );
        assert_eq!(u.len(), 1, "a result larger than the bound is still kept");
        assert!(u.get(&attempt(3)).is_some());
    }

    #[test]
    fn a_second_result_for_an_attempt_replaces_the_first_in_place() {
        let mut u = Unacked::default();
        u.insert(attempt(0), result(1));
        u.insert(attempt(1), result(1));
        u.insert(attempt(0), result(5));
        assert_eq!(u.len(), 2);
        assert_eq!(u.get(&attempt(0)), Some(&result(5)));
        assert_eq!(u.bytes, size(5) + size(1));
        let first = &u.split_for_hello(usize::MAX).in_hello[0];
        assert_eq!(first.0, attempt(0), "keeps its place");
    }

    #[test]
    fn hello_carries_what_fits_and_the_rest_follows_the_welcome() {
        let mut u = Unacked::default();
        u.insert(attempt(0), result(100));
        u.insert(attempt(1), result(5000));
        u.insert(attempt(2), result(100));
        let split = u.split_for_hello(2 * size(100));
        let carried: Vec<u32> = split.in_hello.iter().map(|(a, _)| a.gate.0).collect();
        assert_eq!(carried, [0, 2]);
        assert_eq!(split.after_welcome, vec![attempt(1)]);
        assert_eq!(split.in_hello[0].1, result(100));
        let all = u.split_for_hello(usize::MAX);
        assert_eq!(all.in_hello.len(), 3);
        assert!(all.after_welcome.is_empty());
        assert_eq!(Unacked::default().split_for_hello(0), HelloSplit::default());
    }
}
