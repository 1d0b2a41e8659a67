//! `gatehouse run`: the scheduler actor, one local executor and a renderer in one
//! process. Startup order: cache, executor, scheduler, worker registration, plan
//! submission. Shutdown order after the summary (or on a signal, after the plan
//! reports cancelled): scheduler (flushes cache writes), then executor.

use gatehouse_common::telemetry::Tracer;
use gatehouse_proto::tls::Tls;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gatehouse_common::cache::tiered::Tiered;
use gatehouse_common::cache::{DiskCache, ResultCache};
use gatehouse_common::events::{GateStatus, PlanEvent, PlanOutcome, PlanSummary, Terminal};
use gatehouse_common::ids::{PlanId, SessionKey, WorkerId};
use gatehouse_common::plan::{Plan, load_file};
use gatehouse_common::units::{parse_duration, parse_size};
use gatehouse_coordinator::core::{CoreConfig, RunOptions, WorkerInfo};
use gatehouse_coordinator::scheduler::{
    self, LocalTransport, PlanOutput, SchedulerConfig, SchedulerHandle, WorkerEvent,
};
use gatehouse_worker::checkout::Checkouts;
use gatehouse_worker::{ExecConfig, LocalWorker};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::history;
use crate::land;
use crate::render::{self, PlanView, Renderer};
use crate::validate::report_invalid;
use crate::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_PASSED};

/// Id of the one executor inside `gatehouse run`.
pub const LOCAL_WORKER: &str = "local-0";

#[derive(Args)]
pub struct RunArgs {
    /// Plan file (.yaml, .yml or .json), or - for YAML on stdin.
    plan: PathBuf,
    /// Executor slots: gates run at once (default: number of CPUs).
    #[arg(long, short = 'j', env = "GATEHOUSE_WORKERS")]
    workers: Option<u32>,
    /// Print NDJSON events on stdout (one terminal line per gate, then a summary).
    #[arg(long)]
    json: bool,
    /// Neither read nor write the result cache.
    #[arg(long)]
    no_cache: bool,
    /// Result cache directory (default: <plan dir>/.gatehouse/cache).
    #[arg(long, env = "GATEHOUSE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Also use a cluster's shared result cache, through any of its cache nodes
    /// (http://host:port of a worker started with --cache-listen): results are looked
    /// up locally first, then there, and written to both.
    #[arg(
        long,
        value_name = "URL",
        env = "GATEHOUSE_CACHE",
        conflicts_with = "no_cache"
    )]
    cache: Option<String>,
    /// Print only the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Memory available for admitting gates, e.g. 8Gi (default: what the OS reports available).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Labels of this machine (`k=v,...`): gates with `labels` run only if all match;
    /// the others fail as unschedulable.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Grace between SIGTERM and SIGKILL when gates are cancelled or time out.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,
    /// Plans with a `source`: where the repository's bare mirror is kept (default:
    /// <plan dir>/.gatehouse/git); gates run in checkouts made from it.
    #[arg(long, env = "GATEHOUSE_GIT_CACHE")]
    git_cache: Option<PathBuf>,
    /// Plans with a `source`: deadline of each command that talks to the repository
    /// (listing its refs, fetching).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    fetch_timeout: Duration,
    /// Plans with a `source`: when the gates end, land the items that passed on the
    /// `source.base` branch (also `policy.land: true` in the plan). See docs/landing.md.
    #[arg(long)]
    land: bool,
    /// Compute and verify what would land, and push nothing (implies --land).
    #[arg(long)]
    dry_run: bool,
    /// Times the plan runs again on the branch's new tip when it moved before the push.
    #[arg(long, default_value_t = 3, value_name = "N")]
    land_retries: u32,
}

pub fn main(args: RunArgs, tracer: Tracer, tls: Tls) -> u8 {
    let plan = match load_file(&args.plan) {
        Ok(plan) => Arc::new(plan),
        Err(errors) => {
            report_invalid(&errors, args.json);
            return EXIT_INVALID;
        }
    };
    if args.land_retries > gatehouse_common::land::MAX_LAND_RETRIES {
        eprintln!(
            "error: --land-retries {} is more than the limit of {}",
            args.land_retries,
            gatehouse_common::land::MAX_LAND_RETRIES
        );
        return EXIT_INVALID;
    }
    if args.workers == Some(0) {
        eprintln!("error: --workers must be at least 1");
        return EXIT_INVALID;
    }
    if let Some(url) = &args.cache
        && let Err(e) = gatehouse_proto::cache::check_url(url)
    {
        eprintln!("error: invalid --cache URL: {e}");
        return EXIT_INVALID;
    }
    let labels =
        match gatehouse_worker::remote::parse_labels(args.labels.iter().map(String::as_str)) {
            Ok(labels) => labels,
            Err(e) => {
                eprintln!("error: --labels: {e}");
                return EXIT_INVALID;
            }
        };
    let landing = if args.land || args.dry_run || plan.policy.land {
        let Some(source) = &plan.source else {
            eprintln!(
                "error: --land needs a plan with `source`: only items that are git changes can land"
            );
            return EXIT_INVALID;
        };
        match land::target_branch(source.base.as_deref()) {
            Ok(branch) => Some(gatehouse_common::land::LandSpec {
                branch,
                dry_run: args.dry_run,
                retries: args.land_retries,
            }),
            Err(e) => {
                eprintln!("error: {}: {e}", args.plan.display());
                return EXIT_INVALID;
            }
        }
    } else {
        None
    };
    match crate::block_on(run(args, plan, landing, labels, tracer, tls)) {
        Err(code) => code,
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}

async fn run(
    args: RunArgs,
    plan: Arc<Plan>,
    landing: Option<gatehouse_common::land::LandSpec>,
    labels: std::collections::BTreeMap<String, String>,
    tracer: Tracer,
    tls: Tls,
) -> anyhow::Result<u8> {
    let slots = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    // The local executor's capacity is fixed: what it admits against is all it will
    // ever have, so it is both its total and its available memory.
    let capacity = match args.memory {
        Some(memory) => memory,
        None => available_memory()?,
    };
    let mut signals = Signals::install()?;

    let mut remote = None;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| plan.base_dir.join(".gatehouse").join("cache"));
    // The test history lives next to the cache (kept with --no-cache too: it is not
    // a cache). An unusable one is a warning: it only costs flake scores.
    let (history, facts) = match history::HistoryFile::open(&history::path_in(&cache_dir)) {
        Ok((file, facts)) => (Some(std::sync::Mutex::new(file)), facts),
        Err(e) => {
            eprintln!("warning: {e:#}; running without the test history");
            (None, Vec::new())
        }
    };
    let cache: Option<Arc<dyn ResultCache>> = if args.no_cache {
        None
    } else {
        let dir = cache_dir.clone();
        let cache = DiskCache::open(&dir)
            .with_context(|| format!("cannot open the result cache at {}", dir.display()))?;
        // An unreachable shared cache is not a reason to fail the run: like a cache
        // miss, it only costs time.
        let far = match &args.cache {
            None => None,
            Some(url) => match crate::remote_cache::connect(url, &tls).await {
                Ok(far) => Some(far),
                Err(e) => {
                    eprintln!("warning: {e:#}; running with the local cache only");
                    None
                }
            },
        };
        match far {
            None => Some(Arc::new(cache)),
            Some(far) => {
                remote = Some(far.clone());
                Some(Arc::new(Tiered::new(
                    Arc::new(cache),
                    far as Arc<dyn ResultCache>,
                )))
            }
        }
    };

    // A source plan: its refs resolved and its speculative states built once, before
    // anything runs; gates then run in checkouts from the same mirror.
    let unprepared = plan.clone();
    let (plan, checkouts) = match &plan.source {
        None => (plan, None),
        Some(_) => {
            let (plan, checkouts) = prepare_source(&args, plan).await?;
            (plan, Some(checkouts))
        }
    };

    let shutdown = CancellationToken::new();
    let (to_worker, inbox) = mpsc::unbounded_channel();
    let (reports_tx, reports) = mpsc::channel(1024);
    let exec_config = ExecConfig {
        kill_grace: args.kill_grace,
        checkouts: checkouts.clone(),
        ..ExecConfig::default()
    };
    let worker_shutdown = shutdown.child_token();
    // The executor's registration goes first on the channel its reports use, so the
    // scheduler sees it before any report.
    reports_tx
        .send(WorkerEvent::Joined(WorkerInfo {
            id: SessionKey::new(WorkerId::new(LOCAL_WORKER), 0),
            slots,
            memory_total: capacity,
            memory_available: capacity,
            labels,
            memory_pressure: None,
        }))
        .await
        .context("cannot register the local executor")?;
    let worker_task = LocalWorker::spawn(exec_config, inbox, reports_tx, worker_shutdown.clone());
    let sched_shutdown = shutdown.child_token();
    let config = SchedulerConfig {
        core: CoreConfig {
            kill_grace: args.kill_grace,
            fail_unschedulable: true,
            ..CoreConfig::default()
        },
        tracer,
        ..SchedulerConfig::default()
    };
    let (sched, _workers, sched_task) = scheduler::spawn(
        config,
        Box::new(LocalTransport::new(to_worker)),
        reports,
        cache,
        // The in-process executor keeps no results: nothing is ever acknowledged.
        None,
        sched_shutdown.clone(),
    );

    let mode = if args.json {
        render::Mode::Json
    } else if args.quiet {
        render::Mode::Quiet
    } else if std::io::stderr().is_terminal() && std::io::stdout().is_terminal() {
        render::Mode::Tty
    } else {
        render::Mode::Plain
    };
    sched
        .load_history(facts)
        .await
        .context("cannot load the test history")?;
    let runner = PlanRunner {
        sched: sched.clone(),
        use_cache: !args.no_cache,
        mode,
        history,
    };
    let mut plan = plan;
    let mut round = 0u32;
    let started_ms = gatehouse_common::cache::unix_ms_now();
    let code = loop {
        // Unique across runs, not only within this one: the test history tells the
        // attempts of a gate without a cache key apart by their plan's id.
        let id = if round == 0 {
            format!("run-{}-{started_ms}", std::process::id())
        } else {
            format!("run-{}-{started_ms}-{round}", std::process::id())
        };
        let mut renderer = Renderer::new(mode, PlanView::from_plan(&plan));
        renderer.source(gatehouse_proto::convert::source::source_info(&plan).as_ref());
        let end = runner
            .run(PlanId::new(id), &plan, &mut renderer, &mut signals, true)
            .await?;
        renderer.finish();
        let outcome = end.summary.as_ref().map(|s| s.outcome);
        let (Some(landing), Some(checkouts), Some(summary)) = (&landing, &checkouts, &end.summary)
        else {
            break exit_code(signals.count, outcome);
        };
        if signals.count > 0 || outcome == Some(PlanOutcome::Cancelled) {
            break EXIT_INTERRUPTED;
        }
        let driver = land::LandDriver {
            runner: &runner,
            landing,
            checkouts,
            fetch_timeout: args.fetch_timeout,
        };
        match driver
            .land(&plan, summary, &end.failed, round, &mut signals)
            .await?
        {
            land::LandEnd::Done(report) => {
                break land::exit_code(&report, outcome);
            }
            land::LandEnd::Interrupted => {
                eprintln!("interrupted: landing stopped; nothing more is pushed");
                break EXIT_INTERRUPTED;
            }
            land::LandEnd::Again => {
                if signals.arrived() {
                    break EXIT_INTERRUPTED;
                }
                round += 1;
                plan = prepare_again(&args, &unprepared, checkouts).await?;
            }
        }
    };

    sched_shutdown.cancel();
    sched_task.await.context("scheduler task failed")?;
    if let Some(remote) = remote {
        remote.close(Duration::from_secs(2)).await;
        let failed = remote
            .stats()
            .put_failures
            .load(std::sync::atomic::Ordering::Relaxed);
        if failed > 0 {
            eprintln!("warning: {failed} results could not be written to the shared cache");
        }
    }
    worker_shutdown.cancel();
    worker_task.await.context("executor task failed")?;

    Ok(code)
}

/// The exit code of a plan run that does not land.
fn exit_code(interrupts: u32, outcome: Option<PlanOutcome>) -> u8 {
    match (interrupts, outcome) {
        (n, _) if n > 0 => EXIT_INTERRUPTED,
        (_, Some(PlanOutcome::Passed)) => EXIT_PASSED,
        (_, Some(PlanOutcome::Cancelled)) => EXIT_INTERRUPTED,
        _ => EXIT_FAILED,
    }
}

/// SIGINT, SIGTERM and SIGHUP, counted: the first cancels what runs (TERM, then KILL
/// after the grace period), the second kills it at once.
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    /// Signals received so far.
    pub(crate) count: u32,
}

impl Signals {
    /// Installs the handlers (before any gate can start, so a signal at any point is a
    /// cancellation and never leaves gate process groups behind).
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
            count: 0,
        })
    }

    /// Whether a signal arrived that nobody waited for (counted now): landing checks
    /// this between its steps, outside any plan run.
    pub(crate) fn arrived(&mut self) -> bool {
        loop {
            let got = {
                use std::task::{Context, Poll};
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                [&mut self.int, &mut self.term, &mut self.hup]
                    .into_iter()
                    .any(|s| matches!(s.poll_recv(&mut cx), Poll::Ready(Some(()))))
            };
            if !got {
                break;
            }
            self.count += 1;
        }
        self.count > 0
    }

    /// The next signal; returns how many arrived so far.
    async fn next(&mut self) -> u32 {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
        self.count += 1;
        self.count
    }
}

/// How one plan run ended.
pub(crate) struct PlanEnd {
    /// Its summary (`None`: the scheduler stopped first).
    pub(crate) summary: Option<PlanSummary>,
    /// Per item: a gate of it failed or timed out.
    pub(crate) failed: Vec<bool>,
}

/// Runs plans on the scheduler of this process and renders their events.
pub(crate) struct PlanRunner {
    sched: SchedulerHandle,
    use_cache: bool,
    pub(crate) mode: render::Mode,
    /// Where the facts of the test history are appended (`None`: not kept).
    history: Option<std::sync::Mutex<history::HistoryFile>>,
}

impl PlanRunner {
    /// Submits `plan` as `id` and renders it until it ends (its summary only when
    /// `summary`); signals cancel it.
    pub(crate) async fn run(
        &self,
        id: PlanId,
        plan: &Arc<Plan>,
        renderer: &mut Renderer,
        signals: &mut Signals,
        summary: bool,
    ) -> anyhow::Result<PlanEnd> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        // A CI job's TRACEPARENT makes the run part of the job's trace.
        let options = RunOptions {
            use_cache: self.use_cache,
            trace_parent: std::env::var("TRACEPARENT").ok().filter(|t| !t.is_empty()),
            blocked: plan
                .resolution()
                .map(|r| r.blocked(plan))
                .unwrap_or_default(),
            // Landing is driven here, after the summary (`crate::land`).
            land: None,
        };
        self.sched
            .submit(id.clone(), plan.clone(), options, events_tx)
            .await?;
        let mut failed = vec![false; plan.items.len()];
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(PlanOutput::Event(PlanEvent::Gate(ev))) => {
                        if matches!(ev.status, GateStatus::Finished(Terminal::Failed | Terminal::TimedOut))
                            && let Some(item) = plan.gates.get(ev.gate.ix()).and_then(|g| g.item)
                        {
                            failed[item.ix()] = true;
                        }
                        renderer.core_gate(&ev);
                    }
                    Some(PlanOutput::Event(PlanEvent::Finished(s))) => {
                        if summary {
                            renderer.core_summary(&s);
                        }
                        return Ok(PlanEnd { summary: Some(s), failed });
                    }
                    // The in-process executor keeps no results: nothing to acknowledge;
                    // and the scheduler never lands (`crate::land` does, here).
                    Some(PlanOutput::Ack { .. } | PlanOutput::Event(PlanEvent::Land { .. })) => {}
                    Some(PlanOutput::Tests(run)) => {
                        if let Some(file) = &self.history {
                            file.lock().unwrap_or_else(std::sync::PoisonError::into_inner).append(&run);
                        }
                    }
                    None => return Ok(PlanEnd { summary: None, failed }),
                },
                n = signals.next() => {
                    renderer.interrupted(n);
                    self.sched.cancel(id.clone(), n > 1).await?;
                }
            }
        }
    }
}

/// Resolves a source plan's refs and builds its speculative states through the mirror
/// under the git cache; returns the plan with its resolution, and the checkouts its
/// gates run in (from the same mirror, so nothing is fetched twice).
async fn prepare_source(
    args: &RunArgs,
    plan: Arc<Plan>,
) -> anyhow::Result<(Arc<Plan>, Arc<Checkouts>)> {
    let cache = args
        .git_cache
        .clone()
        .unwrap_or_else(|| plan.base_dir.join(".gatehouse").join("git"));
    let checkouts = Checkouts::new(cache.clone(), cache.join(".checkouts"), args.fetch_timeout);
    let prepared =
        gatehouse_source::prepare_plan((*plan).clone(), checkouts.mirrors(), args.fetch_timeout)
            .await?;
    Ok((Arc::new(prepared), Arc::new(checkouts)))
}

/// The plan prepared again, on where its base points now (after the branch moved).
async fn prepare_again(
    args: &RunArgs,
    plan: &Arc<Plan>,
    checkouts: &Checkouts,
) -> anyhow::Result<Arc<Plan>> {
    let prepared =
        gatehouse_source::prepare_plan((**plan).clone(), checkouts.mirrors(), args.fetch_timeout)
            .await?;
    Ok(Arc::new(prepared))
}

/// Memory this machine reports available, in bytes.
fn available_memory() -> anyhow::Result<u64> {
    let mut sys = sysinfo::System::new().context("cannot read system memory")?;
    sys.refresh_memory();
    Ok(sys.available_memory())
}
