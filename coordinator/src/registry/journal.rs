//! Group commit of the registry's writes to the [`StateStore`].
//!
//! State it owns: the writes not yet committed, in order, and at most one commit in
//! flight (a child task). Writes that arrive while a commit is in flight, or within the
//! *linger* ([`DEFAULT_LINGER`]) after the first queued one, go out together in one
//! commit, so a stream of gate transitions costs a few store transactions rather than
//! one round trip each. Consecutive events of one plan are
//! coalesced into one log chunk (at most [`MAX_CHUNK_BYTES`] encoded); a commit is
//! split into transactions that respect the store's limits (etcd: 128 operations and
//! about 1.4 MB per transaction), applied in order.
//!
//! Every write may carry [`Waiter`]s that fire once it is durable: the `SubmitPlan`
//! answer, and the acknowledgement of a worker's result. Each commit also reports, per
//! plan, the newest event now durable (the registry serves watchers only that far). A store that is unavailable is
//! retried with backoff ([`Backoff`], 50 ms doubling up to 2 s, afresh for each
//! transaction; writes keep queueing and nothing is acknowledged meanwhile); a fenced
//! or failing store ends the commit with an error, and the registry stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::backoff::Backoff;
use gatehouse_common::exec::AttemptRef;
use gatehouse_common::ids::{PlanId, SessionKey};
use gatehouse_common::spawn::spawn_named;
use tokio::task::JoinHandle;

use super::codec;
use crate::core::PlanEvent;
use crate::store::{StateStore, StoreError, StoreOp};

/// How long a write may wait for others to join its commit (the *linger*): at most this
/// much latency is added to acknowledgements and watchers, never to scheduling, which
/// does not wait for durability.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);
/// Queued operations that start a commit at once, linger or not.
const FLUSH_AT_OPS: usize = 256;
/// Largest encoded log chunk: several fit in one etcd transaction.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// First delay before retrying an unavailable store; doubles up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_millis(50);
/// Longest delay between retries of an unavailable store.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Receives acknowledgements of durable results (sent on to the worker's session).
pub trait AckSink: Send + Sync + 'static {
    /// These attempts' results of `worker` are durable.
    fn ack(&self, worker: &SessionKey, attempts: Vec<AttemptRef>);
}

/// What to do once a write is durable.
pub enum Waiter {
    /// Run this (answer a caller).
    Then(Box<dyn FnOnce() + Send>),
    /// Acknowledge a worker's results.
    Ack(SessionKey, Vec<AttemptRef>),
}

enum Pending {
    Op(StoreOp),
    Events {
        plan: PlanId,
        first_seq: u64,
        events: Vec<PlanEvent>,
    },
}

/// Counters of what the journal did (for logs, tests and benchmarks).
#[derive(Clone, Copy, Debug, Default)]
pub struct JournalStats {
    /// Store transactions applied.
    pub transactions: u64,
    /// Operations in them.
    pub operations: u64,
    /// Bytes written (keys excluded).
    pub bytes: u64,
}

/// Why the journal cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("the commit task failed: {0}")]
    Task(String),
}

type Commit = JoinHandle<Result<JournalStats, StoreError>>;

/// The group-commit queue. Not an actor: the registry drives it from its loop.
pub struct Journal {
    store: Arc<dyn StateStore>,
    /// The leadership term written into every log chunk.
    term: i64,
    /// How long the first queued write waits for company before a commit starts.
    linger: Duration,
    /// When the oldest write still queued was queued.
    pending_since: Option<tokio::time::Instant>,
    /// Writes queued (events count one each).
    pending_count: usize,
    acks: Option<Arc<dyn AckSink>>,
    pending: Vec<Pending>,
    /// Plan -> index in `pending` of its open event chunk.
    open_chunk: HashMap<PlanId, usize>,
    waiters: Vec<Waiter>,
    /// Per plan, the newest event sequence number queued.
    marks: HashMap<PlanId, u64>,
    in_flight: Option<(Commit, Vec<Waiter>, HashMap<PlanId, u64>)>,
    pub stats: JournalStats,
}

impl Journal {
    pub fn new(
        store: Arc<dyn StateStore>,
        acks: Option<Arc<dyn AckSink>>,
        term: i64,
        linger: Duration,
    ) -> Self {
        Self {
            store,
            term,
            linger,
            pending_since: None,
            pending_count: 0,
            acks,
            pending: Vec::new(),
            open_chunk: HashMap::new(),
            waiters: Vec::new(),
            marks: HashMap::new(),
            in_flight: None,
            stats: JournalStats::default(),
        }
    }

    /// The largest value one write may have (a plan record must fit; keys are short).
    pub fn max_value_bytes(&self) -> usize {
        self.store.limits().max_bytes.saturating_sub(1024)
    }

    /// Queues an operation.
    pub fn push_op(&mut self, op: StoreOp, waiter: Option<Waiter>) {
        if let StoreOp::DeletePlan { plan } | StoreOp::PutPlan { plan, .. } = &op {
            self.open_chunk.remove(plan);
        }
        self.pending.push(Pending::Op(op));
        self.waiters.extend(waiter);
        self.queued();
    }

    /// Queues a waiter that fires once everything queued before it is durable (at
    /// once if nothing is queued or in flight).
    pub fn push_waiter(&mut self, waiter: Waiter) {
        if self.in_flight.is_none() && self.pending.is_empty() {
            self.fire(vec![waiter]);
            return;
        }
        self.waiters.push(waiter);
        // A commit in flight may hold what it waits for: the flush after it (with or
        // without new writes) fires it.
        self.pending_since
            .get_or_insert_with(tokio::time::Instant::now);
    }

    fn queued(&mut self) {
        self.pending_count += 1;
        self.pending_since
            .get_or_insert_with(tokio::time::Instant::now);
    }

    /// When the queued writes should be committed (`None`: nothing queued, or a commit
    /// is in flight, whose end flushes).
    pub fn due(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        self.pending_since.map(|since| since + self.linger)
    }

    /// Starts a commit if the queued writes have lingered long enough or are many.
    pub fn flush_if_due(&mut self) {
        let due = self
            .due()
            .is_some_and(|at| at <= tokio::time::Instant::now());
        if due || self.pending_count >= FLUSH_AT_OPS {
            self.flush();
        }
    }

    /// Queues event `seq` of `plan`.
    pub fn push_event(
        &mut self,
        plan: &PlanId,
        seq: u64,
        event: PlanEvent,
        waiter: Option<Waiter>,
    ) {
        self.marks.insert(plan.clone(), seq);
        match self.open_chunk.get(plan).map(|&i| &mut self.pending[i]) {
            Some(Pending::Events { events, .. }) => events.push(event),
            _ => {
                self.open_chunk.insert(plan.clone(), self.pending.len());
                self.pending.push(Pending::Events {
                    plan: plan.clone(),
                    first_seq: seq,
                    events: vec![event],
                });
            }
        }
        self.waiters.extend(waiter);
        self.queued();
    }

    /// Starts a commit of everything queued if none is in flight.
    pub fn flush(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        if self.pending.is_empty() {
            // Nothing to write: waiters queued behind no write are durable already.
            self.pending_since = None;
            self.pending_count = 0;
            let waiters = std::mem::take(&mut self.waiters);
            self.fire(waiters);
            return;
        }
        self.open_chunk.clear();
        self.pending_since = None;
        self.pending_count = 0;
        let term = self.term;
        let ops: Vec<StoreOp> = std::mem::take(&mut self.pending)
            .into_iter()
            .flat_map(|p| into_ops(term, p))
            .collect();
        let txns = split(ops, &self.store.limits());
        let store = self.store.clone();
        let task = spawn_named("state-commit", commit(store, txns));
        self.in_flight = Some((
            task,
            std::mem::take(&mut self.waiters),
            std::mem::take(&mut self.marks),
        ));
    }

    /// Waits for the commit in flight (pending forever if there is none); returns, per
    /// plan, the newest event sequence number that is now durable.
    pub async fn committed(&mut self) -> Result<HashMap<PlanId, u64>, JournalError> {
        let Some((task, _, _)) = &mut self.in_flight else {
            return std::future::pending().await;
        };
        let outcome = task.await;
        let (_, waiters, marks) = self.in_flight.take().expect("a commit was in flight");
        let stats = outcome.map_err(|e| JournalError::Task(e.to_string()))??;
        self.stats.transactions += stats.transactions;
        self.stats.operations += stats.operations;
        self.stats.bytes += stats.bytes;
        self.fire(waiters);
        self.flush_if_due();
        Ok(marks)
    }

    /// Waits until everything queued so far is durable (or the store fails).
    pub async fn drain(&mut self) -> Result<(), JournalError> {
        self.flush();
        while !self.idle() {
            self.committed().await?;
        }
        Ok(())
    }

    /// Whether nothing is queued or in flight.
    pub fn idle(&self) -> bool {
        self.in_flight.is_none() && self.pending.is_empty()
    }

    fn fire(&self, waiters: Vec<Waiter>) {
        let mut acks: HashMap<SessionKey, Vec<AttemptRef>> = HashMap::new();
        for w in waiters {
            match w {
                Waiter::Then(f) => f(),
                Waiter::Ack(worker, attempts) => acks.entry(worker).or_default().extend(attempts),
            }
        }
        if let Some(sink) = &self.acks {
            for (worker, attempts) in acks {
                sink.ack(&worker, attempts);
            }
        }
    }
}

fn into_ops(term: i64, p: Pending) -> Vec<StoreOp> {
    match p {
        Pending::Op(op) => vec![op],
        Pending::Events {
            plan,
            first_seq,
            events,
        } => chunk(term, &plan, first_seq, &events),
    }
}

/// Encodes events into chunks of at most [`MAX_CHUNK_BYTES`] (a single event larger
/// than that is a chunk of its own).
fn chunk(term: i64, plan: &PlanId, first_seq: u64, events: &[PlanEvent]) -> Vec<StoreOp> {
    let bytes = codec::encode_events(term, events);
    if bytes.len() <= MAX_CHUNK_BYTES || events.len() == 1 {
        return vec![StoreOp::AppendEvents {
            plan: plan.clone(),
            first_seq,
            chunk: bytes,
        }];
    }
    let half = events.len() / 2;
    let mut ops = chunk(term, plan, first_seq, &events[..half]);
    ops.extend(chunk(term, plan, first_seq + half as u64, &events[half..]));
    ops
}

/// Packs ops, in order, into transactions within the store's limits (sized as the
/// store counts them).
fn split(ops: Vec<StoreOp>, limits: &crate::store::StoreLimits) -> Vec<Vec<StoreOp>> {
    let mut txns: Vec<Vec<StoreOp>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.size();
        if !current.is_empty() && !limits.admits(current.len() + 1, bytes + size) {
            txns.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(op);
    }
    if !current.is_empty() {
        txns.push(current);
    }
    txns
}

async fn commit(
    store: Arc<dyn StateStore>,
    txns: Vec<Vec<StoreOp>>,
) -> Result<JournalStats, StoreError> {
    let mut stats = JournalStats::default();
    for txn in txns {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        loop {
            match store.apply(&txn).await {
                Ok(()) => break,
                Err(StoreError::Unavailable(reason)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%reason, retry_in = ?delay, "state store unavailable; retrying the commit");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        stats.transactions += 1;
        stats.operations += txn.len() as u64;
        stats.bytes += crate::store::batch_size(&txn) as u64;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::{StoreLimits, StoredPlan};

    /// Counts applies; never fails.
    #[derive(Default)]
    struct CountingStore {
        applies: Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl StateStore for CountingStore {
        async fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
            self.applies.lock().expect("not poisoned").push(ops.len());
            Ok(())
        }
        async fn load(&self) -> Result<Vec<StoredPlan>, StoreError> {
            Ok(Vec::new())
        }
        async fn load_history(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
            Ok(Vec::new())
        }
        fn limits(&self) -> StoreLimits {
            StoreLimits {
                max_ops: 64,
                max_bytes: 1 << 20,
            }
        }
        fn kind(&self) -> &'static str {
            "counting"
        }
    }

    fn event(plan: &PlanId, gate: u32) -> PlanEvent {
        PlanEvent::Gate(crate::core::GateEvent::new(
            plan.clone(),
            gatehouse_common::ids::GateIdx(gate),
            crate::core::GateStatus::Running,
            1,
            None,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn writes_within_the_linger_share_one_commit_and_report_durable_marks() {
        let store = Arc::new(CountingStore::default());
        let mut j = Journal::new(store.clone(), None, 7, Duration::from_millis(5));
        let (a, b) = (PlanId::new("p-a"), PlanId::new("p-b"));
        j.push_op(
            StoreOp::PutPlan {
                plan: a.clone(),
                record: vec![1],
            },
            None,
        );
        j.flush_if_due();
        assert!(j.due().is_some(), "the first write lingers");
        for seq in 1..=3 {
            j.push_event(&a, seq, event(&a, seq as u32), None);
        }
        j.push_event(&b, 1, event(&b, 0), None);
        tokio::time::sleep(Duration::from_millis(5)).await;
        j.flush_if_due();
        let marks = j.committed().await.expect("commit");
        assert_eq!(marks, HashMap::from([(a.clone(), 3), (b.clone(), 1)]));
        // One transaction: the record and one chunk per plan.
        assert_eq!(*store.applies.lock().expect("not poisoned"), vec![3]);
        assert!(j.idle());
    }

    fn put(n: usize) -> StoreOp {
        StoreOp::PutPlan {
            plan: PlanId::new(format!("p-{n}")),
            record: vec![0; n],
        }
    }

    #[test]
    fn transactions_respect_the_op_and_byte_limits_in_order() {
        // Each op is its record plus a key of about 15 bytes.
        let limits = StoreLimits {
            max_ops: 3,
            max_bytes: 1000,
        };
        let ops = vec![put(10), put(11), put(12), put(13), put(960), put(14)];
        let txns = split(ops, &limits);
        let sizes: Vec<Vec<usize>> = txns
            .iter()
            .map(|t| {
                t.iter()
                    .map(|op| match op {
                        StoreOp::PutPlan { record, .. } => record.len(),
                        _ => 0,
                    })
                    .collect()
            })
            .collect();
        assert_eq!(sizes, vec![vec![10, 11, 12], vec![13], vec![960], vec![14]]);
    }

    /// Records what it acknowledges.
    #[derive(Default)]
    struct Acks(Mutex<Vec<(SessionKey, Vec<AttemptRef>)>>);

    impl AckSink for Acks {
        fn ack(&self, worker: &SessionKey, attempts: Vec<AttemptRef>) {
            let acked = (worker.clone(), attempts);
            self.0.lock().expect("not poisoned").push(acked);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_waits_for_the_commit_of_what_came_before_it_and_then_nothing_lingers() {
        let store = Arc::new(CountingStore::default());
        let acks = Arc::new(Acks::default());
        let sink: Arc<dyn AckSink> = acks.clone();
        let mut j = Journal::new(store, Some(sink), 1, Duration::from_millis(5));
        let worker = SessionKey::new(gatehouse_common::ids::WorkerId::new("w"), 1);
        let plan = PlanId::new("p");
        let attempt = AttemptRef {
            plan: plan.clone(),
            gate: gatehouse_common::ids::GateIdx(0),
            attempt: 1,
        };
        let ack = || Waiter::Ack(worker.clone(), vec![attempt.clone()]);
        let acked = || acks.0.lock().expect("not poisoned").len();
        // Nothing queued or in flight: durable already.
        j.push_waiter(ack());
        assert_eq!(acked(), 1);
        // The event that records it goes into a commit now in flight; the ack comes after.
        j.push_event(&plan, 1, event(&plan, 0), None);
        j.flush();
        j.push_waiter(ack());
        assert_eq!(acked(), 1, "not before the event is durable");
        j.committed().await.expect("commit");
        assert_eq!(acked(), 1, "its turn is the next flush");
        let due = j.due().expect("a flush is due for the waiter");
        tokio::time::sleep_until(due).await;
        j.flush_if_due();
        assert_eq!(acked(), 2);
        assert!(j.idle());
        assert_eq!(j.due(), None, "nothing left to flush");
    }
}
