//! A cache node: a [`NodeStore`] served as `gatehouse.v1.CacheService` (see
//! `docs/cache.md`). [`start_node`] takes a listener its caller bound (tests bind port
//! 0), checks the URL the node advertises, opens the store and serves it; a worker
//! started with `--cache-listen` ([`CacheNodeConfig`]) calls it before it says `Hello`, advertises the URL in
//! `Hello.cache_url`, and the coordinator adds it to the membership it distributes.
//!
//! - [`store`]: what the node holds (bounded memory and disk tiers, TTL).
//! - [`service`]: the RPCs, each a thin translation to store calls.
//!
//! **Failure.** A listener whose address cannot be read, a store directory that cannot
//! be opened, an advertised URL that is not usable or whose scheme does not match what
//! the node serves, and unusable TLS settings are [`CacheNodeError`]s: the node does not
//! start. Once serving, a request the protocol does not allow is `INVALID_ARGUMENT`, a
//! damaged or oversized entry is refused (counted, never stored or served), and a
//! server that fails is logged.
//!
//! **Shutdown.** The server stops accepting once its `shutdown` token fires and ends
//! when its connections closed, or 2 s later, closing them; its task is the caller's
//! ([`CacheNode::task`]) to await.

pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::spawn::spawn_named;
use gatehouse_proto::cache::check_url;
use gatehouse_proto::v1::cache_service_server::CacheServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{ClusterCache, Membership};
pub use service::CacheServiceImpl;
pub use store::{NodeStore, StoreConfig, StoreStats};

/// How a node (a worker with `--cache-listen`) serves its part of the cache.
#[derive(Clone, Debug)]
pub struct CacheNodeConfig {
    /// The URL other processes reach it at (`--cache-advertise`); by default
    /// `http://<listen address>:<bound port>` (`https://` when serving TLS), with the
    /// host name when the listen address is unspecified (0.0.0.0 or ::).
    pub advertise: Option<String>,
    /// The store's sizes and TTL.
    pub store: StoreConfig,
    /// Served when it has a certificate (and then requiring client certificates when
    /// it says so).
    pub tls: gatehouse_proto::tls::Tls,
}

/// Why the cache node could not start.
#[derive(Debug, thiserror::Error)]
pub enum CacheNodeError {
    /// The listener's address cannot be read.
    #[error("cannot read the cache listener's address: {0}")]
    Listen(std::io::Error),
    /// The store cannot be opened (its directory).
    #[error("cannot open the cache store: {0}")]
    Store(#[from] gatehouse_common::cache::CacheError),
    /// `--cache-advertise` is not a usable URL.
    #[error("invalid cache advertise URL: {0}")]
    Advertise(String),
    /// The TLS settings cannot be served.
    #[error("cannot serve the cache with TLS: {0}")]
    Tls(#[from] tonic::transport::Error),
}

/// A running cache node.
pub struct CacheNode {
    /// The advertised URL.
    pub url: String,
    /// The server task; it ends once `shutdown` fires and connections closed.
    pub task: JoinHandle<()>,
    /// The store, for metrics.
    pub store: Arc<NodeStore>,
}

/// Most bytes of one message the service takes (a chunk of at most 1 MiB plus framing).
const MAX_MESSAGE: usize = 2 * gatehouse_proto::cache::CHUNK_BYTES + 4096;

/// Opens the store and serves it on `listener` (bound by the caller) until `shutdown`.
pub async fn start_node(
    node_id: String,
    hostname: &str,
    listener: TcpListener,
    config: CacheNodeConfig,
    members: watch::Receiver<Arc<Membership>>,
    client: Option<Arc<ClusterCache>>,
    shutdown: CancellationToken,
) -> Result<CacheNode, CacheNodeError> {
    let bound = listener.local_addr().map_err(CacheNodeError::Listen)?;
    let url = match config.advertise {
        Some(url) => url,
        None if bound.ip().is_unspecified() => {
            format!("{}://{hostname}:{}", config.tls.scheme(), bound.port())
        }
        None => format!("{}://{bound}", config.tls.scheme()),
    };
    // Also the default: a host name that makes no valid URL must stop the worker here,
    // not get every session refused.
    check_url(&url)
        .map_err(|e| CacheNodeError::Advertise(format!("{e} (set --cache-advertise)")))?;
    if config.tls.serves() != gatehouse_proto::tls::is_https(&url) {
        return Err(CacheNodeError::Advertise(format!(
            "{url} does not match what this node serves ({}): use {}://",
            if config.tls.serves() {
                "TLS, with --tls-cert"
            } else {
                "plaintext, without --tls-cert"
            },
            config.tls.scheme()
        )));
    }
    let store = Arc::new(NodeStore::open(config.store).await?);
    let service = CacheServiceImpl::new(node_id, store.clone(), members, client);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = config.tls.server_config() {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .add_service(
            CacheServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    tracing::info!(%url, listen = %bound, "cache node serving");
    let task = spawn_named("cache-server", async move {
        tokio::select! {
            served = server => if let Err(e) = served {
                tracing::error!(error = %e, "cache server failed");
            },
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            } => tracing::debug!("cache connections did not close in time; closing them"),
        }
    });
    Ok(CacheNode { url, task, store })
}

/// `size` bytes of xorshift64 noise from `seed`: incompressible enough that zstd keeps
/// about `size` bytes, so tests control entry sizes.
#[cfg(test)]
pub(crate) fn noise(seed: u64, size: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
