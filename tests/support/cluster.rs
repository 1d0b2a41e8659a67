//! A real cluster on loopback for integration tests: one `gatehouse coordinator` on an
//! ephemeral port (its address read from `--ready-file`), readiness through the
//! `grpc.health.v1` service, and `gatehouse worker` processes, all killed on drop. On a
//! failing test the tail of every process's log is printed.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatehouse_proto::v1;
use gatehouse_proto::v1::plan_service_client::PlanServiceClient;
use tonic::transport::Channel;

use super::{Workspace, bin, log_tail, wait_until};

/// A child process with its log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, dir: &Path, args: &[String]) -> Self {
        Self::spawn_with_env(name, dir, args, &[])
    }

    /// Like [`Proc::spawn`], with extra environment variables.
    pub fn spawn_with_env(name: &str, dir: &Path, args: &[String], env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(bin())
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .env_remove("GATEHOUSE_COORDINATOR")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn gatehouse");
        Self {
            name: name.into(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.name);
    }

    /// Waits for the process to exit (with a deadline) and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut status = None;
        wait_until(&format!("{} to exit", self.name), timeout, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.and_then(|s| s.code())
    }

    pub fn tail(&self) -> String {
        log_tail(&self.log, 40)
    }
}

/// Coordinator + workers.
pub struct Cluster {
    pub ws: Workspace,
    pub addr: String,
    pub coordinator: Proc,
    pub workers: Vec<Proc>,
    pub rt: tokio::runtime::Runtime,
    /// The coordinator's liveness timeout, extra flags and environment, which
    /// [`Cluster::restart_coordinator`] starts it with again.
    liveness: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts a coordinator with short heartbeat/liveness settings.
    pub fn start() -> Self {
        Self::start_listening("127.0.0.1:0")
    }

    /// Starts a coordinator that declares silent workers lost only after `liveness`.
    pub fn start_with_liveness(liveness: &str) -> Self {
        Self::start_with("127.0.0.1:0", liveness)
    }

    /// Starts a coordinator on a free port that [`Cluster::restart_coordinator`] reuses,
    /// so workers given its URL find it again.
    pub fn start_on_fixed_port() -> Self {
        Self::start_listening(&format!("127.0.0.1:{}", super::etcd::free_ports::<1>()[0]))
    }

    /// [`Cluster::start_on_fixed_port`] with `extra` coordinator flags and `env`, which a
    /// restart keeps.
    pub fn start_on_fixed_port_with_options(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let listen = format!("127.0.0.1:{}", super::etcd::free_ports::<1>()[0]);
        Self::start_full(&listen, "1500ms", extra, env)
    }

    /// Starts the coordinator again (after the test killed it) on the same
    /// address and state directory, and waits until it serves.
    pub fn restart_coordinator(&mut self) {
        let ready = self.ws.path().join("coordinator.addr");
        let _ = std::fs::remove_file(&ready);
        let mut args = Self::coordinator_args_with(&self.addr, &ready, &self.liveness);
        args.extend(self.extra.iter().cloned());
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.coordinator = Proc::spawn_with_env("coordinator-2", self.ws.path(), &args, &env);
        wait_until(
            "the restarted coordinator's ready file",
            Duration::from_secs(20),
            || ready.exists(),
        );
        self.wait_serving();
    }

    fn coordinator_args_with(listen: &str, ready: &Path, liveness: &str) -> Vec<String> {
        [
            "coordinator",
            "--listen",
            listen,
            "--ready-file",
            ready.to_str().expect("utf-8"),
            "--heartbeat-interval",
            "200ms",
            "--liveness-timeout",
            liveness,
            "--kill-grace",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn start_listening(listen: &str) -> Self {
        Self::start_with(listen, "1500ms")
    }

    fn start_with(listen: &str, liveness: &str) -> Self {
        Self::start_full(listen, liveness, &[], &[])
    }

    /// Starts a coordinator with `extra` flags and `env`.
    pub fn start_with_options(liveness: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_full("127.0.0.1:0", liveness, extra, env)
    }

    fn start_full(listen: &str, liveness: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let ws = Workspace::new();
        let ready = ws.path().join("coordinator.addr");
        let mut args = Self::coordinator_args_with(listen, &ready, liveness);
        args.extend(extra.iter().map(|s| s.to_string()));
        let coordinator = Proc::spawn_with_env("coordinator", ws.path(), &args, env);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut cluster = Self {
            ws,
            addr: String::new(),
            coordinator,
            workers: Vec::new(),
            rt,
            liveness: liveness.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        wait_until(
            "the coordinator's ready file",
            Duration::from_secs(20),
            || ready.exists(),
        );
        cluster.addr = std::fs::read_to_string(&ready).expect("ready file");
        cluster.wait_serving();
        cluster
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_serving(&self) {
        let url = self.url();
        let serving = |rt: &tokio::runtime::Runtime| plan_service_serving(rt, &url);
        wait_until(
            "the coordinator to serve (grpc health)",
            Duration::from_secs(20),
            || serving(&self.rt),
        );
    }

    /// Starts a worker with `extra` flags and waits until the coordinator lists it.
    pub fn add_worker(&mut self, id: &str, extra: &[&str]) -> usize {
        self.add_worker_with_env(id, extra, &[])
    }

    /// [`Cluster::add_worker`] with extra environment variables.
    pub fn add_worker_with_env(&mut self, id: &str, extra: &[&str], env: &[(&str, &str)]) -> usize {
        self.workers.push(Proc::spawn_with_env(
            id,
            self.ws.path(),
            &worker_args(&self.url(), id, extra),
            env,
        ));
        let want = id.to_string();
        wait_until(
            &format!("worker {id} to join"),
            Duration::from_secs(20),
            || self.list_workers().iter().any(|w| w.worker_id == want),
        );
        self.workers.len() - 1
    }

    pub fn client(&self) -> PlanServiceClient<Channel> {
        plan_client(&self.rt, &self.url())
    }

    pub fn list_workers(&self) -> Vec<v1::WorkerStatus> {
        list_workers(&self.rt, &self.url())
    }

    /// Submits a plan document over gRPC; returns its id.
    pub fn submit(&self, document: &str) -> Result<String, tonic::Status> {
        submit(&self.rt, &self.url(), document)
    }

    /// Every event of a plan after `after`, until its summary.
    pub fn watch(&self, plan: &str, after: u64) -> Vec<v1::PlanEvent> {
        let mut c = self.client();
        let req = v1::WatchPlanRequest {
            plan_id: plan.into(),
            after_seq: after,
        };
        self.rt.block_on(async {
            let mut stream = c.watch_plan(req).await.expect("watch").into_inner();
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while let Ok(Ok(Some(ev))) = tokio::time::timeout_at(deadline, stream.message()).await {
                out.push(ev);
            }
            out
        })
    }

    pub fn get(&self, plan: &str) -> v1::GetPlanResponse {
        let mut c = self.client();
        let req = v1::GetPlanRequest {
            plan_id: plan.into(),
        };
        self.rt
            .block_on(c.get_plan(req))
            .expect("get plan")
            .into_inner()
    }

    /// A `gatehouse` client command against this cluster.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = self.ws.cmd(args);
        c.env("GATEHOUSE_COORDINATOR", self.url());
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            for p in self
                .workers
                .iter()
                .chain(std::iter::once(&self.coordinator))
            {
                eprintln!("----- {} log (tail) -----\n{}", p.name, p.tail());
            }
        }
    }
}

/// `gatehouse worker` arguments for worker `id` of the coordinators at `urls`.
pub fn worker_args(urls: &str, id: &str, extra: &[&str]) -> Vec<String> {
    ["worker", "--coordinator", urls, "--id", id]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// Whether the coordinator at `url` reports `gatehouse.v1.PlanService` SERVING on
/// `grpc.health.v1` (standalone: it is up; HA: it leads). Bounded by 1 s.
pub fn plan_service_serving(rt: &tokio::runtime::Runtime, url: &str) -> bool {
    rt.block_on(async {
        let endpoint = Channel::from_shared(url.to_string())
            .expect("url")
            .connect_timeout(Duration::from_millis(500));
        let Ok(Ok(channel)) =
            tokio::time::timeout(Duration::from_secs(1), endpoint.connect()).await
        else {
            return false;
        };
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let req = tonic_health::pb::HealthCheckRequest {
            service: "gatehouse.v1.PlanService".into(),
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), health.check(req)).await,
            Ok(Ok(r)) if r.get_ref().status == 1
        )
    })
}

/// A plan client connected to `url`.
pub fn plan_client(rt: &tokio::runtime::Runtime, url: &str) -> PlanServiceClient<Channel> {
    rt.block_on(async {
        let channel = Channel::from_shared(url.to_string())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        PlanServiceClient::new(channel)
    })
}

/// The workers the coordinator at `url` lists (none if it does not answer).
pub fn list_workers(rt: &tokio::runtime::Runtime, url: &str) -> Vec<v1::WorkerStatus> {
    let mut c = plan_client(rt, url);
    rt.block_on(c.list_workers(v1::ListWorkersRequest {}))
        .map(|r| r.into_inner().workers)
        .unwrap_or_default()
}

/// Submits a YAML plan document to the coordinator at `url`, uncached; returns its id.
pub fn submit(
    rt: &tokio::runtime::Runtime,
    url: &str,
    document: &str,
) -> Result<String, tonic::Status> {
    submit_with(rt, url, document, false)
}

/// Submits a plan document, with the result cache if `cached`; returns its id.
pub fn submit_with(
    rt: &tokio::runtime::Runtime,
    url: &str,
    document: &str,
    cached: bool,
) -> Result<String, tonic::Status> {
    let mut c = plan_client(rt, url);
    let req = v1::SubmitPlanRequest {
        document: document.into(),
        format: v1::PlanFormat::Yaml as i32,
        source_name: "plan.yaml".into(),
        no_cache: !cached,
        ..Default::default()
    };
    rt.block_on(c.submit_plan(req))
        .map(|r| r.into_inner().plan_id)
}

/// The summary of a list of events (panics unless the last event is one).
pub fn summary(events: &[v1::PlanEvent]) -> &v1::PlanSummary {
    match events.last().and_then(|e| e.event.as_ref()) {
        Some(v1::plan_event::Event::Summary(s)) => s,
        other => panic!("last event is not a summary: {other:?}"),
    }
}

/// The terminal event of each gate, by gate id.
pub fn terminals(events: &[v1::PlanEvent]) -> std::collections::BTreeMap<String, v1::GateEvent> {
    let terminal = [
        v1::GateState::Passed,
        v1::GateState::Failed,
        v1::GateState::TimedOut,
        v1::GateState::Skipped,
        v1::GateState::Cancelled,
    ]
    .map(|s| s as i32);
    let mut out = std::collections::BTreeMap::new();
    for e in events {
        if let Some(v1::plan_event::Event::Gate(g)) = &e.event
            && terminal.contains(&g.state)
        {
            assert!(
                out.insert(g.gate_id.clone(), g.clone()).is_none(),
                "two terminal events for {}",
                g.gate_id
            );
        }
    }
    out
}

/// Gate events that show an attempt on a worker (running, or any event with an
/// attempt number or a worker): none for a gate served from the cache.
pub fn dispatched(events: &[v1::PlanEvent]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(&e.event, Some(v1::plan_event::Event::Gate(g))
                if g.state == v1::GateState::Running as i32 || g.attempt > 0 || !g.worker_id.is_empty())
        })
        .count()
}
