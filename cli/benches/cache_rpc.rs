//! Cache RPC throughput and latency over loopback, against real cache node processes.
//!
//! Starts `--nodes` (default 3) `gatehouse worker --cache-listen 127.0.0.1:PORT`
//! processes (their coordinator URL points nowhere: a cache node serves without one)
//! and measures, through the same client the coordinator uses (`ClusterCache`, R = 2):
//!
//! 1. writes: `--entries` entries of a typical gate result (a 2 KiB output tail),
//!    `--concurrency` at a time, each to both replicas;
//! 2. batched lookups: every key looked up with `--concurrency` lookups in flight, the
//!    way the coordinator checks a wide level of a plan;
//! 3. single lookups: `--single` lookups one after the other (no batching possible),
//!    for the latency of one cache check.
//!
//! Run with `cargo bench -p gatehouse-cli --bench cache_rpc` (release build of the
//! `gatehouse` binary first: `cargo build --release -p gatehouse-cli`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_cache::{ClientConfig, ClusterCache, Membership};
use gatehouse_common::cache::{CacheEntry, CacheKey, ResultCache, unix_ms_now};
use gatehouse_common::exec::{ExitStatus, GateResult, OutputTail};
use gatehouse_common::ids::GateId;

struct Args {
    nodes: usize,
    entries: usize,
    concurrency: usize,
    single: usize,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 3,
        entries: 20_000,
        concurrency: 256,
        single: 2_000,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).and_then(|v| v.parse().ok());
        match argv[i].as_str() {
            "--nodes" => a.nodes = value().expect("--nodes N"),
            "--entries" => a.entries = value().expect("--entries N"),
            "--concurrency" => a.concurrency = value().expect("--concurrency N"),
            "--single" => a.single = value().expect("--single N"),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn key(i: usize) -> CacheKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64).to_le_bytes());
    k[8..16].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    CacheKey(k)
}

fn entry(i: usize) -> CacheEntry {
    let tail = format!("test result for gate {i}: ok. 42 passed; 0 failed\n").repeat(40);
    CacheEntry {
        result: GateResult {
            status: ExitStatus::Exited(0),
            duration: Duration::from_millis(1234),
            peak_memory: Some(64 << 20),
            stdout: OutputTail {
                bytes: tail.into_bytes(),
                dropped: 0,
            },
            stderr: OutputTail::default(),
            tests: None,
        },
        producer: GateId::new(format!("pr-{i}/test")),
        created_unix_ms: unix_ms_now(),
        flaky: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `n` operations `concurrency` at a time; returns the wall time and every
/// operation's latency.
async fn load<F, Fut>(n: usize, concurrency: usize, op: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let op = op.clone();
        tasks.spawn(async move {
            let t = Instant::now();
            op(i).await;
            drop(permit);
            t.elapsed()
        });
    }
    let mut lat = Vec::with_capacity(n);
    while let Some(d) = tasks.join_next().await {
        lat.push(d.expect("task"));
    }
    let wall = start.elapsed();
    lat.sort();
    (wall, lat)
}

fn report(what: &str, n: usize, wall: Duration, lat: &[Duration]) {
    println!(
        "| {what} | {n} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        ms(percentile(lat, 0.5)),
        ms(percentile(lat, 0.99)),
        ms(lat[lat.len() - 1]),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let bin = env!("CARGO_BIN_EXE_gatehouse");
    let mut children = Vec::new();
    let mut members = Vec::new();
    for i in 0..a.nodes {
        let port = free_port();
        let child = Command::new(bin)
            .args([
                "worker",
                "--coordinator",
                "http://127.0.0.1:9",
                "--id",
                &format!("bench-node-{i}"),
                "--cache-listen",
                &format!("127.0.0.1:{port}"),
                "--cache-memory",
                "1Gi",
            ])
            .env("GATEHOUSE_LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a cache node");
        children.push(child);
        members.push((
            format!("bench-node-{i}"),
            format!("http://127.0.0.1:{port}"),
        ));
    }
    let _nodes = Nodes(children);
    // Wait until every node answers.
    for (_, url) in &members {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok =
                gatehouse_proto::v1::cache_service_client::CacheServiceClient::connect(url.clone())
                    .await
                    .is_ok();
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "node {url} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let membership = Membership::new(1, 2, members.clone());
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(membership));
    let cache = Arc::new(ClusterCache::new(
        ClientConfig {
            lookup_timeout: Duration::from_secs(5),
            ..ClientConfig::default()
        },
        rx,
    ));
    let entries: Arc<Vec<CacheEntry>> = Arc::new((0..a.entries).map(entry).collect());
    let encoded = gatehouse_common::cache::codec::encode_entry(&key(0), &entries[0])
        .expect("encode")
        .len();

    println!(
        "## Cache RPCs over loopback ({} nodes, R = 2, entries of {encoded} bytes encoded)\n",
        a.nodes
    );
    println!("| operation | count | wall (s) | ops/s | p50 (ms) | p99 (ms) | max (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");

    let c = cache.clone();
    let e = entries.clone();
    let (wall, lat) = load(a.entries, a.concurrency, move |i| {
        let (c, e) = (c.clone(), e.clone());
        async move {
            let bytes = gatehouse_common::cache::codec::encode_entry(&key(i), &e[i]);
            assert!(
                c.put_bytes(&key(i), bytes.expect("encode").into()).await,
                "put"
            );
        }
    })
    .await;
    report(
        &format!("put (to both replicas), {} in flight", a.concurrency),
        a.entries,
        wall,
        &lat,
    );

    let c = cache.clone();
    let (wall, lat) = load(a.entries, a.concurrency, move |i| {
        let c = c.clone();
        async move {
            let hit = c.get(&key(i)).await.expect("get");
            assert!(hit.is_some(), "entry {i} missing");
        }
    })
    .await;
    report(
        &format!("get (hits, batched), {} in flight", a.concurrency),
        a.entries,
        wall,
        &lat,
    );

    let c = cache.clone();
    let (wall, lat) = load(a.single, 1, move |i| {
        let c = c.clone();
        async move {
            assert!(c.get(&key(i)).await.expect("get").is_some());
        }
    })
    .await;
    report("get (hits), one at a time", a.single, wall, &lat);

    let c = cache.clone();
    let (wall, lat) = load(a.single, 1, move |i| {
        let c = c.clone();
        async move {
            assert!(c.get(&key(a.entries + i)).await.expect("get").is_none());
        }
    })
    .await;
    report("get (misses), one at a time", a.single, wall, &lat);
    let s = cache.stats();
    println!(
        "\nclient errors: {}, failed writes: {}",
        s.errors.load(std::sync::atomic::Ordering::Relaxed),
        s.put_failures.load(std::sync::atomic::Ordering::Relaxed)
    );
}
