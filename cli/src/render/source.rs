//! What a source plan's refs resolved to, shown once before its gates: the repository
//! (redacted), the base, and per item its ref, commit and speculative commit, or why it
//! has none. A text block in the plain and live modes and in `status`, one `source` line
//! with `--json`. Both are written from the wire's [`v1::SourceInfo`], which a local
//! plan converts to as well, so `gatehouse run` and a cluster's `watch` print the same.

use gatehouse_proto::v1;
use serde_json::{Value, json};

/// Commit ids are shown abbreviated in text (full in JSON).
const SHORT: usize = 12;

fn short(id: &str) -> &str {
    &id[..id.len().min(SHORT)]
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The text block, one line per entry.
pub fn text_lines(info: &v1::SourceInfo) -> Vec<String> {
    let mut lines = Vec::with_capacity(info.items.len() + 1);
    if !info.error.is_empty() {
        lines.push(format!("source {}: {}", info.repo, info.error));
        return lines;
    }
    lines.push(format!(
        "source {} @ {} = {}",
        info.repo,
        info.base_ref,
        short(&info.base_commit)
    ));
    let width = info
        .items
        .iter()
        .map(|i| i.item_id.len())
        .max()
        .unwrap_or(0);
    let ref_width = info
        .items
        .iter()
        .map(|i| or_dash(&i.r#ref).len())
        .max()
        .unwrap_or(0);
    for i in &info.items {
        let commit = short(or_dash(&i.commit));
        let state = if !i.speculative_commit.is_empty() {
            if i.speculative_commit == i.commit {
                commit.to_string()
            } else {
                format!(
                    "{commit} -> {} (speculative merge)",
                    short(&i.speculative_commit)
                )
            }
        } else if i.reason == "dependency_failed" {
            format!("{commit} (an item below it cannot be built)")
        } else {
            format!("{commit} {}: {}", i.reason, i.error)
        };
        lines.push(format!(
            "  {:<width$}  {:<ref_width$}  {state}",
            i.item_id,
            or_dash(&i.r#ref)
        ));
    }
    lines
}

/// The `--json` line.
pub fn json_value(info: &v1::SourceInfo) -> Value {
    let mut v = json!({
        "event": "source",
        "repo": info.repo,
    });
    if info.error.is_empty() {
        v["base"] = json!({
            "ref": info.base_ref,
            "commit": info.base_commit,
            "tree": info.base_tree,
        });
    } else {
        v["reason"] = json!("source");
        v["error"] = json!(info.error);
    }
    let none = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    let items: Vec<Value> = info
        .items
        .iter()
        .map(|s| {
            let mut i = json!({
                "item": s.item_id,
                "ref": none(&s.r#ref),
                "commit": none(&s.commit),
            });
            if !s.speculative_commit.is_empty() {
                i["speculative_commit"] = json!(s.speculative_commit);
                i["tree"] = json!(s.tree);
            } else {
                i["reason"] = json!(s.reason);
                if !s.error.is_empty() {
                    i["error"] = json!(s.error);
                }
                if !s.paths.is_empty() {
                    i["paths"] = json!(s.paths);
                }
            }
            i
        })
        .collect();
    if !items.is_empty() {
        v["items"] = json!(items);
    }
    v
}
