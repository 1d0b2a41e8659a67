//! `gatehouse run`'s test history: one file next to its result cache
//! (`<cache dir>/tests-history.ndjson`), one JSON line per fact (`TestRun`), appended
//! as gates end and read back (and folded into the scheduler's) when the next run
//! starts. `gatehouse flakes` reads the same file.
//!
//! Bounded like a cluster's: when it holds more than [`MAX_RECORDS`] lines, or lines
//! older than `history::MAX_AGE` before its newest, opening it rewrites it without them
//! (to a temporary file renamed over it, so a crash leaves one or the other). A line
//! that does not parse (a run killed mid-write) is skipped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use gatehouse_common::reports::history::{self, MAX_RECORDS, TestRun};

/// The history file's name in the cache directory.
pub const FILE_NAME: &str = "tests-history.ndjson";

/// The history file of a cache directory.
pub fn path_in(cache_dir: &Path) -> PathBuf {
    cache_dir.join(FILE_NAME)
}

/// The facts in the file (none if it does not exist), oldest first, within retention.
pub fn read(path: &Path) -> anyhow::Result<Vec<TestRun>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut runs = Vec::new();
    // By bytes, not text lines: a line cut mid-character (a full disk) is one bad line.
    for line in BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if let Ok(run) = serde_json::from_slice::<TestRun>(&line) {
            runs.push(run);
        }
    }
    Ok(retained(runs))
}

/// `runs` without what retention drops.
fn retained(mut runs: Vec<TestRun>) -> Vec<TestRun> {
    let newest = runs.iter().map(|r| r.unix_ms).max().unwrap_or(0);
    let horizon = newest.saturating_sub(history::MAX_AGE.as_millis() as u64);
    runs.retain(|r| r.unix_ms >= horizon);
    if runs.len() > MAX_RECORDS {
        runs.drain(..runs.len() - MAX_RECORDS);
    }
    runs
}

/// The history file, appended to (created with its directory on the first fact, so a
/// plan without reports leaves no file behind).
pub struct HistoryFile {
    path: PathBuf,
    file: Option<File>,
}

impl HistoryFile {
    /// Reads the file at `path` (if any), compacting it when retention drops anything;
    /// returns it, ready to append, with its facts.
    pub fn open(path: &Path) -> anyhow::Result<(Self, Vec<TestRun>)> {
        let lines = count_lines(path);
        let runs = read(path)?;
        if lines > runs.len() {
            // A name of its own, so two runs compacting at once do not mix their files.
            let tmp = path.with_extension(format!("ndjson.{}.tmp", std::process::id()));
            let mut out =
                File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
            for run in &runs {
                writeln!(out, "{}", line(run))
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
            }
            out.sync_all().ok();
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot replace {}", path.display()))?;
        }
        Ok((
            Self {
                path: path.to_path_buf(),
                file: None,
            },
            runs,
        ))
    }

    /// Appends one fact (one `write`, so concurrent runs do not interleave lines). A
    /// failure is a warning: the history is advisory.
    pub fn append(&mut self, run: &TestRun) {
        let mut text = line(run);
        text.push('\n');
        let written = self
            .file()
            .and_then(|f| f.write_all(text.as_bytes()).map_err(anyhow::Error::from));
        if let Err(e) = written {
            eprintln!(
                "warning: cannot write the test history {}: {e:#}",
                self.path.display()
            );
        }
    }

    fn file(&mut self) -> anyhow::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&self.path)
                .with_context(|| format!("cannot open {}", self.path.display()))?;
            // A last line cut short (a run killed mid-write) must not swallow the next.
            if ends_unterminated(&mut file) {
                file.write_all(b"\n")
                    .with_context(|| format!("cannot write {}", self.path.display()))?;
            }
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .context("the history file was just opened")
    }
}

/// Whether the file's last byte is not a newline (false when empty or unreadable).
fn ends_unterminated(file: &mut File) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    file.seek(SeekFrom::End(-1)).is_ok() && file.read_exact(&mut last).is_ok() && last[0] != b'\n'
}

fn line(run: &TestRun) -> String {
    serde_json::to_string(run).expect("a test run always serializes")
}

fn count_lines(path: &Path) -> usize {
    File::open(path)
        .map(|f| BufReader::new(f).split(b'\n').count())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(at: u64) -> TestRun {
        TestRun {
            plan: "p".into(),
            gate: "g".into(),
            unix_ms: at,
            ..TestRun::default()
        }
    }

    #[test]
    fn appends_read_back_and_damage_and_age_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_in(dir.path());
        let (mut file, runs) = HistoryFile::open(&path).expect("open");
        assert!(runs.is_empty());
        assert!(!path.exists(), "created on the first fact only");
        file.append(&run(1));
        file.append(&run(2));
        drop(file);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"plan\": \"cut \xc3\n"))
            .expect("damage");
        assert_eq!(read(&path).expect("read"), vec![run(1), run(2)]);
        let (file, _) = HistoryFile::open(&path).expect("reopen compacts");
        assert_eq!(count_lines(&path), 2);
        // A cut line does not swallow the next fact.
        drop(file);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"cut"))
            .expect("cut");
        let (mut file, _) = HistoryFile::open(&path).expect("reopen");
        file.append(&run(3));
        assert_eq!(read(&path).expect("read"), vec![run(1), run(2), run(3)]);
        let month = history::MAX_AGE.as_millis() as u64;
        file.append(&run(month + 10));
        assert_eq!(read(&path).expect("read"), vec![run(month + 10)]);
    }
}
