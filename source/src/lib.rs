//! The code a plan gates, as git sees it: where a repository is ([`RepoUrl`]), the
//! `git` CLI that does the work ([`Git`]), a bare mirror per repository that resolves
//! refs, keeps the commits a plan pins and serves checkouts ([`Mirror`]), speculative
//! states of stacked changes ([`Speculator`]), and a gate's inputs read from a tree
//! ([`inputs::matching`]).
//!
//! Everything goes through the `git` CLI, the reference implementation: the same
//! commands give the same trees and commit ids on every machine. Nothing here keeps
//! state beyond a mirror's directory; callers own the mirrors they open.

pub mod git;
pub mod inputs;
pub mod land;
pub mod mirror;
pub mod mirrors;
pub mod prepare;
pub mod speculate;
#[cfg(test)]
mod testkit;

pub use gatehouse_common::source::{CommitId, RepoUrl, TreeId, UrlError};
pub use git::{Git, GitError, GitVersion, MIN_VERSION};
pub use mirror::{Merge, Mirror, MirrorError, TreeEntry};
pub use mirrors::Mirrors;
pub use prepare::{PrepareError, prepare, prepare_plan, prepare_verify};
pub use speculate::{SpeculateError, Speculator};
