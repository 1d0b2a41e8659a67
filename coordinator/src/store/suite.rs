//! The conformance suite every [`StateStore`] backend must pass: the same checks run
//! on [`super::LocalStore`] (unit tests) and on [`super::EtcdStore`] against a real etcd
//! (`tests/state_store.rs`).
//!
//! Each check is a public async fn taking a fresh, empty store (or, where persistence
//! is checked, a [`Fixture`] that opens stores by name) and panics with a description
//! of the difference when the store misbehaves. [`crate::state_store_suite!`] turns the
//! list into one named `#[tokio::test]` per check; [`run_all`] runs them in sequence.
//!
//! State: none of its own; it writes to the stores it is given. Compiled into the
//! library (it is small) so the integration tests of another crate can reuse it.

use std::future::Future;

use gatehouse_common::ids::PlanId;

use super::{StateStore, StoreError, StoreOp, StoredPlan, batch_size};

/// Opens the stores a backend's suite runs on.
pub trait Fixture: Send + Sync {
    type Store: StateStore;

    /// Opens the store named `name`: a name used before reopens that (durable) store,
    /// once the previous handle is dropped; a new name gives an empty store.
    fn open(&self, name: &str) -> impl Future<Output = Self::Store> + Send;
}

/// One named `#[tokio::test]` per suite check. `$fixture` is an expression giving an
/// `Option` of a [`Fixture`]; `None` skips the test (the fixture says why).
#[macro_export]
#[doc(hidden)]
macro_rules! state_store_suite {
    ($fixture:expr) => {
        $crate::state_store_suite!(@checks $fixture;
            store: round_trip, chunks_load_in_numeric_order, delete_removes_only_that_plan,
                batch_is_atomic_when_too_large, batch_at_the_limits_is_accepted, cancel_is_kept,
                many_plans, large_logs_load, ops_apply_in_order, test_history_records;
            fixture: survives_reopen);
    };
    (@checks $fixture:expr; store: $($store:ident),*; fixture: $($fix:ident),*) => {
        $(
            #[tokio::test]
            async fn $store() {
                let Some(fixture) = $fixture else { return };
                let store =
                    $crate::store::suite::Fixture::open(&fixture, stringify!($store)).await;
                $crate::store::suite::$store(&store).await;
            }
        )*
        $(
            #[tokio::test]
            async fn $fix() {
                let Some(fixture) = $fixture else { return };
                $crate::store::suite::$fix(&fixture).await;
            }
        )*
    };
}

/// Runs every check, each on a fresh store named after it.
pub async fn run_all(fixture: &impl Fixture) {
    round_trip(&fixture.open("round_trip").await).await;
    chunks_load_in_numeric_order(&fixture.open("chunks_load_in_numeric_order").await).await;
    delete_removes_only_that_plan(&fixture.open("delete_removes_only_that_plan").await).await;
    batch_is_atomic_when_too_large(&fixture.open("batch_is_atomic_when_too_large").await).await;
    batch_at_the_limits_is_accepted(&fixture.open("batch_at_the_limits_is_accepted").await).await;
    cancel_is_kept(&fixture.open("cancel_is_kept").await).await;
    many_plans(&fixture.open("many_plans").await).await;
    large_logs_load(&fixture.open("large_logs_load").await).await;
    ops_apply_in_order(&fixture.open("ops_apply_in_order").await).await;
    test_history_records(&fixture.open("test_history_records").await).await;
    survives_reopen(fixture).await;
}

fn id(s: &str) -> PlanId {
    PlanId::new(s)
}

fn put_plan(plan: &str, record: &[u8]) -> StoreOp {
    StoreOp::PutPlan {
        plan: id(plan),
        record: record.to_vec(),
    }
}

fn append(plan: &str, first_seq: u64, chunk: &[u8]) -> StoreOp {
    StoreOp::AppendEvents {
        plan: id(plan),
        first_seq,
        chunk: chunk.to_vec(),
    }
}

fn cancel(plan: &str, force: bool) -> StoreOp {
    StoreOp::PutCancel {
        plan: id(plan),
        force,
    }
}

fn delete(plan: &str) -> StoreOp {
    StoreOp::DeletePlan { plan: id(plan) }
}

fn stored(plan: &str, record: &[u8], cancel: Option<bool>, chunks: &[(u64, &[u8])]) -> StoredPlan {
    StoredPlan {
        plan: id(plan),
        record: record.to_vec(),
        cancel,
        chunks: chunks.iter().map(|(s, c)| (*s, c.to_vec())).collect(),
    }
}

async fn apply(store: &dyn StateStore, ops: &[StoreOp]) {
    if let Err(e) = store.apply(ops).await {
        panic!(
            "{} store: apply of {} ops failed: {e}",
            store.kind(),
            ops.len()
        );
    }
}

async fn load(store: &dyn StateStore) -> Vec<StoredPlan> {
    match store.load().await {
        Ok(plans) => plans,
        Err(e) => panic!("{} store: load failed: {e}", store.kind()),
    }
}

fn ids(plans: &[StoredPlan]) -> Vec<&str> {
    plans.iter().map(|p| p.plan.as_str()).collect()
}

/// Applies `ops` in batches that fit the store's limits.
async fn apply_batched(store: &dyn StateStore, ops: &[StoreOp]) {
    let limits = store.limits();
    let mut batch: Vec<StoreOp> = Vec::new();
    for op in ops {
        let bytes = batch_size(&batch) + op.size();
        if !batch.is_empty() && !limits.admits(batch.len() + 1, bytes) {
            apply(store, &batch).await;
            batch.clear();
        }
        batch.push(op.clone());
    }
    apply(store, &batch).await;
}

/// What is written comes back, byte for byte; an empty batch changes nothing.
pub async fn round_trip(store: &dyn StateStore) {
    assert_eq!(load(store).await, [], "a fresh store is empty");
    apply(store, &[]).await;
    assert_eq!(load(store).await, [], "an empty batch writes nothing");

    let every_byte: Vec<u8> = (0..=255).collect();
    apply(
        store,
        &[
            put_plan("p-a", &every_byte),
            append("p-a", 1, b"first"),
            append("p-a", 3, b""),
        ],
    )
    .await;
    apply(store, &[put_plan("p-b", b"")]).await;
    let expected = vec![
        stored("p-a", &every_byte, None, &[(1, b"first"), (3, b"")]),
        stored("p-b", b"", None, &[]),
    ];
    assert_eq!(load(store).await, expected);
    assert_eq!(load(store).await, expected, "a load does not consume");
}

/// Chunks come back ascending by `first_seq` as numbers, whatever the write order.
pub async fn chunks_load_in_numeric_order(store: &dyn StateStore) {
    apply(store, &[put_plan("p", b"r")]).await;
    let seqs = [100_000_000_000, 2, 10, 0, u64::MAX, 1, 9, 11];
    for seq in seqs {
        apply(store, &[append("p", seq, seq.to_string().as_bytes())]).await;
    }
    apply(store, &[append("p", 99, b"99"), append("p", 3, b"3")]).await;
    let plans = load(store).await;
    assert_eq!(ids(&plans), ["p"]);
    let mut expected: Vec<u64> = seqs.to_vec();
    expected.extend([99, 3]);
    expected.sort_unstable();
    let got: Vec<u64> = plans[0].chunks.iter().map(|(s, _)| *s).collect();
    assert_eq!(got, expected, "chunks ascending numerically");
    for (seq, chunk) in &plans[0].chunks {
        assert_eq!(chunk, seq.to_string().as_bytes(), "chunk {seq}");
    }
}

/// Deleting `p-1` leaves `p-10` and other ids sharing its beginning untouched.
pub async fn delete_removes_only_that_plan(store: &dyn StateStore) {
    let names = ["p-0", "p-1", "p-1-1", "p-1.x", "p-10", "p-1_"];
    for name in names {
        let ops = [
            put_plan(name, name.as_bytes()),
            append(name, 1, name.as_bytes()),
            cancel(name, true),
        ];
        apply(store, &ops).await;
    }
    apply(store, &[delete("p-1")]).await;
    let plans = load(store).await;
    let mut expected: Vec<&str> = names.iter().copied().filter(|n| *n != "p-1").collect();
    expected.sort_unstable();
    assert_eq!(ids(&plans), expected);
    for p in &plans {
        let name = p.plan.as_str().as_bytes();
        assert_eq!(*p, stored(p.plan.as_str(), name, Some(true), &[(1, name)]));
    }
    apply(store, &[delete("never-stored")]).await;
    assert_eq!(
        load(store).await,
        plans,
        "deleting an unknown plan is a no-op"
    );
}

/// A batch over the limits, or naming an invalid plan id, is refused whole.
pub async fn batch_is_atomic_when_too_large(store: &dyn StateStore) {
    let limits = store.limits();
    apply(store, &[put_plan("keep", b"k"), append("keep", 1, b"e")]).await;
    let before = load(store).await;

    let mut ops = vec![put_plan("big", b"r"), delete("keep")];
    ops.extend((0..limits.max_ops as u64).map(|s| append("big", s, b"e")));
    match store.apply(&ops).await {
        Err(StoreError::TooLarge {
            ops: n, max_ops, ..
        }) => {
            assert_eq!(n, limits.max_ops + 2);
            assert_eq!(max_ops, limits.max_ops);
        }
        other => panic!("{} ops: expected TooLarge, got {other:?}", ops.len()),
    }
    assert_eq!(
        load(store).await,
        before,
        "nothing of a too-long batch applied"
    );

    let huge = put_plan("big", &vec![7; limits.max_bytes]);
    let ops = [delete("keep"), huge];
    let size = batch_size(&ops);
    match store.apply(&ops).await {
        Err(StoreError::TooLarge {
            ops: 2,
            bytes,
            max_bytes,
            ..
        }) => {
            assert_eq!(bytes, size);
            assert!(bytes > max_bytes);
        }
        other => panic!("{size} bytes: expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        load(store).await,
        before,
        "nothing of a too-big batch applied"
    );

    let ops = [
        put_plan("valid", b"v"),
        delete("keep"),
        put_plan("a/b", b"x"),
    ];
    match store.apply(&ops).await {
        Err(StoreError::InvalidPlanId(p)) => assert_eq!(p.as_str(), "a/b"),
        other => panic!("expected InvalidPlanId, got {other:?}"),
    }
    assert_eq!(
        load(store).await,
        before,
        "nothing of a batch with a bad id applied"
    );
}

/// A batch of exactly `max_ops` ops and `max_bytes` bytes is accepted, even in the
/// shape that costs a backend the most (a delete followed by puts to the same plan).
pub async fn batch_at_the_limits_is_accepted(store: &dyn StateStore) {
    let limits = store.limits();
    // Old chunks at odd sequence numbers, new ones at even: the delete must remove
    // keys lying between the new ones.
    let old: Vec<StoreOp> = (0..5)
        .map(|i| append("edge", 2 * i + 1, b"old"))
        .chain([put_plan("edge", b"old"), cancel("edge", false)])
        .collect();
    apply(store, &old).await;

    let puts = limits.max_ops - 2;
    let mut ops = vec![delete("edge"), put_plan("edge", b"")];
    ops.extend((0..puts as u64).map(|i| append("edge", 2 * i, b"")));
    let spare = limits
        .max_bytes
        .checked_sub(batch_size(&ops))
        .expect("room for values");
    let per_chunk = spare / puts.max(1);
    for op in &mut ops[2..] {
        if let StoreOp::AppendEvents { chunk, .. } = op {
            *chunk = vec![b'c'; per_chunk];
        }
    }
    let record_len = spare - per_chunk * puts;
    ops[1] = put_plan("edge", &vec![b'r'; record_len]);
    assert_eq!(ops.len(), limits.max_ops);
    assert_eq!(batch_size(&ops), limits.max_bytes);
    apply(store, &ops).await;

    let plans = load(store).await;
    assert_eq!(ids(&plans), ["edge"]);
    let p = &plans[0];
    assert_eq!(p.record.len(), record_len, "the new record");
    assert_eq!(p.cancel, None, "the old cancel was deleted");
    let seqs: Vec<u64> = p.chunks.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (0..puts as u64).map(|i| 2 * i).collect();
    assert_eq!(seqs, expected, "only the new chunks");
    assert!(p.chunks.iter().all(|(_, c)| c.len() == per_chunk));
}

/// The cancel flag is kept per plan and can be escalated to force.
pub async fn cancel_is_kept(store: &dyn StateStore) {
    apply(
        store,
        &[
            put_plan("f", b"f"),
            put_plan("g", b"g"),
            put_plan("n", b"n"),
        ],
    )
    .await;
    apply(store, &[cancel("f", true), cancel("g", false)]).await;
    let cancels = |plans: Vec<StoredPlan>| -> Vec<(String, Option<bool>)> {
        plans
            .into_iter()
            .map(|p| (p.plan.as_str().to_string(), p.cancel))
            .collect()
    };
    let expect = |g: bool| {
        vec![
            ("f".to_string(), Some(true)),
            ("g".to_string(), Some(g)),
            ("n".to_string(), None),
        ]
    };
    assert_eq!(cancels(load(store).await), expect(false));
    apply(store, &[cancel("g", true)]).await;
    assert_eq!(
        cancels(load(store).await),
        expect(true),
        "escalated to force"
    );
    // A cancel for a plan with no record is not a plan: load skips it.
    apply(store, &[cancel("no-record", true)]).await;
    assert_eq!(cancels(load(store).await), expect(true));
}

/// Hundreds of plans (more keys than one etcd page) load complete and ordered by id.
pub async fn many_plans(store: &dyn StateStore) {
    const PLANS: u64 = 300;
    let name = |i: u64| format!("p-{i}");
    let mut ops = Vec::new();
    for i in 0..PLANS {
        let n = name(i);
        ops.push(put_plan(&n, n.as_bytes()));
        ops.push(append(&n, 1, b"a"));
        ops.push(append(&n, 1000 + i, b"b"));
        if i.is_multiple_of(7) {
            ops.push(cancel(&n, i.is_multiple_of(2)));
        }
    }
    apply_batched(store, &ops).await;
    let plans = load(store).await;
    let mut expected: Vec<String> = (0..PLANS).map(name).collect();
    expected.sort_unstable();
    assert_eq!(ids(&plans), expected, "every plan, ordered by id");
    for p in &plans {
        let i: u64 = p.plan.as_str()[2..].parse().expect("numbered");
        let cancel = (i.is_multiple_of(7)).then_some(i.is_multiple_of(2));
        let n = name(i);
        assert_eq!(
            *p,
            stored(&n, n.as_bytes(), cancel, &[(1, b"a"), (1000 + i, b"b")])
        );
    }
}

/// Tens of MiB of log (more than one gRPC message may carry) load complete.
pub async fn large_logs_load(store: &dyn StateStore) {
    const CHUNKS: u64 = 40;
    let chunk_len = (1usize << 20).min(store.limits().max_bytes - 1024);
    apply(store, &[put_plan("big", b"r")]).await;
    for seq in 0..CHUNKS {
        apply(
            store,
            &[append("big", seq * 1000, &vec![seq as u8; chunk_len])],
        )
        .await;
    }
    let plans = load(store).await;
    assert_eq!(ids(&plans), ["big"]);
    let chunks = &plans[0].chunks;
    assert_eq!(chunks.len() as u64, CHUNKS);
    for (i, (seq, chunk)) in chunks.iter().enumerate() {
        assert_eq!(*seq, i as u64 * 1000);
        assert_eq!(chunk.len(), chunk_len, "chunk {seq}");
        assert!(
            chunk.iter().all(|b| *b == i as u8),
            "content of chunk {seq}"
        );
    }
}

/// Ops take effect in batch order, including repeated keys and delete/put mixes.
/// Test-history records: put, deleted one by one, loaded in numeric order, kept apart
/// from plans; within one batch the last write of a record wins.
pub async fn test_history_records(store: &dyn StateStore) {
    let put = |seq, record: &[u8]| StoreOp::PutTests {
        seq,
        record: record.to_vec(),
    };
    apply(
        store,
        &[
            put(9, b"nine"),
            put(10, b"ten"),
            put_plan("p", b"p"),
            put(100, b"x"),
        ],
    )
    .await;
    apply(
        store,
        &[
            StoreOp::DeleteTests { seq: 9 },
            put(11, b"gone"),
            StoreOp::DeleteTests { seq: 11 },
            StoreOp::DeleteTests { seq: 12 },
            put(100, b"hundred"),
        ],
    )
    .await;
    let history = store.load_history().await.expect("load history");
    assert_eq!(
        history,
        [(10, b"ten".to_vec()), (100, b"hundred".to_vec())],
        "numeric order, deletes and the last write of each record applied"
    );
    let plans = load(store).await;
    assert_eq!(plans.len(), 1, "history records are not plans: {plans:?}");
}

pub async fn ops_apply_in_order(store: &dyn StateStore) {
    // Put then delete: gone.
    apply(
        store,
        &[
            put_plan("a", b"a"),
            append("a", 1, b"1"),
            cancel("a", true),
            delete("a"),
        ],
    )
    .await;
    assert_eq!(load(store).await, [], "put then delete leaves nothing");

    // Delete then put: only what came after the delete.
    apply(
        store,
        &[
            put_plan("b", b"old"),
            append("b", 1, b"1"),
            append("b", 2, b"2"),
            cancel("b", true),
        ],
    )
    .await;
    apply(
        store,
        &[delete("b"), put_plan("b", b"new"), append("b", 5, b"5")],
    )
    .await;
    assert_eq!(
        load(store).await,
        [stored("b", b"new", None, &[(5, b"5")])],
        "delete then put keeps only the new writes"
    );

    // The same key twice: the last write wins.
    apply(
        store,
        &[
            put_plan("c", b"one"),
            put_plan("c", b"two"),
            append("c", 1, b"x"),
            append("c", 1, b"y"),
            cancel("c", false),
            cancel("c", true),
        ],
    )
    .await;
    // Delete, put, delete, put.
    apply(
        store,
        &[
            delete("d"),
            put_plan("d", b"first"),
            append("d", 1, b"1"),
            delete("d"),
            put_plan("d", b"final"),
        ],
    )
    .await;
    assert_eq!(
        load(store).await,
        [
            stored("b", b"new", None, &[(5, b"5")]),
            stored("c", b"two", Some(true), &[(1, b"y")]),
            stored("d", b"final", None, &[]),
        ]
    );
}

/// What was applied is there after the store is closed and opened again.
pub async fn survives_reopen(fixture: &impl Fixture) {
    const NAME: &str = "survives_reopen";
    let expected = {
        let store = fixture.open(NAME).await;
        apply(
            &store,
            &[
                put_plan("a", b"ra"),
                append("a", 1, b"a1"),
                append("a", 4, b"a4"),
                cancel("a", true),
                put_plan("b", b"rb"),
                put_plan("c", b"rc"),
            ],
        )
        .await;
        apply(&store, &[delete("c")]).await;
        load(&store).await
    };
    assert_eq!(
        expected,
        [
            stored("a", b"ra", Some(true), &[(1, b"a1"), (4, b"a4")]),
            stored("b", b"rb", None, &[]),
        ]
    );
    let store = fixture.open(NAME).await;
    assert_eq!(load(&store).await, expected, "state after reopening");
    apply(&store, &[append("b", 1, b"b1")]).await;
    drop(store);
    let store = fixture.open(NAME).await;
    let plans = load(&store).await;
    assert_eq!(plans[1], stored("b", b"rb", None, &[(1, b"b1")]));
}
