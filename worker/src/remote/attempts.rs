//! [`Attempts`]: every attempt assigned to this worker, from its assignment until a
//! coordinator acknowledged its result, across sessions.
//!
//! State it owns: the [`Executor`] (which runs the attempts and tracks those not
//! finished), the results not acknowledged yet ([`Unacked`]), the attempts whose
//! `Started` came while no session was welcomed (announced after the next `Welcome` if
//! they still run), and the cache key of each running attempt whose passed result goes
//! to the shared cache.
//!
//! An attempt's life here: [`Attempts::assign`] starts it; its reports come out of
//! [`Attempts::recv`]; its result goes to [`Attempts::keep_result`] (written to the cache
//! first when it passed and has a key), and is kept until [`Attempts::ack`] names it.
//! An assignment that is not run is answered with a result kept the same way.
//!
//! Owned by the worker's task; `recv` is cancel-safe, so it can sit in a `select!`.
//! [`Attempts::finish`] kills what still runs and stops the executor.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_cache::ClusterCache;
use gatehouse_common::cache::{CacheEntry, CacheKey, unix_ms_now};
use gatehouse_common::exec::{AttemptRef, FromWorker, GateResult};
use gatehouse_common::ids::GateId;

use crate::remote::RemoteWorkerError;
use crate::remote::executor::Executor;
use crate::remote::frames::Prepared;
use crate::remote::unacked::{HelloSplit, Unacked};

/// The worker's attempts and their results (see the module docs).
pub(crate) struct Attempts {
    /// Runs the attempts; knows which are assigned and not finished.
    exec: Executor,
    /// Results not acknowledged yet.
    unacked: Unacked,
    /// Attempts whose `Started` came while no session was welcomed.
    started_offline: BTreeSet<AttemptRef>,
    /// Running attempts whose passed result goes to the cache: key and gate id.
    cache_keys: HashMap<AttemptRef, (CacheKey, GateId)>,
    /// Writes passed results to the shared cache.
    cache: Arc<ClusterCache>,
}

impl Attempts {
    /// None yet; results that pass are written through `cache`.
    pub(crate) fn new(exec: Executor, cache: Arc<ClusterCache>) -> Self {
        Self {
            exec,
            unacked: Unacked::default(),
            started_offline: BTreeSet::new(),
            cache_keys: HashMap::new(),
            cache,
        }
    }

    /// Attempts assigned and not finished.
    pub(crate) fn running(&self) -> impl Iterator<Item = &AttemptRef> {
        self.exec.running()
    }

    pub(crate) fn running_count(&self) -> usize {
        self.exec.running_count()
    }

    pub(crate) fn is_running(&self, attempt: &AttemptRef) -> bool {
        self.exec.is_running(attempt)
    }

    /// Sum of the memory requests of the running attempts.
    pub(crate) fn requested_memory(&self) -> u64 {
        self.exec.requested_memory()
    }

    /// Whether anything a coordinator must hear of is held: attempts running, or
    /// results not acknowledged.
    pub(crate) fn holds_any(&self) -> bool {
        self.running_count() > 0 || !self.unacked.is_empty()
    }

    /// Starts an attempt that is not running yet; with `cache_key`, its passed result
    /// goes to the cache.
    pub(crate) fn assign(
        &mut self,
        prepared: Prepared,
        cache_key: Option<CacheKey>,
    ) -> Result<(), RemoteWorkerError> {
        if let Some(key) = cache_key {
            let gate = prepared.assignment.spec.gate.clone();
            self.cache_keys
                .insert(prepared.assignment.attempt.clone(), (key, gate));
        }
        self.exec.assign(prepared)
    }

    /// Cancels one running attempt; it still reports `Finished`.
    pub(crate) fn cancel(
        &self,
        attempt: AttemptRef,
        grace: Duration,
    ) -> Result<(), RemoteWorkerError> {
        self.exec.cancel(attempt, grace)
    }

    /// Cancels every running attempt.
    pub(crate) fn cancel_all(&self, grace: Duration) -> Result<(), RemoteWorkerError> {
        self.exec.cancel_all(grace)
    }

    /// The next report about a running attempt; `None` if the executor ended.
    pub(crate) async fn recv(&mut self) -> Option<FromWorker> {
        self.exec.recv().await
    }

    /// Remembers an attempt that started while no session was welcomed.
    pub(crate) fn started_offline(&mut self, attempt: AttemptRef) {
        self.started_offline.insert(attempt);
    }

    /// The attempts that started while no session was welcomed and still run (each
    /// returned once).
    pub(crate) fn take_started_offline(&mut self) -> Vec<AttemptRef> {
        std::mem::take(&mut self.started_offline)
            .into_iter()
            .filter(|a| self.exec.is_running(a))
            .collect()
    }

    /// Keeps a finished attempt's result until a coordinator acknowledges it.
    /// A clean pass (no flaky test in its reports) that carries a cache key is also
    /// written to the shared cache (in the background; see `gatehouse_cache::client`);
    /// a flaky one is the coordinator's to judge and store.
    pub(crate) fn keep_result(&mut self, attempt: AttemptRef, result: GateResult) {
        if let Some((key, gate)) = self.cache_keys.remove(&attempt)
            && result.clean_pass()
        {
            let entry = CacheEntry {
                result: result.clone(),
                producer: gate,
                created_unix_ms: unix_ms_now(),
                flaky: None,
            };
            if let Err(e) = self.cache.put_detached(&key, &entry) {
                tracing::warn!(?attempt, error = %e, "cannot cache the result");
            }
        }
        self.started_offline.remove(&attempt);
        self.unacked.insert(attempt, result);
    }

    /// The kept result of `attempt`.
    pub(crate) fn result(&self, attempt: &AttemptRef) -> Option<&GateResult> {
        self.unacked.get(attempt)
    }

    /// Forgets the results a coordinator acknowledged.
    pub(crate) fn ack(&mut self, attempts: &[AttemptRef]) {
        let forgotten = attempts.iter().filter(|a| self.unacked.ack(a)).count();
        tracing::debug!(
            acked = attempts.len(),
            forgotten,
            kept = self.unacked.len(),
            "results acknowledged"
        );
    }

    /// How many results are kept.
    pub(crate) fn unacked_count(&self) -> usize {
        self.unacked.len()
    }

    /// The attempts whose results are kept, oldest first.
    pub(crate) fn unacked(&self) -> impl Iterator<Item = &AttemptRef> {
        self.unacked.attempts()
    }

    /// The kept results a `Hello` carries (within `budget` bytes) and the rest.
    pub(crate) fn split_for_hello(&self, budget: usize) -> HelloSplit {
        self.unacked.split_for_hello(budget)
    }

    /// Kills what still runs and stops the executor (see
    /// [`Executor::finish`]).
    pub(crate) async fn finish(self) -> Result<(), RemoteWorkerError> {
        // After an error attempts may still run; kill them so the executor ends promptly.
        let _ = self.exec.cancel_all(Duration::ZERO);
        self.exec.finish().await
    }
}
