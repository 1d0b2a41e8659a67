//! The Gatehouse coordinator: the sans-IO scheduler core ([`core`]), the actors that
//! drive it ([`scheduler`], [`registry`]), the gRPC services ([`grpc`]), the server
//! wiring ([`server`]) and the durable plan state ([`store`]).

pub mod core;
pub mod grpc;
pub mod ha;
pub mod metrics;
mod observe;
pub mod registry;
pub mod role;
// The scheduler's cache-key `spawn_blocking` is moved to
// `gatehouse_common::spawn::spawn_blocking_named` with its rewrite; until then it is the
// one raw spawn clippy.toml lets through.
#[allow(clippy::disallowed_methods)]
pub mod scheduler;
pub mod server;
pub mod store;

#[cfg(test)]
mod scheduler_tests;
