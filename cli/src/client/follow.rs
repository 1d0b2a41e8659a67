//! Following a plan's events until its summary (`gatehouse watch`, `submit --watch`).
//!
//! Events are read from `WatchPlan` and handed to the [`Renderer`], which prints them
//! exactly as `gatehouse run` does. The last `seq` seen is kept; when the stream breaks
//! (the coordinator restarted, the leader changed, the connection died), the follower
//! reconnects to the first reachable URL of the list and asks again with `after_seq` =
//! that seq, so nothing is missed or shown twice. Resuming is retried with exponential
//! backoff ([`RETRY_FIRST`] doubling up to [`RETRY_MAX`]) for at most the reconnect
//! budget counted from the break; a received event ends the outage.
//!
//! Signals (SIGINT, SIGTERM, SIGHUP) are handled at every wait, including during a
//! reconnect: with [`OnInterrupt::Cancel`] the first one sends `CancelPlan`, the second
//! `CancelPlan { force }`, and the follower keeps reading until the summary (a third
//! stops watching); with [`OnInterrupt::Detach`] the first one stops watching and the
//! plan keeps running.

use std::time::Duration;

use gatehouse_common::ids::PlanId;
use gatehouse_coordinator::core::PlanOutcome;
use gatehouse_proto::v1::{self, plan_event::Event};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;
use tonic::{Code, Streaming};

use super::connect::{Coordinator, CoordinatorUrls, RPC_TIMEOUT};
use super::error::ClientError;
use crate::render::{Renderer, wire};
use crate::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PASSED};

/// Delay before the first attempt to resume a broken watch.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between attempts to resume.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Time a `CancelPlan` sent on a signal gets to answer.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a broken watch is retried by default.
pub const RECONNECT_BUDGET: Duration = Duration::from_secs(30);

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

    /// The next signal.
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
    /// The coordinator the current stream comes from (also used for cancels).
    coord: Coordinator,
    urls: &'a CoordinatorUrls,
    plan_id: &'a PlanId,
    on_interrupt: OnInterrupt,
    renderer: &'a mut Renderer,
    /// How long resuming a broken watch is retried.
    budget: Duration,
    /// Highest `seq` shown.
    last_seq: u64,
    /// Signals received.
    interrupts: u32,
}

/// A broken watch being resumed.
struct Outage {
    since: Instant,
    attempts: u32,
    reason: String,
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
        urls: &'a CoordinatorUrls,
        plan_id: &'a PlanId,
        on_interrupt: OnInterrupt,
        renderer: &'a mut Renderer,
    ) -> Self {
        Self {
            coord,
            urls,
            plan_id,
            on_interrupt,
            renderer,
            budget: RECONNECT_BUDGET,
            last_seq: 0,
            interrupts: 0,
        }
    }

    /// Follows the plan from its first event until the summary; returns the exit code.
    pub async fn run(mut self, signals: &mut Signals) -> Result<u8, ClientError> {
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
                    // The first open reuses the connection; a resume connects afresh,
                    // possibly to another URL of the list.
                    let (coord, at) = match &outage {
                        None => (Some(self.coord.clone()), Instant::now()),
                        Some(o) => (None, retry_at(o)),
                    };
                    let open = open(coord, self.urls, self.plan_id, self.last_seq, at);
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
                        ClientError::Local(_) => return Err(e),
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

    /// Records a failure to read or resume; gives up once the budget is spent.
    fn broke(&self, outage: Option<Outage>, reason: String) -> Result<Outage, ClientError> {
        let mut o = outage.unwrap_or_else(|| Outage {
            since: Instant::now(),
            attempts: 0,
            reason: String::new(),
        });
        o.attempts += 1;
        o.reason = reason;
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
        match ev.event {
            Some(Event::Gate(gate)) => match wire::gate_update(self.renderer.view(), gate) {
                Ok(Some(update)) => self.renderer.gate(&update),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(plan_id = %self.plan_id, seq = ev.seq, error = %e, "ignoring an event")
                }
            },
            Some(Event::Summary(s)) => {
                let summary = wire::summary_view(&s);
                self.renderer.summary(&summary);
                return Some(outcome_exit_code(summary.outcome, self.interrupts > 0));
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
        let mut client = self.coord.client();
        if let Err(e) = self
            .coord
            .unary(CANCEL_TIMEOUT, client.cancel_plan(request))
            .await
        {
            self.renderer
                .notice(&format!("error: cannot cancel plan {id}: {}", e.message()));
        }
        None
    }
}

/// When the next attempt to resume may start.
fn retry_at(o: &Outage) -> Instant {
    let shift = o.attempts.saturating_sub(1).min(16);
    let delay = RETRY_FIRST.saturating_mul(1 << shift).min(RETRY_MAX);
    Instant::now() + delay
}

/// Opens the watch at `at`: on `coord` if given, else on the first reachable URL.
async fn open(
    coord: Option<Coordinator>,
    urls: &CoordinatorUrls,
    plan_id: &PlanId,
    after_seq: u64,
    at: Instant,
) -> Result<(Coordinator, Streaming<v1::PlanEvent>), ClientError> {
    tokio::time::sleep_until(at).await;
    let coord = match coord {
        Some(c) => c,
        None => Coordinator::connect(urls).await?,
    };
    let mut client = coord.client();
    let request = v1::WatchPlanRequest {
        plan_id: plan_id.to_string(),
        after_seq,
    };
    let stream = coord.unary(RPC_TIMEOUT, client.watch_plan(request)).await?;
    Ok((coord, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let now = Instant::now();
        let delay = |attempts| {
            let o = Outage {
                since: now,
                attempts,
                reason: String::new(),
            };
            retry_at(&o).saturating_duration_since(Instant::now())
        };
        assert!(delay(1) <= RETRY_FIRST);
        assert!(delay(3) > RETRY_FIRST * 3 && delay(3) <= RETRY_FIRST * 4);
        assert!(delay(40) <= RETRY_MAX && delay(40) > RETRY_MAX / 2);
    }
}
