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

    /// main: a.txt, b.txt; pr1 (from main) edits a.txt; pr2 (stacked on pr1) adds c.txt;
    /// pr3 (from main) edits b.txt; clash (from main) edits a.txt's line differently.
    pub(crate) fn pyramid(&self) -> [CommitId; 5] {
        let base = self.commit(&[("a.txt", "a1\n"), ("b.txt", "b1\n")], "base");
        self.branch("pr1", "main");
        let pr1 = self.commit(&[("a.txt", "a2\n")], "pr1");
        self.branch("pr2", "pr1");
        let pr2 = self.commit(&[("c.txt", "c\n")], "pr2");
        self.branch("pr3", "main");
        let pr3 = self.commit(&[("b.txt", "b3\n")], "pr3");
        self.branch("clash", "main");
        let clash = self.commit(&[("a.txt", "other\n")], "clash");
        self.git(&["checkout", "--quiet", "main"]);
        self.git(&["tag", "-a", "v1", "-m", "release", &base.to_string()]);
        [base, pr1, pr2, pr3, clash]
    }
}
