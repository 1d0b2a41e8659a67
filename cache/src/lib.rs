//! The shared result cache of a Gatehouse cluster (see `docs/cache.md`): the client
//! every role uses to read and write it, and the cache node that holds part of it.
//!
//! - [`membership`]: [`Membership`], the live cache nodes and the replication factor,
//!   placing each key on its replicas by rendezvous hashing; the coordinator builds it,
//!   sends it to workers in `CacheMembers` frames, and clients follow it on a `watch`.
//! - [`client`]: [`ClusterCache`], the cluster's cache as a
//!   [`ResultCache`](gatehouse_common::cache::ResultCache): parallel replica reads (first
//!   hit wins, read-repair), writes to every replica with retries, batched per node.
//! - [`node`]: a cache node, a bounded [`NodeStore`](node::NodeStore) served as
//!   `gatehouse.v1.CacheService` ([`node::start_node`]); a worker started with
//!   `--cache-listen` runs one.
//!
//! The wire limits and conversions of the protocol (`MAX_GET_KEYS`, `CHUNK_BYTES`,
//! `key_from_wire`, `check_url`) stay in `gatehouse_proto::cache`; the key, the entry
//! format, placement and the local disk cache in `gatehouse_common::cache`.
//!
//! Nothing here is global: every task belongs to a [`ClusterCache`] (stopped by
//! [`ClusterCache::close`]) or to a node (stopped by its shutdown token).

pub mod client;
pub mod membership;
pub mod node;

pub use client::{ClientConfig, ClientStats, ClusterCache, PUT_BATCH_BYTES, node_stats};
pub use membership::{MAX_REPLICAS, Membership};
