//! A bare mirror of one repository on this machine: what resolves a plan's refs, holds
//! the commits it gates, computes speculative merges and keys, and serves checkouts.
//!
//! State it owns: the directory `<cache>/<mirror name>` (a bare repository, created on
//! first use, with automatic gc and maintenance off, so no object a checkout or a
//! speculative merge uses is ever deleted), and a lock file beside it. Fetches take the
//! lock (a process-wide async mutex, then an exclusive `flock` for other processes
//! sharing the directory), so no two fetches of one mirror race; reads and merges need
//! no lock (git writes objects atomically). Every commit a plan pins is kept under
//! `refs/gatehouse/keep/<id>`.
//!
//! What it fetches: only what it lacks. Refs are resolved with one `ls-remote`; missing
//! commits are fetched by id (servers allow wanting a ref tip), falling back to the
//! refs' names when a ref moved meanwhile and its old tip is no longer served. Every
//! command that touches the network has the caller's timeout; the rest have
//! [`LOCAL_TIMEOUT`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::git::{Git, GitError};
use gatehouse_common::source::{CommitId, RepoUrl, TreeId};

/// The deadline of commands that do not touch the network.
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);

/// The identity and date of every speculative merge commit, so the same merge gives
/// the same commit id on every machine.
const MERGE_IDENTITY: [(&str, &str); 6] = [
    ("GIT_AUTHOR_NAME", "Gatehouse"),
    ("GIT_AUTHOR_EMAIL", "gatehouse@localhost"),
    ("GIT_AUTHOR_DATE", "1970-01-01T00:00:00Z"),
    ("GIT_COMMITTER_NAME", "Gatehouse"),
    ("GIT_COMMITTER_EMAIL", "gatehouse@localhost"),
    ("GIT_COMMITTER_DATE", "1970-01-01T00:00:00Z"),
];

/// Why a mirror operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// git itself failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The mirror's directory or lock cannot be used.
    #[error("cannot use the git mirror {path}: {source}")]
    Io {
        /// The directory or lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The repository cannot be read (unreachable, no such repository, no access).
    #[error("cannot read {url}: {reason}")]
    Unreachable {
        /// The repository, redacted.
        url: String,
        /// git's reason.
        reason: String,
    },
    /// A ref the plan names does not exist.
    #[error("{url} has no ref {name:?} (a branch, tag, full ref or commit id)")]
    NoSuchRef {
        /// The repository, redacted.
        url: String,
        /// The name.
        name: String,
    },
    /// A commit could not be fetched.
    #[error("cannot fetch commit {commit} from {url}: {reason}")]
    Fetch {
        /// The repository, redacted.
        url: String,
        /// The commit.
        commit: CommitId,
        /// Why.
        reason: String,
    },
    /// git printed something this code cannot read.
    #[error("unexpected output of git {what}: {output:?}")]
    Output {
        /// The subcommand.
        what: &'static str,
        /// What it printed.
        output: String,
    },
}

/// How merging a commit onto an accumulated state went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merge {
    /// The commit already contains the accumulated state: it is the new state.
    FastForward,
    /// The accumulated state already contains the commit: nothing changes.
    AlreadyIn,
    /// A merge commit (deterministic: fixed identity and date).
    Merged(CommitId),
    /// The merge conflicts on these paths.
    Conflict(Vec<String>),
    /// The two have no history in common (an orphan branch, another repository's
    /// commit): there is nothing to merge them on.
    Unrelated,
}

/// A repository's refs as `ls-remote` listed them (annotated tags peeled).
#[derive(Clone, Debug, Default)]
pub struct RemoteRefs(BTreeMap<String, CommitId>);

/// One entry of a tree (a blob or a submodule), with its path from the tree's root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TreeEntry {
    /// `/`-separated path.
    pub path: String,
    /// The object id (a blob, or a submodule's commit).
    pub oid: String,
    /// The mode (`100644`, `100755`, `120000`, `160000`).
    pub mode: String,
}

/// A bare mirror. See the module docs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Mirror {
    git: Git,
    url: RepoUrl,
    dir: PathBuf,
    fetching: Arc<Mutex<()>>,
}

impl Mirror {
    /// The mirror of `url` under `cache`, created if missing.
    pub async fn open(git: Git, cache: &Path, url: RepoUrl) -> Result<Self, MirrorError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| MirrorError::Io { path, source }
        };
        // git runs in directories of its own: every path it is given must be absolute.
        let cache = &std::path::absolute(cache).map_err(io(cache))?;
        let dir = cache.join(url.mirror_name());
        std::fs::create_dir_all(cache).map_err(io(cache))?;
        if !dir.join("HEAD").exists() {
            // Made beside and renamed into place, so a half-made mirror never counts;
            // named per process and call, so two processes making it never collide.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let tmp = cache.join(format!(
                ".new-{}-{}-{nanos}",
                url.mirror_name(),
                std::process::id()
            ));
            let tmp_arg = tmp.display().to_string();
            git.run(
                cache,
                ["init", "--quiet", "--bare", &tmp_arg],
                LOCAL_TIMEOUT,
            )
            .isolated()
            .ok()
            .await?;
            for (key, value) in [
                ("gc.auto", "0"),
                ("maintenance.auto", "false"),
                ("core.logAllRefUpdates", "false"),
                ("fetch.writeCommitGraph", "false"),
            ] {
                git.run(&tmp, ["config", key, value], LOCAL_TIMEOUT)
                    .isolated()
                    .ok()
                    .await?;
            }
            if let Err(e) = std::fs::rename(&tmp, &dir) {
                // Another process made it first: use theirs.
                let _ = std::fs::remove_dir_all(&tmp);
                if !dir.join("HEAD").exists() {
                    return Err(io(&dir)(e));
                }
            }
        }
        Ok(Self {
            git,
            url,
            dir,
            fetching: Arc::new(Mutex::new(())),
        })
    }

    /// This mirror, talking to the repository through `url` (the same repository,
    /// possibly with other credentials): each caller fetches with its own.
    pub fn with_url(&self, url: RepoUrl) -> Self {
        Self {
            url,
            ..self.clone()
        }
    }

    /// The mirror's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The repository it mirrors.
    pub fn url(&self) -> &RepoUrl {
        &self.url
    }

    /// The `git` it runs.
    pub(crate) fn git(&self) -> &Git {
        &self.git
    }

    /// `text` with the repository's credentials taken out.
    pub(crate) fn redacted(&self, text: &str) -> String {
        redact(text, &self.url)
    }

    /// A failed command that talked to the repository, as the error it means.
    pub(crate) fn unreachable_error(&self, e: GitError) -> MirrorError {
        self.unreachable(e)
    }

    fn unreachable(&self, e: GitError) -> MirrorError {
        match e {
            GitError::Failed { stderr, .. } => MirrorError::Unreachable {
                url: self.url.to_string(),
                reason: redact(&stderr, &self.url),
            },
            GitError::TimedOut { after, .. } => MirrorError::Unreachable {
                url: self.url.to_string(),
                reason: format!("no answer within {after:?}"),
            },
            other => other.into(),
        }
    }

    /// The repository's refs, with one `ls-remote`.
    pub async fn refs(&self, timeout: Duration) -> Result<RemoteRefs, MirrorError> {
        let listed = self
            .git
            .run(&self.dir, ["ls-remote", self.url.as_git_arg()], timeout)
            .ok()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(RemoteRefs(parse_ls_remote(&String::from_utf8_lossy(
            &listed.stdout,
        ))))
    }

    /// What `name` (a branch, tag, full ref, `HEAD`, or a commit id) means in `refs`.
    pub fn lookup(&self, refs: &RemoteRefs, name: &str) -> Result<CommitId, MirrorError> {
        match CommitId::parse(name) {
            Some(id) => Ok(id),
            None => lookup(&refs.0, name).ok_or_else(|| MirrorError::NoSuchRef {
                url: self.url.to_string(),
                name: name.to_string(),
            }),
        }
    }

    /// Resolves each of `names` (a branch, tag, full ref, `HEAD`, or a commit id) to a
    /// commit id with one `ls-remote`, and fetches the commits this mirror lacks.
    pub async fn resolve(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<Vec<CommitId>, MirrorError> {
        let refs = self.refs(timeout).await?;
        let ids = names
            .iter()
            .map(|name| self.lookup(&refs, name))
            .collect::<Result<Vec<_>, _>>()?;
        self.fetch(&ids, names, timeout).await?;
        Ok(ids)
    }

    /// Makes sure every commit of `ids` is here (and kept), fetching what is missing:
    /// by id, then by the ref names given, if any.
    pub async fn fetch(
        &self,
        ids: &[CommitId],
        names: &[String],
        timeout: Duration,
    ) -> Result<(), MirrorError> {
        let mut unique: Vec<CommitId> = ids.to_vec();
        unique.sort();
        unique.dedup();
        let _held = self.fetching.lock().await;
        let missing = self.missing(&unique).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let _flock = self.flock().await?;
        // Another process may have fetched them while this one waited.
        let missing = self.missing(&missing).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let by_id: Vec<String> = missing
            .iter()
            .map(|id| format!("{id}:refs/gatehouse/keep/{id}"))
            .collect();
        let fetched = self.fetch_specs(&by_id, timeout).await;
        if fetched.is_err() && !names.is_empty() {
            let by_name: Vec<String> = names
                .iter()
                .filter(|n| CommitId::parse(n).is_none())
                .map(|n| format!("+{n}:refs/gatehouse/named/{}", hex(n)))
                .collect();
            if !by_name.is_empty() {
                self.fetch_specs(&by_name, timeout).await?;
            }
        } else {
            fetched?;
        }
        let still = self.missing(&missing).await?;
        if let Some(commit) = still.into_iter().next() {
            return Err(MirrorError::Fetch {
                url: self.url.to_string(),
                commit,
                reason: "the repository does not serve it (was the branch force-pushed?)".into(),
            });
        }
        self.keep(&missing).await
    }

    async fn fetch_specs(&self, specs: &[String], timeout: Duration) -> Result<(), MirrorError> {
        let mut args = vec![
            "fetch".to_string(),
            "--quiet".into(),
            "--no-tags".into(),
            "--no-write-fetch-head".into(),
            "--no-auto-gc".into(),
            "--no-auto-maintenance".into(),
            self.url.as_git_arg().to_string(),
        ];
        args.extend(specs.iter().cloned());
        self.git
            .run(&self.dir, &args, timeout)
            .ok()
            .await
            .map(drop)
            .map_err(|e| self.unreachable(e))
    }

    /// Pins `ids` under `refs/gatehouse/keep/`.
    async fn keep(&self, ids: &[CommitId]) -> Result<(), MirrorError> {
        let input: String = ids
            .iter()
            .map(|id| format!("update refs/gatehouse/keep/{id} {id}\n"))
            .collect();
        self.git
            .run(&self.dir, ["update-ref", "--stdin"], LOCAL_TIMEOUT)
            .isolated()
            .stdin(input.into_bytes())
            .ok()
            .await?;
        Ok(())
    }

    /// Whether `commit` is here.
    pub async fn has(&self, commit: &CommitId) -> Result<bool, MirrorError> {
        Ok(self.missing(std::slice::from_ref(commit)).await?.is_empty())
    }

    /// Which of `ids` are not commits here.
    async fn missing(&self, ids: &[CommitId]) -> Result<Vec<CommitId>, MirrorError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let input: String = ids.iter().map(|id| format!("{id}^{{commit}}\n")).collect();
        let out = self
            .git
            .run(&self.dir, ["cat-file", "--batch-check"], LOCAL_TIMEOUT)
            .isolated()
            .stdin(input.into_bytes())
            .ok()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(ids
            .iter()
            .zip(text.lines())
            .filter(|(_, line)| line.ends_with(" missing"))
            .map(|(id, _)| id.clone())
            .collect())
    }

    /// Takes the cross-process lock of this mirror (held until the file is dropped).
    async fn flock(&self) -> Result<std::fs::File, MirrorError> {
        let path = self.dir.with_extension("lock");
        let io_path = path.clone();
        let locked = gatehouse_common::spawn::spawn_blocking_named("git-mirror-lock", move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        locked.map_err(|source| MirrorError::Io {
            path: io_path,
            source,
        })
    }

    /// Whether `a` is an ancestor of (or equal to) `b`.
    pub async fn is_ancestor(&self, a: &CommitId, b: &CommitId) -> Result<bool, MirrorError> {
        let out = self
            .git
            .run(
                &self.dir,
                ["merge-base", "--is-ancestor", a.as_str(), b.as_str()],
                LOCAL_TIMEOUT,
            )
            .isolated()
            .output()
            .await?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(GitError::Failed {
                what: "merge-base".into(),
                status: format!("{:?}", out.code),
                stderr: out.stderr,
            }
            .into()),
        }
    }

    /// Merges `next` onto the state `acc`: a fast-forward where `next` contains `acc`,
    /// nothing where `acc` contains `next`, else `merge-tree --write-tree` and a merge
    /// commit with a fixed identity and date.
    pub async fn merge(&self, acc: &CommitId, next: &CommitId) -> Result<Merge, MirrorError> {
        if self.is_ancestor(acc, next).await? {
            return Ok(Merge::FastForward);
        }
        if self.is_ancestor(next, acc).await? {
            return Ok(Merge::AlreadyIn);
        }
        let out = self
            .git
            .run(
                &self.dir,
                [
                    "merge-tree",
                    "--write-tree",
                    "-z",
                    "--name-only",
                    "--no-messages",
                    acc.as_str(),
                    next.as_str(),
                ],
                LOCAL_TIMEOUT,
            )
            .isolated()
            .output()
            .await?;
        let fields: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        let tree = fields.first().and_then(|t| TreeId::parse(t));
        match (out.code, tree) {
            (Some(0), Some(tree)) => {
                let message = format!("Speculative merge of {next} onto {acc}\n");
                Ok(Merge::Merged(
                    self.commit(&tree, &[acc, next], &message).await?,
                ))
            }
            (Some(1), Some(_)) => {
                let mut paths: Vec<String> = fields[1..].to_vec();
                paths.dedup();
                Ok(Merge::Conflict(paths))
            }
            (Some(128), _) if out.stderr.contains("unrelated histories") => Ok(Merge::Unrelated),
            _ => Err(GitError::Failed {
                what: "merge-tree".into(),
                status: format!("{:?}", out.code),
                stderr: out.stderr,
            }
            .into()),
        }
    }

    /// A commit of `tree` with `parents`, deterministic (fixed identity and date).
    async fn commit(
        &self,
        tree: &TreeId,
        parents: &[&CommitId],
        message: &str,
    ) -> Result<CommitId, MirrorError> {
        let mut args = vec!["commit-tree".to_string(), tree.as_str().to_string()];
        for p in parents {
            args.push("-p".into());
            args.push(p.as_str().to_string());
        }
        let mut run = self.git.run(&self.dir, &args, LOCAL_TIMEOUT).isolated();
        for (k, v) in MERGE_IDENTITY {
            run = run.env(k, v);
        }
        let out = run.stdin(message.as_bytes().to_vec()).ok().await?;
        let text = out.text();
        let id = CommitId::parse(&text).ok_or(MirrorError::Output {
            what: "commit-tree",
            output: text,
        })?;
        self.keep(std::slice::from_ref(&id)).await?;
        Ok(id)
    }

    /// The tree of `commit`.
    pub async fn tree(&self, commit: &CommitId) -> Result<TreeId, MirrorError> {
        let spec = format!("{commit}^{{tree}}");
        let out = self
            .git
            .run(&self.dir, ["rev-parse", "--verify", &spec], LOCAL_TIMEOUT)
            .isolated()
            .ok()
            .await?;
        let text = out.text();
        TreeId::parse(&text).ok_or(MirrorError::Output {
            what: "rev-parse",
            output: text,
        })
    }

    /// Every blob and submodule of `tree`, by path.
    pub async fn entries(&self, tree: &TreeId) -> Result<Vec<TreeEntry>, MirrorError> {
        self.entries_under(tree, None).await
    }

    /// The blobs and submodules of `tree` at or under the literal paths `under` (every
    /// one of them when `None`), by path: a listing of a few directories of a large
    /// tree reads only those.
    pub async fn entries_under(
        &self,
        tree: &TreeId,
        under: Option<&[String]>,
    ) -> Result<Vec<TreeEntry>, MirrorError> {
        let mut args = vec!["ls-tree", "-r", "-z", "--full-tree", tree.as_str()];
        if let Some(paths) = under {
            args.push("--");
            args.extend(paths.iter().map(String::as_str));
        }
        let out = self
            .git
            .run(&self.dir, &args, LOCAL_TIMEOUT)
            .isolated()
            .env("GIT_LITERAL_PATHSPECS", "1")
            .ok()
            .await?;
        parse_ls_tree(&out.stdout)
    }

    /// Checks `commit` out into `dest` (which must not exist): a clone that shares this
    /// mirror's objects, detached at `commit`, with the pinned settings (no line-ending
    /// conversion, no filters, no hooks, whatever the tree's `.gitattributes` says). `dest` is independent of the mirror and of
    /// other checkouts; removing it is removing the directory.
    pub async fn checkout(&self, commit: &CommitId, dest: &Path) -> Result<(), MirrorError> {
        let src = self.dir.display().to_string();
        let dst = dest.display().to_string();
        let parent = dest.parent().unwrap_or(Path::new("/"));
        self.git
            .run(
                parent,
                ["clone", "--quiet", "--shared", "--no-checkout", &src, &dst],
                LOCAL_TIMEOUT,
            )
            .isolated()
            .ok()
            .await?;
        for (key, value) in [("core.autocrlf", "false"), ("core.eol", "lf")] {
            self.git
                .run(dest, ["config", key, value], LOCAL_TIMEOUT)
                .isolated()
                .ok()
                .await?;
        }
        // `info/attributes` wins over the tree's `.gitattributes`: no line-ending rule,
        // filter or encoding of the repository's own changes a byte either.
        let info = dest.join(".git").join("info");
        let pinned = "* -text -eol -filter -ident -working-tree-encoding\n";
        std::fs::create_dir_all(&info)
            .and_then(|()| std::fs::write(info.join("attributes"), pinned))
            .map_err(|source| MirrorError::Io {
                path: info.clone(),
                source,
            })?;
        self.git
            .run(
                dest,
                ["checkout", "--quiet", "--detach", commit.as_str()],
                LOCAL_TIMEOUT,
            )
            .isolated()
            .ok()
            .await?;
        Ok(())
    }
}

/// `ls-remote` output: ref -> commit, with annotated tags peeled (`refs/tags/v1^{}`).
fn parse_ls_remote(text: &str) -> BTreeMap<String, CommitId> {
    let mut refs = BTreeMap::new();
    for line in text.lines() {
        let Some((id, name)) = line.split_once('\t') else {
            continue;
        };
        let Some(id) = CommitId::parse(id) else {
            continue;
        };
        match name.strip_suffix("^{}") {
            // The peeled commit of an annotated tag wins over the tag object.
            Some(tag) => {
                refs.insert(tag.to_string(), id);
            }
            None => {
                refs.entry(name.to_string()).or_insert(id);
            }
        }
    }
    refs
}

/// The commit a plan's ref name means: `HEAD` or a full ref as written, else a branch,
/// else a tag.
fn lookup(refs: &BTreeMap<String, CommitId>, name: &str) -> Option<CommitId> {
    if name == "HEAD" || name.starts_with("refs/") {
        return refs.get(name).cloned();
    }
    refs.get(&format!("refs/heads/{name}"))
        .or_else(|| refs.get(&format!("refs/tags/{name}")))
        .cloned()
}

fn parse_ls_tree(out: &[u8]) -> Result<Vec<TreeEntry>, MirrorError> {
    let text = String::from_utf8_lossy(out);
    let mut entries = Vec::new();
    for record in text.split('\0').filter(|r| !r.is_empty()) {
        let parsed = record.split_once('\t').and_then(|(meta, path)| {
            let mut parts = meta.split(' ');
            let mode = parts.next()?;
            let _kind = parts.next()?;
            let oid = parts.next()?;
            Some(TreeEntry {
                path: path.to_string(),
                oid: oid.to_string(),
                mode: mode.to_string(),
            })
        });
        match parsed {
            Some(entry) => entries.push(entry),
            None => {
                return Err(MirrorError::Output {
                    what: "ls-tree",
                    output: record.chars().take(200).collect(),
                });
            }
        }
    }
    Ok(entries)
}

/// A ref name as a ref-safe component.
fn hex(name: &str) -> String {
    blake3::hash(name.as_bytes()).to_hex()[..16].to_string()
}

/// git's message with the repository's credentials taken out.
fn redact(text: &str, url: &RepoUrl) -> String {
    let raw = url.as_git_arg();
    let shown = url.to_string();
    let text = if raw == shown {
        text.to_string()
    } else {
        text.replace(raw, &shown)
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
