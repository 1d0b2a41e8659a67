//! High availability: leader election through etcd, one leadership term at a time.
//!
//! Every replica runs [`run`]: it grants itself a lease (TTL [`EtcdConfig::lease_ttl`])
//! kept alive by a background task, campaigns on the election
//! `/gatehouse/<cluster>/election` with its client-facing URL as the value, and, once
//! elected, proclaims that URL and leads one term ([`crate::server::lead`]) with a state
//! store *fenced* on its election key: every write is a transaction that compares the
//! key's create revision, so a deposed leader's writes fail and it steps down.
//!
//! The term ends when the lease can no longer be proven alive (no successful keep-alive
//! for the TTL minus a margin: etcd unreachable, the process was paused, or the lease
//! was revoked), when a write is fenced, or on shutdown. The replica then resigns (best
//! effort), revokes its lease, and campaigns again; while etcd is unreachable it
//! retries with backoff ([`Backoff`], 200 ms doubling up to 2 s, for the first connect
//! and for every failed campaign, reset once elected) and leads nothing, so no work is
//! dispatched that it cannot prove it may dispatch. The lease keep-alive does not back
//! off: it retries every 200 ms (TTL/3 if shorter) until the lease's own deadline,
//! which bounds it.
//!
//! Followers observe the election (their own task; `observe` only answers once a leader
//! exists) and publish the leader's URL in their role, which the services return with
//! `UNAVAILABLE` so clients and workers follow the leader.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaderKey, ProclaimOptions, ResignOptions};
use gatehouse_common::backoff::Backoff;
use gatehouse_common::spawn::spawn_named;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::role::Role;
use crate::server::{CoordinatorConfig, ServerError, TermEnd, lead};
use crate::store::StateStore;
use crate::store::{EtcdStore, Fence};

/// etcd settings of a replica.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// etcd endpoints (`http://host:port`).
    pub endpoints: Vec<String>,
    /// Cluster name: keys live under `/gatehouse/<cluster>/`.
    pub cluster: String,
    /// Lease TTL: how long a leader that cannot reach etcd keeps leading.
    pub lease_ttl: Duration,
    /// The URL the leader proclaims (clients and workers connect to it).
    pub advertise: String,
}

/// Time one etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// First retry delay while etcd is unreachable; doubles up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Longest retry delay while etcd is unreachable.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The retry delays of connecting and campaigning.
fn retry_backoff() -> Backoff {
    Backoff::new(RETRY_INITIAL, RETRY_MAX)
}

/// Runs elections and terms until shutdown.
pub(crate) async fn run(
    config: &CoordinatorConfig,
    sources: &Arc<crate::sources::Sources>,
    etcd: EtcdConfig,
    role_tx: &watch::Sender<Role>,
    shutdown: &CancellationToken,
) -> Result<(), ServerError> {
    let Some(store) = connect(&etcd, shutdown).await? else {
        return Ok(());
    };
    let name = format!("{}election", store.prefix());
    tracing::info!(election = %name, advertise = %etcd.advertise, ttl = ?etcd.lease_ttl,
        "joining the leader election");
    let (leader_tx, mut leader_rx) = watch::channel(None::<String>);
    let observer_stop = shutdown.child_token();
    let observer = spawn_named(
        "leader-observer",
        observe(
            store.client(),
            name.clone(),
            leader_tx,
            config.metrics.clone(),
            observer_stop.clone(),
        ),
    );
    let mut backoff = retry_backoff();
    let outcome = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        follow(role_tx, &leader_rx, &etcd.advertise);
        let candidacy = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            c = campaign(&store, &name, &etcd, role_tx, &mut leader_rx, shutdown) => c,
        };
        let (key, lease) = match candidacy {
            Ok(Some(won)) => won,
            Ok(None) => break Ok(()),
            Err(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(%reason, retry_in = ?delay, "cannot campaign; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        backoff.reset();
        tracing::info!(key = %String::from_utf8_lossy(key.key()), rev = key.rev(), "elected leader");
        let mut election = store.client().election_client();
        let proclaimed = tokio::time::timeout(
            REQUEST_TIMEOUT,
            election.proclaim(
                etcd.advertise.clone(),
                Some(ProclaimOptions::new().with_leader(key.clone())),
            ),
        )
        .await;
        if !matches!(proclaimed, Ok(Ok(_))) {
            tracing::warn!(result = ?proclaimed.map(|r| r.map(|_| ())), "cannot proclaim the leader address");
        }
        let fenced: Arc<dyn StateStore> = Arc::new(store.fenced(Fence {
            key: key.key().to_vec(),
            create_revision: key.rev(),
        }));
        let lost = lease.lost.clone();
        let ended = lead(
            config,
            sources,
            fenced,
            key.rev(),
            role_tx,
            shutdown,
            async move {
                lost.cancelled().await;
                "the leader lease could not be renewed".to_string()
            },
        )
        .await;
        step_down(&store, key, lease).await;
        match ended {
            Ok(TermEnd::Shutdown) => break Ok(()),
            Ok(TermEnd::LostLeadership(why)) => {
                tracing::warn!(reason = %why, "stopped leading; campaigning again");
            }
            Err(ServerError::Store(e)) => {
                tracing::warn!(error = %e, "cannot read plan state; campaigning again");
                // The first delay; the next campaign failure starts from it again.
                if !backoff.wait(shutdown).await {
                    break Ok(());
                }
                backoff.reset();
            }
            Err(e) => break Err(e),
        }
    };
    role_tx.send_replace(Role::Following { leader: None });
    observer_stop.cancel();
    let _ = observer.await;
    outcome
}

/// Connects to etcd, retrying until it answers or shutdown (`None`).
async fn connect(
    etcd: &EtcdConfig,
    shutdown: &CancellationToken,
) -> Result<Option<EtcdStore>, ServerError> {
    let mut backoff = retry_backoff();
    loop {
        let connected = EtcdStore::connect(&etcd.endpoints, &etcd.cluster, REQUEST_TIMEOUT).await;
        let reason = match connected {
            Ok(store) => return Ok(Some(store)),
            Err(crate::store::StoreError::Unavailable(reason)) => reason,
            Err(e) => return Err(e.into()),
        };
        let delay = backoff.next_delay();
        tracing::warn!(endpoints = ?etcd.endpoints, %reason, retry_in = ?delay,
            "etcd is unreachable; retrying");
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Publishes the follower role with the observed leader (never this replica itself).
fn follow(role_tx: &watch::Sender<Role>, leader: &watch::Receiver<Option<String>>, own: &str) {
    let leader = leader.borrow().clone().filter(|url| url != own);
    role_tx.send_replace(Role::Following { leader });
}

/// A lease kept alive in the background; `lost` fires when it can no longer be proven
/// alive.
struct Lease {
    id: i64,
    lost: CancellationToken,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Grants a lease and campaigns with it until elected (`Some`), shutdown (`None`), or
/// an etcd failure (`Err`, the lease revoked).
async fn campaign(
    store: &EtcdStore,
    name: &str,
    etcd: &EtcdConfig,
    role_tx: &watch::Sender<Role>,
    leader_rx: &mut watch::Receiver<Option<String>>,
    shutdown: &CancellationToken,
) -> Result<Option<(LeaderKey, Lease)>, String> {
    let ttl_secs = etcd.lease_ttl.as_secs().max(1) as i64;
    let mut client = store.client();
    let granted = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_grant(ttl_secs, None))
        .await
        .map_err(|_| "lease grant timed out".to_string())?
        .map_err(|e| format!("lease grant failed: {e}"))?;
    let lease = start_lease(store.client(), granted.id(), etcd.lease_ttl);
    let mut election = store.client().election_client();
    let campaign = election.campaign(name.to_string(), etcd.advertise.clone(), lease.id);
    tokio::pin!(campaign);
    let won = loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                revoke(store, lease).await;
                return Ok(None);
            }
            () = lease.lost.cancelled() => {
                revoke(store, lease).await;
                return Err("the lease expired while campaigning".into());
            }
            changed = leader_rx.changed() => {
                if changed.is_ok() {
                    follow(role_tx, leader_rx, &etcd.advertise);
                }
            }
            result = &mut campaign => break result,
        }
    };
    match won {
        Ok(mut resp) => match resp.take_leader() {
            Some(key) => Ok(Some((key, lease))),
            None => {
                revoke(store, lease).await;
                Err("campaign answered without a leader key".into())
            }
        },
        Err(e) => {
            revoke(store, lease).await;
            Err(format!("campaign failed: {e}"))
        }
    }
}

/// Ends a term's leadership: resigns (so the next leader need not wait for the lease to
/// expire) and revokes the lease, each best effort and bounded.
async fn step_down(store: &EtcdStore, key: LeaderKey, lease: Lease) {
    if !lease.lost.is_cancelled() {
        let mut election = store.client().election_client();
        let resigned = tokio::time::timeout(
            REQUEST_TIMEOUT,
            election.resign(Some(ResignOptions::new().with_leader(key))),
        )
        .await;
        tracing::info!(ok = matches!(resigned, Ok(Ok(_))), "resigned leadership");
    }
    revoke(store, lease).await;
}

async fn revoke(store: &EtcdStore, lease: Lease) {
    lease.stop.cancel();
    let _ = lease.task.await;
    let mut client = store.client();
    let revoked = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(lease.id)).await;
    tracing::debug!(
        lease = lease.id,
        ok = matches!(revoked, Ok(Ok(_))),
        "lease revoked"
    );
}

fn start_lease(client: Client, id: i64, ttl: Duration) -> Lease {
    let lost = CancellationToken::new();
    let stop = CancellationToken::new();
    let task = spawn_named(
        "lease-keepalive",
        keep_alive(client, id, ttl, lost.clone(), stop.clone()),
    );
    Lease {
        id,
        lost,
        stop,
        task,
    }
}

/// Renews the lease every TTL/3. The lease counts as lost once no renewal succeeded for
/// the TTL minus a margin (measured from when the last successful renewal was *sent*,
/// so etcd's own expiry can only come later), or when etcd says it has expired.
async fn keep_alive(
    mut client: Client,
    id: i64,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let margin = (ttl / 5).min(Duration::from_secs(1));
    let deadline_after = ttl.saturating_sub(margin);
    let interval = ttl / 3;
    let mut proven = Instant::now();
    let mut stream = None;
    loop {
        if proven.elapsed() >= deadline_after {
            tracing::warn!(
                lease = id,
                ?ttl,
                "the lease could not be renewed in time; leadership is lost"
            );
            lost.cancel();
            return;
        }
        if stream.is_none() {
            stream = match tokio::time::timeout(interval, client.lease_keep_alive(id)).await {
                Ok(Ok(pair)) => Some(pair),
                Ok(Err(e)) => {
                    tracing::debug!(lease = id, error = %e, "cannot open the keep-alive stream");
                    None
                }
                Err(_) => None,
            };
        }
        if let Some((keeper, responses)) = &mut stream {
            let sent = Instant::now();
            let renewed = tokio::time::timeout(interval, async {
                keeper.keep_alive().await?;
                responses.message().await
            })
            .await;
            match renewed {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => proven = sent,
                Ok(Ok(Some(_))) => {
                    tracing::warn!(lease = id, "the lease has expired; leadership is lost");
                    lost.cancel();
                    return;
                }
                other => {
                    tracing::debug!(lease = id, result = ?other.map(|r| r.map(|_| ())), "lease renewal failed");
                    stream = None;
                }
            }
        }
        let pause = if stream.is_some() {
            interval
        } else {
            interval.min(Duration::from_millis(200))
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Publishes the proclaimed leader URL until `stop`; `None` while unknown.
async fn observe(
    client: Client,
    name: String,
    leader: watch::Sender<Option<String>>,
    metrics: crate::metrics::Metrics,
    stop: CancellationToken,
) {
    // The last leader seen, across reconnects: a change to another one is counted.
    let mut last: Option<String> = None;
    loop {
        let mut election = client.election_client();
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = election.observe(name.clone()) => opened,
        };
        if let Ok(mut stream) = opened {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    next = stream.message() => next,
                };
                match next {
                    Ok(Some(mut resp)) => {
                        let url = resp
                            .take_kv()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                            .filter(|u| !u.is_empty());
                        tracing::debug!(leader = ?url, "observed leader");
                        // The first leader seen is not a change (a replica that
                        // starts would otherwise count one).
                        if url.is_some() && url != last {
                            if last.is_some() {
                                metrics.leader_changed();
                            }
                            last.clone_from(&url);
                        }
                        leader.send_replace(url);
                    }
                    _ => break,
                }
            }
        }
        leader.send_replace(None);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY_MAX / 4) => {}
        }
    }
}
