//! The Gatehouse coordinator: the sans-IO scheduler core ([`core`]), the actors that
//! drive it ([`scheduler`], [`registry`]), the gRPC services ([`grpc`]) and the server
//! wiring ([`server`]).

pub mod core;
pub mod grpc;
pub mod registry;
pub mod scheduler;
pub mod server;

#[cfg(test)]
mod scheduler_tests;
