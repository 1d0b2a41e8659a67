//! Test helpers: working repositories committed to with the git CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use gatehouse_common::source::{CommitId, RepoUrl};

/// A working repository the tests commit to with the git CLI.
pub(crate) struct Work {
    pub(crate) dir: PathBuf,
}

impl Work {
    pub(crate) fn new(root: &Path) -> Self {
        let dir = root.join("work");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let w = Self { dir };
        w.git(&["init", "--quiet", "-b", "main"]);
        w.git(&["config", "user.name", "Test"]);
        w.git(&["config", "user.email", "test@example.com"]);
        w
    }

    pub(crate) fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(&self.dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes `files` and commits them on the current branch; returns the commit.
    pub(crate) fn commit(&self, files: &[(&str, &str)], message: &str) -> CommitId {
        for (path, content) in files {
            let path = self.dir.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, content).expect("write");
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "--quiet", "-m", message]);
        CommitId::parse(&self.git(&["rev-parse", "HEAD"])).expect("id")
    }

    pub(crate) fn branch(&self, name: &str, from: &str) {
        self.git(&["checkout", "--quiet", "-B", name, from]);
    }

    pub(crate) fn url(&self) -> RepoUrl {
        RepoUrl::parse(&format!("file://{}", self.dir.display()), Path::new("/")).expect("url")
    }
}
