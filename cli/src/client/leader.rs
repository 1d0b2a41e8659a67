//! Finding the leader among the `--coordinator` URLs and making a call on it.
//!
//! With several coordinators (one leader, the others followers), a follower answers
//! every call `UNAVAILABLE`, naming the leader when it knows one
//! ([`gatehouse_proto::leader`]); such an answer guarantees nothing was accepted. A call
//! ([`Cluster::call`]) therefore goes:
//! - to each URL of the list in turn, without a pause; a URL that accepts no connection,
//!   or answers not-leader without a name (an election is in progress), sends it on to
//!   the next one;
//! - to the named leader at once when a not-leader answer names one, even if that URL
//!   is not in the list, at most [`MAX_REDIRECTS`] times in a row (so coordinators that
//!   name each other cannot make it spin);
//! - after a pass over the whole list, again after a backoff delay ([`retry_backoff`]:
//!   [`RETRY_FIRST`] doubling up to [`RETRY_MAX`]), until the failover timeout ([`FAILOVER_TIMEOUT`] by
//!   default, `--failover-timeout`) is spent; then it fails naming the URLs and the last
//!   reason. The first pass is always made in full, so a timeout of 0 means "try each
//!   URL once".
//!
//! Which failures re-send the call is [`Resend`]: `SubmitPlan` only when nothing can have
//! been accepted (no connection, a not-leader answer), never after a transport failure
//! during the call or another `UNAVAILABLE` answer (that is
//! [`ClientError::MaybeAccepted`]); idempotent calls (reads, cancel, watch) are also
//! re-sent after those. Any other answer is final.
//!
//! [`Search`] is the decision logic, pure and unit-tested; [`Cluster::call`] is the thin
//! driver that connects, calls and sleeps. Nothing runs in the background.

use std::future::Future;
use std::time::Duration;

use gatehouse_common::backoff::Backoff;
use gatehouse_proto::leader::{is_not_leader, leader_hint};
use gatehouse_proto::tls::{Tls, is_downgrade};
use gatehouse_proto::v1::plan_service_client::PlanServiceClient;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::connect::{Coordinator, CoordinatorUrls, parse_url};
use super::error::{ClientError, status_message};

/// How long a command keeps looking for the leader by default: a leader change takes up
/// to about two lease TTLs (5 s each by default), plus room for a slow start.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects to a named leader followed in a row before the next backoff.
pub const MAX_REDIRECTS: u32 = 3;
/// Delay after the first pass over the URL list that found no leader.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between passes.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// Which failures a call may be re-sent after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// Only when nothing can have been accepted: no connection, or a not-leader answer.
    /// For `SubmitPlan`, which must never be accepted twice; a failure that may have
    /// been accepted is [`ClientError::MaybeAccepted`].
    IfNotAccepted,
    /// Also after a transport failure during the call or an `UNAVAILABLE` answer: for
    /// calls that may run twice (reads, cancel, watch).
    Idempotent,
}

/// Why one try did not get an answer to return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection to the URL.
    Connect(String),
    /// A not-leader answer; `leader` is the URL it named (validated), if any.
    NotLeader {
        leader: Option<String>,
        message: String,
    },
    /// The call broke or the coordinator was unavailable (idempotent calls only).
    Broken(String),
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::Connect(reason) | Failure::Broken(reason) => reason,
            Failure::NotLeader { message, .. } => message,
        }
    }
}

/// `failure`, answered by `url`, without a leader URL that would take the command from
/// TLS to plaintext: a leader's URL comes from the election record, which is not
/// authenticated like the server that named it.
pub fn no_downgrade(url: &str, failure: Failure) -> Failure {
    match failure {
        Failure::NotLeader {
            leader: Some(leader),
            message,
        } if is_downgrade(url, &leader) => {
            tracing::warn!(%url, %leader, "ignoring a plaintext leader URL named over TLS");
            Failure::NotLeader {
                leader: None,
                message: format!("{message} (its leader URL {leader} is not https: ignored)"),
            }
        }
        other => other,
    }
}

/// Whether a call answered `status` may be re-sent, and why: `None` means the answer is
/// final.
pub fn classify(status: &Status, resend: Resend) -> Option<Failure> {
    if is_not_leader(status) {
        let leader = leader_hint(status).and_then(|url| match parse_url(&url) {
            Ok(url) => Some(url),
            Err(error) => {
                tracing::debug!(%error, "ignoring an unusable leader URL");
                None
            }
        });
        return Some(Failure::NotLeader {
            leader,
            message: status.message().to_string(),
        });
    }
    let broke = status.code() == Code::Unavailable || broke_in_transport(status);
    (resend == Resend::Idempotent && broke).then(|| Failure::Broken(status_message(status)))
}

/// Whether the status was made on this side from a transport error (the connection
/// failed during the call) rather than sent by the coordinator.
fn broke_in_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Connect to this URL and make the call.
    Try(String),
    /// Wait this long, then ask again.
    Wait(Duration),
    /// The failover timeout is spent.
    GiveUp,
}

/// The search for the leader of one call (see the module docs).
#[derive(Debug)]
pub struct Search {
    /// The configured URLs (at least one).
    urls: Vec<String>,
    /// Index of the next list URL.
    next: usize,
    /// List URLs tried in this pass.
    tried: usize,
    /// The delays between passes.
    backoff: Backoff,
    /// A URL to try before the list: a named leader.
    redirect: Option<String>,
    /// Redirects followed in this pass.
    redirects: u32,
    /// The last failure.
    last: Option<Failure>,
    /// Its text, with its URL.
    last_reason: String,
}

impl Search {
    pub fn new(urls: &[String]) -> Self {
        Self {
            urls: urls.to_vec(),
            next: 0,
            tried: 0,
            backoff: retry_backoff(),
            redirect: None,
            redirects: 0,
            last: None,
            last_reason: String::new(),
        }
    }

    /// Tries `url` first (a leader named earlier, or the coordinator last used).
    pub fn prefer(&mut self, url: String) {
        self.redirect = Some(url);
    }

    /// The next step, `elapsed` after the search started.
    pub fn next(&mut self, elapsed: Duration, budget: Duration) -> Step {
        if let Some(url) = self.redirect.take() {
            return Step::Try(url);
        }
        if self.urls.is_empty() || self.tried >= self.urls.len() {
            if elapsed >= budget {
                return Step::GiveUp;
            }
            self.tried = 0;
            self.redirects = 0;
            return Step::Wait(self.backoff.next_delay().min(budget - elapsed));
        }
        let url = self.urls[self.next].clone();
        self.next = (self.next + 1) % self.urls.len();
        self.tried += 1;
        Step::Try(url)
    }

    /// Records that trying `url` failed; a not-leader answer naming the leader makes it
    /// the next URL tried (within [`MAX_REDIRECTS`]).
    pub fn failed(&mut self, url: &str, failure: Failure) {
        tracing::debug!(%url, ?failure, "no answer from the leader");
        if let Failure::NotLeader {
            leader: Some(leader),
            ..
        } = &failure
            && self.redirects < MAX_REDIRECTS
        {
            self.redirects += 1;
            self.redirect = Some(leader.clone());
        }
        self.last_reason = format!("{url}: {}", failure.reason());
        self.last = Some(failure);
    }

    /// The error once the search gave up after `after`.
    pub fn give_up(self, after: Duration) -> ClientError {
        let urls = self.urls;
        let reason = self.last_reason;
        match self.last {
            Some(Failure::NotLeader { .. }) => ClientError::NoLeader {
                urls,
                reason,
                after,
            },
            _ => ClientError::Unreachable {
                urls,
                reason,
                after,
            },
        }
    }
}

/// The delays between passes over the URL list, and between attempts to resume a
/// broken watch: [`RETRY_FIRST`] doubling up to [`RETRY_MAX`].
pub fn retry_backoff() -> Backoff {
    Backoff::new(RETRY_FIRST, RETRY_MAX)
}

/// The coordinators of one command and how long to look for their leader.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub urls: CoordinatorUrls,
    /// The failover timeout.
    pub budget: Duration,
    /// TLS of the connections to `https://` URLs.
    pub tls: Tls,
}

impl Cluster {
    pub fn new(urls: CoordinatorUrls, budget: Duration, tls: Tls) -> Self {
        Self { urls, budget, tls }
    }

    /// Makes one call on the leader, found as the module docs describe, within `budget`;
    /// `prefer` is tried first. Each try gets `timeout` to answer. Returns the
    /// coordinator that answered, for later calls.
    pub async fn call<T, F, Fut>(
        &self,
        resend: Resend,
        prefer: Option<String>,
        budget: Duration,
        timeout: Duration,
        mut rpc: F,
    ) -> Result<(Coordinator, T), ClientError>
    where
        F: FnMut(PlanServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut search = Search::new(self.urls.as_slice());
        if let Some(url) = prefer {
            search.prefer(url);
        }
        loop {
            let url = match search.next(started.elapsed(), budget) {
                Step::Try(url) => url,
                Step::Wait(delay) => {
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Step::GiveUp => return Err(search.give_up(started.elapsed())),
            };
            let coord = match Coordinator::connect(&url, &self.tls).await {
                Ok(coord) => coord,
                Err(reason) => {
                    search.failed(&url, Failure::Connect(self.tls.explain(&url, reason)));
                    continue;
                }
            };
            match coord.unary(timeout, rpc(coord.client())).await {
                Ok(answer) => return Ok((coord, answer)),
                Err(ClientError::Status { url, status }) => match classify(&status, resend) {
                    Some(Failure::Broken(reason)) => {
                        let reason = self.tls.explain(&url, reason);
                        search.failed(&url, Failure::Broken(reason));
                    }
                    Some(failure) => search.failed(&url, no_downgrade(&url, failure)),
                    // The call may have been accepted: say so rather than re-send it.
                    None if classify(&status, Resend::Idempotent).is_some() => {
                        return Err(ClientError::MaybeAccepted {
                            url,
                            reason: status_message(&status),
                        });
                    }
                    None => return Err(ClientError::Status { url, status }),
                },
                Err(other) => return Err(other),
            }
        }
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
