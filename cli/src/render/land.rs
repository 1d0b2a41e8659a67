//! Output of landing (`--land`, `--dry-run`): one line per step, a `landed` line per
//! item that landed, and a closing `land` report, after the plan's own summary.
//!
//! With `--json` every line is an object (`verify`, `respeculate`, `landed`, then the
//! last line, `land`); in text they go to stdout after the summary; `--quiet` prints
//! the report alone. Items are named by id, commits in full in JSON and by their first
//! 12 digits in text.

use gatehouse_common::ids::ItemIdx;
use gatehouse_common::source::CommitId;
use gatehouse_coordinator::land::{LandReport, LeftOut};
use serde_json::{Value, json};

use super::view::PlanView;
use super::{Mode, json, text};

/// Renders a landing of the plan in `view`.
pub struct LandRenderer {
    mode: Mode,
    view: PlanView,
    /// The branch it lands on.
    branch: String,
}

impl LandRenderer {
    pub fn new(mode: Mode, view: PlanView, branch: String) -> Self {
        Self { mode, view, branch }
    }

    fn item(&self, item: ItemIdx) -> &str {
        self.view
            .items
            .get(item.ix())
            .map_or("?", |i| i.id.as_str())
    }

    fn items(&self, items: &[ItemIdx]) -> Vec<&str> {
        items.iter().map(|&i| self.item(i)).collect()
    }

    /// A line of text, or nothing in quiet and JSON modes.
    fn line(&self, line: &str) {
        if matches!(self.mode, Mode::Plain | Mode::Tty) {
            text::print_line(line);
        }
    }

    /// The `verify` gates start on the combination of `items`.
    pub fn verifying(&self, items: &[ItemIdx], commit: &CommitId) {
        self.line(&format!(
            "land: verifying {} at {} ({})",
            count(items.len()),
            short(commit),
            self.items(items).join(", ")
        ));
    }

    /// The `verify` gates ended on the combination of `items`.
    pub fn verified(&self, items: &[ItemIdx], commit: &CommitId, passed: bool) {
        if self.mode == Mode::Json {
            json::emit(&json!({
                "event": "verify",
                "items": self.items(items),
                "commit": commit.as_str(),
                "passed": passed,
            }));
        }
        let verdict = if passed { "passes" } else { "fails" };
        self.line(&format!(
            "land: the combination of {} {verdict} verify",
            count(items.len())
        ));
    }

    /// The compare-and-swap push of `commit` is being made.
    pub fn pushing(&self, commit: &CommitId) {
        self.line(&format!(
            "land: pushing {} to {}",
            short(commit),
            self.branch
        ));
    }

    /// The branch moved to `now`: the plan runs again on it (`retry` of `of`).
    pub fn respeculating(&self, now: &CommitId, retry: u32, of: u32) {
        if self.mode == Mode::Json {
            json::emit(&json!({
                "event": "respeculate",
                "branch": self.branch,
                "now": now.as_str(),
                "retry": retry,
                "retries": of,
            }));
        }
        self.line(&format!(
            "land: {} moved to {} while the plan ran; running it again on the new base (retry {retry} of {of})",
            self.branch,
            short(now)
        ));
    }

    /// The landing's report: `landed` lines, then the closing summary.
    pub fn report(&self, report: &LandReport) {
        if self.mode == Mode::Json {
            if !report.dry_run {
                for (item, commit) in &report.landed {
                    json::emit(&json!({
                        "event": "landed",
                        "item": self.item(*item),
                        "commit": commit.as_str(),
                    }));
                }
            }
            json::emit(&self.report_value(report));
            return;
        }
        for line in self.report_lines(report) {
            text::print_line(&line);
        }
    }

    /// The closing `land` line of `--json`.
    pub fn report_value(&self, report: &LandReport) -> Value {
        let left_out: Vec<Value> = report
            .left_out
            .iter()
            .map(|(item, why)| {
                let mut v = json!({ "item": self.item(*item), "reason": why.as_str() });
                match why {
                    LeftOut::Conflict { paths } | LeftOut::CombinationConflict { paths } => {
                        v["paths"] = json!(paths);
                    }
                    LeftOut::Below { item } => v["below"] = json!(self.item(*item)),
                    LeftOut::AfterCulprit { culprit } => v["culprit"] = json!(self.item(*culprit)),
                    _ => {}
                }
                v
            })
            .collect();
        json!({
            "event": "land",
            "branch": self.branch,
            "dry_run": report.dry_run,
            "base": report.base.as_str(),
            "commit": report.tip.as_ref().map(CommitId::as_str),
            "landed": report.landed.iter().map(|(item, commit)| json!({
                "item": self.item(*item),
                "commit": commit.as_str(),
            })).collect::<Vec<_>>(),
            "left_out": left_out,
            "verify_runs": report.verify_runs,
            "error": report.error.as_ref().map(ToString::to_string),
        })
    }

    /// The closing summary in text.
    pub fn report_lines(&self, report: &LandReport) -> Vec<String> {
        let mut lines = Vec::new();
        let landed: Vec<ItemIdx> = report.landed.iter().map(|(i, _)| *i).collect();
        let verb = if report.dry_run {
            "would land"
        } else {
            "landed"
        };
        match &report.tip {
            Some(tip) if *tip == report.base && !landed.is_empty() => lines.push(format!(
                "land: nothing to push: {} already in {} at {}",
                if landed.len() == 1 {
                    "the item is".to_string()
                } else {
                    format!("all {} items are", landed.len())
                },
                self.branch,
                short(tip)
            )),
            Some(tip) if !landed.is_empty() => lines.push(format!(
                "land: {verb} {} on {}: {} -> {}",
                count(landed.len()),
                self.branch,
                short(&report.base),
                short(tip)
            )),
            _ => lines.push(format!("land: nothing {verb} on {}", self.branch)),
        }
        for (item, commit) in &report.landed {
            lines.push(format!(
                "  {verb} {} as {}",
                self.item(*item),
                short(commit)
            ));
        }
        for (item, why) in &report.left_out {
            lines.push(format!(
                "  left out {}: {}",
                self.item(*item),
                self.why(why)
            ));
        }
        if let Some(error) = &report.error {
            lines.push(format!("  error: {error}"));
        }
        if report.verify_runs > 0 {
            lines.push(format!("  verify runs: {}", report.verify_runs));
        }
        lines
    }

    fn why(&self, why: &LeftOut) -> String {
        match why {
            LeftOut::Failed => "a gate failed".into(),
            LeftOut::Skipped => "its gates did not all run".into(),
            LeftOut::Conflict { paths } => format!(
                "does not merge onto the state below it (conflicts in {})",
                paths.join(", ")
            ),
            LeftOut::Source => "its ref could not be read".into(),
            LeftOut::CombinationConflict { paths } if paths.is_empty() => {
                "has no history in common with the items before it".into()
            }
            LeftOut::CombinationConflict { paths } => format!(
                "does not merge with the items before it in the merge order (conflicts in {})",
                paths.join(", ")
            ),
            LeftOut::Below { item } => {
                format!("stacked on {}, which was left out", self.item(*item))
            }
            LeftOut::Culprit => "culprit: the combination fails verify from this item on".into(),
            LeftOut::AfterCulprit { culprit } => format!(
                "after the culprit {}; not verified without it, lands on a later run",
                self.item(*culprit)
            ),
            LeftOut::NotPushed => "not pushed".into(),
        }
    }
}

/// `1 item`, `3 items`.
fn count(n: usize) -> String {
    if n == 1 {
        "1 item".into()
    } else {
        format!("{n} items")
    }
}

/// The first 12 digits of a commit id.
fn short(commit: &CommitId) -> &str {
    let s = commit.as_str();
    &s[..s.len().min(12)]
}
