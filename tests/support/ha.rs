//! A highly available cluster on loopback for integration tests: a real etcd
//! ([`super::etcd::EtcdServer`]), several `gatehouse coordinator --etcd` replicas on
//! ephemeral ports, and `gatehouse worker` processes given every coordinator URL. The
//! leader is found through `grpc.health.v1` (only the leader's plan service is
//! SERVING). Everything is killed on drop; on a failing test every log tail is printed.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::Duration;

use gatehouse_proto::v1;

use super::cluster::Proc;
use super::etcd::{EtcdServer, etcdctl};
use super::{Workspace, wait_until};

/// The etcd cluster name the replicas use.
pub const CLUSTER: &str = "itest";
/// The election name under it.
pub const ELECTION: &str = "/gatehouse/itest/election";

/// etcd + coordinators + workers.
pub struct HaCluster {
    pub ws: Workspace,
    pub etcd: EtcdServer,
    /// Coordinator processes by index (a killed one stays in place, dead).
    pub coordinators: Vec<Proc>,
    /// Their `host:port`.
    pub addrs: Vec<String>,
    /// Their `--http` (probes and metrics) `host:port`.
    pub http: Vec<String>,
    pub workers: Vec<Proc>,
    pub rt: tokio::runtime::Runtime,
}

impl HaCluster {
    /// Starts etcd and `n` coordinators with `lease_ttl`, and waits for a leader;
    /// `None` when etcd tests are skipped.
    pub fn start(n: usize, lease_ttl: &str) -> Option<Self> {
        let etcd = EtcdServer::start()?;
        let ws = Workspace::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut c = Self {
            ws,
            etcd,
            coordinators: Vec::new(),
            addrs: Vec::new(),
            http: Vec::new(),
            workers: Vec::new(),
            rt,
        };
        for i in 0..n {
            let ready = c.ws.path().join(format!("coordinator-{i}.addr"));
            let state = c.ws.path().join(format!("state-{i}"));
            let http = format!("127.0.0.1:{}", super::etcd::free_ports::<1>()[0]);
            let args: Vec<String> = [
                "coordinator",
                "--listen",
                "127.0.0.1:0",
                "--ready-file",
                ready.to_str().expect("utf-8"),
                "--etcd",
                &c.etcd.endpoint(),
                "--cluster",
                CLUSTER,
                "--lease-ttl",
                lease_ttl,
                "--heartbeat-interval",
                "200ms",
                "--liveness-timeout",
                "1500ms",
                "--kill-grace",
                "1s",
                "--state-dir",
                state.to_str().expect("utf-8"),
                "--http",
                &http,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            c.coordinators
                .push(Proc::spawn(&format!("coordinator-{i}"), c.ws.path(), &args));
            wait_until(
                &format!("coordinator {i}'s ready file"),
                Duration::from_secs(20),
                || ready.exists(),
            );
            c.addrs
                .push(std::fs::read_to_string(&ready).expect("ready file"));
            c.http.push(http);
        }
        c.wait_leader(None);
        Some(c)
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }

    /// Every coordinator URL, comma-separated (what clients and workers are given).
    pub fn urls(&self) -> String {
        (0..self.addrs.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether coordinator `i` reports its plan service SERVING (it leads).
    pub fn serving(&self, i: usize) -> bool {
        super::cluster::plan_service_serving(&self.rt, &self.url(i))
    }

    /// Waits until exactly one coordinator leads, other than `not`; returns it.
    pub fn wait_leader(&self, not: Option<usize>) -> usize {
        let mut leader = None;
        wait_until(
            "one leader among the coordinators",
            Duration::from_secs(30),
            || {
                let leading: Vec<usize> = (0..self.addrs.len())
                    .filter(|&i| Some(i) != not && self.serving(i))
                    .collect();
                leader = leading.first().copied();
                leading.len() == 1
            },
        );
        leader.expect("a leader")
    }

    /// Starts a worker given every coordinator URL; waits until the leader lists it.
    pub fn add_worker(&mut self, id: &str, extra: &[&str]) {
        let args = super::cluster::worker_args(&self.urls(), id, extra);
        self.workers.push(Proc::spawn(id, self.ws.path(), &args));
        let want = id.to_string();
        wait_until(
            &format!("worker {id} to join the leader"),
            Duration::from_secs(30),
            || {
                let leader = self.wait_leader(None);
                self.list_workers(leader)
                    .iter()
                    .any(|w| w.worker_id == want)
            },
        );
    }

    pub fn list_workers(&self, i: usize) -> Vec<v1::WorkerStatus> {
        super::cluster::list_workers(&self.rt, &self.url(i))
    }

    /// Gates of `plan` that passed, as coordinator `i` reports them (0 if it does not
    /// answer).
    pub fn passed_gates(&self, i: usize, plan: &str) -> usize {
        let mut c = super::cluster::plan_client(&self.rt, &self.url(i));
        let req = v1::GetPlanRequest {
            plan_id: plan.into(),
        };
        self.rt
            .block_on(c.get_plan(req))
            .map(|r| {
                r.into_inner()
                    .gates
                    .iter()
                    .filter(|g| g.state == v1::GateState::Passed as i32)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Submits to coordinator `i`.
    pub fn submit(&self, i: usize, document: &str) -> Result<String, tonic::Status> {
        super::cluster::submit(&self.rt, &self.url(i), document)
    }

    /// A `gatehouse` client command given every coordinator URL.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = self.ws.cmd(args);
        c.env("GATEHOUSE_COORDINATOR", self.urls());
        c
    }

    /// `etcdctl` against the test etcd.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new(etcdctl())
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.etcd.endpoint())
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// Every key under `prefix` with its create and mod revisions and value.
    pub fn etcd_range(&self, prefix: &str) -> Vec<EtcdKv> {
        let endpoint = self.etcd.endpoint();
        self.rt.block_on(async {
            let mut client = etcd_client::Client::connect([endpoint], None)
                .await
                .expect("connect to etcd");
            let resp = client
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .expect("etcd get");
            resp.kvs()
                .iter()
                .map(|kv| EtcdKv {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: kv.value().to_vec(),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                })
                .collect()
        })
    }

    /// etcd's current revision.
    pub fn etcd_revision(&self) -> i64 {
        let endpoint = self.etcd.endpoint();
        self.rt.block_on(async {
            let mut client = etcd_client::Client::connect([endpoint], None)
                .await
                .expect("connect to etcd");
            let resp = client.get("/", None).await.expect("etcd get");
            resp.header().expect("response header").revision()
        })
    }

    /// The current leader key of the election (the lowest create revision).
    pub fn leader_key(&self) -> Option<EtcdKv> {
        self.etcd_range(&format!("{ELECTION}/"))
            .into_iter()
            .min_by_key(|kv| kv.create_revision)
    }
}

/// One etcd key-value.
#[derive(Clone, Debug)]
pub struct EtcdKv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        for p in self.workers.iter_mut().chain(self.coordinators.iter_mut()) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            for p in self.workers.iter().chain(self.coordinators.iter()) {
                eprintln!("----- {} log (tail) -----\n{}", p.name, p.tail());
            }
            eprintln!("----- etcd log (tail) -----\n{}", self.etcd.log_tail());
        }
    }
}
