//! `gatehouse.v1.PlanService`: submit, observe and cancel plans.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use gatehouse_common::ids::PlanId;
use gatehouse_common::plan::error::PlanErrorKind;
use gatehouse_common::plan::validate::MAX_PLAN_BYTES;
use gatehouse_common::plan::{PlanFormat, parse_plan};
use gatehouse_common::spawn::spawn_tracked;
use gatehouse_proto::v1;
use gatehouse_proto::v1::plan_service_server::PlanService;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::wire;
use crate::core::{PlanEvent, RunOptions};
use crate::registry::codec::PlanSource;
use crate::role::{RoleWatch, current_term};
use crate::sources::Sources;

/// Events buffered per `WatchPlan` stream before the sender waits for the client.
const WATCH_BUFFER: usize = 256;

/// The client-facing service.
pub struct PlanServiceImpl {
    /// The current term's components, or who leads.
    role: RoleWatch,
    /// Plan documents parsed at once (CPU-bound, in the blocking pool), so large
    /// submissions cannot starve worker sessions of runtime threads.
    parse_permits: tokio::sync::Semaphore,
    /// Prepares source plans (their refs resolved once) before the registry takes them.
    sources: Arc<Sources>,
}

/// Plan documents validated at once.
const PARSE_PERMITS: usize = 2;

impl PlanServiceImpl {
    /// A service over the registry and the worker directory.
    /// A service answering from the current term (`UNAVAILABLE` naming the leader
    /// while this coordinator does not lead).
    pub fn new(role: RoleWatch, sources: Arc<Sources>) -> Self {
        Self {
            role,
            parse_permits: tokio::sync::Semaphore::new(PARSE_PERMITS),
            sources,
        }
    }
}

fn plan_id(id: String) -> Result<PlanId, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("plan_id is required"));
    }
    Ok(PlanId::new(id))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::PlanEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PlanService for PlanServiceImpl {
    async fn submit_plan(
        &self,
        request: Request<v1::SubmitPlanRequest>,
    ) -> Result<Response<v1::SubmitPlanResponse>, Status> {
        let term = current_term(&self.role)?;
        let parent = traceparent_of(request.metadata());
        let req = request.into_inner();
        let no_cache = req.no_cache;
        let (land, dry_run, land_retries) = (req.land, req.dry_run, req.land_retries);
        if req.document.len() > MAX_PLAN_BYTES {
            return Err(Status::resource_exhausted(format!(
                "plan document is {} bytes, more than the limit of {MAX_PLAN_BYTES}",
                req.document.len()
            )));
        }
        let format =
            match v1::PlanFormat::try_from(req.format).unwrap_or(v1::PlanFormat::Unspecified) {
                v1::PlanFormat::Json => PlanFormat::Json,
                _ => PlanFormat::Yaml,
            };
        let source = if req.source_name.is_empty() {
            "<submitted plan>".to_string()
        } else {
            req.source_name
        };
        // Never trust the client: validate again, with the same messages as `validate`.
        // Relative workdirs resolve on the worker, so the base directory is not used.
        let _permit = self
            .parse_permits
            .acquire()
            .await
            .map_err(|_| Status::unavailable("coordinator is shutting down"))?;
        let parsed = gatehouse_common::spawn::spawn_blocking_named("parse-plan", move || {
            let parsed = parse_plan(&req.document, format, &source, Path::new("/"));
            let source = PlanSource {
                document: req.document,
                format,
                name: source,
                resolution: None,
            };
            parsed.map(|plan| (plan, source))
        })
        .await
        .map_err(|e| Status::internal(format!("plan validation failed: {e}")))?;
        let (plan, mut source) = parsed.map_err(|errors| {
            let too_large = errors
                .0
                .iter()
                .any(|e| matches!(e.kind, PlanErrorKind::TooLarge { .. }));
            if too_large {
                Status::resource_exhausted(errors.to_string())
            } else {
                Status::invalid_argument(errors.to_string())
            }
        })?;
        // Landing is refused up front when the plan cannot land.
        let land = if land || dry_run || plan.policy.land {
            let Some(src) = plan.source.as_ref() else {
                return Err(Status::invalid_argument(format!(
                    "{}: landing needs a plan with `source`",
                    source.name
                )));
            };
            let branch = gatehouse_common::land::target_branch(src.base.as_deref())
                .map_err(|e| Status::invalid_argument(format!("{}: {e}", source.name)))?;
            Some(gatehouse_common::land::LandSpec {
                branch,
                dry_run,
                retries: match land_retries {
                    None => gatehouse_common::land::DEFAULT_LAND_RETRIES,
                    Some(n) if n > gatehouse_common::land::MAX_LAND_RETRIES => {
                        return Err(Status::invalid_argument(format!(
                            "land_retries {n} is more than the limit of {}",
                            gatehouse_common::land::MAX_LAND_RETRIES
                        )));
                    }
                    Some(n) => n,
                },
            })
        } else {
            None
        };
        // A source plan's refs are resolved here, once, and recorded with it.
        let plan = self.sources.prepare(plan, &source.name).await?;
        source.resolution = plan.source.as_ref().and_then(|s| s.resolution.clone());
        let (gates, items) = (plan.gates.len() as u32, plan.items.len() as u32);
        // The plan's trace continues the submitter's, through this call's span.
        let options = RunOptions {
            use_cache: !no_cache,
            trace_parent: gatehouse_common::telemetry::current_traceparent().or(parent),
            blocked: plan
                .resolution()
                .map(|r| r.blocked(&plan))
                .unwrap_or_default(),
            land,
        };
        let id = term
            .registry
            .submit(Arc::new(plan), source, options)
            .await?;
        Ok(Response::new(v1::SubmitPlanResponse {
            plan_id: id.to_string(),
            gates,
            items,
        }))
    }

    async fn get_plan(
        &self,
        request: Request<v1::GetPlanRequest>,
    ) -> Result<Response<v1::GetPlanResponse>, Status> {
        let term = current_term(&self.role)?;
        let id = plan_id(request.into_inner().plan_id)?;
        let snapshot = term.registry.get(id).await?;
        Ok(Response::new(wire::get_plan_response(&snapshot)))
    }

    type WatchPlanStream = WatchStream;

    async fn watch_plan(
        &self,
        request: Request<v1::WatchPlanRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let term = current_term(&self.role)?;
        let req = request.into_inner();
        let id = plan_id(req.plan_id)?;
        // The first batch is fetched here so an unknown plan is an error, not an empty stream.
        let first = term
            .registry
            .events_after(id.clone(), req.after_seq)
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let registry = term.registry.clone();
        // The stream ends with the term (shutdown, or this coordinator stops leading);
        // the client resumes from its last sequence number on the leader.
        let shutdown = term.token.clone();
        // The task ends when the summary was sent, the client went away, or on shutdown.
        spawn_tracked(&term.tasks, "watch-plan", async move {
            // Every send races shutdown, so a client that stops reading cannot hold up
            // the coordinator's shutdown.
            let send = |item: Result<v1::PlanEvent, Status>| {
                let tx = tx.clone();
                let shutdown = shutdown.clone();
                async move {
                    tokio::select! {
                        () = shutdown.cancelled() => false,
                        sent = tx.send(item) => sent.is_ok(),
                    }
                }
            };
            let mut batch = first;
            let mut after = req.after_seq;
            loop {
                for (seq, ev) in &batch.events {
                    // The last event: the summary, or for a plan that lands its report.
                    let done = if batch.lands {
                        matches!(
                            ev,
                            PlanEvent::Land {
                                record: gatehouse_common::land::LandRecord::Finished(_),
                                ..
                            }
                        )
                    } else {
                        matches!(ev, PlanEvent::Finished(_))
                    };
                    if !send(Ok(wire::plan_event(&batch.plan, *seq, ev))).await {
                        return;
                    }
                    after = *seq;
                    if done {
                        return;
                    }
                }
                if batch.finished && batch.events.is_empty() {
                    // Resumed after the summary: nothing more will come.
                    return;
                }
                let mut newest = batch.newest.clone();
                while *newest.borrow_and_update() <= after {
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            let _ = tx.try_send(Err(Status::unavailable(
                                "this coordinator stopped leading or is shutting down; resume on the leader",
                            )));
                            return;
                        }
                        changed = newest.changed() => if changed.is_err() {
                            let _ = tx.try_send(Err(Status::not_found("plan was forgotten")));
                            return;
                        },
                    }
                }
                batch = match registry.events_after(id.clone(), after).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.try_send(Err(e.into()));
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_plan(
        &self,
        request: Request<v1::CancelPlanRequest>,
    ) -> Result<Response<v1::CancelPlanResponse>, Status> {
        let term = current_term(&self.role)?;
        let req = request.into_inner();
        let cancelled = term
            .registry
            .cancel(plan_id(req.plan_id)?, req.force)
            .await?;
        Ok(Response::new(v1::CancelPlanResponse { cancelled }))
    }

    async fn list_plans(
        &self,
        _: Request<v1::ListPlansRequest>,
    ) -> Result<Response<v1::ListPlansResponse>, Status> {
        let term = current_term(&self.role)?;
        let plans = term.registry.list().await?;
        Ok(Response::new(v1::ListPlansResponse {
            plans: plans.iter().map(wire::plan_info).collect(),
        }))
    }

    async fn list_workers(
        &self,
        _: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let term = current_term(&self.role)?;
        Ok(Response::new(v1::ListWorkersResponse {
            workers: term.sessions.list(&term.workers.borrow()),
        }))
    }

    async fn list_flakes(
        &self,
        request: Request<v1::ListFlakesRequest>,
    ) -> Result<Response<v1::ListFlakesResponse>, Status> {
        let term = current_term(&self.role)?;
        let filter = flake_filter(request.into_inner());
        let rows = term
            .scheduler
            .flakes()
            .await
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?;
        Ok(Response::new(v1::ListFlakesResponse {
            tests: filter.apply(rows).iter().map(v1::FlakyTest::from).collect(),
        }))
    }
}

fn flake_filter(r: v1::ListFlakesRequest) -> gatehouse_common::reports::history::FlakeFilter {
    gatehouse_common::reports::history::FlakeFilter {
        gate: Some(r.gate).filter(|g| !g.is_empty()),
        since_unix_ms: r.since_unix_ms,
        all: r.all,
        limit: r.limit as usize,
    }
}

/// The caller's `traceparent` header, if it is a valid one (used as the plan's parent
/// when this call is not traced itself).
fn traceparent_of(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let get = |k: &str| metadata.get(k)?.to_str().ok().map(str::to_string);
    let cx = gatehouse_common::telemetry::extract_headers(get)?;
    gatehouse_common::telemetry::traceparent(&cx)
}
