//! The state store against a real etcd: the backend conformance suite (the same checks
//! the local store passes), then what only etcd has: the leadership fence, behaviour
//! while etcd is down, cluster prefixes, the key layout as other etcd tools see it.
//!
//! Each test starts its own etcd on free ports (`support::etcd`); `GATEHOUSE_SKIP_ETCD=1`
//! skips them.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions};
use gatehouse_common::ids::PlanId;
use gatehouse_coordinator::store::suite::Fixture;
use gatehouse_coordinator::store::{EtcdStore, Fence, StateStore, StoreError, StoreOp};
use support::etcd::{EtcdServer, etcdctl};

/// Request timeout of the stores under test.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Stores on one etcd, one cluster prefix per name.
struct EtcdFixture {
    server: EtcdServer,
}

fn etcd_fixture() -> Option<EtcdFixture> {
    EtcdServer::start().map(|server| EtcdFixture { server })
}

impl EtcdFixture {
    async fn store(&self, cluster: &str) -> EtcdStore {
        EtcdStore::connect(&[self.server.endpoint()], cluster, TIMEOUT)
            .await
            .expect("connect to etcd")
    }
}

impl Fixture for EtcdFixture {
    type Store = EtcdStore;

    async fn open(&self, name: &str) -> EtcdStore {
        self.store(&name.replace('_', "-")).await
    }
}

gatehouse_coordinator::state_store_suite!(etcd_fixture());

fn put_plan(plan: &str, record: &[u8]) -> StoreOp {
    StoreOp::PutPlan {
        plan: PlanId::new(plan),
        record: record.to_vec(),
    }
}

async fn plan_ids(store: &EtcdStore) -> Vec<String> {
    let plans = store.load().await.expect("load");
    plans
        .into_iter()
        .map(|p| p.plan.as_str().to_string())
        .collect()
}

/// Whether `key` exists, read with a client of our own.
async fn exists(client: &mut Client, key: &str) -> bool {
    let response = client.get(key, None).await.expect("raw get");
    response.count() == 1
}

async fn create_revision(client: &mut Client, key: &str) -> i64 {
    let response = client.get(key, None).await.expect("raw get");
    response.kvs()[0].create_revision()
}

#[tokio::test]
async fn fenced_writes_need_the_same_leader_key() {
    let Some(fixture) = etcd_fixture() else {
        return;
    };
    let store = fixture.store("fenced").await;
    let mut raw = store.client();
    let leader_key = "/gatehouse/fenced/leader";
    let lease = raw.lease_grant(60, None).await.expect("grant lease").id();
    raw.put(leader_key, "me", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put leader key");
    let fence = Fence {
        key: leader_key.into(),
        create_revision: create_revision(&mut raw, leader_key).await,
    };
    let leader = store.fenced(fence.clone());
    assert_eq!(leader.fence(), Some(&fence));
    leader
        .apply(&[put_plan("a", b"a")])
        .await
        .expect("a write while leading");
    assert_eq!(plan_ids(&store).await, ["a"]);

    // Another leader: the key is deleted and created again, at a new revision.
    raw.delete(leader_key, None)
        .await
        .expect("delete leader key");
    raw.put(leader_key, "other", None).await.expect("re-put");
    let ops = [
        put_plan("b", b"b"),
        StoreOp::DeletePlan {
            plan: PlanId::new("a"),
        },
    ];
    let err = leader.apply(&ops).await.err();
    assert!(matches!(err, Some(StoreError::Fenced)), "got {err:?}");
    assert!(!exists(&mut raw, "/gatehouse/fenced/plans/b/record").await);
    assert!(exists(&mut raw, "/gatehouse/fenced/plans/a/record").await);

    // Fencing is per store: the new leader's fence works, a key never created never does.
    let new_fence = Fence {
        key: leader_key.into(),
        create_revision: create_revision(&mut raw, leader_key).await,
    };
    store
        .fenced(new_fence)
        .apply(&ops)
        .await
        .expect("the new leader writes");
    assert_eq!(plan_ids(&store).await, ["b"]);
    let nobody = store.fenced(Fence {
        key: b"/gatehouse/fenced/nobody".to_vec(),
        create_revision: 1,
    });
    let err = nobody.apply(&[put_plan("c", b"c")]).await.err();
    assert!(matches!(err, Some(StoreError::Fenced)), "got {err:?}");
    assert_eq!(plan_ids(&store).await, ["b"]);
}

#[tokio::test]
async fn a_stopped_etcd_is_unavailable_then_recovers() {
    let Some(mut fixture) = etcd_fixture() else {
        return;
    };
    let store = fixture.store("outage").await;
    store
        .apply(&[put_plan("before", b"1")])
        .await
        .expect("apply");
    fixture.server.stop();

    // Bounded by the store's own timeout; the outer bound only turns a hang into a failure.
    let outcome = tokio::time::timeout(TIMEOUT * 5, store.apply(&[put_plan("during", b"2")]))
        .await
        .unwrap_or_else(|_| panic!("apply hung for {:?} with etcd down", TIMEOUT * 5));
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(_))),
        "apply with etcd down: {outcome:?}"
    );
    let message = outcome.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.starts_with("etcd is unavailable: "), "{message}");
    let outcome = tokio::time::timeout(TIMEOUT * 5, store.load())
        .await
        .unwrap_or_else(|_| panic!("load hung with etcd down"));
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(_))),
        "load with etcd down: {outcome:?}"
    );

    fixture.server.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.apply(&[put_plan("after", b"3")]).await {
            Ok(()) => break,
            Err(StoreError::Unavailable(e)) => {
                assert!(Instant::now() < deadline, "etcd did not come back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("unexpected error after restart: {e}"),
        }
    }
    assert_eq!(plan_ids(&store).await, ["after", "before"]);
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test]
async fn a_frozen_etcd_times_out_as_unavailable() {
    let Some(fixture) = etcd_fixture() else {
        return;
    };
    let store = fixture.store("frozen").await;
    store
        .apply(&[put_plan("before", b"1")])
        .await
        .expect("apply");
    // Stopped, not dead: the connection stays open and nothing answers.
    signal(fixture.server.pid(), "STOP");
    let outcome = tokio::time::timeout(TIMEOUT * 5, store.apply(&[put_plan("during", b"2")])).await;
    signal(fixture.server.pid(), "CONT");
    let outcome = outcome.unwrap_or_else(|_| panic!("apply hung for {:?}", TIMEOUT * 5));
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(m)) if m.contains("no answer within")),
        "apply to a frozen etcd: {outcome:?}"
    );
    // The timed-out write may or may not have landed; the store works again either way.
    store
        .apply(&[put_plan("after", b"3")])
        .await
        .expect("apply after resume");
    let ids = plan_ids(&store).await;
    assert!(
        ids.contains(&"before".to_string()) && ids.contains(&"after".to_string()),
        "{ids:?}"
    );
}

#[tokio::test]
async fn clusters_do_not_see_each_other() {
    let Some(fixture) = etcd_fixture() else {
        return;
    };
    let one = fixture.store("one").await;
    let one_one = fixture.store("one-1").await;
    assert_eq!(one.prefix(), "/gatehouse/one/");
    one.apply(&[put_plan("p", b"1")]).await.expect("apply");
    one_one.apply(&[put_plan("p", b"2")]).await.expect("apply");
    one_one.apply(&[put_plan("q", b"2")]).await.expect("apply");
    one.apply(&[StoreOp::DeletePlan {
        plan: PlanId::new("p"),
    }])
    .await
    .expect("delete");
    assert_eq!(plan_ids(&one).await, Vec::<String>::new());
    assert_eq!(plan_ids(&one_one).await, ["p", "q"]);
}

#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let Some(fixture) = etcd_fixture() else {
        return;
    };
    let store = fixture.store("layout").await;
    let ops = [
        put_plan("p-1", b"record"),
        StoreOp::AppendEvents {
            plan: PlanId::new("p-1"),
            first_seq: 42,
            chunk: b"events".to_vec(),
        },
        StoreOp::PutCancel {
            plan: PlanId::new("p-1"),
            force: true,
        },
    ];
    store.apply(&ops).await.expect("apply");
    let out = Command::new(etcdctl())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", fixture.server.endpoint()))
        .args(["get", "--prefix", "/gatehouse/layout/"])
        .output()
        .expect("run etcdctl");
    assert!(out.status.success(), "etcdctl: {out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "/gatehouse/layout/plans/p-1/cancel",
            "force",
            "/gatehouse/layout/plans/p-1/log/00000000000000000042",
            "events",
            "/gatehouse/layout/plans/p-1/record",
            "record",
        ]
    );
}

#[tokio::test]
async fn foreign_keys_are_reported_or_skipped() {
    let Some(fixture) = etcd_fixture() else {
        return;
    };
    let store = fixture.store("foreign").await;
    let mut raw = store.client();
    store.apply(&[put_plan("ok", b"r")]).await.expect("apply");
    // Chunks without a record: skipped (with a warning).
    raw.put(
        "/gatehouse/foreign/plans/orphan/log/00000000000000000001",
        "x",
        None,
    )
    .await
    .expect("raw put");
    assert_eq!(plan_ids(&store).await, ["ok"]);
    // A key outside the layout: reported with the key.
    let bad = "/gatehouse/foreign/plans/ok/log/7";
    raw.put(bad, "x", None).await.expect("raw put");
    let err = store.load().await.err();
    assert!(
        matches!(&err, Some(StoreError::Corrupt { key, .. }) if key == bad),
        "got {err:?}"
    );
    // Keys next to the prefix are not ours and not read.
    raw.delete(bad, None).await.expect("raw delete");
    raw.put("/gatehouse/foreign/other", "x", None)
        .await
        .expect("raw put");
    raw.put("/gatehouse/foreign/plans", "x", None)
        .await
        .expect("raw put");
    assert_eq!(plan_ids(&store).await, ["ok"]);
    let all = raw
        .get("/gatehouse/foreign/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("raw get");
    assert_eq!(all.count(), 4, "nothing else was touched");
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    let endpoints = ["http://127.0.0.1:1".to_string()];
    for cluster in ["", "Prod", "a/b"] {
        let err = EtcdStore::connect(&endpoints, cluster, TIMEOUT).await.err();
        assert!(
            matches!(&err, Some(StoreError::InvalidConfig(m)) if m.contains("cluster name")),
            "{cluster:?}: {err:?}"
        );
    }
    let err = EtcdStore::connect(&[], "c", TIMEOUT).await.err();
    assert!(matches!(err, Some(StoreError::InvalidConfig(_))), "{err:?}");
    let err = EtcdStore::connect(&["http://bad host".to_string()], "c", TIMEOUT)
        .await
        .err();
    assert!(matches!(err, Some(StoreError::InvalidConfig(_))), "{err:?}");
}

/// The registry's group commit over a fenced etcd store: a deposed leader's queued
/// writes are refused as a whole, and the journal reports it (the registry then stops
/// and the term ends).
#[tokio::test]
async fn a_deposed_leaders_journal_is_fenced_and_writes_nothing() {
    use gatehouse_coordinator::registry::journal;
    use gatehouse_coordinator::registry::journal::{Journal, JournalError};

    let Some(fixture) = etcd_fixture() else {
        return;
    };
    let store = fixture.store("journal").await;
    let mut raw = store.client();
    let leader_key = "/gatehouse/journal/election/me";
    raw.put(leader_key, "http://me", None)
        .await
        .expect("put leader key");
    let term = create_revision(&mut raw, leader_key).await;
    let fenced = store.fenced(Fence {
        key: leader_key.into(),
        create_revision: term,
    });
    let mut j = Journal::new(
        std::sync::Arc::new(fenced),
        None,
        term,
        journal::DEFAULT_LINGER,
    );
    let plan = PlanId::new("p-1");
    j.push_op(put_plan("p-1", b"record"), None);
    j.flush();
    j.committed().await.expect("the leader's first commit");
    assert!(exists(&mut raw, "/gatehouse/journal/plans/p-1/record").await);

    // A new leader takes over: the election key is another one now.
    raw.delete(leader_key, None).await.expect("delete");
    raw.put(leader_key, "http://other", None)
        .await
        .expect("re-put");
    let event = |gate: u32| {
        gatehouse_coordinator::core::PlanEvent::Gate(gatehouse_coordinator::core::GateEvent::new(
            plan.clone(),
            gatehouse_common::ids::GateIdx(gate),
            gatehouse_coordinator::core::GateStatus::Running,
            1,
            None,
        ))
    };
    j.push_event(&plan, 1, event(0), None);
    j.push_event(&plan, 2, event(1), None);
    j.push_op(
        StoreOp::PutCancel {
            plan: plan.clone(),
            force: false,
        },
        None,
    );
    j.flush();
    let err = j.committed().await.err();
    assert!(
        matches!(err, Some(JournalError::Store(StoreError::Fenced))),
        "got {err:?}"
    );
    let log = raw
        .get(
            "/gatehouse/journal/plans/p-1/log/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get log");
    assert_eq!(log.count(), 0, "no chunk of the deposed leader was written");
    assert!(!exists(&mut raw, "/gatehouse/journal/plans/p-1/cancel").await);
    // What it wrote while it led is intact.
    let record = raw
        .get("/gatehouse/journal/plans/p-1/record", None)
        .await
        .expect("get record");
    assert_eq!(record.kvs()[0].value(), b"record");
}
