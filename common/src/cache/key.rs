//! Cache keys: [`compute_key`] hashes everything that determines a gate's result.
//! [`compute_tree_key`] is the same for a gate of a source-aware plan, with the git tree
//! it runs on ([`GateTree`]: the digest of the matched entries' paths and object ids, or
//! the whole tree's id) in place of file contents.
//!
//! The key is BLAKE3 (in derive-key mode, so it can never collide with another use of
//! BLAKE3 in Gatehouse) over a canonical, length-prefixed encoding of, in this order:
//! [`KEY_FORMAT_VERSION`]; the gate's `run`; its `env` sorted by name; its `labels`
//! sorted by name; its `workdir_rel`
//! (never the absolute workdir, so a moved checkout keeps its keys); its `inputs` globs
//! (sorted, deduplicated); every matched input file as its `/`-separated path relative
//! to the workdir plus the BLAKE3 of its content, in sorted path order; the keys of the
//! gates it depends on (sorted and deduplicated, so the caller's order does not matter);
//! the plan's `cache_salt`; and, when the gate declares any, its `reports` globs
//! (sorted, deduplicated). The gate's id is deliberately not part of the key:
//! identical gates under different ids share one result.
//!
//! Input globs (globset syntax, relative to the gate's absolute `workdir`):
//! - `*`, `?` and `[..]` never match `/`; `**` matches any number of directories.
//! - A glob is walked only from its literal directory prefix (`src/**` walks `src/`,
//!   `**/*.rs` walks the whole workdir; globs with the same prefix share one walk); a
//!   glob without glob syntax (`Cargo.lock`) is one `stat`. Leading `./` is ignored; `..` is allowed only at the start
//!   (`../shared/**`); absolute globs are rejected.
//! - Only regular files are hashed. Directories contribute nothing (write `dir/**`), a
//!   symlink contributes its target's content, symlinked directories are not followed,
//!   and `.git` and `.gatehouse` directories are skipped unless the glob's literal
//!   prefix names them (`.git/HEAD`).
//! - A glob that matches nothing, including a literal path that does not exist, is not
//!   an error: it contributes only its own text. A missing file is a legitimate input
//!   state (for example an optional config file), and the key still changes when the
//!   file appears. A file that vanishes while being hashed is treated the same way.
//!
//! [`FileHashes`] memoizes content hashes for one run so a file matched by many gates is
//! read once. An entry is reused only while the file's size, mtime (and on Unix its
//! inode and ctime) are unchanged, and only once its mtime is [`RACY_WINDOW`] older
//! than the read, so a file rewritten by an earlier gate during the run is re-hashed.
//!
//! Concurrency: [`compute_key`] is synchronous and reads files; call it from
//! `spawn_blocking`. [`FileHashes`] is `Send + Sync`; its lock is never held across I/O.
//! Errors: an unreadable input or walked directory is [`CacheError::Input`], an invalid
//! glob [`CacheError::Glob`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use globset::{Glob, GlobBuilder, GlobSetBuilder};
use walkdir::{DirEntry, WalkDir};

use super::{CacheError, CacheKey};
use crate::ids::GateIdx;
use crate::plan::{Gate, Plan};
use crate::source::GateTree;

/// Version of the key encoding; bump it whenever the encoding or the glob semantics
/// change so old entries stop matching.
pub const KEY_FORMAT_VERSION: u32 = 2;

/// BLAKE3 derive-key context (the domain tag) of cache keys.
const KEY_CONTEXT: &str = "gatehouse 2025 gate result cache key";

/// Directory names skipped while walking (unless a glob's literal prefix names them).
const SKIPPED_DIRS: [&str; 2] = [".git", ".gatehouse"];

/// Characters that make a path component a pattern rather than a literal name.
const GLOB_META: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

/// A memoized hash is trusted only for files last modified at least this long before
/// they were read (coarse filesystem timestamps could hide a rewrite otherwise).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Per-run memo of input file content hashes, shared by all gates of a run.
#[derive(Debug, Default)]
pub struct FileHashes {
    /// Absolute path -> (metadata when hashed, BLAKE3 of the content).
    entries: Mutex<HashMap<PathBuf, (Fingerprint, [u8; 32])>>,
}

/// The metadata that must be unchanged for a memoized hash to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    /// (device, inode, ctime seconds, ctime nanoseconds): catch replaced files and
    /// rewrites that restore the mtime.
    #[cfg(unix)]
    unix: (u64, u64, i64, i64),
}

impl Fingerprint {
    fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            unix: (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file was last modified long enough before `read_at` to be memoized.
    fn settled(&self, read_at: SystemTime) -> bool {
        self.modified
            .and_then(|m| m.checked_add(RACY_WINDOW))
            .is_some_and(|m| m <= read_at)
    }
}

impl FileHashes {
    /// An empty memo.
    pub fn new() -> Self {
        Self::default()
    }

    fn lookup(&self, path: &Path, fingerprint: &Fingerprint) -> Option<[u8; 32]> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(path)
            .filter(|(memo, _)| memo == fingerprint)
            .map(|(_, hash)| *hash)
    }

    /// BLAKE3 of the file's content, or `None` if it no longer exists.
    fn hash(&self, path: &Path) -> io::Result<Option<[u8; 32]>> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let read_at = SystemTime::now();
        let before = Fingerprint::of(&file.metadata()?);
        if let Some(hash) = self.lookup(path, &before) {
            return Ok(Some(hash));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(&mut file)?;
        let hash = *hasher.finalize().as_bytes();
        let after = Fingerprint::of(&file.metadata()?);
        if before == after && before.settled(read_at) {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            entries.insert(path.to_path_buf(), (before, hash));
        }
        Ok(Some(hash))
    }
}

/// Computes the cache key of `gate`. `dep_keys` are the keys of the gates it directly
/// depends on (its `needs` and all gates of its item's `deps`), in any order.
pub fn compute_key(
    plan: &Plan,
    gate: GateIdx,
    dep_keys: &[CacheKey],
    files: &FileHashes,
) -> Result<CacheKey, CacheError> {
    let g = plan.gate(gate);
    let mut hashed = Vec::new();
    for (rel, abs) in collect_inputs(g)? {
        let hash = files.hash(&abs).map_err(|e| input_error(g, &abs, e))?;
        hashed.extend(hash.map(|hash| (rel, hash)));
    }
    Ok(encode(plan, gate, dep_keys, |w| {
        w.section(b'f', hashed.len());
        for (rel, hash) in &hashed {
            w.bytes(rel);
            w.raw(hash);
        }
    }))
}

/// The cache key of `gate` of a source-aware plan: everything [`compute_key`] hashes
/// (command, env, labels, workdir, globs, dependency keys, salt), with what it reads of
/// its speculative tree in place of file contents: the whole tree's id, or the digest of
/// the tree entries its `inputs` match. Pure: no I/O. A tree key never equals a file key
/// (their input sections have different tags).
pub fn compute_tree_key(
    plan: &Plan,
    gate: GateIdx,
    dep_keys: &[CacheKey],
    tree: &GateTree,
) -> CacheKey {
    encode(plan, gate, dep_keys, |w| match tree {
        GateTree::Whole(id) => w.field(b't', id.as_str().as_bytes()),
        GateTree::Inputs(digest) => {
            w.raw(b"o");
            w.raw(digest);
        }
    })
}

/// The key's encoding, with `inputs` writing the section of what the gate reads.
fn encode(
    plan: &Plan,
    gate: GateIdx,
    dep_keys: &[CacheKey],
    inputs: impl FnOnce(&mut KeyWriter),
) -> CacheKey {
    let gate = plan.gate(gate);
    let globs: BTreeSet<&str> = gate.inputs.iter().map(String::as_str).collect();
    let deps: BTreeSet<CacheKey> = dep_keys.iter().copied().collect();

    let mut w = KeyWriter(blake3::Hasher::new_derive_key(KEY_CONTEXT));
    w.raw(&KEY_FORMAT_VERSION.to_le_bytes());
    w.field(b'r', gate.run.as_bytes());
    w.section(b'e', gate.env.len());
    for (name, value) in &gate.env {
        w.bytes(name.as_bytes());
        w.bytes(value.as_bytes());
    }
    // Labels pick the kind of machine a gate runs on (arch, OS image...): part of what
    // determines its result.
    w.section(b'l', gate.labels.len());
    for (name, value) in &gate.labels {
        w.bytes(name.as_bytes());
        w.bytes(value.as_bytes());
    }
    w.field(b'w', gate.workdir_rel.as_bytes());
    w.section(b'i', globs.len());
    globs.iter().for_each(|glob| w.bytes(glob.as_bytes()));
    inputs(&mut w);
    w.section(b'd', deps.len());
    deps.iter().for_each(|dep| w.raw(&dep.0));
    w.field(b's', plan.policy.cache_salt.as_bytes());
    // The reports a gate declares decide what its result holds. Written only when
    // there are some, so the keys of gates without reports are what they were.
    if !gate.reports.is_empty() {
        let reports: BTreeSet<&str> = gate.reports.iter().map(String::as_str).collect();
        w.section(b'j', reports.len());
        reports.iter().for_each(|r| w.bytes(r.as_bytes()));
    }
    CacheKey(*w.0.finalize().as_bytes())
}

/// Writes the unambiguous encoding: one-byte section tags, then little-endian `u64`
/// lengths before every variable-length value and counts before every list.
struct KeyWriter(blake3::Hasher);

impl KeyWriter {
    fn raw(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.raw(&(bytes.len() as u64).to_le_bytes());
        self.raw(bytes);
    }

    fn field(&mut self, tag: u8, bytes: &[u8]) {
        self.raw(&[tag]);
        self.bytes(bytes);
    }

    fn section(&mut self, tag: u8, count: usize) {
        self.raw(&[tag]);
        self.raw(&(count as u64).to_le_bytes());
    }
}

/// One parsed entry of a gate's `inputs`.
enum InputSpec {
    /// No glob syntax: names exactly one path (normalized components).
    Literal(Vec<String>),
    /// A pattern, walked from its literal directory prefix.
    Pattern { prefix: Vec<String>, glob: Glob },
}

fn parse_input(gate: &Gate, raw: &str) -> Result<InputSpec, CacheError> {
    let invalid = |reason: &str| glob_error(gate, raw, reason);
    if raw.starts_with('/') || Path::new(raw).is_absolute() {
        return Err(invalid("must be relative to the gate's workdir"));
    }
    let comps: Vec<&str> = raw
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let leading_up = comps.iter().take_while(|c| **c == "..").count();
    if comps[leading_up..].contains(&"..") {
        return Err(invalid("`..` is only allowed at the start"));
    }
    let literal = comps.iter().take_while(|c| !c.contains(GLOB_META)).count();
    let owned = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    if literal == comps.len() {
        return Ok(InputSpec::Literal(owned(&comps)));
    }
    let glob = GlobBuilder::new(&comps.join("/"))
        .literal_separator(true)
        .build()
        .map_err(|e| invalid(&e.kind().to_string()))?;
    Ok(InputSpec::Pattern {
        prefix: owned(&comps[..literal]),
        glob,
    })
}

/// Matched regular files: `/`-separated relative path bytes -> absolute path.
type Matched = BTreeMap<Vec<u8>, PathBuf>;

fn collect_inputs(gate: &Gate) -> Result<Matched, CacheError> {
    let mut matched = Matched::new();
    // Patterns by literal prefix, so patterns sharing a directory share one walk.
    let mut walks: BTreeMap<Vec<String>, Vec<Glob>> = BTreeMap::new();
    for raw in &gate.inputs {
        match parse_input(gate, raw)? {
            InputSpec::Literal(comps) => {
                let abs = join_all(&gate.workdir, &comps);
                if stat(gate, &abs)?.is_some_and(|meta| meta.is_file()) {
                    matched.insert(comps.join("/").into_bytes(), abs);
                }
            }
            InputSpec::Pattern { prefix, glob } => walks.entry(prefix).or_default().push(glob),
        }
    }
    for (prefix, globs) in walks {
        walk(gate, &prefix, globs, &mut matched)?;
    }
    Ok(matched)
}

/// Adds the files below `prefix` that match one of `globs` (all of which have that
/// literal prefix), skipping `.git`/`.gatehouse` directories below `prefix`.
fn walk(
    gate: &Gate,
    prefix: &[String],
    globs: Vec<Glob>,
    matched: &mut Matched,
) -> Result<(), CacheError> {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        builder.add(glob);
    }
    let set = builder
        .build()
        .map_err(|e| glob_error(gate, &prefix.join("/"), &e.to_string()))?;
    let root = join_all(&gate.workdir, prefix);
    if !stat(gate, &root)?.is_some_and(|meta| meta.is_dir()) {
        return Ok(());
    }
    let walker = WalkDir::new(&root)
        .min_depth(1)
        .follow_links(false)
        .into_iter();
    let skip =
        |e: &DirEntry| e.file_type().is_dir() && SKIPPED_DIRS.iter().any(|s| e.file_name() == *s);
    for entry in walker.filter_entry(|e| !skip(e)) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.io_error().is_some_and(is_missing) => continue,
            Err(e) => {
                let path = e.path().unwrap_or(&root).to_path_buf();
                return Err(input_error(gate, &path, e.into()));
            }
        };
        let file_type = entry.file_type();
        if !(file_type.is_file() || file_type.is_symlink()) {
            continue;
        }
        let mut rel: PathBuf = prefix.iter().collect();
        rel.push(entry.path().strip_prefix(&root).unwrap_or(entry.path()));
        if !set.is_match(&rel) {
            continue;
        }
        if file_type.is_symlink() && !stat(gate, entry.path())?.is_some_and(|m| m.is_file()) {
            continue; // a symlink to a directory or nothing
        }
        let key: Vec<&[u8]> = rel.iter().map(OsStr::as_encoded_bytes).collect();
        matched.insert(key.join(&b'/'), entry.path().to_path_buf());
    }
    Ok(())
}

fn join_all(base: &Path, comps: &[String]) -> PathBuf {
    comps.iter().fold(base.to_path_buf(), |p, c| p.join(c))
}

fn is_missing(e: &io::Error) -> bool {
    [io::ErrorKind::NotFound, io::ErrorKind::NotADirectory].contains(&e.kind())
}

/// The metadata of `path` (following symlinks), or `None` if it does not exist.
fn stat(gate: &Gate, path: &Path) -> Result<Option<Metadata>, CacheError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(input_error(gate, path, e)),
    }
}

fn glob_error(gate: &Gate, glob: &str, reason: &str) -> CacheError {
    CacheError::Glob {
        gate: gate.id.clone(),
        glob: glob.to_owned(),
        reason: reason.to_owned(),
    }
}

fn input_error(gate: &Gate, path: &Path, source: io::Error) -> CacheError {
    CacheError::Input {
        gate: gate.id.clone(),
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::ids::GateId;
    use crate::plan::{Gate, Plan, Policy};

    fn gate(id: &str, workdir: &Path, inputs: &[&str]) -> Gate {
        Gate {
            id: GateId::new(id),
            item: None,
            run: "cargo test".into(),
            needs: Vec::new(),
            timeout: Duration::from_secs(60),
            retries: 0,
            env: BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())]),
            workdir_rel: ".".into(),
            workdir: workdir.to_path_buf(),
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            memory: 1 << 20,
            cache: true,
            labels: BTreeMap::new(),
            reports: Vec::new(),
            retry_on: Default::default(),
        }
    }

    fn plan(gates: Vec<Gate>) -> Plan {
        Plan {
            name: "p".into(),
            base_dir: PathBuf::from("/"),
            policy: Policy::default(),
            source: None,
            items: Vec::new(),
            gates,
            levels: Vec::new(),
            verify: None,
        }
    }

    fn key_of(plan: &Plan, deps: &[CacheKey]) -> CacheKey {
        compute_key(plan, GateIdx(0), deps, &FileHashes::new()).expect("key")
    }

    fn key(g: &Gate) -> CacheKey {
        key_of(&plan(vec![g.clone()]), &[])
    }

    fn with(g: &Gate, change: impl FnOnce(&mut Gate)) -> Gate {
        let mut g = g.clone();
        change(&mut g);
        g
    }

    fn write(dir: &Path, rel: &str, content: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("write");
    }

    fn checkout() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "Cargo.lock", "lock");
        write(dir.path(), "src/lib.rs", "pub fn a() {}");
        write(dir.path(), "src/deep/er/mod.rs", "mod x;");
        dir
    }

    const INPUTS: &[&str] = &["src/**", "Cargo.lock"];

    #[test]
    fn every_field_changes_the_key() {
        let dir = checkout();
        let base = gate("a", dir.path(), INPUTS);
        let mut seen = vec![("base", key(&base))];
        let mut check = |what: &'static str, k: CacheKey| {
            for (other, k2) in &seen {
                assert_ne!(k, *k2, "{what} gave the same key as {other}");
            }
            seen.push((what, k));
        };
        check("run", key(&with(&base, |g| g.run.push_str(" -q"))));
        let env = |name: &str, value: &str| BTreeMap::from([(name.into(), value.into())]);
        check(
            "env value",
            key(&with(&base, |g| g.env = env("RUST_LOG", "x"))),
        );
        check(
            "env name",
            key(&with(&base, |g| g.env = env("RUST_LOX", "info"))),
        );
        check(
            "labels",
            key(&with(&base, |g| g.labels = env("arch", "arm64"))),
        );
        check(
            "split env",
            key(&with(&base, |g| g.env = env("RUST_LOGi", "nfo"))),
        );
        check(
            "workdir_rel",
            key(&with(&base, |g| g.workdir_rel = "sub".into())),
        );
        check(
            "globs",
            key(&with(&base, |g| g.inputs.push("docs/*".into()))),
        );
        check(
            "deps",
            key_of(&plan(vec![base.clone()]), &[CacheKey([7; 32])]),
        );
        let mut salted = plan(vec![base.clone()]);
        salted.policy.cache_salt = "v2".into();
        check("salt", key_of(&salted, &[]));
        write(dir.path(), "src/lib.rs", "pub fn b() {}");
        check("input content", key(&base));
        write(dir.path(), "src/new.rs", "");
        check("input added", key(&base));
    }

    #[test]
    fn same_inputs_same_key_regardless_of_dep_order_and_gate_id() {
        let dir = checkout();
        let p = plan(vec![gate("a", dir.path(), INPUTS)]);
        let files = FileHashes::new();
        let k1 = compute_key(&p, GateIdx(0), &[], &files).expect("key");
        assert_eq!(compute_key(&p, GateIdx(0), &[], &files).expect("key"), k1);
        assert_eq!(key_of(&p, &[]), k1);
        let (d1, d2) = (CacheKey([1; 32]), CacheKey([2; 32]));
        assert_eq!(key_of(&p, &[d1, d2]), key_of(&p, &[d2, d1]));
        let other = plan(vec![gate("item-9/other", dir.path(), INPUTS)]);
        assert_eq!(key_of(&p, &[d1]), key_of(&other, &[d1]));
    }

    #[test]
    fn moved_checkout_keeps_keys() {
        let (a, b) = (checkout(), checkout());
        assert_ne!(a.path(), b.path());
        assert_eq!(
            key(&gate("a", a.path(), INPUTS)),
            key(&gate("a", b.path(), INPUTS))
        );
    }

    #[test]
    fn double_star_matches_nested_files_and_star_does_not() {
        let dir = checkout();
        let (deep, flat) = (
            gate("a", dir.path(), &["src/**"]),
            gate("a", dir.path(), &["src/*"]),
        );
        let (k_deep, k_flat) = (key(&deep), key(&flat));
        write(dir.path(), "README.md", "not an input");
        write(dir.path(), "src/deep/er/mod.rs", "mod y;");
        assert_ne!(key(&deep), k_deep);
        assert_eq!(key(&flat), k_flat);
        write(dir.path(), "src/y.rs", "");
        assert_ne!(key(&flat), k_flat);
    }

    #[test]
    fn missing_literal_input_is_not_an_error() {
        let dir = checkout();
        let g = gate("a", dir.path(), &["config/optional.toml", "nope/**"]);
        let k0 = key(&g);
        write(dir.path(), "config/optional.toml", "x = 1");
        assert_ne!(key(&g), k0, "the file appearing must change the key");
    }

    #[test]
    fn git_and_gatehouse_dirs_are_skipped_unless_named() {
        let dir = checkout();
        write(dir.path(), ".git/HEAD", "ref: main");
        let all = gate("a", dir.path(), &["**"]);
        let named = gate("a", dir.path(), &[".git/HEAD", "**"]);
        let git_glob = gate("a", dir.path(), &[".git/*", "**/*.rs"]);
        let before = [key(&all), key(&named), key(&git_glob)];
        write(dir.path(), ".git/HEAD", "ref: other");
        write(dir.path(), "sub/.gatehouse/cache", "x");
        assert_eq!(key(&all), before[0]);
        assert_ne!(key(&named), before[1]);
        assert_ne!(key(&git_glob), before[2]);
    }

    #[test]
    fn parent_prefix_globs_work() {
        let dir = checkout();
        write(dir.path(), "shared/a.txt", "1");
        let mut g = gate("a", &dir.path().join("src"), &["../shared/**", "*.rs"]);
        g.workdir_rel = "src".into();
        let k0 = key(&g);
        write(dir.path(), "shared/a.txt", "2");
        assert_ne!(key(&g), k0);
    }

    #[test]
    fn invalid_and_absolute_globs_are_errors() {
        let dir = checkout();
        for bad in ["src/[", "/etc/*.conf", "src/../../x/*"] {
            let p = plan(vec![gate("a", dir.path(), &[bad])]);
            let err = compute_key(&p, GateIdx(0), &[], &FileHashes::new());
            assert!(
                matches!(err, Err(CacheError::Glob { .. })),
                "{bad}: {err:?}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_hash_their_target() {
        let dir = checkout();
        write(dir.path(), "target.txt", "one");
        let link = dir.path().join("src/link");
        std::os::unix::fs::symlink(dir.path().join("target.txt"), link).expect("symlink");
        let g = gate("a", dir.path(), &["src/**"]);
        let k0 = key(&g);
        write(dir.path(), "target.txt", "two");
        assert_ne!(key(&g), k0);
    }

    #[test]
    fn memo_hashes_shared_files_once_and_sees_rewrites() {
        let dir = checkout();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for rel in ["Cargo.lock", "src/lib.rs", "src/deep/er/mod.rs"] {
            let file = File::options().append(true).open(dir.path().join(rel));
            file.expect("open").set_modified(old).expect("set mtime");
        }
        let p = plan(vec![
            gate("a", dir.path(), INPUTS),
            gate("b", dir.path(), &["src/**"]),
        ]);
        let files = FileHashes::new();
        let ka = compute_key(&p, GateIdx(0), &[], &files).expect("key");
        compute_key(&p, GateIdx(1), &[], &files).expect("key");
        assert_eq!(files.entries.lock().expect("lock").len(), 3);
        write(dir.path(), "Cargo.lock", "LOCK");
        assert_ne!(compute_key(&p, GateIdx(0), &[], &files).expect("key"), ka);
    }

    #[test]
    fn tree_keys_follow_the_tree_or_the_matched_entries_and_never_equal_file_keys() {
        use crate::source::{TreeId, inputs_digest};
        let g = gate("g", Path::new("/w"), &[]);
        let p = plan(vec![g.clone()]);
        let tree = |c: char| TreeId::parse(&c.to_string().repeat(40)).expect("tree id");
        let whole = |t: TreeId| compute_tree_key(&p, GateIdx(0), &[], &GateTree::Whole(t));
        assert_eq!(whole(tree('1')), whole(tree('1')));
        assert_ne!(
            whole(tree('1')),
            whole(tree('2')),
            "another tree, another key"
        );
        assert_ne!(whole(tree('1')), key(&g), "a tree key is never a file key");

        let inputs = with(&g, |g| g.inputs = vec!["src/**".into()]);
        let p = plan(vec![inputs]);
        let matched = |entries: &[(&str, &str)]| {
            let digest = inputs_digest(entries.iter().copied());
            compute_tree_key(&p, GateIdx(0), &[], &GateTree::Inputs(digest))
        };
        let one = [("src/a.rs", "oid1")];
        assert_ne!(
            matched(&one),
            matched(&[("src/a.rs", "oid2")]),
            "content changed"
        );
        assert_ne!(
            matched(&one),
            matched(&[("src/b.rs", "oid1")]),
            "path changed"
        );
        assert_ne!(matched(&[]), matched(&one));
        // Everything else of the key still counts: dependencies, for one.
        let dep = CacheKey([7; 32]);
        let digest = GateTree::Inputs(inputs_digest(one));
        assert_ne!(
            compute_tree_key(&p, GateIdx(0), &[dep], &digest),
            matched(&one)
        );
    }
}
