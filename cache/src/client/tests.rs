//! The cache client ([`ClusterCache`]) against real cache nodes (this crate's node
//! over real loopback sockets), and against a node that accepts connections but never
//! answers (what a SIGSTOPped process looks like to its peers).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gatehouse_common::cache::codec::encode_entry;
use gatehouse_common::cache::{CacheEntry, CacheKey, ResultCache, unix_ms_now};
use gatehouse_common::exec::{ExitStatus, GateResult, OutputTail};
use gatehouse_common::ids::GateId;
use gatehouse_proto::v1;
use gatehouse_proto::v1::cache_service_client::CacheServiceClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::node::{CacheNodeConfig, StoreConfig, noise, start_node};
use crate::{ClientConfig, ClusterCache, Membership};

struct Node {
    id: String,
    url: String,
}

/// A listener on a free loopback port.
async fn loopback() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

/// Starts `n` cache nodes on loopback.
async fn nodes(n: usize, stop: &CancellationToken) -> Vec<Node> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("node-{i}");
        let (_, members) = watch::channel(Arc::new(Membership::default()));
        let config = CacheNodeConfig {
            advertise: None,
            store: StoreConfig::default(),
            tls: Default::default(),
        };
        let node = start_node(
            id.clone(),
            "localhost",
            loopback().await,
            config,
            members,
            None,
            stop.clone(),
        )
        .await
        .expect("start node");
        out.push(Node { id, url: node.url });
    }
    out
}

/// Client settings for tests whose lookups must find what live nodes hold. A lookup
/// that has no answer by the lookup timeout is a miss, and the default 250 ms is
/// shorter than a debug build's lookups take on a loaded machine (thousands of them
/// queued behind each other take over a second): a generous timeout keeps these tests
/// about placement, chunking, batching and repair, not about the machine's load.
fn patient() -> ClientConfig {
    ClientConfig {
        lookup_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    }
}

fn client(nodes: &[(String, String)], replicas: usize, config: ClientConfig) -> ClusterCache {
    let members = Membership::new(1, replicas, nodes.iter().cloned());
    let (_, rx) = watch::channel(Arc::new(members));
    ClusterCache::new(config, rx)
}

fn pairs(nodes: &[Node]) -> Vec<(String, String)> {
    nodes
        .iter()
        .map(|n| (n.id.clone(), n.url.clone()))
        .collect()
}

fn key(i: u32) -> CacheKey {
    CacheKey(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

fn entry(stdout: Vec<u8>) -> CacheEntry {
    CacheEntry {
        result: GateResult {
            status: ExitStatus::Exited(0),
            duration: Duration::from_millis(7),
            peak_memory: Some(1 << 20),
            stdout: OutputTail {
                bytes: stdout,
                dropped: 0,
            },
            stderr: OutputTail::default(),
            tests: None,
        },
        producer: GateId::new("pr-1/test"),
        created_unix_ms: unix_ms_now(),
        flaky: None,
    }
}

/// Writes `entry` to every replica of `key` and waits; whether one stored it.
async fn put_and_wait(cache: &ClusterCache, key: &CacheKey, entry: &CacheEntry) -> bool {
    let bytes = encode_entry(key, entry).expect("encode");
    cache.put_bytes(key, bytes.into()).await
}

async fn stats(url: &str) -> v1::CacheNodeStats {
    let mut c = CacheServiceClient::connect(url.to_owned())
        .await
        .expect("connect");
    c.stats(v1::StatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .node
        .expect("node stats")
}

#[tokio::test]
async fn entries_go_to_r_replicas_and_come_back() {
    let stop = CancellationToken::new();
    let nodes = nodes(3, &stop).await;
    let cache = client(&pairs(&nodes), 2, patient());
    for i in 0..30 {
        assert!(
            put_and_wait(&cache, &key(i), &entry(vec![i as u8; 10])).await,
            "put"
        );
    }
    for i in 0..30 {
        let got = cache.get(&key(i)).await.expect("get").expect("hit");
        assert_eq!(got.result.stdout.bytes, vec![i as u8; 10]);
    }
    assert_eq!(cache.get(&key(99)).await.expect("get"), None);
    // Each entry is on exactly two of the three nodes.
    let mut puts = 0;
    for n in &nodes {
        let s = stats(&n.url).await;
        puts += s.puts;
        assert_eq!(s.memory_entries, s.puts);
    }
    assert_eq!(puts, 60);
    stop.cancel();
}

#[tokio::test]
async fn large_entries_travel_in_chunks() {
    let stop = CancellationToken::new();
    let nodes = nodes(2, &stop).await;
    let cache = client(&pairs(&nodes), 2, patient());
    // About 3 MiB after compression: three chunks each way.
    let big = entry(noise(1, 3 << 20));
    assert!(encode_entry(&key(1), &big).expect("encode").len() > 2 << 20);
    assert!(put_and_wait(&cache, &key(1), &big).await, "put");
    assert_eq!(cache.get(&key(1)).await.expect("get"), Some(big));
    stop.cancel();
}

#[tokio::test]
async fn a_replica_that_missed_an_entry_gets_it_back() {
    let stop = CancellationToken::new();
    let nodes = nodes(2, &stop).await;
    let all = pairs(&nodes);
    // Written while only node-0 was a member.
    let early = client(&all[..1], 2, ClientConfig::default());
    assert!(
        put_and_wait(&early, &key(5), &entry(b"x".to_vec())).await,
        "put"
    );
    assert_eq!(stats(&nodes[1].url).await.puts, 0);
    // Node-1's "missing" must arrive before the lookup's deadline to be repaired.
    let cache = client(&all, 2, patient());
    assert!(cache.get(&key(5)).await.expect("get").is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(&nodes[1].url).await.puts == 0 {
        assert!(Instant::now() < deadline, "no read-repair");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.stats().repairs.load(Ordering::Relaxed), 1);
    stop.cancel();
}

/// A node that accepts connections and never answers (a stopped process) costs one
/// timeout, not one per lookup: once a request to it timed out (here the write of the
/// entry), lookups skip it and are answered by the live replica alone. Counted, not
/// timed: a lookup that waited on the hung node would end at its timeout as an error.
#[tokio::test]
async fn a_hung_node_costs_one_timeout_not_one_per_lookup() {
    let stop = CancellationToken::new();
    let live = nodes(1, &stop).await;
    // Accepts TCP connections and never says anything: a stopped process.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_url = format!("http://{}", hung.local_addr().expect("addr"));
    let mut all = pairs(&live);
    all.push(("hung".into(), hung_url));
    let config = ClientConfig {
        // The one timeout this test waits for (the write to the hung node), long
        // enough for the live node's write on a loaded machine.
        put_timeout: Duration::from_secs(2),
        put_attempts: 1,
        // Longer than any run of this test: the hung node stays skipped throughout.
        suspect_for: Duration::from_secs(3600),
        ..patient()
    };
    let cache = client(&all, 2, config);
    // R = 2 over two nodes: every key lives on both.
    assert!(
        put_and_wait(&cache, &key(1), &entry(b"ok".to_vec())).await,
        "the live replica takes it"
    );
    assert_eq!(
        cache.stats().put_failures.load(Ordering::Relaxed),
        1,
        "the write to the hung node timed out"
    );
    // A hit and a miss, then a hundred misses: none waits on the hung node.
    assert!(cache.get(&key(1)).await.expect("get").is_some());
    assert_eq!(cache.get(&key(2)).await.expect("get"), None);
    assert_eq!(
        cache.stats().errors.load(Ordering::Relaxed),
        0,
        "a lookup waited on the hung node"
    );
    for i in 100..200 {
        assert_eq!(cache.get(&key(i)).await.expect("get"), None);
    }
    assert_eq!(
        cache.stats().errors.load(Ordering::Relaxed),
        0,
        "a lookup waited on the hung node"
    );
    // The live node answered every lookup.
    let s = stats(&live[0].url).await;
    assert_eq!((s.hits, s.misses), (1, 101));
    drop(hung);
    stop.cancel();
}

/// Two thousand lookups in flight at once, each queued on both replicas' batchers, all
/// find their entries and none fails: however long they queue behind each other's
/// RPCs (the lookup timeout is [`patient`]), none is dropped or answered wrongly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_lookups_are_batched() {
    let stop = CancellationToken::new();
    let nodes = nodes(2, &stop).await;
    let cache = Arc::new(client(&pairs(&nodes), 2, patient()));
    // All 2000 writes queued at once, then waited for: every entry on both nodes.
    let keys: Vec<CacheKey> = (0..2000).map(key).collect();
    let empty = entry(Vec::new());
    let written =
        futures_util::future::join_all(keys.iter().map(|k| put_and_wait(&cache, k, &empty))).await;
    assert!(written.into_iter().all(|stored| stored), "a write failed");
    assert_eq!(cache.stats().puts.load(Ordering::Relaxed), 4000);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2000 {
        let cache = cache.clone();
        tasks.spawn(async move { cache.get(&key(i)).await.expect("get").is_some() });
    }
    let mut hits = 0;
    while let Some(hit) = tasks.join_next().await {
        hits += usize::from(hit.expect("task"));
    }
    assert_eq!(hits, 2000);
    assert_eq!(cache.stats().errors.load(Ordering::Relaxed), 0);
    cache.close(Duration::from_secs(1)).await;
    stop.cancel();
}

/// TLS settings from `proto/testdata/tls` (see `make.sh` there): the certificate and
/// key `cert` (`test` or `other`, or none), trusting CA `ca`, names checked against
/// `gatehouse.test`.
fn tls(cert: Option<&str>, ca: &str, client_auth: bool) -> gatehouse_proto::tls::Tls {
    tls_named(cert, ca, client_auth, Some("gatehouse.test"))
}

/// Starts a cache node `id` on loopback serving with `tls`; returns its URL.
async fn tls_node(id: &str, tls: gatehouse_proto::tls::Tls, stop: &CancellationToken) -> String {
    let (_, members) = watch::channel(Arc::new(Membership::default()));
    let config = CacheNodeConfig {
        advertise: None,
        store: StoreConfig::default(),
        tls,
    };
    start_node(
        id.into(),
        "localhost",
        loopback().await,
        config,
        members,
        None,
        stop.clone(),
    )
    .await
    .expect("start node")
    .url
}

/// [`tls`] checking servers against `server_name` (`None`: each URL's host).
fn tls_named(
    cert: Option<&str>,
    ca: &str,
    client_auth: bool,
    server_name: Option<&str>,
) -> gatehouse_proto::tls::Tls {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/testdata/tls");
    gatehouse_proto::tls::Tls::load(&gatehouse_proto::tls::TlsFiles {
        cert: cert.map(|c| dir.join(format!("{c}.pem"))),
        key: cert.map(|c| dir.join(format!("{c}-key.pem"))),
        ca: Some(dir.join(format!("{ca}-ca.pem"))),
        client_auth,
        server_name: server_name.map(str::to_owned),
    })
    .expect("test certificates load")
}

/// `--tls-server-name` replaces the URL's host in the check of the server's
/// certificate: the node at 127.0.0.1 (which its certificate names) is refused when
/// the client expects another name, and accepted under a name the certificate has.
#[tokio::test]
async fn the_server_name_replaces_the_urls_host_in_the_check() {
    let stop = CancellationToken::new();
    let url = tls_node("named", tls(Some("test"), "test", false), &stop).await;
    let nodes = [("named".to_string(), url)];
    let with = |name: Option<&str>| {
        client(
            &nodes,
            1,
            ClientConfig {
                put_attempts: 1,
                tls: tls_named(None, "test", false, name),
                ..ClientConfig::default()
            },
        )
    };
    for (name, accepted) in [
        (None, true),
        (Some("gatehouse.test"), true),
        (Some("localhost"), true),
        (Some("wrong.test"), false),
    ] {
        let cache = with(name);
        assert_eq!(
            put_and_wait(&cache, &key(7), &entry(b"named".to_vec())).await,
            accepted,
            "server name {name:?}"
        );
    }
    stop.cancel();
}

/// A node whose advertised URL's scheme does not match what it serves does not start.
#[tokio::test]
async fn an_advertised_scheme_that_does_not_match_is_refused() {
    for (tls, advertise) in [
        (tls(Some("test"), "test", false), "http://127.0.0.1:1"),
        (gatehouse_proto::tls::Tls::default(), "https://127.0.0.1:1"),
    ] {
        let (_, members) = watch::channel(Arc::new(Membership::default()));
        let config = CacheNodeConfig {
            advertise: Some(advertise.into()),
            store: StoreConfig::default(),
            tls,
        };
        let err = start_node(
            "n".into(),
            "localhost",
            loopback().await,
            config,
            members,
            None,
            CancellationToken::new(),
        )
        .await
        .err()
        .expect("refused");
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}

/// A node serving mutual TLS: a client with a certificate of the same CA reads and
/// writes over TLS; a plaintext client, a client that does not trust the node's CA, one
/// whose certificate is of another CA and one without a certificate get nothing
/// (misses and failed writes, never an error or a hang).
#[tokio::test]
async fn a_tls_node_serves_only_clients_it_trusts() {
    let stop = CancellationToken::new();
    let url = tls_node("tls-node", tls(Some("test"), "test", true), &stop).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let nodes = [("tls-node".to_string(), url.clone())];
    let quick = |tls: gatehouse_proto::tls::Tls| ClientConfig {
        put_attempts: 1,
        lookup_timeout: Duration::from_secs(2),
        tls,
        ..ClientConfig::default()
    };

    let trusted = client(&nodes, 1, quick(tls(Some("test"), "test", false)));
    assert!(put_and_wait(&trusted, &key(1), &entry(b"over tls".to_vec())).await);
    let got = trusted.get(&key(1)).await.expect("get").expect("hit");
    assert_eq!(got.result.stdout.bytes, b"over tls");

    let plain_url = url.replacen("https://", "http://", 1);
    let plaintext = client(
        &[("tls-node".to_string(), plain_url)],
        1,
        quick(Default::default()),
    );
    let distrusting = client(&nodes, 1, quick(tls(Some("test"), "other", false)));
    let foreign_cert = client(&nodes, 1, quick(tls(Some("other"), "test", false)));
    let anonymous = client(&nodes, 1, quick(tls(None, "test", false)));
    for (what, cache) in [
        ("plaintext", &plaintext),
        ("server not trusted", &distrusting),
        ("client certificate of another CA", &foreign_cert),
        ("no client certificate", &anonymous),
    ] {
        let started = Instant::now();
        assert_eq!(cache.get(&key(1)).await.expect("get"), None, "{what}");
        assert!(
            !put_and_wait(cache, &key(2), &entry(b"x".to_vec())).await,
            "{what}: the write is refused"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
    }
    assert_eq!(trusted.get(&key(2)).await.expect("get"), None);
    stop.cancel();
}
