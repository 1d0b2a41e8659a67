//! Landing's last step: moving a repository's branch to a commit with compare-and-swap.
//!
//! [`Mirror::update_branch`] sets `refs/heads/<branch>` of the mirrored repository to
//! `new` only if it still points at `expected` (the base the plan resolved), and never
//! otherwise:
//! - a remote repository gets `git push --atomic --porcelain` with an explicit lease
//!   (`--force-with-lease=<ref>:<expected>`), from the mirror, which holds `new` and
//!   everything below it;
//! - a repository given as a path is pushed to the same way, with its receiving side
//!   set to `receive.denyCurrentBranch=updateInstead`: when the branch is checked out,
//!   a clean working tree moves with it and a dirty one refuses the push, so a branch
//!   never moves under a working tree that still shows the old commit. (`file://` URLs
//!   are pushed to like any URL, with the repository's own settings.)
//!
//! The answer is a [`BranchUpdate`]: `Updated`, `Moved` (the lease did not hold: the
//! branch is somewhere else now, as read back), or `Refused` (a protected branch, a
//! hook, missing rights) with the server's words. A push that fails (the repository
//! unreachable, a timeout) may still have been taken before the connection dropped: the
//! branch is read back, and one that holds the new commit is `Updated`; otherwise it is
//! a [`MirrorError`]. Nothing is ever forced past the lease.

use std::time::Duration;

use gatehouse_common::source::CommitId;

use crate::git::GitError;
use crate::mirror::{Mirror, MirrorError};

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
        let lease = format!("--force-with-lease={target}:{expected}");
        let refspec = format!("{new}:{target}");
        let mut args = vec![
            "push".to_string(),
            "--atomic".into(),
            "--porcelain".into(),
            "--no-verify".into(),
            lease,
        ];
        // A repository given as a path is usually the user's own clone, with the
        // branch perhaps checked out: its working tree follows when it is clean, and a
        // dirty one refuses the push (git's `updateInstead`), instead of a branch
        // that moves under an unchanged working tree.
        if self.url().is_path() {
            args.push(format!(
                "--receive-pack={} -c receive.denyCurrentBranch=updateInstead receive-pack",
                shell_quote(&self.git().bin().display().to_string())
            ));
        }
        args.extend(["--".into(), self.url().as_git_arg().to_string(), refspec]);
        let out = self.git().run(self.dir(), &args, timeout).output().await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let error = self.unreachable_error(e);
                return self.after_failed_push(branch, new, timeout, error).await;
            }
        };
        let porcelain = String::from_utf8_lossy(&out.stdout);
        let status = porcelain
            .lines()
            .find(|l| l.contains(&format!(":{target}")))
            .and_then(|l| l.chars().next());
        match (out.code, status) {
            (Some(0), _) => Ok(BranchUpdate::Updated),
            // The lease did not hold: the branch moved, or it already holds `new` (an
            // earlier push of the same commit landed).
            (_, Some('!')) if porcelain.contains("stale info") => {
                Ok(match self.branch_holds(branch, new, timeout).await? {
                    Some((_, true)) => BranchUpdate::Updated,
                    Some((now, false)) => BranchUpdate::Moved { now: Some(now) },
                    None => BranchUpdate::Moved { now: None },
                })
            }
            (_, Some('!')) => Ok(BranchUpdate::Refused {
                reason: self.redacted(&format!("{porcelain} {}", out.stderr)),
            }),
            (code, _) => {
                let error = self.unreachable_error(GitError::Failed {
                    what: "push".into(),
                    status: format!("{code:?}"),
                    stderr: out.stderr,
                });
                self.after_failed_push(branch, new, timeout, error).await
            }
        }
    }

    /// A push that failed may still have landed (the connection dropped after the
    /// server took it): the branch says. `Updated` if it holds `new`, else `error`.
    async fn after_failed_push(
        &self,
        branch: &str,
        new: &CommitId,
        timeout: Duration,
        error: MirrorError,
    ) -> Result<BranchUpdate, MirrorError> {
        match self.branch_holds(branch, new, timeout).await {
            Ok(Some((_, true))) => Ok(BranchUpdate::Updated),
            _ => Err(error),
        }
    }

    /// Where `branch` points now and whether it holds `commit` (points at it, or at a
    /// descendant: someone pushed on top); `None` when the branch is gone. Fetches the
    /// tip when the mirror lacks it.
    pub async fn branch_holds(
        &self,
        branch: &str,
        commit: &CommitId,
        timeout: Duration,
    ) -> Result<Option<(CommitId, bool)>, MirrorError> {
        let Some(tip) = self.branch_tip(branch, timeout).await? else {
            return Ok(None);
        };
        if tip == *commit {
            return Ok(Some((tip, true)));
        }
        let name = format!("refs/heads/{branch}");
        self.fetch(std::slice::from_ref(&tip), &[name], timeout)
            .await?;
        // Fetching the tip brings its history: a commit still missing is not in it.
        let holds = self.has(commit).await? && self.is_ancestor(commit, &tip).await?;
        Ok(Some((tip, holds)))
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

/// `text` quoted for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
#[path = "land_tests.rs"]
mod tests;
