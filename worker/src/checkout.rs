//! Checkouts of source-plan gates: every attempt runs in a fresh checkout of exactly
//! the speculative commit its gate was keyed on.
//!
//! State it owns: one bare [`Mirror`] per repository under the git cache directory
//! (opened on first use, shared by every attempt: its fetches are serialised, by a
//! mutex in this process and a file lock across processes), and the checkouts under the
//! checkout root, one directory per attempt, removed when the attempt ends.
//!
//! A mirror that lacks the commit fetches `base` and the stack by id and rebuilds the
//! speculative state with the same deterministic merges the coordinator made; the
//! attempt runs only if the rebuilt commit id is exactly the one keyed, and otherwise
//! fails with reason `source` (never on another tree). Checkouts pin their settings (no
//! line-ending conversion, no filters), so a tree means the same bytes everywhere.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_common::exec::AttemptRef;
use gatehouse_common::source::Checkout;
use gatehouse_common::spawn::spawn_blocking_named;
use gatehouse_source::{Mirrors, Speculator};

/// Default deadline of one fetch.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Mirrors and checkouts of one executor. See the module docs.
#[derive(Debug)]
pub struct Checkouts {
    /// The mirrors, one per repository.
    mirrors: Mirrors,
    /// Where checkouts are made.
    root: PathBuf,
    /// Deadline of each fetch.
    fetch_timeout: Duration,
    /// Makes checkout directory names unique within this process.
    next: AtomicU64,
    /// Whether the checkouts left by dead processes were removed (once, on first use).
    swept: AtomicBool,
}

impl PartialEq for Checkouts {
    fn eq(&self, other: &Self) -> bool {
        (self.mirrors.cache(), &self.root, self.fetch_timeout)
            == (other.mirrors.cache(), &other.root, other.fetch_timeout)
    }
}

impl Eq for Checkouts {}

/// An attempt's checkout; [`CheckoutDir::remove`] it when the attempt has ended. One
/// dropped without that (its attempt cancelled mid-checkout, or its task aborted) is
/// removed on drop.
#[derive(Debug)]
pub struct CheckoutDir {
    /// `None` once removed.
    path: Option<PathBuf>,
}

impl Drop for CheckoutDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

impl CheckoutDir {
    /// The checkout's root.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Removes the checkout (in a blocking task: a tree can be large).
    pub async fn remove(mut self) {
        let Some(path) = self.path.take() else { return };
        let shown = path.display().to_string();
        let removed =
            spawn_blocking_named("checkout-remove", move || std::fs::remove_dir_all(&path)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(path = %shown, %error, "cannot remove a checkout"),
            Err(error) => tracing::warn!(path = %shown, %error, "checkout removal task failed"),
        }
    }
}

impl Checkouts {
    /// Mirrors under `cache`, checkouts under `root`; nothing is touched until the
    /// first checkout.
    pub fn new(cache: PathBuf, root: PathBuf, fetch_timeout: Duration) -> Self {
        Self {
            mirrors: Mirrors::new(cache),
            root,
            fetch_timeout,
            next: AtomicU64::new(0),
            swept: AtomicBool::new(false),
        }
    }

    /// The mirrors checkouts are made from (a caller that prepares plans in this
    /// process shares them, so a repository is fetched into one mirror).
    pub fn mirrors(&self) -> &Mirrors {
        &self.mirrors
    }

    /// A fresh checkout of `checkout.commit` for `attempt`; the error says what failed
    /// and what to check.
    pub async fn prepare(
        &self,
        attempt: &AttemptRef,
        checkout: &Checkout,
    ) -> Result<CheckoutDir, String> {
        let mirror = self.mirrors.get(&checkout.repo).await?;
        let shown = checkout.repo.to_string();
        let has = mirror
            .has(&checkout.commit)
            .await
            .map_err(|e| e.to_string())?;
        if !has {
            let mut wanted = vec![checkout.base.clone()];
            wanted.extend(checkout.stack.iter().cloned());
            mirror
                .fetch(&wanted, &[], self.fetch_timeout)
                .await
                .map_err(|e| format!("cannot fetch the gate's commits from {shown}: {e}"))?;
            let rebuilt = Speculator::new()
                .state(&mirror, &checkout.base, &checkout.stack)
                .await
                .map_err(|e| format!("cannot rebuild the speculative state: {e}"))?;
            if rebuilt != checkout.commit {
                return Err(format!(
                    "rebuilt speculative commit {rebuilt}, but the gate was keyed on {}; refusing to run on another tree (is git here older or configured differently?)",
                    checkout.commit
                ));
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{}-{}-{}-{n}",
            sanitize(attempt.plan.as_str()),
            attempt.gate.0,
            attempt.attempt,
            std::process::id()
        );
        std::fs::create_dir_all(&self.root)
            .map_err(|e| format!("cannot create {}: {e}", self.root.display()))?;
        if !self.swept.swap(true, Ordering::Relaxed) {
            let root = self.root.clone();
            let _ = spawn_blocking_named("checkout-sweep", move || sweep(&root)).await;
        }
        let dest = self.root.join(name);
        if dest.exists() {
            let _ = std::fs::remove_dir_all(&dest);
        }
        let dir = CheckoutDir { path: Some(dest) };
        if let Err(e) = mirror.checkout(&checkout.commit, dir.path()).await {
            dir.remove().await;
            return Err(format!("cannot check out {}: {e}", checkout.commit));
        }
        Ok(dir)
    }
}

/// Removes the checkouts under `root` of processes that no longer exist (killed
/// mid-attempt); those of live processes, which may share the directory, stay.
fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<plan>-<gate>-<attempt>-<pid>-<n>`
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            tracing::info!(path = %entry.path().display(), "removing a checkout left by a process that is gone");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A plan id as a file name component.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}
