//! [`CacheLink`]: the worker's side of the shared cache's membership, kept across
//! sessions: the URL of its own cache node, which every `Hello` advertises, and the
//! membership the coordinators send (`CacheMembers`), published to the cache client
//! and the node's service through a `watch` channel.
//!
//! Owned by the worker's task; a new membership replaces the old one whole.

use std::sync::Arc;

use gatehouse_cache::Membership;
use tokio::sync::watch;

/// What the worker says and hears about the shared cache (see the module docs).
pub(crate) struct CacheLink {
    /// This worker's CacheService URL, if it is a cache node.
    url: Option<String>,
    /// The membership, as the last coordinator sent it.
    members: watch::Sender<Arc<Membership>>,
}

impl CacheLink {
    pub(crate) fn new(url: Option<String>, members: watch::Sender<Arc<Membership>>) -> Self {
        Self { url, members }
    }

    /// The URL `Hello` advertises.
    pub(crate) fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Publishes the membership a coordinator sent.
    pub(crate) fn set_members(&self, members: Membership) {
        tracing::debug!(
            epoch = members.epoch(),
            nodes = members.len(),
            "cache membership"
        );
        self.members.send_replace(Arc::new(members));
    }
}
