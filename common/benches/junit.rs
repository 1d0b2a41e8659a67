//! Reading JUnit reports: time and peak memory of `TestResults::add_report` on
//! generated reports of 10,000 and 1,000,000 test cases (the latter about 100 MiB),
//! read from a file as an executor reads them. Every case passes but one in 1,000,
//! which fails with a message and a stack trace, as a large real suite looks.
//!
//! Run with `cargo bench -p gatehouse-common --bench junit [-- CASES...]`. Memory is
//! the process's peak resident set (VmHWM, reset before each read with
//! /proc/self/clear_refs) minus its resident set before the read: what reading adds.

use std::io::Write;
use std::time::{Duration, Instant};

use gatehouse_common::reports::{Limits, TestKey, TestResults};

/// Writes a report of `cases` test cases to `path`; returns its size.
fn write_report(path: &std::path::Path, cases: u64) -> u64 {
    let file = std::fs::File::create(path).expect("create report");
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#).expect("write");
    writeln!(out, r#"<testsuites name="bench" tests="{cases}">"#).expect("write");
    let per_suite = 1000;
    for s in 0..cases.div_ceil(per_suite) {
        writeln!(
            out,
            r#"  <testsuite name="pkg{s}::tests" tests="{per_suite}">"#
        )
        .expect("write");
        for c in 0..per_suite.min(cases - s * per_suite) {
            let i = s * per_suite + c;
            if i % 1000 == 999 {
                writeln!(
                    out,
                    r#"    <testcase name="test_case_number_{i}" classname="pkg{s}.module.Tests" time="0.004"><failure message="assertion failed: left == right">thread 'case_{i}' panicked at src/lib.rs:{i}:5:
assertion `left == right` failed
  left: 1
 right: 2</failure><system-out>some output of the test</system-out></testcase>"#
                )
                .expect("write");
            } else {
                writeln!(
                    out,
                    r#"    <testcase name="test_case_number_{i}" classname="pkg{s}.module.Tests" line="7" time="0.001"/>"#
                )
                .expect("write");
            }
        }
        writeln!(out, "  </testsuite>").expect("write");
    }
    writeln!(out, "</testsuites>").expect("write");
    out.flush().expect("flush");
    std::fs::metadata(path).expect("stat").len()
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if args.is_empty() {
        vec![10_000, 1_000_000]
    } else {
        args
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits::default();
    // The worst case: a full history's worth of watched tests, so every passing case
    // is hashed and looked up.
    let watch: std::collections::HashSet<TestKey> = (0..10_000u32)
        .map(|i| {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_le_bytes());
            TestKey(key)
        })
        .collect();
    println!(
        "cases      bytes       median      min         extra memory  kept (failed / watched passes)"
    );
    for cases in sizes {
        let path = dir.path().join(format!("report-{cases}.xml"));
        let bytes = write_report(&path, cases);
        let runs = if cases <= 100_000 { 21 } else { 5 };
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        let mut extra_kib = 0;
        let mut kept = (0, 0);
        for _ in 0..runs {
            // Reset the peak, so it measures this read alone.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let before = status_kib("VmRSS:");
            let start = Instant::now();
            let mut results = TestResults::default();
            let file = std::fs::File::open(&path).expect("open");
            results
                .add_report(file, &limits, &watch)
                .expect("read report");
            times.push(start.elapsed());
            extra_kib = extra_kib.max(status_kib("VmHWM:").saturating_sub(before));
            assert_eq!(results.passed + results.failed, cases);
            kept = (results.notable.len(), results.watched_passed.len());
            drop(results);
        }
        times.sort();
        // The XML reader alone, for reference: every event read, nothing done.
        let raw = {
            let file = std::fs::File::open(&path).expect("open");
            let mut reader =
                quick_xml::Reader::from_reader(std::io::BufReader::with_capacity(64 << 10, file));
            let mut buf = Vec::new();
            let start = Instant::now();
            loop {
                buf.clear();
                match reader.read_event_into(&mut buf) {
                    Ok(quick_xml::events::Event::Eof) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            start.elapsed()
        };
        // The JUnit reader with every case dropped at once: what keeping them adds.
        let read_only = {
            let file = std::fs::File::open(&path).expect("open");
            let start = Instant::now();
            gatehouse_common::reports::read(file, &limits, &mut |_| {}).expect("read");
            start.elapsed()
        };
        println!(
            "{:<10} XML events alone: {:.1} ms; cases read and dropped: {:.1} ms",
            "",
            raw.as_secs_f64() * 1e3,
            read_only.as_secs_f64() * 1e3
        );
        println!(
            "{cases:<10} {:<11} {:<11} {:<11} {:<13} {} / {}",
            format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64),
            format!("{:.1} ms", times[runs / 2].as_secs_f64() * 1e3),
            format!("{:.1} ms", times[0].as_secs_f64() * 1e3),
            format!("{:.1} MiB", extra_kib as f64 / 1024.0),
            kept.0,
            kept.1,
        );
    }
}
