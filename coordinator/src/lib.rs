//! The Gatehouse coordinator: the sans-IO scheduler core ([`core`]) and the actors
//! that drive it ([`scheduler`]).

pub mod core;
pub mod scheduler;

#[cfg(test)]
mod scheduler_tests;
