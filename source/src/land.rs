//! Landing's last step: moving a repository's branch to a commit with compare-and-swap.
//!
//! [`Mirror::update_branch`] sets `refs/heads/<branch>` of the mirrored repository to
//! `new` only if it still points at `expected` (the base the plan resolved), and never
//! otherwise:
//! - a remote repository gets `git push --atomic --porcelain` with an explicit lease
//!   (`--force-with-lease=<ref>:<expected>`), from the mirror, which holds `new` and
//!   everything below it;
//! - a repository given as a path fetches `new` from the mirror, then moves the ref
//!   with `git update-ref <ref> <new> <expected>`, atomic in git's ref store. A
//!   checked-out branch's working tree is not touched. (`file://` URLs are pushed to,
//!   like any URL.)
//!
//! The answer is a [`BranchUpdate`]: `Updated`, `Moved` (the lease did not hold: the
//! branch is somewhere else now, as read back), or `Refused` (a protected branch, a
//! hook, missing rights) with the server's words. A repository that cannot be reached is
//! a [`MirrorError`]. Nothing is ever forced past the lease.

use std::time::Duration;

use gatehouse_common::source::CommitId;

use crate::git::GitError;
use crate::mirror::{LOCAL_TIMEOUT, Mirror, MirrorError};

/// How a compare-and-swap update of a branch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchUpdate {
    /// The branch now points at the new commit.
    Updated,
    /// The branch no longer pointed at the expected commit; nothing changed. `now` is
    /// where it points, when that could be read (`None`: the branch is gone).
    Moved {
        /// Where the branch points now.
        now: Option<CommitId>,
    },
    /// The repository refused the update (protected branch, hook, rights); nothing
    /// changed.
    Refused {
        /// What it said, credentials redacted.
        reason: String,
    },
}

impl Mirror {
    /// Sets `branch` of the mirrored repository to `new` if it still points at
    /// `expected`. See the module docs.
    pub async fn update_branch(
        &self,
        branch: &str,
        expected: &CommitId,
        new: &CommitId,
        timeout: Duration,
    ) -> Result<BranchUpdate, MirrorError> {
        let target = format!("refs/heads/{branch}");
        match self.url().local_path().filter(|_| self.url().is_path()) {
            Some(repo) => {
                let repo = repo.to_path_buf();
                let mirror = self.dir().display().to_string();
                self.git()
                    .run(
                        &repo,
                        [
                            "fetch",
                            "--quiet",
                            "--no-tags",
                            "--no-write-fetch-head",
                            &mirror,
                            new.as_str(),
                        ],
                        LOCAL_TIMEOUT,
                    )
                    .isolated()
                    .ok()
                    .await?;
                let out = self
                    .git()
                    .run(
                        &repo,
                        [
                            "update-ref",
                            "-m",
                            "gatehouse: land",
                            &target,
                            new.as_str(),
                            expected.as_str(),
                        ],
                        LOCAL_TIMEOUT,
                    )
                    .isolated()
                    .output()
                    .await?;
                if out.code == Some(0) {
                    return Ok(BranchUpdate::Updated);
                }
                Ok(BranchUpdate::Moved {
                    now: self.branch_tip(branch, timeout).await?,
                })
            }
            None => {
                let lease = format!("--force-with-lease={target}:{expected}");
                let refspec = format!("{new}:{target}");
                let out = self
                    .git()
                    .run(
                        self.dir(),
                        [
                            "push",
                            "--atomic",
                            "--porcelain",
                            "--no-verify",
                            &lease,
                            "--",
                            self.url().as_git_arg(),
                            &refspec,
                        ],
                        timeout,
                    )
                    .output()
                    .await
                    .map_err(|e| self.unreachable_error(e))?;
                let porcelain = String::from_utf8_lossy(&out.stdout);
                let status = porcelain
                    .lines()
                    .find(|l| l.contains(&format!(":{target}")))
                    .and_then(|l| l.chars().next());
                match (out.code, status) {
                    (Some(0), _) => Ok(BranchUpdate::Updated),
                    (_, Some('!')) if porcelain.contains("stale info") => Ok(BranchUpdate::Moved {
                        now: self.branch_tip(branch, timeout).await?,
                    }),
                    (_, Some('!')) => Ok(BranchUpdate::Refused {
                        reason: self.redacted(&format!("{porcelain} {}", out.stderr)),
                    }),
                    (code, _) => Err(self.unreachable_error(GitError::Failed {
                        what: "push".into(),
                        status: format!("{code:?}"),
                        stderr: out.stderr,
                    })),
                }
            }
        }
    }

    /// Where `branch` of the mirrored repository points now (`None`: it does not exist).
    pub async fn branch_tip(
        &self,
        branch: &str,
        timeout: Duration,
    ) -> Result<Option<CommitId>, MirrorError> {
        let refs = self.refs(timeout).await?;
        Ok(self.lookup(&refs, &format!("refs/heads/{branch}")).ok())
    }
}

#[cfg(test)]
#[path = "land_tests.rs"]
mod tests;
