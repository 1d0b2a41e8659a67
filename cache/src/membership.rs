//! [`Membership`]: the live cache nodes (worker id -> `CacheService` URL) and the
//! replication factor, with the rendezvous [`Placement`] that maps each key to its
//! replicas. A value, never mutated: the coordinator's `CacheMembers` builds a new one
//! (with a higher epoch) for every change and publishes it on a `watch` channel, which
//! the coordinator's client and every worker session follow; workers receive it in
//! `CacheMembers` frames ([`Membership::from_wire`], [`Membership::to_wire`]).
//!
//! Decoding never trusts the peer: a node without an id or with a URL that cannot
//! address a node is a [`WireError`]; the replication factor is clamped to
//! `1..=`[`MAX_REPLICAS`].

use std::collections::HashMap;

use gatehouse_common::cache::CacheKey;
use gatehouse_common::cache::placement::Placement;
use gatehouse_proto::cache::check_url;
use gatehouse_proto::convert::WireError;
use gatehouse_proto::v1;

/// Most replicas a membership may ask for.
pub const MAX_REPLICAS: usize = 8;

/// The live cache nodes (worker id -> CacheService URL) and the replication factor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The nodes in rendezvous order, and the epoch they were published at.
    placement: Placement,
    /// How many nodes hold each key (`1..=MAX_REPLICAS`).
    replicas: usize,
    /// Every node's URL, by id (the ids are exactly the placement's nodes).
    urls: HashMap<String, String>,
}

impl Default for Membership {
    fn default() -> Self {
        Self::new(0, 2, [])
    }
}

impl Membership {
    /// `nodes` as (id, url) pairs; a repeated id keeps its last URL.
    pub fn new(
        epoch: u64,
        replicas: usize,
        nodes: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let urls: HashMap<String, String> = nodes.into_iter().collect();
        Self {
            placement: Placement::new(epoch, urls.keys().cloned()),
            replicas: replicas.clamp(1, MAX_REPLICAS),
            urls,
        }
    }

    /// Reads a membership frame; URLs must be `http://` or `https://`.
    pub fn from_wire(m: &v1::CacheMembers) -> Result<Self, WireError> {
        for n in &m.nodes {
            if n.id.is_empty() {
                return Err(WireError::Missing("cache_members.nodes.id"));
            }
            check_url(&n.url).map_err(|reason| WireError::Invalid {
                field: "cache_members.nodes.url",
                reason,
            })?;
        }
        Ok(Self::new(
            m.epoch,
            m.replicas as usize,
            m.nodes.iter().map(|n| (n.id.clone(), n.url.clone())),
        ))
    }

    /// The membership frame.
    pub fn to_wire(&self) -> v1::CacheMembers {
        v1::CacheMembers {
            epoch: self.epoch(),
            replicas: self.replicas as u32,
            nodes: self
                .nodes()
                .map(|(id, url)| v1::CacheNode {
                    id: id.to_owned(),
                    url: url.to_owned(),
                })
                .collect(),
        }
    }

    /// Grows with every change made by one coordinator.
    pub fn epoch(&self) -> u64 {
        self.placement.epoch()
    }

    /// The replication factor.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The nodes as (id, url), sorted by id.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.placement
            .nodes()
            .iter()
            .map(|id| (id.as_str(), self.urls[id].as_str()))
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Whether there is no node (every lookup is a miss, every write a no-op).
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The (id, url) of the nodes holding `key`, best first.
    pub fn replicas_of(&self, key: &CacheKey) -> Vec<(&str, &str)> {
        self.placement
            .replicas(key, self.replicas)
            .into_iter()
            .map(|id| (id, self.urls[id].as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, url: &str) -> v1::CacheNode {
        v1::CacheNode {
            id: id.into(),
            url: url.into(),
        }
    }

    #[test]
    fn a_frame_round_trips_and_places_keys_on_r_nodes() {
        let m = Membership::new(
            7,
            2,
            [
                ("b".to_string(), "http://127.0.0.1:2".to_string()),
                ("a".to_string(), "https://cache-a:7710".to_string()),
                ("c".to_string(), "http://127.0.0.1:3".to_string()),
            ],
        );
        let back = Membership::from_wire(&m.to_wire()).expect("decodes");
        assert_eq!(back, m);
        assert_eq!(
            back.nodes().map(|n| n.0).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let replicas = back.replicas_of(&CacheKey([9; 32]));
        assert_eq!(replicas.len(), 2);
        assert_ne!(replicas[0], replicas[1]);
    }

    #[test]
    fn the_replication_factor_is_clamped() {
        assert_eq!(Membership::new(1, 0, []).replicas(), 1);
        assert_eq!(Membership::new(1, 99, []).replicas(), MAX_REPLICAS);
    }

    #[test]
    fn frames_with_unusable_nodes_are_refused() {
        let frame = |n: v1::CacheNode| v1::CacheMembers {
            epoch: 1,
            replicas: 2,
            nodes: vec![n],
        };
        for (bad, field) in [
            (node("", "http://127.0.0.1:1"), "cache_members.nodes.id"),
            (node("a", "ftp://127.0.0.1:1"), "cache_members.nodes.url"),
            (node("a", "http://"), "cache_members.nodes.url"),
        ] {
            let err = Membership::from_wire(&frame(bad)).expect_err("refused");
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
