//! `gatehouse run --cache URL`: a client of a cluster's shared result cache, reached
//! through one of its cache nodes. The node's `Stats` names the membership it last
//! received from its coordinator; that membership is used for the whole run (a run
//! does not follow later changes). A node that has no membership yet is used alone.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gatehouse_cache::{ClientConfig, ClusterCache, Membership, node_stats};
use gatehouse_proto::cache::check_url;
use gatehouse_proto::tls::Tls;

/// How long finding the membership may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the cache behind the node at `url`.
pub async fn connect(url: &str, tls: &Tls) -> anyhow::Result<Arc<ClusterCache>> {
    check_url(url).map_err(|e| anyhow::anyhow!("invalid cache URL: {e}"))?;
    let stats = node_stats(url, CONNECT_TIMEOUT, tls)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the cache node {url}: {e}"))?;
    let members = match stats.members {
        Some(m) if !m.nodes.is_empty() => Membership::from_wire(&m)
            .with_context(|| format!("the cache node {url} sent an unusable member list"))?,
        _ => {
            let id = stats.node.map(|n| n.node_id).unwrap_or_default();
            Membership::new(0, 1, [(id, url.to_owned())])
        }
    };
    tracing::info!(%url, nodes = members.len(), replicas = members.replicas(), "using the shared cache");
    let (_, rx) = tokio::sync::watch::channel(Arc::new(members));
    let config = ClientConfig {
        tls: tls.clone(),
        ..ClientConfig::default()
    };
    Ok(Arc::new(ClusterCache::new(config, rx)))
}
