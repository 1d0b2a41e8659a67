//! [`Mirrors`]: the bare mirrors of one process, one per repository, opened on first
//! use under one cache directory and shared by everything in the process that reads a
//! repository (a coordinator preparing plans, an executor checking gates out), so each
//! repository's fetches go through one [`Mirror`] and its lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gatehouse_common::source::RepoUrl;
use tokio::sync::{Mutex, OnceCell};

use crate::git::Git;
use crate::mirror::Mirror;

/// The mirrors under one cache directory. See the module docs.
#[derive(Debug)]
pub struct Mirrors {
    /// Where the mirrors live.
    cache: PathBuf,
    /// The `git` found on first use, or why there is none (reported to every caller).
    git: OnceCell<Result<Git, String>>,
    /// Mirrors by repository identity (the URL without credentials).
    open: Mutex<HashMap<String, Mirror>>,
}

impl Mirrors {
    /// Mirrors under `cache`; nothing is touched until the first [`Mirrors::get`].
    pub fn new(cache: PathBuf) -> Self {
        Self {
            cache,
            git: OnceCell::new(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The cache directory.
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// The `git` this process uses: found (and its version checked) once.
    pub async fn git(&self) -> Result<Git, String> {
        self.git
            .get_or_init(|| async { Git::find().await.map_err(|e| e.to_string()) })
            .await
            .clone()
    }

    /// The mirror of `repo`, opened (and created if missing) on first use.
    pub async fn get(&self, repo: &RepoUrl) -> Result<Mirror, String> {
        let git = self.git().await?;
        let mut open = self.open.lock().await;
        let identity = repo.identity();
        // One mirror per repository, but every caller talks to it with the credentials
        // of its own URL: never with those of whoever opened it first.
        if let Some(mirror) = open.get(&identity) {
            return Ok(mirror.with_url(repo.clone()));
        }
        let mirror = Mirror::open(git, &self.cache, repo.clone())
            .await
            .map_err(|e| {
                format!(
                    "cannot open the git mirror under {}: {e}",
                    self.cache.display()
                )
            })?;
        open.insert(identity, mirror.clone());
        Ok(mirror)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_caller_talks_to_the_shared_mirror_with_its_own_credentials() {
        let root = tempfile::tempdir().expect("tempdir");
        let mirrors = Mirrors::new(root.path().join("cache"));
        let url = |token: &str| {
            RepoUrl::parse(
                &format!("https://x:{token}@git.example.com/app.git"),
                Path::new("/"),
            )
            .expect("url")
        };
        let first = mirrors.get(&url("one")).await.expect("open");
        let second = mirrors.get(&url("two")).await.expect("again");
        assert_eq!(first.dir(), second.dir(), "one mirror per repository");
        assert!(
            second.url().as_git_arg().contains("x:two@"),
            "{}",
            second.url().as_git_arg()
        );
        assert!(first.url().as_git_arg().contains("x:one@"));
    }
}
