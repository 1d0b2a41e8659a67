//! [`EtcdStore`]: the state store of a coordinator that shares its state with standbys,
//! the keys of the module layout under `/gatehouse/<cluster>/` in etcd (v3 API).
//!
//! State: an `etcd_client::Client` (cheap to clone; [`EtcdStore::client`] hands clones
//! to the election code), the key prefix, the request timeout and an optional [`Fence`].
//! Nothing is cached: [`StateStore::load`] reads etcd.
//!
//! Writes: each apply is one etcd transaction. A fenced store (see
//! [`EtcdStore::fenced`]) makes the leadership key's `create_revision` the transaction's
//! only compare, so a coordinator that lost its leadership cannot write: the transaction
//! does nothing and [`StoreError::Fenced`] comes back. etcd refuses a transaction that puts
//! a key inside a range it also deletes, or puts one key twice, so the ordered ops are
//! first reduced to their net effect per plan ([`net_writes`]): a delete followed by
//! puts becomes delete ranges around the put keys. That costs up to two etcd ops per
//! [`StoreOp`], hence [`EtcdStore::LIMITS`] allows 64 ops, half of etcd's default
//! `--max-txn-ops` (128), and 1,400,000 bytes, under its default `--max-request-bytes`
//! (1.5 MiB) with room for key prefixes, range ends and framing. Those defaults (or
//! larger) are assumed on the server.
//!
//! Reads: a load pages through `prefix + "plans/"` (500 keys per request, halved while a
//! page exceeds the 16 MiB gRPC message limit) at one pinned revision, so it is a
//! consistent snapshot however large the store is.
//!
//! Failure: every request of the store is bounded by the timeout given to
//! [`EtcdStore::connect`] (enforced around the call, which also bounds a request waiting
//! for a connection; the client itself has only a connect timeout). Unreachable etcd, timeouts and gRPC `UNAVAILABLE`-like codes map
//! to [`StoreError::Unavailable`] (retry); other refusals to [`StoreError::Rejected`].
//! [`EtcdStore::connect`] does not contact etcd; the first request does.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, Txn, TxnOp,
};
use gatehouse_common::ids::PlanId;
use tonic::Code;

use super::{
    Loader, PLANS, StateStore, StoreError, StoreLimits, StoreOp, StoredPlan, TESTS, Write,
    check_batch, plan_prefix, prefix_end, tests_seq,
};

/// Keys per load request (halved while a page is too large for one message).
const PAGE_KEYS: i64 = 500;
/// Largest gRPC message a load accepts from etcd.
const MAX_DECODING_BYTES: usize = 16 << 20;
/// HTTP/2 ping interval while requests are in flight; etcd's default
/// `--grpc-keepalive-min-time` is 5 s and it drops clients that ping more often.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Longest cluster name (a DNS label), which keeps keys short.
const MAX_CLUSTER_LEN: usize = 63;

/// The leadership guard of a fenced store: the election key this coordinator created
/// and the revision at which it created it. Deleting and re-creating the key (a new
/// leader) changes the revision, which fails every later fenced write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

/// A state store in etcd under `/gatehouse/<cluster>/`.
#[derive(Clone)]
pub struct EtcdStore {
    /// The shared client (clones share the connection).
    client: Client,
    /// KV client with a raised message size limit for loads.
    kv: KvClient,
    /// `/gatehouse/<cluster>/`.
    prefix: String,
    /// Bound on every request.
    timeout: Duration,
    /// When set, writes only succeed while the fence key has this create revision.
    fence: Option<Fence>,
}

impl EtcdStore {
    /// Limits of one apply; see the module doc for why.
    pub const LIMITS: StoreLimits = StoreLimits {
        max_ops: 64,
        max_bytes: 1_400_000,
    };

    /// A store for `cluster` (1-63 characters of `a-z`, `0-9`, `-`) on `endpoints`
    /// (`http://host:port`), unfenced, every request bounded by `timeout`.
    pub async fn connect(
        endpoints: &[String],
        cluster: &str,
        timeout: Duration,
    ) -> Result<EtcdStore, StoreError> {
        validate_cluster(cluster)?;
        if endpoints.is_empty() {
            return Err(StoreError::InvalidConfig(
                "no etcd endpoints were given".into(),
            ));
        }
        // No per-request timeout on the channel: the store bounds its own requests in
        // `call`, and the election code's long calls (campaign, observe, keep-alive
        // streams) on `client()` clones must not be cut off.
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, timeout)
            .with_tcp_keepalive(KEEP_ALIVE_INTERVAL)
            .with_require_leader(true);
        let client =
            match tokio::time::timeout(timeout, Client::connect(endpoints, Some(options))).await {
                Ok(Ok(client)) => client,
                Ok(Err(
                    e @ (etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)),
                )) => {
                    return Err(StoreError::InvalidConfig(format!(
                        "bad etcd endpoints {endpoints:?}: {e}"
                    )));
                }
                Ok(Err(e)) => return Err(map_error(e)),
                Err(_) => return Err(timed_out(timeout)),
            };
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_DECODING_BYTES);
        Ok(EtcdStore {
            client,
            kv,
            prefix: format!("/gatehouse/{cluster}/"),
            timeout,
            fence: None,
        })
    }

    /// The key prefix of this cluster's state: `/gatehouse/<cluster>/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A clone of the client (for the election code). It shares this store's connection
    /// and has a connect timeout but no request timeout.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A store on the same connection whose every apply succeeds only while `fence.key`
    /// still has `fence.create_revision`; otherwise it fails with [`StoreError::Fenced`].
    pub fn fenced(&self, fence: Fence) -> EtcdStore {
        EtcdStore {
            fence: Some(fence),
            ..self.clone()
        }
    }

    /// The fence of this store, if it is fenced.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Runs one request with the store's timeout around it.
    async fn call<T, Fut>(
        &self,
        request: impl FnOnce(KvClient) -> Fut,
    ) -> Result<Result<T, etcd_client::Error>, StoreError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        tokio::time::timeout(self.timeout, request(self.kv.clone()))
            .await
            .map_err(|_| timed_out(self.timeout))
    }
}

fn validate_cluster(cluster: &str) -> Result<(), StoreError> {
    let ok = (1..=MAX_CLUSTER_LEN).contains(&cluster.len())
        && cluster
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidConfig(format!(
            "cluster name {cluster:?} is not valid: use 1-{MAX_CLUSTER_LEN} characters of a-z, 0-9 and -"
        )))
    }
}

fn timed_out(timeout: Duration) -> StoreError {
    StoreError::Unavailable(format!("no answer within {timeout:?}"))
}

/// Transient failures become [`StoreError::Unavailable`], the rest [`StoreError::Rejected`].
fn map_error(e: etcd_client::Error) -> StoreError {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let mut detail = status.message().to_string();
            if let Some(source) = std::error::Error::source(&status) {
                append_sources(&mut detail, source);
            }
            match status.code() {
                // Unknown is what tonic reports for a connection cut mid-request.
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::Unknown => StoreError::Unavailable(detail),
                code => StoreError::Rejected(format!("{code:?}: {detail}")),
            }
        }
        etcd_client::Error::TransportError(e) => StoreError::Unavailable(with_sources(&e)),
        etcd_client::Error::IoError(e) => StoreError::Unavailable(with_sources(&e)),
        e => StoreError::Rejected(with_sources(&e)),
    }
}

/// `e` and its sources, `: `-separated (a bare "transport error" says too little).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    if let Some(source) = e.source() {
        append_sources(&mut text, source);
    }
    text
}

/// Appends `e` and its sources to `text`, skipping a text that repeats the previous one.
fn append_sources(text: &mut String, e: &dyn std::error::Error) {
    let mut next = Some(e);
    while let Some(e) = next {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
}

/// Whether a load page was too large to decode (rather than any other out-of-range).
fn page_too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == Code::OutOfRange && s.message().contains("message length too large"))
}

/// A key-level etcd write of a transaction (full keys, prefix included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NetWrite {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deletes `[start, end)`.
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// The net effect of `ops` (applied in order) as writes that etcd accepts in one
/// transaction: no key put twice, no put inside a deleted range. Per plan: the puts
/// after its last delete (last write of a key wins), and, if it was deleted, delete
/// ranges covering its whole prefix except the put keys. Puts before a plan's delete
/// are dropped. At most two writes per op.
pub(crate) fn net_writes(prefix: &str, ops: &[StoreOp]) -> Vec<NetWrite> {
    #[derive(Default)]
    struct Net<'a> {
        deleted: bool,
        puts: BTreeMap<String, &'a [u8]>,
    }
    let mut plans: BTreeMap<&PlanId, Net<'_>> = BTreeMap::new();
    let mut tests: BTreeMap<String, Option<&[u8]>> = BTreeMap::new();
    let full = |key: &str| format!("{prefix}{key}").into_bytes();
    let mut out = Vec::new();
    for op in ops {
        let Some(plan) = op.plan() else {
            // Test-history records, one key each: the last write of a key wins.
            match op.write() {
                Write::Put { key, value } => tests.insert(key, Some(value)),
                Write::DeletePrefix(key) => tests.insert(key, None),
            };
            continue;
        };
        let net = plans.entry(plan).or_default();
        match op.write() {
            Write::Put { key, value } => {
                net.puts.insert(key, value);
            }
            Write::DeletePrefix(_) => {
                net.deleted = true;
                net.puts.clear();
            }
        }
    }
    for (plan, net) in plans {
        if net.deleted {
            let start = full(&plan_prefix(plan));
            let end = prefix_end(&start);
            let mut from = start;
            for key in net.puts.keys() {
                let key = full(key);
                if from < key {
                    out.push(NetWrite::DeleteRange {
                        start: from,
                        end: key.clone(),
                    });
                }
                from = key;
                from.push(0);
            }
            if from < end {
                out.push(NetWrite::DeleteRange { start: from, end });
            }
        }
        out.extend(net.puts.into_iter().map(|(key, value)| NetWrite::Put {
            key: full(&key),
            value: value.to_vec(),
        }));
    }
    for (key, value) in tests {
        let key = full(&key);
        match value {
            Some(value) => out.push(NetWrite::Put {
                key,
                value: value.to_vec(),
            }),
            None => {
                let mut end = key.clone();
                end.push(0);
                out.push(NetWrite::DeleteRange { start: key, end });
            }
        }
    }
    out
}

impl From<NetWrite> for TxnOp {
    fn from(w: NetWrite) -> TxnOp {
        match w {
            NetWrite::Put { key, value } => TxnOp::put(key, value, None),
            NetWrite::DeleteRange { start, end } => {
                TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)))
            }
        }
    }
}

#[async_trait::async_trait]
impl StateStore for EtcdStore {
    async fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        check_batch(ops, Self::LIMITS)?;
        if ops.is_empty() {
            return Ok(());
        }
        let writes: Vec<TxnOp> = net_writes(&self.prefix, ops)
            .into_iter()
            .map(TxnOp::from)
            .collect();
        let mut txn = Txn::new();
        if let Some(fence) = &self.fence {
            txn = txn.when([Compare::create_revision(
                fence.key.clone(),
                CompareOp::Equal,
                fence.create_revision,
            )]);
        }
        let txn = txn.and_then(writes);
        let response = self
            .call(|mut kv| async move { kv.txn(txn).await })
            .await?
            .map_err(map_error)?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Fenced)
        }
    }

    async fn load(&self) -> Result<Vec<StoredPlan>, StoreError> {
        let mut loader = Loader::new(&self.prefix);
        self.read_range(PLANS, &mut |key, value| loader.add(&key, value))
            .await?;
        Ok(loader.finish())
    }

    async fn load_history(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let prefix_len = self.prefix.len();
        self.read_range(TESTS, &mut |key, value| {
            out.push((tests_seq(&key[prefix_len.min(key.len())..])?, value));
            Ok(())
        })
        .await?;
        Ok(out)
    }

    fn limits(&self) -> StoreLimits {
        Self::LIMITS
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}

impl EtcdStore {
    /// Reads every key under `logical` (a prefix of the layout) from one snapshot, in
    /// pages, handing each to `take` in key order.
    async fn read_range(
        &self,
        logical: &str,
        take: &mut (dyn FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        let start = format!("{}{logical}", self.prefix).into_bytes();
        let end = prefix_end(&start);
        let mut from = start;
        // 0 (newest) for the first page, then the first page's revision.
        let mut revision = 0;
        let mut page = PAGE_KEYS;
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(page)
                .with_revision(revision);
            let key = from.clone();
            let mut response = match self
                .call(|mut kv| async move { kv.get(key, Some(options)).await })
                .await?
            {
                Ok(response) => response,
                Err(e) if page_too_large(&e) && page > 1 => {
                    page /= 2;
                    tracing::debug!(
                        page,
                        "a load page was over the message limit; asking for fewer keys"
                    );
                    continue;
                }
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.code() == Code::OutOfRange && s.message().contains("compacted") =>
                {
                    return Err(StoreError::Unavailable(format!(
                        "the load's snapshot was compacted while paging; retry: {}",
                        s.message()
                    )));
                }
                Err(e) => return Err(map_error(e)),
            };
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            let more = response.more();
            let kvs = response.take_kvs();
            let Some(last) = kvs.last() else { break };
            from = last.key().to_vec();
            from.push(0);
            for kv in kvs {
                let (key, value) = kv.into_key_value();
                take(key, value)?;
            }
            if !more {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const PREFIX: &str = "/gatehouse/t/";
    const PLAN_IDS: [&str; 3] = ["p-1", "p-10", "q"];

    fn op_strategy() -> impl Strategy<Value = StoreOp> {
        let plan = prop::sample::select(PLAN_IDS.to_vec()).prop_map(PlanId::new);
        let value = prop::collection::vec(any::<u8>(), 0..3);
        prop_oneof![
            (plan.clone(), value.clone())
                .prop_map(|(plan, record)| StoreOp::PutPlan { plan, record }),
            (plan.clone(), 0..6u64, value).prop_map(|(plan, first_seq, chunk)| {
                StoreOp::AppendEvents {
                    plan,
                    first_seq,
                    chunk,
                }
            }),
            (plan.clone(), any::<bool>())
                .prop_map(|(plan, force)| StoreOp::PutCancel { plan, force }),
            plan.prop_map(|plan| StoreOp::DeletePlan { plan }),
        ]
    }

    type Kv = BTreeMap<Vec<u8>, Vec<u8>>;

    /// The reference semantics: ops one after another.
    fn apply_in_order(mut kv: Kv, ops: &[StoreOp]) -> Kv {
        for op in ops {
            match op.write() {
                Write::Put { key, value } => {
                    kv.insert(format!("{PREFIX}{key}").into_bytes(), value.to_vec());
                }
                Write::DeletePrefix(p) => {
                    let p = format!("{PREFIX}{p}").into_bytes();
                    kv.retain(|k, _| !k.starts_with(&p));
                }
            }
        }
        kv
    }

    /// etcd's rules for one transaction, then its effect.
    fn apply_as_etcd(mut kv: Kv, writes: &[NetWrite]) -> Kv {
        let ranges: Vec<(&[u8], &[u8])> = writes
            .iter()
            .filter_map(|w| match w {
                NetWrite::DeleteRange { start, end } => Some((start.as_slice(), end.as_slice())),
                NetWrite::Put { .. } => None,
            })
            .collect();
        let mut put_keys = std::collections::BTreeSet::new();
        for w in writes {
            if let NetWrite::Put { key, .. } = w {
                assert!(put_keys.insert(key.clone()), "key put twice: {key:?}");
                assert!(
                    !ranges
                        .iter()
                        .any(|(s, e)| key.as_slice() >= *s && key.as_slice() < *e),
                    "put inside a deleted range: {key:?}"
                );
            }
        }
        for (s, e) in &ranges {
            assert!(s < e, "empty range");
            kv.retain(|k, _| !(k.as_slice() >= *s && k.as_slice() < *e));
        }
        for w in writes {
            if let NetWrite::Put { key, value } = w {
                kv.insert(key.clone(), value.clone());
            }
        }
        kv
    }

    proptest! {
        #[test]
        fn net_writes_match_ordered_application(
            before in prop::collection::vec(op_strategy(), 0..12),
            ops in prop::collection::vec(op_strategy(), 0..12),
        ) {
            let existing = apply_in_order(Kv::new(), &before);
            let writes = net_writes(PREFIX, &ops);
            prop_assert!(writes.len() <= 2 * ops.len());
            prop_assert_eq!(
                apply_as_etcd(existing.clone(), &writes),
                apply_in_order(existing, &ops)
            );
        }
    }

    #[test]
    fn the_costliest_batch_fits_etcd_default_txn_size() {
        let plan = PlanId::new("p");
        let mut ops = vec![StoreOp::DeletePlan { plan: plan.clone() }];
        ops.extend(
            (0..EtcdStore::LIMITS.max_ops as u64 - 1).map(|s| StoreOp::AppendEvents {
                plan: plan.clone(),
                first_seq: s,
                chunk: Vec::new(),
            }),
        );
        assert!(net_writes(PREFIX, &ops).len() <= 128);
    }

    #[test]
    fn cluster_names_are_checked() {
        for good in ["a", "prod-1", &"x".repeat(63)] {
            assert!(validate_cluster(good).is_ok(), "{good}");
        }
        for bad in ["", "Prod", "a/b", "a_b", "a b", &"x".repeat(64)] {
            let err = validate_cluster(bad).expect_err("an invalid name");
            assert!(
                matches!(&err, StoreError::InvalidConfig(m) if m.contains("cluster name")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn transient_failures_are_unavailable() {
        let unavailable = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("down"));
        assert!(matches!(map_error(unavailable), StoreError::Unavailable(_)));
        let full = etcd_client::Error::GRpcStatus(tonic::Status::resource_exhausted(
            "etcdserver: mvcc: database space exceeded",
        ));
        assert!(matches!(map_error(full), StoreError::Rejected(_)));
    }
}
