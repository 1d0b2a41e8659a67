//! Plain types shared by every Gatehouse role: the validated plan model, ids, units,
//! the messages exchanged with executors, the events a plan publishes, the cache key and
//! the result cache, a source plan's resolution ([`source`]), and landing's bisection
//! ([`land`], not used yet).
//!
//! This crate owns no long-lived state and spawns no tasks of its own; the only
//! task-related item is [`spawn::spawn_named`], the helper every crate uses to
//! spawn so that each task carries its tracing span.

pub mod backoff;
pub mod cache;
pub mod events;
pub mod exec;
pub mod http;
pub mod ids;
pub mod land;
pub mod plan;
pub mod reports;
#[cfg(feature = "testing")]
pub mod samples;
pub mod source;
pub mod spawn;
pub mod telemetry;
pub mod units;
