//! Where an attempt runs: a shared workspace directory, or a fresh scratch directory
//! per attempt.
//!
//! - [`Workspace::Shared`] (`--workspace DIR`): a relative gate `workdir` resolves
//!   against `DIR`, shared by every attempt (a checkout the operator keeps up to date);
//!   nothing is created or removed.
//! - [`Workspace::Scratch`] (no `--workspace`): each attempt gets a new, empty directory
//!   under the system temp dir, named after its gate, and its relative `workdir`
//!   resolves inside it. The directory ([`AttemptDir::scratch`]) is removed once the
//!   attempt has finished.
//!
//! Absolute workdirs are used as they are in both modes. Creating a scratch directory is
//! one `mkdir`, done inline; removing it may be slow and is done off the async threads
//! by the owner of the [`tempfile::TempDir`].

use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// How attempt directories are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Workspace {
    /// Relative workdirs resolve against this absolute directory.
    Shared(PathBuf),
    /// Each attempt gets a fresh directory under `root`.
    Scratch {
        /// The parent of the scratch directories (the system temp dir).
        root: PathBuf,
    },
}

/// The base directory of one attempt.
#[derive(Debug)]
pub(crate) struct AttemptDir {
    /// What the gate's relative workdir resolves against.
    pub(crate) base: PathBuf,
    /// The scratch directory to remove after the attempt (scratch mode only).
    pub(crate) scratch: Option<TempDir>,
}

impl Workspace {
    /// Prepares the base directory of an attempt of `gate_id`.
    pub(crate) fn for_attempt(&self, gate_id: &str) -> io::Result<AttemptDir> {
        match self {
            Workspace::Shared(dir) => Ok(AttemptDir {
                base: dir.clone(),
                scratch: None,
            }),
            Workspace::Scratch { root } => {
                let dir = tempfile::Builder::new()
                    .prefix(&scratch_prefix(gate_id))
                    .tempdir_in(root)?;
                Ok(AttemptDir {
                    base: dir.path().to_path_buf(),
                    scratch: Some(dir),
                })
            }
        }
    }

    /// The shared directory, if any.
    pub(crate) fn shared(&self) -> Option<&Path> {
        match self {
            Workspace::Shared(dir) => Some(dir),
            Workspace::Scratch { .. } => None,
        }
    }
}

/// `gatehouse-<gate id with anything but [A-Za-z0-9._-] replaced by '_'>-`, the gate id
/// part cut to 64 bytes.
fn scratch_prefix(gate_id: &str) -> String {
    let name: String = gate_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("gatehouse-{name}-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_prefixes_are_safe_file_names() {
        assert_eq!(scratch_prefix("pr-1/lint"), "gatehouse-pr-1_lint-");
        assert_eq!(scratch_prefix("../x y"), "gatehouse-.._x_y-");
        assert_eq!(
            scratch_prefix(&"a".repeat(200)).len(),
            "gatehouse--".len() + 64
        );
    }

    #[test]
    fn shared_workspaces_are_used_as_is() {
        let ws = Workspace::Shared(PathBuf::from("/srv/ws"));
        let dir = ws.for_attempt("pr-1/lint").expect("no io");
        assert_eq!(dir.base, PathBuf::from("/srv/ws"));
        assert!(dir.scratch.is_none());
        assert_eq!(ws.shared(), Some(Path::new("/srv/ws")));
    }

    #[test]
    fn scratch_dirs_are_fresh_per_attempt_and_removed_with_their_handle() {
        let root = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::Scratch {
            root: root.path().to_path_buf(),
        };
        let a = ws.for_attempt("pr-1/lint").expect("mkdir");
        let b = ws.for_attempt("pr-1/lint").expect("mkdir");
        assert_ne!(a.base, b.base);
        assert!(a.base.is_dir() && a.base.starts_with(root.path()));
        let name = a.base.file_name().and_then(|n| n.to_str()).expect("utf-8");
        assert!(name.starts_with("gatehouse-pr-1_lint-"), "{name}");
        let path = a.base.clone();
        drop(a);
        assert!(!path.exists());
        assert!(ws.shared().is_none());
    }
}
