//! The worker's outer loop: pick a coordinator URL ([`Route`]), connect, run a session,
//! and decide what comes next from how it ended, until a drain or shutdown ends the
//! worker.
//!
//! Every wait of this loop (connecting, the backoff delay, the handshake) runs under
//! [`Worker::offline`], so attempts keep running and reporting while no session is
//! welcomed. Backoff: [`Backoff`] between passes over the URL list, reset once a session
//! was welcomed; a redirect to the leader is followed without a delay. While the worker holds
//! running attempts or unacknowledged results, the delay is capped at
//! [`HOLDING_RETRY_MAX`], so it re-reports them within a new leader's recovery window.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use crate::remote::lifecycle::SessionEnd;
use crate::remote::offline::Offline;
use crate::remote::route::{Next, Route};
use crate::remote::session::Worker;
use crate::remote::{RemoteWorkerError, error_chain};
use gatehouse_common::backoff::Backoff;

/// Longest backoff while the worker holds attempts or unacknowledged results.
pub(crate) const HOLDING_RETRY_MAX: Duration = Duration::from_millis(300);

/// Connects, runs sessions and reconnects until a drain or shutdown ends the worker.
pub(crate) async fn serve(worker: &mut Worker) -> Result<(), RemoteWorkerError> {
    let cfg = worker.cfg();
    let mut backoff = Backoff::new(cfg.reconnect_initial, cfg.reconnect_max).with_jitter();
    let mut route = Route::new(cfg.coordinators.clone());
    let connect_timeout = cfg.connect_timeout;
    // URLs whose last connect failed (warned about once).
    let mut unreachable: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let url = match route.next() {
            Next::Connect(url) => url,
            Next::Backoff => {
                let mut delay = backoff.next_delay();
                if worker.holds_attempts() {
                    // Attempts or results from a lost session wait for a new leader,
                    // which waits only one liveness timeout for them: retry often.
                    delay = delay.min(HOLDING_RETRY_MAX);
                }
                tracing::debug!(?delay, "reconnecting after a delay");
                match worker.offline(tokio::time::sleep(delay)).await? {
                    Offline::Done(()) => continue,
                    Offline::Ended(_) => return Ok(()),
                }
            }
        };
        let endpoint = match worker.cfg().endpoint(&url) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::warn!(coordinator = %url, %error, "cannot use the coordinator URL");
                continue;
            }
        };
        let channel = match worker.offline(connect(endpoint, connect_timeout)).await? {
            Offline::Done(Ok(channel)) => {
                tracing::info!(coordinator = %url, "connected");
                unreachable.remove(&url);
                channel
            }
            Offline::Done(Err(error)) => {
                let error = worker.cfg().tls.explain(&url, error);
                // Once per URL and outage at warn; the retries every few hundred
                // milliseconds while a leader is elected would drown the log.
                if unreachable.insert(url.clone()) {
                    tracing::warn!(coordinator = %url, %error, "cannot connect to the coordinator; retrying");
                } else {
                    tracing::debug!(coordinator = %url, %error, "cannot connect to the coordinator");
                }
                continue;
            }
            Offline::Ended(_) => return Ok(()),
        };
        let span = tracing::info_span!("session", coordinator = %url);
        match worker.session(channel).instrument(span).await? {
            SessionEnd::Drained | SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Lost {
                reason,
                welcomed: true,
            } => {
                tracing::warn!(coordinator = %url, %reason, "session lost");
                backoff.reset();
                route.session_lost();
                worker.session_lost();
            }
            SessionEnd::Lost {
                reason,
                welcomed: false,
            } => {
                let reason = worker.cfg().tls.explain(&url, reason);
                tracing::warn!(coordinator = %url, %reason, "no session with the coordinator");
            }
            SessionEnd::NotLeader { leader, reason } => {
                // Never from TLS to plaintext: the leader's URL comes from the election
                // record, which is not authenticated like the server that named it.
                let leader = match leader {
                    Some(l) if gatehouse_proto::tls::is_downgrade(&url, &l) => {
                        tracing::warn!(coordinator = %url, leader = %l,
                            "ignoring a plaintext leader URL named over TLS");
                        None
                    }
                    other => other,
                };
                let following = route.not_leader(leader.clone());
                tracing::info!(coordinator = %url, leader = ?leader, following, %reason,
                    "the coordinator is not the leader");
            }
        }
    }
}

/// Connects to one coordinator within `timeout`; the error says why it could not.
async fn connect(endpoint: Endpoint, timeout: Duration) -> Result<Channel, String> {
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(error_chain(&error)),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}
