//! The durable test history: the facts ([`TestRun`]) the scheduler reports, written to
//! the state store as numbered records (`tests/<seq>`), and read back by the next
//! leader, which folds them into its core before any plan resumes.
//!
//! Bounded: at most [`history::MAX_RECORDS`] records and [`MAX_BYTES`] are kept, and
//! none older than [`history::MAX_AGE`] before the newest; each write that goes beyond
//! deletes the oldest. A record is written in the same commits as the plan events around
//! it, so a worker's result is acknowledged only once the facts drawn from it are durable.
//!
//! Encoding: the registry's framing ([`codec::encode_test_run`]). A record that does not
//! decode is skipped with a warning (the history is advisory: losing a fact costs a
//! score, never a plan).

use std::collections::VecDeque;
use std::sync::Arc;

use gatehouse_common::reports::history::{self, MAX_RECORDS, TestRun};

use super::codec;
use super::journal::Journal;
use crate::store::StoreOp;

/// Most bytes of history records kept in the state store.
pub const MAX_BYTES: usize = 64 << 20;

/// The records written, and the next number.
#[derive(Debug, Default)]
pub(crate) struct HistoryLog {
    /// Kept records, oldest first: (seq, fact time, stored bytes).
    kept: VecDeque<(u64, u64, usize)>,
    /// Their bytes.
    bytes: usize,
    /// The next record's number.
    next: u64,
}

impl HistoryLog {
    /// The log of records read back from the store (ascending), and their facts.
    pub(crate) fn restore(stored: Vec<(u64, Vec<u8>)>) -> (Self, Vec<TestRun>) {
        let mut log = HistoryLog::default();
        let mut runs = Vec::with_capacity(stored.len());
        for (seq, bytes) in stored {
            log.next = log.next.max(seq + 1);
            log.bytes += bytes.len();
            match codec::decode_test_run(&bytes) {
                Ok(run) => {
                    log.kept.push_back((seq, run.unix_ms, bytes.len()));
                    runs.push(run);
                }
                Err(reason) => {
                    tracing::warn!(seq, %reason, "skipping a test-history record that does not decode");
                    log.kept.push_back((seq, 0, bytes.len()));
                }
            }
        }
        (log, runs)
    }

    /// Queues `run` for the store, and the deletes that keep the history bounded.
    pub(crate) fn record(&mut self, run: &Arc<TestRun>, journal: &mut Journal) {
        let mut record = codec::encode_test_run(run);
        if record.len() > journal.max_value_bytes() {
            // Keep the failures; the watched passes are what grows.
            let mut smaller = TestRun::clone(run);
            smaller.passed.clear();
            record = codec::encode_test_run(&smaller);
            if record.len() > journal.max_value_bytes() {
                tracing::warn!(plan_id = %run.plan, gate = %run.gate, bytes = record.len(),
                    "a test-history record is too large for the state store; not kept");
                return;
            }
        }
        let newest = self
            .kept
            .iter()
            .map(|(_, at, _)| *at)
            .max()
            .unwrap_or(0)
            .max(run.unix_ms);
        let horizon = newest.saturating_sub(history::MAX_AGE.as_millis() as u64);
        if run.unix_ms < horizon {
            // Older than what is kept (a clock stepped back): it would go at once.
            return;
        }
        let seq = self.next;
        self.next += 1;
        self.bytes += record.len();
        self.kept.push_back((seq, run.unix_ms, record.len()));
        journal.push_op(StoreOp::PutTests { seq, record }, None);
        // The new record is the newest and within the byte budget alone: it is never
        // deleted in the batch that puts it.
        while let Some(&(old, at, bytes)) = self.kept.front() {
            let over = self.kept.len() > MAX_RECORDS || self.bytes > MAX_BYTES;
            if old == seq || (!over && at >= horizon) {
                break;
            }
            self.kept.pop_front();
            self.bytes -= bytes;
            journal.push_op(StoreOp::DeleteTests { seq: old }, None);
        }
    }

    /// Records kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_skipped() {
        let run = TestRun {
            plan: "p-1".into(),
            gate: "test".into(),
            unix_ms: 5,
            passed: vec![gatehouse_common::reports::TestKey([7; 16])],
            ..TestRun::default()
        };
        let json = {
            let mut v = vec![1];
            v.extend(serde_json::to_vec(&run).expect("json"));
            v
        };
        let stored = vec![
            (2, json),
            (3, codec::encode_test_run(&run)),
            (4, vec![9, 1]),
            (7, Vec::new()),
        ];
        let (log, runs) = HistoryLog::restore(stored);
        assert_eq!(runs, vec![run.clone(), run]);
        assert_eq!(log.next, 8);
        assert_eq!(
            log.len(),
            4,
            "damaged records are still counted, to be deleted in turn"
        );
    }
}
