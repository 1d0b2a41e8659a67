//! Preparing source plans at submission: a plan with a `source` has its refs resolved
//! once, its speculative states built and every gate's tree inputs read, through the
//! coordinator's own bare mirror of the repository, before the registry takes it. The
//! [`Resolution`](gatehouse_common::source::Resolution) is stored with the plan, so a
//! later leader uses the recorded commits and never resolves again.
//!
//! State it owns: the [`Mirrors`] under the git cache directory (`--git-cache`), and a
//! semaphore bounding preparations at once. Nothing here decides scheduling: blocked
//! items become failed gates in the core.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::plan::Plan;
use gatehouse_source::{Mirrors, PrepareError};
use tokio::sync::Semaphore;
use tonic::Status;

/// Plans prepared at once; others wait (their git work is I/O-bound but not free).
const PREPARE_PERMITS: usize = 2;

/// Why a source plan cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The repository is a path on the submitter's machine.
    #[error(
        "{plan}: `source.repo` is a local path ({path}), which a cluster's workers cannot see; use a URL (https, ssh, git, or file:// for a path every machine shares)"
    )]
    LocalPath {
        /// The plan's name in messages.
        plan: String,
        /// The path.
        path: String,
    },
    /// No usable git here.
    #[error("this coordinator cannot prepare plans with `source`: {0}")]
    Git(String),
    /// The mirror itself failed (the disk, a local git command).
    #[error("cannot prepare the plan's code: {0}")]
    Mirror(String),
    /// Shutting down.
    #[error("coordinator is shutting down")]
    ShuttingDown,
}

impl From<SourceError> for Status {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::LocalPath { .. } => Status::invalid_argument(e.to_string()),
            SourceError::Git(_) => Status::failed_precondition(e.to_string()),
            SourceError::Mirror(_) | SourceError::ShuttingDown => {
                Status::unavailable(e.to_string())
            }
        }
    }
}

/// The coordinator's mirrors. See the module docs.
#[derive(Debug)]
pub struct Sources {
    mirrors: Mirrors,
    fetch_timeout: Duration,
    permits: Semaphore,
}

impl Sources {
    /// Mirrors under `cache`; each command that talks to a repository has `fetch_timeout`.
    pub fn new(cache: PathBuf, fetch_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            mirrors: Mirrors::new(cache),
            fetch_timeout,
            permits: Semaphore::new(PREPARE_PERMITS),
        })
    }

    /// The mirrors (landing folds and pushes through them).
    pub fn mirrors(&self) -> &Mirrors {
        &self.mirrors
    }

    /// Deadline of each command that talks to a repository.
    pub fn fetch_timeout(&self) -> Duration {
        self.fetch_timeout
    }

    /// `plan` with its resolution (unchanged without a `source`). Errors of the
    /// repository or of a ref do not fail this: they are in the resolution, as blocked
    /// items; `name` is the plan's name in messages.
    pub async fn prepare(&self, plan: Plan, name: &str) -> Result<Plan, SourceError> {
        let Some(source) = plan.source.as_ref() else {
            return Ok(plan);
        };
        if let Some(path) = source.repo.local_path().filter(|_| source.repo.is_path()) {
            return Err(SourceError::LocalPath {
                plan: name.to_string(),
                path: path.display().to_string(),
            });
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SourceError::ShuttingDown)?;
        gatehouse_source::prepare_plan(plan, &self.mirrors, self.fetch_timeout)
            .await
            .map_err(|e| match e {
                PrepareError::Git(e) => SourceError::Git(e),
                PrepareError::Mirror(e) => SourceError::Mirror(e),
            })
    }
}
