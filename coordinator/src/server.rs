//! Wiring of a coordinator: the gRPC services (plans, workers, `grpc.health.v1`, server
//! reflection) on one listener, and the leader's components, which live for one
//! leadership *term* ([`crate::role::Term`]).
//!
//! Where plan state lives ([`StateBackend`]): in a local store
//! (`--state-dir`; this coordinator always leads), or in etcd (`--etcd`; replicas elect
//! a leader, see [`crate::ha`]). A term starts by reading every stored plan back
//! (unfinished plans resume), then starts the scheduler (with the gRPC transport) and
//! the registry, and publishes [`Role::Leading`]; the services then answer from it and
//! `grpc.health.v1` reports the plan and worker services SERVING. A term ends on
//! shutdown, when leadership is lost, or when the registry cannot persist (fenced):
//! the role goes back to following first (calls get `UNAVAILABLE` naming the leader),
//! then the term's sessions and watch streams end, then its registry and scheduler
//! stop, each with a deadline.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::plan::validate::MAX_PLAN_BYTES;
use gatehouse_proto::v1::plan_service_server::PlanServiceServer;
use gatehouse_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use gatehouse_cache::{ClientConfig, ClusterCache};

use crate::core::CoreConfig;
use crate::grpc::{
    CacheMembers, GrpcTransport, PlanServiceImpl, SessionAcks, SessionConfig, Sessions,
    WorkerServiceImpl,
};
use crate::metrics::Metrics;
use crate::registry::{self, Durability, JournalError, RegistryConfig};
use crate::role::{Role, RoleWatch, Term};
use crate::scheduler::{self, SchedulerConfig};
use crate::store::{StateStore, StoreError};
use gatehouse_common::telemetry::Tracer;
use gatehouse_proto::tls::Tls;

/// Capacity of the channel carrying attempt reports from all sessions to the scheduler.
pub const REPORTS_CAPACITY: usize = 4096;

/// Where plan state is kept.
#[derive(Clone, Debug)]
pub enum StateBackend {
    /// A local store in this directory (standalone coordinator).
    Dir(PathBuf),
    /// etcd, with leader election among replicas.
    Etcd(crate::ha::EtcdConfig),
}

/// Configuration of a coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How often workers send heartbeats.
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is lost; its attempts are re-queued. Also how long
    /// a new term waits for workers to re-report their attempts.
    pub liveness_timeout: Duration,
    /// Workers above this fraction of used memory get nothing new.
    pub memory_pressure: f64,
    /// Grace between SIGTERM and SIGKILL when gates are cancelled.
    pub kill_grace: Duration,
    /// Finished plans kept for `GetPlan`/`WatchPlan`.
    pub retain_finished: usize,
    /// How long shutdown waits for each component.
    pub shutdown_timeout: Duration,
    /// Where plan state is kept.
    pub state: StateBackend,
    /// Replicas of each entry of the shared result cache (`--cache-replicas`).
    pub cache_replicas: usize,
    /// A cache lookup without a hit by then is a miss (`--cache-timeout`).
    pub cache_timeout: Duration,
    /// Metrics, served by `--http` at `/metrics`.
    pub metrics: Metrics,
    /// Tracer of plan and gate spans (`None`: traces off).
    pub tracer: Tracer,
    /// TLS of the gRPC port (served when it has a certificate) and of the connections
    /// to cache nodes (`https://` node URLs).
    pub tls: Tls,
    /// Where the bare mirrors of source plans' repositories live (`--git-cache`).
    pub git_cache: PathBuf,
    /// Deadline of each git command that talks to a repository (`--fetch-timeout`).
    pub fetch_timeout: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            liveness_timeout: Duration::from_secs(5),
            memory_pressure: 0.9,
            kill_grace: Duration::from_secs(5),
            retain_finished: 100,
            shutdown_timeout: Duration::from_secs(10),
            state: StateBackend::Dir(PathBuf::from("gatehouse-state")),
            cache_replicas: 2,
            cache_timeout: Duration::from_millis(250),
            metrics: Metrics::default(),
            tracer: None,
            tls: Tls::default(),
            git_cache: PathBuf::from("gatehouse-state/git"),
            fetch_timeout: Duration::from_secs(120),
        }
    }
}

/// Errors that stop the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The gRPC server failed.
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// An actor ended while the coordinator was serving.
    #[error("the {0} stopped unexpectedly: {1}")]
    ActorStopped(&'static str, String),
    /// The reflection service could not be built from the descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The state store cannot be opened or read.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// Leader election failed for good.
    #[error("leader election: {0}")]
    Election(String),
}

/// Why a term ended.
#[derive(Debug)]
pub enum TermEnd {
    /// Shutdown was requested.
    Shutdown,
    /// Leadership was lost (lease expired or the store fenced this coordinator off).
    LostLeadership(String),
}

/// Runs a coordinator on `listener` until `shutdown` fires.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let (role_tx, role) = watch::channel(Role::Following { leader: None });
    // `/readyz` is ready while this coordinator leads (like the gRPC health service).
    let probes = http.map(|listener| {
        let role = role.clone();
        let ready: gatehouse_common::http::Readiness = Arc::new(
            move || matches!(&*role.borrow(), Role::Leading(term) if !term.token.is_cancelled()),
        );
        let mut registry = gatehouse_common::telemetry::metrics::registry();
        config.metrics.register(&mut registry);
        gatehouse_common::spawn::spawn_named(
            "http",
            gatehouse_common::http::serve(listener, ready, Arc::new(registry), shutdown.clone()),
        )
    });
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let tasks = TaskTracker::new();
    // One set of mirrors: submissions prepare through it, landings fold and push.
    let sources = crate::sources::Sources::new(config.git_cache.clone(), config.fetch_timeout);
    let served = serve(
        &config,
        sources.clone(),
        listener,
        role.clone(),
        shutdown.clone(),
        tasks.clone(),
    );
    let roles = lead_per_backend(config.clone(), sources, role_tx, shutdown.clone());
    tracing::info!(address = %local, "coordinator serving");
    // The roles end on shutdown (the term stops) or on a fatal error, which stops the
    // server too.
    let roles = async {
        let ended = roles.await;
        shutdown.cancel();
        ended
    };
    let (served, roles) = tokio::join!(served, roles);
    if let Some(probes) = probes {
        // `shutdown` has fired (the server ended); the probe server ends with it.
        shutdown.cancel();
        match probes.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP probe server failed"),
            Err(e) => tracing::warn!(error = %e, "the HTTP probe task failed"),
            Ok(Ok(())) => {}
        }
    }
    tasks.close();
    if tokio::time::timeout(config.shutdown_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("health task did not end within the shutdown timeout");
    }
    roles?;
    served
}

/// The gRPC server, until shutdown (graceful, bounded by the shutdown timeout).
async fn serve(
    config: &CoordinatorConfig,
    sources: Arc<crate::sources::Sources>,
    listener: TcpListener,
    role: RoleWatch,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> Result<(), ServerError> {
    let plans = PlanServiceImpl::new(role.clone(), sources);
    let session_config = SessionConfig {
        heartbeat_interval: config.heartbeat_interval,
        liveness_timeout: config.liveness_timeout,
        hello_timeout: Duration::from_secs(10),
    };
    let workers = WorkerServiceImpl::new(role.clone(), session_config);
    let (health, health_service) = tonic_health::server::health_reporter();
    gatehouse_common::spawn::spawn_tracked(
        &tasks,
        "health",
        mirror_health(role, health, shutdown.clone()),
    );
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gatehouse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gatehouse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // Twice the plan limit: documents up to this size reach `SubmitPlan`, which refuses
    // those over the plan limit with RESOURCE_EXHAUSTED; larger requests are refused by
    // the transport itself (OUT_OF_RANGE) before being buffered.
    let max_message = 2 * MAX_PLAN_BYTES;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = config.tls.server_config() {
        builder = builder.tls_config(tls)?;
    }
    let served = builder
        .trace_fn(rpc_span)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PlanServiceServer::new(plans).max_decoding_message_size(max_message))
        .add_service(WorkerServiceServer::new(workers))
        .serve_with_incoming_shutdown(
            // Small frames (acks, heartbeats' answers, assignments) must not wait for
            // the peer's delayed ACK: without TCP_NODELAY each stalls about 40 ms.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    tokio::select! {
        served = served => served.map_err(Into::into),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(config.shutdown_timeout).await;
        } => {
            tracing::warn!("connections did not close within the shutdown timeout; closing them");
            Ok(())
        }
    }
}

/// Keeps `grpc.health.v1` in step with the role: the plan and worker services are
/// SERVING only while this coordinator leads.
async fn mirror_health(
    mut role: RoleWatch,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    loop {
        let leading = matches!(&*role.borrow_and_update(), Role::Leading(_));
        if leading {
            health
                .set_serving::<PlanServiceServer<PlanServiceImpl>>()
                .await;
            health
                .set_serving::<WorkerServiceServer<WorkerServiceImpl>>()
                .await;
        } else {
            health
                .set_not_serving::<PlanServiceServer<PlanServiceImpl>>()
                .await;
            health
                .set_not_serving::<WorkerServiceServer<WorkerServiceImpl>>()
                .await;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = role.changed() => if changed.is_err() { return },
        }
    }
}

async fn lead_per_backend(
    config: CoordinatorConfig,
    sources: Arc<crate::sources::Sources>,
    role_tx: watch::Sender<Role>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    match config.state.clone() {
        StateBackend::Dir(dir) => {
            let store = crate::store::LocalStore::open(&dir)?;
            tracing::info!(dir = %dir.display(), "plan state in a local store");
            let store: Arc<dyn StateStore> = Arc::new(store);
            match lead(
                &config,
                &sources,
                store,
                0,
                &role_tx,
                &shutdown,
                std::future::pending(),
            )
            .await?
            {
                TermEnd::Shutdown => Ok(()),
                TermEnd::LostLeadership(why) => {
                    Err(ServerError::ActorStopped("plan registry", why))
                }
            }
        }
        StateBackend::Etcd(etcd) => {
            crate::ha::run(&config, &sources, etcd, &role_tx, &shutdown).await
        }
    }
}

/// Leads for one term: reads stored plans back, starts the term's components, serves
/// until `shutdown`, `lost` resolves, or an actor ends; then stops them in order.
pub(crate) async fn lead(
    config: &CoordinatorConfig,
    sources: &Arc<crate::sources::Sources>,
    store: Arc<dyn StateStore>,
    term: i64,
    role_tx: &watch::Sender<Role>,
    shutdown: &CancellationToken,
    lost: impl Future<Output = String>,
) -> Result<TermEnd, ServerError> {
    let store: Arc<dyn StateStore> =
        Arc::new(crate::store::Timed::new(store, config.metrics.clone()));
    let stored = store.load().await?;
    let history = store.load_history().await?;
    let count = stored.len();
    let restored = gatehouse_common::spawn::spawn_blocking_named("restore", move || {
        registry::restore::prepare(stored)
    })
    .await
    .map_err(|e| ServerError::ActorStopped("restore", e.to_string()))?;
    tracing::info!(
        stored = count,
        restored = restored.len(),
        "plan state read back"
    );
    let sessions = Sessions::default();
    let cache_members = CacheMembers::new(config.cache_replicas);
    let cache = Arc::new(ClusterCache::new(
        ClientConfig {
            lookup_timeout: config.cache_timeout,
            tls: config.tls.clone(),
            ..ClientConfig::default()
        },
        cache_members.subscribe(),
    ));
    let (reports_tx, reports) = mpsc::channel(REPORTS_CAPACITY);
    // The plans' events and the results' acks, in order, from the scheduler to the
    // registry (unbounded: the scheduler never waits; see `registry`).
    let (outputs_tx, outputs_rx) = mpsc::unbounded_channel();
    let actors = CancellationToken::new();
    let sched_config = SchedulerConfig {
        core: CoreConfig {
            kill_grace: config.kill_grace,
            fail_unschedulable: false,
            memory_pressure: config.memory_pressure,
            recovery_window: config.liveness_timeout,
            ..CoreConfig::default()
        },
        // Lookups are batched per cache node; many in flight make big batches.
        max_cache_lookups: 256,
        executors_store: true,
        hash_inputs: false,
        metrics: config.metrics.clone(),
        tracer: config.tracer.clone(),
        ..SchedulerConfig::default()
    };
    let (sched, workers, sched_task) = scheduler::spawn(
        sched_config,
        Box::new(GrpcTransport::new(sessions.clone())),
        reports,
        Some(cache.clone() as Arc<dyn gatehouse_common::cache::ResultCache>),
        Some(outputs_tx.clone()),
        actors.clone(),
    );
    let registry_config = RegistryConfig {
        retain_finished: config.retain_finished,
        ..RegistryConfig::default()
    };
    let acks: Arc<dyn registry::AckSink> = Arc::new(SessionAcks::new(sessions.clone()));
    let durability = Some(Durability {
        store,
        restored,
        history,
        term,
    });
    let scheduler = sched.clone();
    let (registry, registry_task) = registry::spawn(
        registry_config,
        sched,
        Some(sources.clone()),
        Some(acks),
        durability,
        (outputs_tx, outputs_rx),
        actors.clone(),
    );
    let term = Arc::new(Term {
        registry,
        scheduler,
        reports: reports_tx,
        sessions,
        workers,
        cache_members,
        token: shutdown.child_token(),
        tasks: TaskTracker::new(),
    });
    tokio::pin!(sched_task);
    tokio::pin!(registry_task);
    tokio::pin!(lost);
    // Workers and clients reach this term once its plans run again: a worker's report of
    // an attempt of a plan not restored yet would be taken for a stale one.
    let before = tokio::select! {
        () = shutdown.cancelled() => Some(TermEnd::Shutdown),
        why = &mut lost => Some(TermEnd::LostLeadership(why)),
        // An error means the registry stopped: the select below sees why.
        _ = term.registry.restored() => None,
    };
    if before.is_none() {
        role_tx.send_replace(Role::Leading(term.clone()));
        config.metrics.set_leader(true);
        tracing::info!("leading: scheduler and plan registry started");
    }
    // Whatever ends the term, this replica stops reporting as the leader.
    let _not_leading = NotLeading(config.metrics.clone());
    let mut registry_done = false;
    let end = match before {
        Some(end) => end,
        None => {
            tokio::select! {
                () = shutdown.cancelled() => TermEnd::Shutdown,
                why = &mut lost => TermEnd::LostLeadership(why),
                ended = &mut registry_task => {
                    registry_done = true;
                    match ended {
                        Ok(Err(JournalError::Store(StoreError::Fenced))) =>
                            TermEnd::LostLeadership("another coordinator leads (fenced)".into()),
                        other => {
                            let why = format!("{other:?}");
                            role_tx.send_replace(Role::Following { leader: None });
                            term.token.cancel();
                            return Err(ServerError::ActorStopped("plan registry", why));
                        }
                    }
                }
                ended = &mut sched_task => {
                    role_tx.send_replace(Role::Following { leader: None });
                    term.token.cancel();
                    return Err(ServerError::ActorStopped("scheduler", format!("{ended:?}")));
                }
            }
        }
    };
    tracing::info!(?end, "term ending");
    role_tx.send_replace(Role::Following { leader: None });
    term.token.cancel();
    term.tasks.close();
    if tokio::time::timeout(config.shutdown_timeout, term.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not end within the shutdown timeout");
    }
    actors.cancel();
    if !registry_done {
        match tokio::time::timeout(config.shutdown_timeout, &mut registry_task).await {
            Ok(Ok(Ok(()))) => tracing::info!(component = "plan registry", "stopped"),
            Ok(other) => tracing::warn!(component = "plan registry", result = ?other, "stopped"),
            Err(_) => tracing::warn!(
                component = "plan registry",
                "did not stop within the shutdown timeout"
            ),
        }
    }
    {
        match tokio::time::timeout(config.shutdown_timeout, &mut sched_task).await {
            Ok(Ok(())) => tracing::info!(component = "scheduler", "stopped"),
            Ok(Err(e)) => tracing::error!(component = "scheduler", error = %e, "task failed"),
            Err(_) => tracing::warn!(
                component = "scheduler",
                "did not stop within the shutdown timeout"
            ),
        }
    }
    // The scheduler writes nothing (workers do); this only stops read-repairs.
    cache.close(Duration::from_millis(500)).await;
    Ok(end)
}

/// Clears the leader gauges when dropped (the term ended, however it ended).
struct NotLeading(Metrics);

impl Drop for NotLeading {
    fn drop(&mut self) {
        self.0.set_leader(false);
    }
}

/// The span of one gRPC call: plan service calls are exported (OpenTelemetry RPC
/// conventions), continuing the caller's `traceparent`; worker sessions, health checks
/// and reflection stay untraced.
fn rpc_span(req: &tonic::codegen::http::Request<()>) -> tracing::Span {
    use gatehouse_common::telemetry::{OTEL_TARGET, continue_trace};
    let path = req.uri().path().trim_start_matches('/');
    let Some((service, method)) = path.split_once('/') else {
        return tracing::Span::none();
    };
    if service != "gatehouse.v1.PlanService" {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: OTEL_TARGET,
        "rpc",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    if let Some(tp) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        continue_trace(&span, tp);
    }
    span
}
