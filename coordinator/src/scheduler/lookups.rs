//! The scheduler's cache I/O: key computation and lookups for [`Command::CheckCache`],
//! and writes for [`Command::StoreResult`].
//!
//! State it owns: the lookups waiting for a slot (FIFO), the lookup tasks in flight (at
//! most [`SchedulerConfig::max_cache_lookups`]; a task computes the key in
//! `spawn_blocking`, since it may hash input files, then asks the cache), the write
//! tasks. It decides nothing about scheduling: each lookup ends
//! as one [`Event::CacheChecked`] with the key and, on a hit, the entry. A failed
//! lookup or key computation is a miss (with no key: the gate runs uncached), never a
//! gate failure; a failed write is logged.
//!
//! [`Command::CheckCache`]: crate::core::Command::CheckCache
//! [`Command::StoreResult`]: crate::core::Command::StoreResult
//! [`SchedulerConfig::max_cache_lookups`]: super::SchedulerConfig::max_cache_lookups

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::cache::{
    CacheEntry, CacheError, CacheKey, FileHashes, ResultCache, compute_key, compute_tree_key,
    unix_ms_now,
};
use gatehouse_common::ids::{GateId, GateIdx, PlanId};
use gatehouse_common::plan::Plan;
use gatehouse_common::spawn::{spawn_blocking_named, spawn_in};
use tokio::task::JoinSet;

use crate::core::Event;
use crate::metrics::CacheResult;

/// One lookup to run: which gate, and what its key is made of.
pub(super) struct LookupRequest {
    pub(super) plan_id: PlanId,
    pub(super) gate: GateIdx,
    pub(super) plan: Arc<Plan>,
    /// Keys of its prerequisites (`None`: one is unknown, so it has no key).
    pub(super) deps: Option<Vec<CacheKey>>,
    pub(super) files: Arc<FileHashes>,
}

/// A finished lookup: what the core gets ([`LookupDone::into_event`]) and how the cache
/// answered.
pub(super) struct LookupDone {
    pub(super) plan: PlanId,
    pub(super) gate: GateIdx,
    /// The gate's key (`None`: it could not be computed).
    key: Option<CacheKey>,
    /// The entry on a hit.
    hit: Option<Box<CacheEntry>>,
    /// How the cache answered (`None`: not asked).
    pub(super) answer: Option<CacheResult>,
}

impl LookupDone {
    /// The core's [`Event::CacheChecked`].
    pub(super) fn into_event(self) -> Event {
        Event::CacheChecked {
            plan: self.plan,
            gate: self.gate,
            key: self.key,
            hit: self.hit,
        }
    }
}

/// The driver's cache I/O. See the module docs.
pub(super) struct CacheIo {
    cache: Option<Arc<dyn ResultCache>>,
    max_lookups: usize,
    /// Whether gates' `inputs` can be hashed here (else a gate with inputs has no key).
    hash_inputs: bool,
    queue: VecDeque<LookupRequest>,
    lookups: JoinSet<LookupDone>,
    /// Which gate each lookup task serves, so a task that fails still answers.
    serving: HashMap<tokio::task::Id, (PlanId, GateIdx)>,
    stores: JoinSet<Result<(), CacheError>>,
}

impl CacheIo {
    pub(super) fn new(
        cache: Option<Arc<dyn ResultCache>>,
        max_lookups: usize,
        hash_inputs: bool,
    ) -> Self {
        Self {
            cache,
            max_lookups,
            hash_inputs,
            queue: VecDeque::new(),
            lookups: JoinSet::new(),
            serving: HashMap::new(),
            stores: JoinSet::new(),
        }
    }

    /// Whether there is a cache at all.
    pub(super) fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// Queues a lookup.
    pub(super) fn queue(&mut self, request: LookupRequest) {
        self.queue.push_back(request);
    }

    /// Starts queued lookups while below the limit; `wanted` says whether a gate still
    /// waits for its answer (lookups of gates that stopped waiting are dropped: nobody
    /// reads their answer). Returns the dropped ones.
    pub(super) fn start(
        &mut self,
        wanted: impl Fn(&PlanId, GateIdx) -> bool,
    ) -> Vec<(PlanId, GateIdx)> {
        let mut dropped = Vec::new();
        while self.lookups.len() < self.max_lookups {
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            if !wanted(&req.plan_id, req.gate) {
                dropped.push((req.plan_id, req.gate));
                continue;
            }
            let served = (req.plan_id.clone(), req.gate);
            let task = spawn_in(
                &mut self.lookups,
                "cache-lookup",
                lookup(req, self.cache.clone(), self.hash_inputs),
            );
            self.serving.insert(task.id(), served);
        }
        dropped
    }

    /// The next finished lookup (pending while none runs). Writes that finish
    /// meanwhile are reaped here, their failures logged.
    pub(super) async fn next(&mut self) -> LookupDone {
        loop {
            tokio::select! {
                done = next_lookup(&mut self.lookups, &mut self.serving),
                    if !self.lookups.is_empty() => return done,
                Some(stored) = self.stores.join_next(), if !self.stores.is_empty() => {
                    log_store(stored);
                }
                else => return std::future::pending().await,
            }
        }
    }

    /// Writes a passed gate's entry.
    pub(super) fn store(&mut self, key: CacheKey, entry: CacheEntry) {
        if let Some(cache) = self.cache.clone() {
            spawn_in(&mut self.stores, "cache-store", async move {
                cache.put(&key, &entry).await
            });
        }
    }

    /// Shutdown: stops lookups; gives pending writes `timeout` to finish.
    pub(super) async fn drain(&mut self, timeout: Duration) {
        self.lookups.abort_all();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        while !self.stores.is_empty() {
            tokio::select! {
                () = &mut deadline => {
                    tracing::warn!(pending = self.stores.len(), "cache writes did not finish before shutdown");
                    self.stores.abort_all();
                    break;
                }
                Some(stored) = self.stores.join_next() => log_store(stored),
            }
        }
    }

    /// Every key of a restored plan, in dependency order, when keys do not hash files
    /// (then this is pure hashing: a source plan's tree keys, or keys without inputs):
    /// gates that passed before the failover are never looked up again, and without
    /// their keys every gate that depends on them would run uncached. Empty when keys
    /// hash files.
    pub(super) fn restored_keys(&self, plan: &Plan, files: &FileHashes) -> Vec<Option<CacheKey>> {
        if self.hash_inputs && plan.resolution().is_none() {
            return Vec::new();
        }
        let n = plan.gates.len();
        let mut keys: Vec<Option<CacheKey>> = vec![None; n];
        let mut dependents: Vec<Vec<GateIdx>> = vec![Vec::new(); n];
        let mut blocking = vec![0usize; n];
        for g in (0..n as u32).map(GateIdx) {
            for d in plan.prerequisites(g) {
                dependents[d.ix()].push(g);
                blocking[g.ix()] += 1;
            }
        }
        let mut ready: VecDeque<GateIdx> = (0..n as u32)
            .map(GateIdx)
            .filter(|g| blocking[g.ix()] == 0)
            .collect();
        while let Some(g) = ready.pop_front() {
            let deps: Option<Vec<CacheKey>> = plan.prerequisites(g).map(|d| keys[d.ix()]).collect();
            keys[g.ix()] = match (plan.resolution(), deps) {
                (Some(resolution), Some(deps)) => resolution
                    .gates
                    .get(g.ix())
                    .and_then(Option::as_ref)
                    .map(|tree| compute_tree_key(plan, g, &deps, tree)),
                (None, Some(deps)) if plan.gate(g).inputs.is_empty() => {
                    compute_key(plan, g, &deps, files).ok()
                }
                _ => None,
            };
            for &d in &dependents[g.ix()] {
                blocking[d.ix()] -= 1;
                if blocking[d.ix()] == 0 {
                    ready.push_back(d);
                }
            }
        }
        keys
    }
}

/// The next finished lookup task as a [`LookupDone`] (pending while none runs).
async fn next_lookup(
    lookups: &mut JoinSet<LookupDone>,
    serving: &mut HashMap<tokio::task::Id, (PlanId, GateIdx)>,
) -> LookupDone {
    loop {
        let Some(joined) = lookups.join_next_with_id().await else {
            return std::future::pending().await;
        };
        match joined {
            Ok((id, done)) => {
                serving.remove(&id);
                return done;
            }
            Err(e) => {
                tracing::error!(error = %e, "cache lookup task failed; treating it as a miss");
                // Every task is registered when spawned; a failed one still answers.
                let Some((plan, gate)) = serving.remove(&e.id()) else {
                    continue;
                };
                return LookupDone {
                    plan,
                    gate,
                    key: None,
                    hit: None,
                    answer: Some(CacheResult::Error),
                };
            }
        }
    }
}

/// One lookup task: the key (in `spawn_blocking`: it may hash files), then the cache.
async fn lookup(
    req: LookupRequest,
    cache: Option<Arc<dyn ResultCache>>,
    hash_inputs: bool,
) -> LookupDone {
    let LookupRequest {
        plan_id,
        gate,
        plan,
        deps,
        files,
    } = req;
    // A source plan's gates are keyed on their trees, resolved before the plan was
    // submitted: pure hashing. Otherwise, gates' input files live on the workers in the
    // cluster: such a gate has no key.
    let key = match (plan.resolution(), deps) {
        (Some(resolution), Some(deps)) => resolution
            .gates
            .get(gate.ix())
            .and_then(Option::as_ref)
            .map(|tree| compute_tree_key(&plan, gate, &deps, tree)),
        (None, Some(deps)) if hash_inputs || plan.gate(gate).inputs.is_empty() => {
            let p = plan.clone();
            spawn_blocking_named("cache-key", move || compute_key(&p, gate, &deps, &files))
                .await
                .map_err(|e| tracing::error!(error = %e, "cache key task failed"))
                .ok()
                .and_then(|r| {
                    r.map_err(
                        |e| tracing::warn!(error = %e, "cannot compute cache key; gate runs uncached"),
                    )
                    .ok()
                })
        }
        (_, _) => None,
    };
    let mut hit = None;
    let mut answer = None;
    if let (Some(key), Some(cache), true) = (key, cache, plan.gate(gate).cache) {
        match cache.get(&key).await {
            Ok(entry) => {
                answer = Some(match entry {
                    Some(_) => CacheResult::Hit,
                    None => CacheResult::Miss,
                });
                hit = entry.map(Box::new);
            }
            Err(e) => {
                answer = Some(CacheResult::Error);
                tracing::warn!(error = %e, "cache lookup failed; treating as a miss")
            }
        }
    }
    LookupDone {
        plan: plan_id,
        gate,
        key,
        hit,
        answer,
    }
}

fn log_store(stored: Result<Result<(), CacheError>, tokio::task::JoinError>) {
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cache write failed"),
        Err(e) => tracing::warn!(error = %e, "cache write task failed"),
    }
}

/// The entry a passed gate is stored as.
pub(super) fn entry(result: gatehouse_common::exec::GateResult, producer: GateId) -> CacheEntry {
    CacheEntry {
        result,
        producer,
        created_unix_ms: unix_ms_now(),
        flaky: None,
    }
}
