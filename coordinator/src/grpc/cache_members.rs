//! [`CacheMembers`]: the cache's membership as the leader sees it: the workers whose
//! sessions advertised a `cache_url`. Sessions add and remove themselves; every change
//! bumps the epoch and is published on a `watch` channel, which the scheduler's cache
//! client and every session (to forward it as `CacheMembers` frames) follow.
//!
//! The first epoch of a term is the wall clock in milliseconds, so a new leader's
//! epochs are (clocks permitting) above its predecessor's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use gatehouse_cache::Membership;
use tokio::sync::watch;

/// The membership of one term (cheap to clone; clones share it).
#[derive(Clone)]
pub struct CacheMembers {
    inner: Arc<Mutex<Nodes>>,
    tx: Arc<watch::Sender<Arc<Membership>>>,
}

struct Nodes {
    epoch: u64,
    replicas: usize,
    /// worker id -> (session generation, URL).
    nodes: BTreeMap<String, (u64, String)>,
}

impl CacheMembers {
    /// An empty membership placing every key on `replicas` nodes.
    pub fn new(replicas: usize) -> Self {
        let epoch = gatehouse_common::cache::unix_ms_now();
        let (tx, _) = watch::channel(Arc::new(Membership::new(epoch, replicas, [])));
        Self {
            inner: Arc::new(Mutex::new(Nodes {
                epoch,
                replicas,
                nodes: BTreeMap::new(),
            })),
            tx: Arc::new(tx),
        }
    }

    /// Follows the membership.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Membership>> {
        self.tx.subscribe()
    }

    /// Session `generation` of worker `id` serves the cache at `url`.
    pub fn join(&self, id: &str, generation: u64, url: &str) {
        self.change(|nodes| {
            let old = nodes.insert(id.to_owned(), (generation, url.to_owned()));
            old.is_none_or(|(_, u)| u != url)
        });
    }

    /// Session `generation` of worker `id` ended (a newer session of it stays).
    pub fn leave(&self, id: &str, generation: u64) {
        self.change(|nodes| match nodes.get(id) {
            Some((g, _)) if *g == generation => nodes.remove(id).is_some(),
            _ => false,
        });
    }

    fn change(&self, f: impl FnOnce(&mut BTreeMap<String, (u64, String)>) -> bool) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !f(&mut inner.nodes) {
            return;
        }
        inner.epoch += 1;
        let members = Membership::new(
            inner.epoch,
            inner.replicas,
            inner
                .nodes
                .iter()
                .map(|(id, (_, url))| (id.clone(), url.clone())),
        );
        tracing::info!(
            epoch = inner.epoch,
            nodes = members.len(),
            "cache membership changed"
        );
        self.tx.send_replace(Arc::new(members));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_bump_the_epoch_and_stale_sessions_cannot_remove_a_node() {
        let members = CacheMembers::new(2);
        let rx = members.subscribe();
        let first = rx.borrow().epoch();
        members.join("w1", 1, "http://127.0.0.1:1");
        members.join("w2", 2, "http://127.0.0.1:2");
        assert_eq!(rx.borrow().len(), 2);
        assert_eq!(rx.borrow().epoch(), first + 2);
        // Re-joining with the same URL is no change.
        members.join("w1", 3, "http://127.0.0.1:1");
        assert_eq!(rx.borrow().epoch(), first + 2);
        // The old session of w1 (generation 1) ends after the new one (3) joined.
        members.leave("w1", 1);
        assert_eq!(rx.borrow().len(), 2);
        members.leave("w1", 3);
        let now = rx.borrow().clone();
        assert_eq!(
            now.nodes().collect::<Vec<_>>(),
            vec![("w2", "http://127.0.0.1:2")]
        );
        assert_eq!(now.replicas(), 2);
        assert_eq!(now.epoch(), first + 3);
    }
}
