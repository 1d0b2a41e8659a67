//! What a source plan's refs resolved to, shown once before its gates: the repository
//! (redacted), the base, and per item its ref, commit and speculative commit, or why it
//! has none. A text block in the plain and live modes, one `source` line with `--json`.

use gatehouse_common::plan::Plan;
use gatehouse_common::source::{ItemState, PlanSource, Resolution};
use serde_json::{Value, json};

/// Commit ids are shown abbreviated in text (full in JSON).
const SHORT: usize = 12;

fn short(id: &str) -> &str {
    &id[..id.len().min(SHORT)]
}

/// The text block, one line per entry.
pub fn text_lines(plan: &Plan, source: &PlanSource, r: &Resolution) -> Vec<String> {
    let mut lines = Vec::with_capacity(plan.items.len() + 1);
    match &r.base {
        Ok(base) => lines.push(format!(
            "source {} @ {} = {}",
            source.repo,
            base.git_ref,
            short(base.commit.as_str())
        )),
        Err(message) => {
            lines.push(format!("source {}: {message}", source.repo));
            return lines;
        }
    }
    let width = plan
        .items
        .iter()
        .map(|i| i.id.as_str().len())
        .max()
        .unwrap_or(0);
    let ref_width = r
        .items
        .iter()
        .map(|i| i.git_ref.as_deref().map_or(1, str::len))
        .max()
        .unwrap_or(0);
    for (item, s) in plan.items.iter().zip(&r.items) {
        let git_ref = s.git_ref.as_deref().unwrap_or("-");
        let commit = s.commit.as_ref().map_or("-", |c| short(c.as_str()));
        let state = match &s.state {
            ItemState::Ready { commit: spec, .. } if s.commit.as_ref() == Some(spec) => {
                commit.to_string()
            }
            ItemState::Ready { commit: spec, .. } => {
                format!("{commit} -> {} (speculative merge)", short(spec.as_str()))
            }
            ItemState::Blocked {
                reason, message, ..
            } => {
                format!("{commit} {}: {message}", reason.as_str())
            }
            ItemState::BelowBlocked => format!("{commit} (an item below it cannot be built)"),
        };
        lines.push(format!(
            "  {:<width$}  {git_ref:<ref_width$}  {state}",
            item.id.as_str()
        ));
    }
    lines
}

/// The `--json` line.
pub fn json_value(plan: &Plan, source: &PlanSource, r: &Resolution) -> Value {
    let mut v = json!({
        "event": "source",
        "repo": source.repo.to_string(),
    });
    match &r.base {
        Ok(base) => {
            v["base"] = json!({
                "ref": base.git_ref,
                "commit": base.commit.as_str(),
                "tree": base.tree.as_str(),
            });
        }
        Err(message) => {
            v["reason"] = json!("source");
            v["error"] = json!(message);
        }
    }
    let items: Vec<Value> = plan
        .items
        .iter()
        .zip(&r.items)
        .map(|(item, s)| {
            let mut i = json!({
                "item": item.id.as_str(),
                "ref": s.git_ref,
                "commit": s.commit.as_ref().map(|c| c.as_str()),
            });
            match &s.state {
                ItemState::Ready { commit, tree, .. } => {
                    i["speculative_commit"] = json!(commit.as_str());
                    i["tree"] = json!(tree.as_str());
                }
                ItemState::Blocked {
                    reason,
                    message,
                    paths,
                } => {
                    i["reason"] = json!(reason.as_str());
                    i["error"] = json!(message);
                    if !paths.is_empty() {
                        i["paths"] = json!(paths);
                    }
                }
                ItemState::BelowBlocked => i["reason"] = json!("dependency_failed"),
            }
            i
        })
        .collect();
    if !items.is_empty() {
        v["items"] = json!(items);
    }
    v
}
