//! Human-readable output: one line per finished gate (plain mode, or above the live
//! display on a TTY), then a summary table and the merge order.

use std::fmt::Write as _;
use std::io::Write;

use gatehouse_common::events::{Counts, Terminal};
use gatehouse_common::exec::ExitStatus;
use gatehouse_common::plan::PlanForm;
use gatehouse_common::units::format_duration;

use super::tail_str;
use super::view::{Change, GateUpdate, PlanView, SummaryView};

/// Lines of stderr shown under a failed gate.
const STDERR_LINES: usize = 20;
/// Rows of the summary table before it is cut.
const TABLE_ROWS: usize = 50;

/// The line for `ev` (with the stderr tail under a failed gate), or `None` for events
/// that are not shown as lines.
pub fn gate_line(view: &PlanView, ev: &GateUpdate<'_>) -> Option<String> {
    let id = view.gate_id(ev.gate);
    let mut line = match &ev.change {
        Change::Finished(t) => format!("{:<9} {id}", t.as_str()),
        Change::Retrying { backoff } => {
            format!(
                "{:<9} {id} (attempt {} failed; next in {})",
                "retrying",
                ev.attempt,
                format_duration(*backoff)
            )
        }
        Change::Waiting { reason } => format!("{:<9} {id}: {reason}", "waiting"),
        Change::Running => return None,
    };
    if let Some(r) = &ev.result {
        let detail = match &r.status {
            ExitStatus::Exited(0) => String::new(),
            ExitStatus::Exited(code) => format!("exit {code}, "),
            ExitStatus::Signaled(sig) => format!("signal {sig}, "),
            ExitStatus::TimedOut => "timed out, ".into(),
            ExitStatus::MemoryExceeded { peak, limit } => format!(
                "memory {} over limit {}, ",
                gatehouse_common::units::format_size(*peak),
                gatehouse_common::units::format_size(*limit)
            ),
            ExitStatus::Cancelled => "cancelled, ".into(),
            ExitStatus::SpawnFailed(msg) => format!("could not start: {msg}, "),
            ExitStatus::SourceFailed(msg) => format!("checkout failed: {msg}, "),
        };
        let _ = write!(line, "  ({detail}{}", format_duration(r.duration));
        if let Some(tests) = &r.tests {
            line.push_str(&super::reports::counts_text(tests));
        }
        if ev.attempt > 1 {
            let _ = write!(line, ", attempt {}", ev.attempt);
        }
        if ev.cached {
            line.push_str(", cached");
        }
        if ev.flaky {
            line.push_str(", flaky");
        }
        line.push(')');
    }
    if let Some(cause) = ev.cause {
        let _ = write!(line, "  (needs {}, which failed)", view.gate_id(cause));
    } else if let Some(reason) = ev.reason.as_ref().filter(|_| ev.result.is_none()) {
        let _ = write!(line, "  ({reason})");
    }
    let failed = matches!(
        ev.change,
        Change::Finished(Terminal::Failed | Terminal::TimedOut)
    );
    // Which tests failed, and why, before the output they came with.
    let tests = ev.result.and_then(|r| r.tests.as_deref());
    for l in super::reports::lines(tests, ev.verdict, failed || ev.is_failure()) {
        line.push('\n');
        line.push_str(&l);
    }
    if failed && let Some(r) = &ev.result {
        let tail = tail_str(&r.stderr.bytes, 64 * 1024);
        let lines: Vec<&str> = tail.lines().collect();
        let hidden = lines.len().saturating_sub(STDERR_LINES);
        if hidden > 0 || r.stderr.dropped > 0 {
            let _ = write!(
                line,
                "\n    | ... (last {} lines of stderr)",
                lines.len() - hidden
            );
        }
        for l in &lines[lines.len().saturating_sub(STDERR_LINES)..] {
            let _ = write!(line, "\n    | {l}");
        }
    }
    Some(line)
}

/// Prints one line on stdout. A closed stdout (`| head`) must not abort the run, so
/// write errors are ignored.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

pub fn summary(view: &PlanView, states: &[Option<Terminal>], s: &SummaryView) {
    let mut out = std::io::stdout().lock();
    let _ = write_summary(&mut out, view, states, s);
    let _ = out.flush();
}

fn write_summary(
    out: &mut impl Write,
    view: &PlanView,
    states: &[Option<Terminal>],
    s: &SummaryView,
) -> std::io::Result<()> {
    let state_of = |g: usize| states.get(g).copied().flatten();
    let state = |g: usize| state_of(g).map_or("?", Terminal::as_str);
    writeln!(out)?;
    if view.form() == PlanForm::Items {
        let w = view
            .items
            .iter()
            .map(|i| i.id.as_str().len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            out,
            "{:<w$}  {:>5}  {:>7}  RESULT",
            "ITEM", "LEVEL", "PASSED"
        )?;
        for item in view.items.iter().take(TABLE_ROWS) {
            let passed = item
                .gates
                .iter()
                .filter(|&&g| state_of(g) == Some(Terminal::Passed))
                .count();
            let worst = item
                .gates
                .iter()
                .filter_map(|&g| state_of(g))
                .max_by_key(|t| severity(*t))
                .map_or("?", Terminal::as_str);
            let counted = format!("{passed}/{}", item.gates.len());
            writeln!(
                out,
                "{:<w$}  {:>5}  {:>7}  {worst}",
                item.id.as_str(),
                item.level,
                counted
            )?;
        }
        if view.items.len() > TABLE_ROWS {
            writeln!(out, "... {} more items", view.items.len() - TABLE_ROWS)?;
        }
    } else {
        let not_passed: Vec<usize> = (0..view.gates.len())
            .filter(|&g| state_of(g) != Some(Terminal::Passed))
            .collect();
        if !not_passed.is_empty() {
            writeln!(out, "{:<40}  RESULT", "GATE")?;
            for &g in not_passed.iter().take(TABLE_ROWS) {
                writeln!(out, "{:<40}  {}", view.gate_id(g), state(g))?;
            }
            if not_passed.len() > TABLE_ROWS {
                writeln!(out, "... {} more gates", not_passed.len() - TABLE_ROWS)?;
            }
        }
    }
    writeln!(out, "{}", counts_line(&s.counts))?;
    if view.form() == PlanForm::Items {
        let order: Vec<&str> = s.merge_order.iter().map(|i| i.as_str()).collect();
        writeln!(out, "merge order: {}", merge_order_text(&order))?;
    }
    writeln!(
        out,
        "{} in {}",
        s.outcome.as_str(),
        format_duration(s.duration)
    )
}

/// `gates: N total, P passed (C cached), F failed, ...` (zero counts left out).
pub fn counts_line(c: &Counts) -> String {
    let mut counts = format!("{} passed", c.passed);
    if c.cached > 0 {
        let _ = write!(counts, " ({} cached)", c.cached);
    }
    for (n, what) in [
        (c.failed, "failed"),
        (c.timed_out, "timed out"),
        (c.skipped, "skipped"),
        (c.cancelled, "cancelled"),
        (c.flaky, "flaky"),
    ] {
        if n > 0 {
            let _ = write!(counts, ", {n} {what}");
        }
    }
    format!("gates: {} total, {counts}", c.total)
}

/// `a -> b -> c`, or `(nothing can merge)`.
pub fn merge_order_text(order: &[&str]) -> String {
    if order.is_empty() {
        "(nothing can merge)".to_string()
    } else {
        order.join(" -> ")
    }
}

/// Orders states so an item shows its worst gate.
fn severity(t: Terminal) -> u8 {
    match t {
        Terminal::Passed => 0,
        Terminal::Skipped => 1,
        Terminal::Cancelled => 2,
        Terminal::TimedOut => 3,
        Terminal::Failed => 4,
    }
}
