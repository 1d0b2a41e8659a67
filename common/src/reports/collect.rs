//! Finding and reading a gate's declared reports after an attempt.
//!
//! `reports:` globs (globset syntax, relative to the gate's workdir, `*` never matching
//! `/`, `**` any number of directories) are matched as the cache's input globs are: a
//! pattern is walked from its literal directory prefix only (`target/nextest/**/*.xml`
//! walks `target/nextest/`), a pattern without glob syntax is one `stat`, and symlinked
//! directories are not followed.
//!
//! Only files modified since the attempt started are read: a report left by an earlier
//! run (the gate failed before its test runner wrote a new one) is not this attempt's,
//! so it counts as missing. Each pattern that matched no such file is listed in
//! [`GateTests::missing`]; each file that cannot be read, with why, in
//! [`GateTests::unreadable`]. At most [`MAX_REPORT_FILES`] files are read per attempt.
//!
//! Blocking (it walks directories and reads files): call it from `spawn_blocking`.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use globset::GlobBuilder;
use walkdir::WalkDir;

use super::{GateTests, Limits, TestKey, TestResults, Unreadable};

/// Most report files read for one attempt; more matched files are listed as
/// unreadable.
pub const MAX_REPORT_FILES: usize = 1000;

/// Reads the reports `patterns` match under `workdir` that were modified at or after
/// `since`, keeping the passes of the `watch`ed tests. `since` should come from the clock
/// file times are stamped with (on Linux the coarse real-time clock, see
/// [`file_clock_now`]), read before the attempt started.
pub fn collect(
    workdir: &Path,
    patterns: &[String],
    since: SystemTime,
    limits: &Limits,
    watch: &HashSet<TestKey>,
) -> GateTests {
    let mut tests = GateTests::default();
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    for pattern in patterns {
        match matches(workdir, pattern) {
            Ok(found) => {
                let fresh: Vec<PathBuf> = found
                    .into_iter()
                    .filter(|rel| {
                        fs::metadata(workdir.join(rel))
                            .and_then(|m| m.modified())
                            .is_ok_and(|t| fresh(t, since))
                    })
                    .collect();
                // Missing means this pattern matched no fresh file, whatever the others
                // matched (a file matched twice is read once).
                if fresh.is_empty() {
                    tests.missing.push(pattern.clone());
                }
                files.extend(fresh);
            }
            Err(reason) => tests.unreadable.push(Unreadable {
                path: pattern.clone(),
                reason,
            }),
        }
    }
    let mut results = TestResults::default();
    for (n, rel) in files.into_iter().enumerate() {
        let path = rel.to_string_lossy().into_owned();
        if n >= MAX_REPORT_FILES {
            tests.unreadable.push(Unreadable {
                path,
                reason: format!("more than {MAX_REPORT_FILES} report files matched"),
            });
            continue;
        }
        let read = fs::File::open(workdir.join(&rel))
            .map_err(super::ReportError::from)
            .and_then(|file| results.add_report(file, limits, watch));
        match read {
            Ok(()) => tests.files += 1,
            Err(e) => tests.unreadable.push(Unreadable {
                path,
                reason: e.to_string(),
            }),
        }
    }
    tests.results = results;
    tests.read_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tests
}

/// Whether a file modified at `mtime` was written at or after `since`. A file system
/// that keeps whole seconds only (FAT, ext3, ext4 with small inodes) stamps a file
/// written in the same second as `since` with that second: a time with no fraction
/// counts from the second `since` falls in.
fn fresh(mtime: SystemTime, since: SystemTime) -> bool {
    if mtime >= since {
        return true;
    }
    let whole = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| (d.as_secs(), d.subsec_nanos()))
    };
    match (whole(mtime), whole(since)) {
        (Ok((m, 0)), Ok((s, _))) => m >= s,
        _ => false,
    }
}

/// Now, by the clock the kernel stamps file times with: on Linux the coarse real-time
/// clock (a file written after this reads has a modification time at or after it, which
/// the precise clock does not promise); elsewhere the system clock.
pub fn file_clock_now() -> SystemTime {
    #[cfg(target_os = "linux")]
    {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        if let (Ok(secs), Ok(nanos)) = (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
            return UNIX_EPOCH + Duration::new(secs, nanos);
        }
    }
    SystemTime::now()
}

/// The regular files under `workdir` that `pattern` matches, relative to it.
fn matches(workdir: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let comps: Vec<&str> = pattern
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let literal = comps
        .iter()
        .take_while(|c| !c.contains(['*', '?', '[', '{']))
        .count();
    let prefix: PathBuf = comps[..literal].iter().collect();
    if literal == comps.len() {
        let is_file = fs::metadata(workdir.join(&prefix)).is_ok_and(|m| m.is_file());
        return Ok(if is_file { vec![prefix] } else { Vec::new() });
    }
    let glob = GlobBuilder::new(&comps.join("/"))
        .literal_separator(true)
        .build()
        .map_err(|e| format!("invalid pattern: {}", e.kind()))?
        .compile_matcher();
    let root = workdir.join(&prefix);
    let mut found = Vec::new();
    for entry in WalkDir::new(&root).min_depth(1).follow_links(false) {
        // A directory that vanished or cannot be listed holds no report we can read.
        let Ok(entry) = entry else { continue };
        let Ok(rel) = entry.path().strip_prefix(workdir) else {
            continue;
        };
        if glob.is_match(rel) && fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            found.push(rel.to_path_buf());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = r#"<testsuite name="s"><testcase name="ok"/></testsuite>"#;
    const FAIL: &str = r#"<testsuite name="s"><testcase name="bad"><failure message="no"/></testcase></testsuite>"#;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    fn read(dir: &Path, patterns: &[&str], since: SystemTime) -> GateTests {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        collect(dir, &patterns, since, &Limits::default(), &HashSet::new())
    }

    #[test]
    fn reads_what_the_patterns_match_once_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let since = file_clock_now();
        write(dir.path(), "a/junit.xml", PASS);
        write(dir.path(), "b/deep/junit.xml", FAIL);
        write(dir.path(), "b/other.txt", "not a report");
        let tests = read(dir.path(), &["a/junit.xml", "**/*.xml", "./b/**"], since);
        // Three patterns, two distinct XML files and one text file.
        assert_eq!(tests.files, 2);
        assert_eq!(tests.results.passed, 1);
        assert_eq!(tests.results.failed, 1);
        assert_eq!(tests.unreadable.len(), 1, "{:?}", tests.unreadable);
        assert_eq!(tests.unreadable[0].path, "b/other.txt");
        assert!(tests.missing.is_empty());
        assert!(tests.read_unix_ms > 0);
    }

    #[test]
    fn a_pattern_whose_files_another_matched_is_not_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let since = file_clock_now();
        write(dir.path(), "out/junit.xml", PASS);
        let tests = read(dir.path(), &["out/junit.xml", "out/*.xml"], since);
        assert_eq!(tests.files, 1);
        assert!(tests.missing.is_empty(), "{:?}", tests.missing);
    }

    #[test]
    fn a_file_written_after_the_file_clock_read_is_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..200 {
            let since = file_clock_now();
            write(dir.path(), "r.xml", PASS);
            assert!(read(dir.path(), &["r.xml"], since).missing.is_empty());
        }
    }

    #[test]
    fn whole_second_file_times_count_from_their_second() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert!(fresh(at(10, 5), at(10, 5)));
        assert!(
            fresh(at(10, 0), at(10, 700_000_000)),
            "a whole-second stamp"
        );
        assert!(
            !fresh(at(10, 3), at(10, 700_000_000)),
            "a precise stamp before"
        );
        assert!(!fresh(at(9, 0), at(10, 700_000_000)), "the second before");
    }

    #[test]
    fn stale_and_absent_reports_are_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "old.xml", PASS);
        let later = SystemTime::now() + Duration::from_secs(5);
        let tests = read(dir.path(), &["old.xml", "none/*.xml"], later);
        assert_eq!(tests.files, 0);
        assert_eq!(tests.missing, ["old.xml", "none/*.xml"]);
    }

    #[test]
    fn a_broken_report_is_unreadable_and_the_rest_still_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let since = file_clock_now();
        write(dir.path(), "r/1.xml", "<testsuite><testcase name=");
        write(dir.path(), "r/2.xml", FAIL);
        let tests = read(dir.path(), &["r/*.xml", "r/[.xml"], since);
        assert_eq!(tests.files, 1);
        assert_eq!(tests.results.failed, 1);
        let reasons: Vec<&str> = tests.unreadable.iter().map(|u| u.path.as_str()).collect();
        assert_eq!(reasons, ["r/[.xml", "r/1.xml"]);
    }
}
