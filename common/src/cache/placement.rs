//! Where a cache entry lives in a cluster: rendezvous (highest-random-weight) hashing of
//! the cache key over the live cache nodes, with `R` replicas.
//!
//! Every node gets a score per key, `blake3(node id, key)` read as a `u64`; the key's
//! replicas are the `R` nodes with the highest scores, best first (ties broken by node
//! id). The scores depend only on the key and the node's id, so every process computes
//! the same placement from the same member list, and a node joining or leaving moves
//! only the keys for which it is (or was) among the top `R`: about `R/N` of them.
//!
//! Pure and deterministic: no I/O, no randomness, stable across versions of Rust and of
//! this crate (the score is defined by BLAKE3, not by `std`'s hasher).

use super::CacheKey;

/// A member list at one epoch: the live cache nodes, sorted and without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    epoch: u64,
    nodes: Vec<String>,
}

impl Placement {
    /// The placement over `nodes` (any order, duplicates ignored) at `epoch`.
    pub fn new(epoch: u64, nodes: impl IntoIterator<Item = String>) -> Self {
        let mut nodes: Vec<String> = nodes.into_iter().collect();
        nodes.sort();
        nodes.dedup();
        Self { epoch, nodes }
    }

    /// The epoch this member list belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The members, sorted.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The `r` nodes that hold `key`, best first (fewer if there are fewer nodes).
    pub fn replicas(&self, key: &CacheKey, r: usize) -> Vec<&str> {
        let mut scored: Vec<(u64, &str)> = self
            .nodes
            .iter()
            .map(|n| (score(n, key), n.as_str()))
            .collect();
        // Highest score first; equal scores (practically never) by node id.
        scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        scored.into_iter().take(r).map(|(_, n)| n).collect()
    }

    /// The node that holds `key` first, if there is any node.
    pub fn owner(&self, key: &CacheKey) -> Option<&str> {
        self.nodes
            .iter()
            .map(|n| (score(n, key), n.as_str()))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
            .map(|(_, n)| n)
    }
}

/// The weight of `node` for `key`: the first 8 bytes of `blake3(len(node) ‖ node ‖ key)`.
fn score(node: &str, key: &CacheKey) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&(node.len() as u64).to_le_bytes());
    h.update(node.as_bytes());
    h.update(&key.0);
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn key(i: u32) -> CacheKey {
        CacheKey(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    #[test]
    fn placement_is_stable_and_ignores_member_order_and_duplicates() {
        let a = Placement::new(1, nodes(5));
        let mut shuffled = nodes(5);
        shuffled.reverse();
        shuffled.push("worker-2".into());
        let b = Placement::new(1, shuffled);
        for i in 0..1000 {
            assert_eq!(a.replicas(&key(i), 2), b.replicas(&key(i), 2));
            assert_eq!(a.owner(&key(i)), a.replicas(&key(i), 1).first().copied());
        }
    }

    #[test]
    fn replicas_are_distinct_and_capped_by_the_member_count() {
        let p = Placement::new(1, nodes(3));
        let r = p.replicas(&key(7), 5);
        assert_eq!(r.len(), 3);
        let mut unique = r.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 3);
        assert!(
            Placement::new(1, Vec::new())
                .replicas(&key(7), 2)
                .is_empty()
        );
        assert_eq!(Placement::new(1, Vec::new()).owner(&key(7)), None);
    }

    #[test]
    fn keys_spread_within_ten_percent_over_ten_nodes() {
        let p = Placement::new(1, nodes(10));
        let mut owned: HashMap<&str, u32> = HashMap::new();
        for i in 0..100_000 {
            *owned
                .entry(p.owner(&key(i)).expect("an owner"))
                .or_default() += 1;
        }
        assert_eq!(owned.len(), 10);
        for (node, n) in owned {
            assert!(
                (9_000..=11_000).contains(&n),
                "{node} owns {n} of 100,000 keys"
            );
        }
    }

    #[test]
    fn a_joining_node_takes_about_one_nth_of_the_keys_and_nothing_else_moves() {
        let before = Placement::new(1, nodes(10));
        let after = Placement::new(2, nodes(11));
        let mut moved = 0;
        for i in 0..100_000 {
            let (b, a) = (before.owner(&key(i)), after.owner(&key(i)));
            if a != b {
                moved += 1;
                assert_eq!(a, Some("worker-10"), "a key moved to an old node");
            }
        }
        // 1/11 of the keys, within ±10%.
        assert!((8_264..=10_101).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn a_leaving_node_moves_only_its_keys_and_replica_sets_keep_their_survivors() {
        let before = Placement::new(1, nodes(10));
        let after = Placement::new(2, nodes(10).into_iter().filter(|n| n != "worker-3"));
        for i in 0..20_000 {
            let k = key(i);
            let (b, a) = (before.replicas(&k, 2), after.replicas(&k, 2));
            if !b.contains(&"worker-3") {
                assert_eq!(a, b, "key {i} moved though its replicas stayed");
            } else {
                // The surviving replica still holds it, now first or second.
                let survivor = b.iter().find(|n| **n != "worker-3").expect("R = 2");
                assert!(a.contains(survivor), "key {i} lost its surviving replica");
            }
        }
    }
}
