//! Following a plan's events until its summary (`gatehouse watch`, `submit --watch`).
//!
//! Events are read from `WatchPlan` and handed to the [`Renderer`], which prints them
//! exactly as `gatehouse run` does. The last `seq` seen is kept; when the stream breaks
//! (the coordinator restarted, the leader changed, the connection died), the follower
//! finds the leader again through the URL list ([`super::leader`]: a leader named by a
//! not-leader answer first, then the list, with redirects) and asks again with
//! `after_seq` = that seq, so nothing is missed or shown twice, on whichever
//! coordinator leads now. Resuming is retried with backoff
//! ([`retry_backoff`]: [`RETRY_FIRST`](super::leader::RETRY_FIRST) doubling up to
//! [`RETRY_MAX`](super::leader::RETRY_MAX)) for at most the failover timeout
//! (`--failover-timeout`, 30 s by default: a leader change takes up to two lease TTLs)
//! counted from the break; a received event ends the outage.
//!
//! Signals (SIGINT, SIGTERM, SIGHUP) are handled at every wait, including during a
//! reconnect: with [`OnInterrupt::Cancel`] the first one sends `CancelPlan`, the second
//! `CancelPlan { force }`, and the follower keeps reading until the summary (a third
//! stops watching); with [`OnInterrupt::Detach`] the first one stops watching and the
//! plan keeps running. A `CancelPlan` goes to the coordinator the watch streams from, or
//! through the leader search, within [`CANCEL_TIMEOUT`]; if no leader answers in that
//! time (an election), a notice says so and the watch goes on.

use std::time::Duration;

use gatehouse_common::backoff::Backoff;
use gatehouse_common::events::PlanOutcome;
use gatehouse_common::ids::PlanId;
use gatehouse_proto::leader::{is_not_leader, leader_hint};
use gatehouse_proto::tls::is_downgrade;
use gatehouse_proto::v1::plan_service_client::PlanServiceClient;
use gatehouse_proto::v1::{self, plan_event::Event};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use super::connect::{Coordinator, RPC_TIMEOUT};
use super::error::ClientError;
use super::leader::{Cluster, Resend, retry_backoff};
use crate::render::land::LandRenderer;
use crate::render::{Renderer, wire};
use crate::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PASSED};
use gatehouse_common::land::LandRecord;
use gatehouse_proto::convert::events::InPlan;

/// Time a `CancelPlan` sent on a signal gets to find the leader and be answered.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a signal does to a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Cancel the plan (then kill its gates) and keep watching until the summary.
    Cancel,
    /// Stop watching; the plan keeps running.
    Detach,
}

/// SIGINT, SIGTERM and SIGHUP as one stream. Installed before the plan is submitted, so
/// a signal at any point is seen.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> anyhow::Result<Self> {
        use anyhow::Context;
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
        })
    }
}

/// Where interrupts come from: the process's [`Signals`], or a test's own source.
pub trait Interrupts {
    /// The next interrupt.
    fn recv(&mut self) -> impl std::future::Future<Output = ()>;
}

impl Interrupts for Signals {
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// The exit code for a plan's outcome: 0 passed, 1 failed, 130 cancelled or interrupted
/// by this client.
pub fn outcome_exit_code(outcome: PlanOutcome, interrupted: bool) -> u8 {
    match outcome {
        _ if interrupted => EXIT_INTERRUPTED,
        PlanOutcome::Passed => EXIT_PASSED,
        PlanOutcome::Failed => EXIT_FAILED,
        PlanOutcome::Cancelled => EXIT_INTERRUPTED,
    }
}

/// Whether a watch that ended with `code` may be resumed (the connection or the
/// coordinator went away, as opposed to a refusal such as an unknown plan).
fn resumable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
            | Code::DeadlineExceeded
    )
}

/// A watch being followed.
pub struct Follower<'a> {
    /// The coordinator the current stream comes from (tried first for cancels).
    coord: Coordinator,
    /// Where to look for the leader when resuming.
    cluster: &'a Cluster,
    plan_id: &'a PlanId,
    on_interrupt: OnInterrupt,
    renderer: &'a mut Renderer,
    /// How long resuming a broken watch is retried.
    budget: Duration,
    /// The leader named by the last not-leader answer, tried first when resuming.
    hint: Option<String>,
    /// Highest `seq` shown.
    last_seq: u64,
    /// Signals received.
    interrupts: u32,
    /// The plan lands: its landing's steps follow the summary (see [`Follower::landing`]).
    land: Option<LandFollow>,
}

/// What a follower keeps of a plan that lands.
struct LandFollow {
    render: LandRenderer,
    /// How the plan's gates ended (the last round's summary).
    outcome: Option<PlanOutcome>,
}

/// A broken watch being resumed.
struct Outage {
    since: Instant,
    /// Failures to read or resume since the watch broke.
    attempts: u32,
    /// The delays between attempts to resume.
    backoff: Backoff,
    /// The delay before the next attempt.
    delay: Duration,
    /// The last failure.
    reason: String,
}

impl Outage {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            attempts: 0,
            backoff: retry_backoff(),
            delay: Duration::ZERO,
            reason: String::new(),
        }
    }

    /// Records one more failure; the next attempt waits the next delay.
    fn failed(&mut self, reason: String) {
        self.attempts += 1;
        self.delay = self.backoff.next_delay();
        self.reason = reason;
    }
}

/// What woke the follower.
enum Wake {
    Signal,
    Opened(Result<(Coordinator, Streaming<v1::PlanEvent>), ClientError>),
    Message(Result<Option<v1::PlanEvent>, tonic::Status>),
}

impl<'a> Follower<'a> {
    pub fn new(
        coord: Coordinator,
        cluster: &'a Cluster,
        plan_id: &'a PlanId,
        on_interrupt: OnInterrupt,
        renderer: &'a mut Renderer,
    ) -> Self {
        Self {
            coord,
            cluster,
            plan_id,
            on_interrupt,
            renderer,
            budget: cluster.budget,
            hint: None,
            last_seq: 0,
            interrupts: 0,
            land: None,
        }
    }

    /// The plan lands on `branch`: the follower goes on after the summary, through the
    /// landing's steps, to its report (and the exit code follows the landing).
    pub fn landing(mut self, branch: String) -> Self {
        let view = self.renderer.view().clone();
        self.land = Some(LandFollow {
            render: LandRenderer::new(self.renderer.mode(), view, branch),
            outcome: None,
        });
        self
    }

    /// Follows the plan from its first event until the summary; returns the exit code.
    pub async fn run(mut self, signals: &mut impl Interrupts) -> Result<u8, ClientError> {
        let mut stream: Option<Streaming<v1::PlanEvent>> = None;
        let mut outage: Option<Outage> = None;
        loop {
            let wake = match stream.as_mut() {
                Some(s) => tokio::select! {
                    biased;
                    () = signals.recv() => Wake::Signal,
                    m = s.message() => Wake::Message(m),
                },
                None => {
                    // The first open reuses the connection; a resume looks for the
                    // leader afresh, within what is left of the budget.
                    let (coord, at, budget) = match &outage {
                        None => (Some(self.coord.clone()), Instant::now(), self.budget),
                        Some(o) => (
                            None,
                            retry_at(o),
                            self.budget.saturating_sub(o.since.elapsed()),
                        ),
                    };
                    let resume = Resume {
                        cluster: self.cluster,
                        prefer: self.hint.clone(),
                        budget,
                    };
                    let open = open(coord, resume, self.plan_id, self.last_seq, at);
                    tokio::select! {
                        biased;
                        () = signals.recv() => Wake::Signal,
                        r = open => Wake::Opened(r),
                    }
                }
            };
            match wake {
                Wake::Signal => {
                    if let Some(code) = self.interrupt().await {
                        return Ok(code);
                    }
                }
                Wake::Opened(Ok((coord, s))) => {
                    self.coord = coord;
                    self.hint = None;
                    stream = Some(s);
                }
                Wake::Opened(Err(e)) => {
                    let reason = match &e {
                        ClientError::Status { url, status }
                            if status.code() == Code::NotFound && outage.is_some() =>
                        {
                            return Err(ClientError::PlanLost {
                                url: url.clone(),
                                plan: self.plan_id.to_string(),
                            });
                        }
                        ClientError::Status { status, .. } if !resumable(status.code()) => {
                            return Err(e);
                        }
                        ClientError::Status { status, .. } => {
                            self.note_leader(status);
                            e.message()
                        }
                        ClientError::Local(_) => return Err(e),
                        // The search already names the URL and its last failure.
                        ClientError::Unreachable { reason, .. }
                        | ClientError::NoLeader { reason, .. } => reason.clone(),
                        _ => e.message(),
                    };
                    outage = Some(self.broke(outage, reason)?);
                }
                Wake::Message(Ok(Some(ev))) => {
                    outage = None;
                    if let Some(code) = self.event(ev) {
                        return Ok(code);
                    }
                }
                Wake::Message(Ok(None)) => {
                    stream = None;
                    let reason = "the stream ended before the plan's summary".to_string();
                    outage = Some(self.broke(outage, reason)?);
                }
                Wake::Message(Err(status)) if resumable(status.code()) => {
                    stream = None;
                    self.note_leader(&status);
                    let reason = ClientError::Status {
                        url: self.coord.url.clone(),
                        status,
                    }
                    .message();
                    outage = Some(self.broke(outage, reason)?);
                }
                Wake::Message(Err(status)) => {
                    return Err(ClientError::Status {
                        url: self.coord.url.clone(),
                        status,
                    });
                }
            }
        }
    }

    /// Remembers the leader a not-leader answer named, to resume there first.
    fn note_leader(&mut self, status: &tonic::Status) {
        if is_not_leader(status) {
            // Never from TLS to plaintext (see `Cluster::call`).
            let named = leader_hint(status).filter(|l| !is_downgrade(&self.coord.url, l));
            self.hint = named.or(self.hint.take());
        }
    }

    /// Records a failure to read or resume; gives up once the budget is spent.
    fn broke(&self, outage: Option<Outage>, reason: String) -> Result<Outage, ClientError> {
        let mut o = outage.unwrap_or_else(Outage::new);
        o.failed(reason);
        tracing::debug!(plan_id = %self.plan_id, attempts = o.attempts, reason = %o.reason, "watch broke; resuming");
        if o.since.elapsed() >= self.budget {
            return Err(ClientError::Lost {
                url: self.coord.url.clone(),
                reason: o.reason,
                after: self.budget,
            });
        }
        Ok(o)
    }

    /// Shows one event; returns the exit code once the summary was shown.
    fn event(&mut self, ev: v1::PlanEvent) -> Option<u8> {
        // A resumed stream starts after `last_seq`; anything older is a repeat.
        if ev.seq != 0 && ev.seq <= self.last_seq {
            return None;
        }
        self.last_seq = self.last_seq.max(ev.seq);
        let plan = wire::Followed {
            id: self.plan_id,
            view: self.renderer.view(),
        };
        match ev.event {
            Some(Event::Gate(gate)) => match wire::gate_event(&plan, gate) {
                Ok(Some(gate)) => self.renderer.core_gate(&gate),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(plan_id = %self.plan_id, seq = ev.seq, error = %e, "ignoring an event")
                }
            },
            Some(Event::Land(step)) => {
                let record = match LandRecord::try_from(InPlan::new(&plan, step)) {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::warn!(plan_id = %self.plan_id, seq = ev.seq, error = %e, "ignoring a landing step");
                        return None;
                    }
                };
                let interrupted = self.interrupts > 0;
                let land = self.land.as_mut()?;
                match record {
                    LandRecord::Verified {
                        items,
                        commit,
                        passed,
                        ..
                    } => land.render.verified(&items, &commit, passed),
                    LandRecord::Pushing { commit, .. } => land.render.pushing(&commit),
                    LandRecord::Respeculated {
                        round,
                        now,
                        retries,
                        ..
                    } => {
                        land.render.respeculating(&now, round, retries);
                        // The plan's gates run again: a fresh display of them.
                        self.renderer.restart();
                    }
                    LandRecord::Finished(report) => {
                        land.render.report(&report);
                        return Some(if interrupted {
                            EXIT_INTERRUPTED
                        } else {
                            crate::land::exit_code(&report, land.outcome)
                        });
                    }
                }
            }
            Some(Event::Summary(s)) => {
                let outcome = match wire::summary(&plan, s) {
                    Ok(summary) => {
                        self.renderer.core_summary(&summary);
                        summary.outcome
                    }
                    // The plan ended all the same; an ending that cannot be read is
                    // not a pass.
                    Err(e) => {
                        self.renderer.finish();
                        self.renderer.notice(&format!(
                            "plan {} ended, but its summary cannot be read: {e}",
                            self.plan_id
                        ));
                        PlanOutcome::Failed
                    }
                };
                if let Some(land) = self.land.as_mut() {
                    // Landing's steps follow; the report ends the watch.
                    land.outcome = Some(outcome);
                    return None;
                }
                return Some(outcome_exit_code(outcome, self.interrupts > 0));
            }
            None => {}
        }
        None
    }

    /// Handles a signal; returns the exit code if watching stops.
    async fn interrupt(&mut self) -> Option<u8> {
        self.interrupts += 1;
        let id = self.plan_id;
        let force = match (self.on_interrupt, self.interrupts) {
            (OnInterrupt::Detach, _) => {
                self.renderer.notice(&format!(
                    "interrupted: stopped watching; plan {id} keeps running (stop it with `gatehouse cancel {id}`)"
                ));
                return Some(EXIT_INTERRUPTED);
            }
            (OnInterrupt::Cancel, 1) => {
                self.renderer.notice(&format!(
                    "interrupted: cancelling plan {id} (running gates get SIGTERM, then SIGKILL after the grace period); interrupt again to kill them now"
                ));
                false
            }
            (OnInterrupt::Cancel, 2) => {
                self.renderer.notice(&format!(
                    "interrupted again: killing plan {id}'s running gates now; interrupt once more to stop watching"
                ));
                true
            }
            (OnInterrupt::Cancel, _) => {
                self.renderer.notice(&format!(
                    "interrupted: stopped watching plan {id} before its summary"
                ));
                return Some(EXIT_INTERRUPTED);
            }
        };
        let request = v1::CancelPlanRequest {
            plan_id: id.to_string(),
            force,
        };
        let prefer = Some(self.coord.url.clone());
        let cancel = self.cluster.call(
            Resend::Idempotent,
            prefer,
            CANCEL_TIMEOUT,
            CANCEL_TIMEOUT,
            |mut client| {
                let request = request.clone();
                async move { client.cancel_plan(request).await }
            },
        );
        if let Err(e) = cancel.await {
            self.renderer
                .notice(&format!("error: cannot cancel plan {id}: {}", e.message()));
        }
        None
    }
}

/// When the next attempt to resume may start.
fn retry_at(o: &Outage) -> Instant {
    Instant::now() + o.delay
}

/// Where and how long a resumed watch looks for the leader.
struct Resume<'a> {
    cluster: &'a Cluster,
    /// Tried first: the leader a not-leader answer named.
    prefer: Option<String>,
    /// What is left of the failover timeout.
    budget: Duration,
}

/// Opens the watch at `at`: on `coord` if given, else on the leader found through
/// `resume`.
async fn open(
    coord: Option<Coordinator>,
    resume: Resume<'_>,
    plan_id: &PlanId,
    after_seq: u64,
    at: Instant,
) -> Result<(Coordinator, Streaming<v1::PlanEvent>), ClientError> {
    tokio::time::sleep_until(at).await;
    let request = v1::WatchPlanRequest {
        plan_id: plan_id.to_string(),
        after_seq,
    };
    if let Some(coord) = coord {
        let mut client = coord.client();
        let stream = coord.unary(RPC_TIMEOUT, client.watch_plan(request)).await?;
        return Ok((coord, stream));
    }
    let Resume {
        cluster,
        prefer,
        budget,
    } = resume;
    let watch = |mut client: PlanServiceClient<Channel>| {
        let request = request.clone();
        async move { client.watch_plan(request).await }
    };
    cluster
        .call(Resend::Idempotent, prefer, budget, RPC_TIMEOUT, watch)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::connect::parse_urls;
    use crate::client::fake_plans::{Call, FakeCoordinator, Script};
    use crate::render::view::GateView;
    use crate::render::{Mode, PlanView};

    /// No interrupt ever comes.
    struct Never;

    impl Interrupts for Never {
        async fn recv(&mut self) {
            std::future::pending::<()>().await;
        }
    }

    fn events() -> Vec<v1::PlanEvent> {
        let gate = |seq| v1::PlanEvent {
            seq,
            event: Some(Event::Gate(v1::GateEvent {
                gate_id: "g".into(),
                state: v1::GateState::Running as i32,
                attempt: 1,
                ..Default::default()
            })),
        };
        let summary = v1::PlanEvent {
            seq: 3,
            event: Some(Event::Summary(v1::PlanSummary {
                plan_id: "p-1".into(),
                outcome: v1::PlanOutcome::Passed as i32,
                ..Default::default()
            })),
        };
        vec![gate(1), gate(2), summary]
    }

    #[tokio::test]
    async fn a_watch_continues_on_the_new_leader_after_the_last_event_seen() {
        let new = FakeCoordinator::start(Script {
            events: events(),
            ..Script::default()
        })
        .await;
        let old = FakeCoordinator::start(Script {
            events: events(),
            step_down_after: Some(2),
            ..Script::default()
        })
        .await;
        let follower = FakeCoordinator::start(Script {
            follower_of: Some(Some(new.url.clone())),
            ..Script::default()
        })
        .await;
        let urls = parse_urls(&format!("{},{}", old.url, follower.url)).expect("urls");
        let cluster = Cluster::new(urls, Duration::from_secs(10), Default::default());
        let coord = Coordinator::connect(&old.url, &Default::default())
            .await
            .expect("connects");
        let plan = PlanId::new("p-1");
        let gate = GateView {
            id: gatehouse_common::ids::GateId::new("g"),
            item: None,
        };
        let view = PlanView::new("demo".into(), vec![gate], vec![], vec![vec!["g".into()]]);
        let mut renderer = Renderer::new(Mode::Quiet, view);
        let follow = Follower::new(coord, &cluster, &plan, OnInterrupt::Detach, &mut renderer);
        let code = tokio::time::timeout(Duration::from_secs(20), follow.run(&mut Never))
            .await
            .expect("the watch ends in time")
            .expect("the watch ends with the summary");
        assert_eq!(code, EXIT_PASSED);

        let watch = |after| Call {
            method: "WatchPlan",
            after_seq: Some(after),
        };
        assert_eq!(
            old.calls(),
            [watch(0), watch(2)],
            "the old leader stepped down"
        );
        assert_eq!(follower.calls(), [watch(2)]);
        assert_eq!(new.calls(), [watch(2)], "resumed after the last event seen");
        for fake in [old, follower, new] {
            fake.stop().await;
        }
    }

    #[test]
    fn outcomes_map_to_run_exit_codes() {
        assert_eq!(outcome_exit_code(PlanOutcome::Passed, false), EXIT_PASSED);
        assert_eq!(outcome_exit_code(PlanOutcome::Failed, false), EXIT_FAILED);
        assert_eq!(
            outcome_exit_code(PlanOutcome::Cancelled, false),
            EXIT_INTERRUPTED
        );
        for outcome in [
            PlanOutcome::Passed,
            PlanOutcome::Failed,
            PlanOutcome::Cancelled,
        ] {
            assert_eq!(outcome_exit_code(outcome, true), EXIT_INTERRUPTED);
        }
        assert_eq!(
            outcome_exit_code(wire::outcome(v1::PlanOutcome::Unspecified as i32), false),
            EXIT_FAILED,
            "an unknown outcome never exits 0"
        );
    }

    #[test]
    fn only_connection_failures_are_resumed() {
        assert!(resumable(Code::Unavailable));
        assert!(resumable(Code::Unknown));
        assert!(!resumable(Code::NotFound));
        assert!(!resumable(Code::InvalidArgument));
    }

    #[test]
    fn resume_backoff_doubles_up_to_the_cap() {
        use crate::client::leader::{RETRY_FIRST, RETRY_MAX};
        let delay = |attempts| {
            let mut o = Outage::new();
            for _ in 0..attempts {
                o.failed(String::new());
            }
            retry_at(&o).saturating_duration_since(Instant::now())
        };
        assert!(delay(1) <= RETRY_FIRST);
        assert!(delay(3) > RETRY_FIRST * 3 && delay(3) <= RETRY_FIRST * 4);
        assert!(delay(40) <= RETRY_MAX && delay(40) > RETRY_MAX / 2);
    }
}
