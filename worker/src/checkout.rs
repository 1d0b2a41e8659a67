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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_common::exec::AttemptRef;
use gatehouse_common::source::Checkout;
use gatehouse_common::spawn::spawn_blocking_named;
use gatehouse_source::{Git, Mirror, Speculator};
use tokio::sync::{Mutex, OnceCell};

/// Default deadline of one fetch.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Mirrors and checkouts of one executor. See the module docs.
#[derive(Debug)]
pub struct Checkouts {
    /// Where the mirrors live.
    cache: PathBuf,
    /// Where checkouts are made.
    root: PathBuf,
    /// Deadline of each fetch.
    fetch_timeout: Duration,
    /// The `git` found on first use (or why there is none).
    git: OnceCell<Result<Git, String>>,
    /// Mirrors by repository identity.
    mirrors: Mutex<HashMap<String, Mirror>>,
    /// Makes checkout directory names unique within this process.
    next: AtomicU64,
}

impl PartialEq for Checkouts {
    fn eq(&self, other: &Self) -> bool {
        (&self.cache, &self.root, self.fetch_timeout)
            == (&other.cache, &other.root, other.fetch_timeout)
    }
}

impl Eq for Checkouts {}

/// An attempt's checkout; [`CheckoutDir::remove`] it when the attempt has ended.
#[derive(Debug)]
pub struct CheckoutDir {
    path: PathBuf,
}

impl CheckoutDir {
    /// The checkout's root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the checkout (in a blocking task: a tree can be large).
    pub async fn remove(self) {
        let path = self.path;
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
            cache,
            root,
            fetch_timeout,
            git: OnceCell::new(),
            mirrors: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }
    }

    /// A fresh checkout of `checkout.commit` for `attempt`; the error says what failed
    /// and what to check.
    pub async fn prepare(
        &self,
        attempt: &AttemptRef,
        checkout: &Checkout,
    ) -> Result<CheckoutDir, String> {
        let mirror = self.mirror(checkout).await?;
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
        let dest = self.root.join(name);
        if dest.exists() {
            let _ = std::fs::remove_dir_all(&dest);
        }
        let dir = CheckoutDir { path: dest };
        if let Err(e) = mirror.checkout(&checkout.commit, &dir.path).await {
            dir.remove().await;
            return Err(format!("cannot check out {}: {e}", checkout.commit));
        }
        Ok(dir)
    }

    /// The mirror of `checkout.repo`, opened on first use.
    async fn mirror(&self, checkout: &Checkout) -> Result<Mirror, String> {
        let git = self
            .git
            .get_or_init(|| async { Git::find().await.map_err(|e| e.to_string()) })
            .await
            .clone()?;
        let mut mirrors = self.mirrors.lock().await;
        let identity = checkout.repo.identity();
        if let Some(mirror) = mirrors.get(&identity) {
            return Ok(mirror.clone());
        }
        let mirror = Mirror::open(git, &self.cache, checkout.repo.clone())
            .await
            .map_err(|e| {
                format!(
                    "cannot open the git mirror under {}: {e}",
                    self.cache.display()
                )
            })?;
        mirrors.insert(identity, mirror.clone());
        Ok(mirror)
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
