//! The Gatehouse coordinator: the sans-IO scheduler core ([`core`]), the actors that
//! drive it ([`scheduler`], [`registry`]), the gRPC services ([`grpc`]), the server
//! wiring ([`server`]) and the durable plan state ([`store`]).

pub mod core;
pub mod grpc;
pub mod ha;
pub mod land;
pub mod metrics;
mod observe;
pub mod registry;
pub mod role;
pub mod scheduler;
pub mod server;
pub mod sources;
pub mod store;
