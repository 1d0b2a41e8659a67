//! `gatehouse validate`: parse and check a plan, print what would run.

use std::io::Write;
use std::path::Path;

use gatehouse_common::plan::{Plan, PlanErrors, PlanForm, load_file};

use crate::{EXIT_INVALID, EXIT_PASSED};

pub fn main(path: &Path, json: bool) -> u8 {
    match load_file(path) {
        Ok(plan) => {
            let mut out = std::io::stdout().lock();
            let _ = if json {
                print_json(&mut out, &plan)
            } else {
                print_text(&mut out, &plan)
            };
            EXIT_PASSED
        }
        Err(errors) => {
            report_invalid(&errors, json);
            EXIT_INVALID
        }
    }
}

/// Prints plan errors: text on stderr, or one JSON object on stdout with `--json`.
pub fn report_invalid(errors: &PlanErrors, json: bool) {
    if json {
        let list: Vec<_> = errors
            .0
            .iter()
            .map(|e| serde_json::json!({"file": e.file, "line": e.line, "message": e.kind.to_string()}))
            .collect();
        let v = serde_json::json!({"event": "invalid", "valid": false, "errors": list});
        // A closed stdout must not turn an invalid plan into a panic.
        let _ = writeln!(std::io::stdout().lock(), "{v}");
    } else {
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        eprintln!(
            "plan is invalid ({} error{}); no gate was run",
            errors.0.len(),
            plural(errors.0.len())
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn would_merge(plan: &Plan) -> Vec<String> {
    plan.merge_order(|_| true)
        .into_iter()
        .map(|i| plan.item(i).id.to_string())
        .collect()
}

fn print_json(out: &mut impl Write, plan: &Plan) -> std::io::Result<()> {
    let v = serde_json::json!({
        "valid": true,
        "name": plan.name,
        "gates": plan.gates.len(),
        "items": plan.items.len(),
        "levels": plan.level_ids(),
        "merge_order": would_merge(plan),
    });
    writeln!(out, "{v}")
}

fn print_text(out: &mut impl Write, plan: &Plan) -> std::io::Result<()> {
    writeln!(
        out,
        "plan {:?} is valid: {} gate{}, {} item{}, {} level{}",
        plan.name,
        plan.gates.len(),
        plural(plan.gates.len()),
        plan.items.len(),
        plural(plan.items.len()),
        plan.levels.len(),
        plural(plan.levels.len())
    )?;
    for (k, level) in plan.level_ids().iter().enumerate() {
        let shown: Vec<&str> = level.iter().take(20).map(String::as_str).collect();
        let more = level.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(" (+{more} more)")
        } else {
            String::new()
        };
        writeln!(out, "  level {k}: {}{tail}", shown.join(", "))?;
    }
    if plan.form() == PlanForm::Items {
        writeln!(
            out,
            "merge order if every gate passes: {}",
            would_merge(plan).join(" -> ")
        )?;
    }
    Ok(())
}
