//! Wiring of a standalone coordinator: the scheduler actor, the plan registry and the
//! gRPC services (plans, workers, `grpc.health.v1`, server reflection) on one listener.
//!
//! Startup order: scheduler (with the gRPC transport), registry, services, then the
//! listener serves. Shutdown (the token fires): the server stops accepting and every
//! session and watch stream ends (they observe the same token), the server waits for
//! its tasks, then the registry and the scheduler stop, each with a deadline.

use std::time::Duration;

use gatehouse_common::plan::validate::MAX_PLAN_BYTES;
use gatehouse_proto::v1::plan_service_server::PlanServiceServer;
use gatehouse_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::CoreConfig;
use crate::grpc::{
    GrpcTransport, Outboxes, PlanServiceImpl, SessionConfig, WorkerDirectory, WorkerServiceImpl,
};
use crate::registry::{self, RegistryConfig};
use crate::scheduler::{self, SchedulerConfig};

/// Capacity of the channel carrying attempt reports from all sessions to the scheduler.
pub const REPORTS_CAPACITY: usize = 4096;

/// Configuration of a standalone coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How often workers send heartbeats.
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is lost; its attempts are re-queued.
    pub liveness_timeout: Duration,
    /// Workers above this fraction of used memory get nothing new.
    pub memory_pressure: f64,
    /// Grace between SIGTERM and SIGKILL when gates are cancelled.
    pub kill_grace: Duration,
    /// Finished plans kept for `GetPlan`/`WatchPlan`.
    pub retain_finished: usize,
    /// How long shutdown waits for each component.
    pub shutdown_timeout: Duration,
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
}

/// Runs a coordinator on `listener` until `shutdown` fires.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let outboxes = Outboxes::default();
    let directory = WorkerDirectory::default();
    let (reports_tx, reports) = mpsc::channel(REPORTS_CAPACITY);
    let actors = CancellationToken::new();
    let sched_config = SchedulerConfig {
        core: CoreConfig {
            kill_grace: config.kill_grace,
            fail_unschedulable: false,
            memory_pressure: config.memory_pressure,
            ..CoreConfig::default()
        },
        ..SchedulerConfig::default()
    };
    let (sched, sched_task) = scheduler::spawn(
        sched_config,
        Box::new(GrpcTransport::new(outboxes.clone())),
        reports,
        None,
        actors.clone(),
    );
    tracing::info!("scheduler started");
    let registry_config = RegistryConfig {
        retain_finished: config.retain_finished,
        ..RegistryConfig::default()
    };
    let (registry, registry_task) = registry::spawn(registry_config, sched, actors.clone());
    tracing::info!("plan registry started");

    let tasks = TaskTracker::new();
    let plans = PlanServiceImpl::new(registry, directory.clone(), shutdown.clone(), tasks.clone());
    let session_config = SessionConfig {
        heartbeat_interval: config.heartbeat_interval,
        liveness_timeout: config.liveness_timeout,
        hello_timeout: Duration::from_secs(10),
        memory_pressure: config.memory_pressure,
    };
    let workers = WorkerServiceImpl::new(
        reports_tx,
        outboxes,
        directory,
        session_config,
        shutdown.clone(),
        tasks.clone(),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PlanServiceServer<PlanServiceImpl>>()
        .await;
    health
        .set_serving::<WorkerServiceServer<WorkerServiceImpl>>()
        .await;
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
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(address = %local, "coordinator serving");
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PlanServiceServer::new(plans).max_decoding_message_size(max_message))
        .add_service(WorkerServiceServer::new(workers))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    tokio::pin!(served);
    tokio::pin!(sched_task);
    tokio::pin!(registry_task);
    // Serve until shutdown; a graceful stop waits for open connections, so it gets a
    // deadline. An actor that ends while serving is fatal: stop rather than serve a
    // coordinator that can no longer schedule.
    let mut failed = None;
    let served = tokio::select! {
        served = &mut served => served,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(config.shutdown_timeout).await;
        } => {
            tracing::warn!("connections did not close within the shutdown timeout; closing them");
            Ok(())
        }
        ended = &mut sched_task => {
            failed = Some(ServerError::ActorStopped("scheduler", format!("{ended:?}")));
            shutdown.cancel();
            Ok(())
        }
        ended = &mut registry_task => {
            failed = Some(ServerError::ActorStopped("plan registry", format!("{ended:?}")));
            shutdown.cancel();
            Ok(())
        }
    };
    tracing::info!("grpc server stopped; stopping sessions");
    tasks.close();
    if tokio::time::timeout(config.shutdown_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not end within the shutdown timeout");
    }
    actors.cancel();
    let tasks: [(&str, std::pin::Pin<&mut tokio::task::JoinHandle<()>>); 2] =
        [("plan registry", registry_task), ("scheduler", sched_task)];
    for (name, task) in tasks {
        if task.is_finished() && failed.is_some() {
            continue;
        }
        match tokio::time::timeout(config.shutdown_timeout, task).await {
            Ok(Ok(())) => tracing::info!(component = name, "stopped"),
            Ok(Err(e)) => tracing::error!(component = name, error = %e, "task failed"),
            Err(_) => tracing::warn!(component = name, "did not stop within the shutdown timeout"),
        }
    }
    served?;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
