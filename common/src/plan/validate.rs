//! Loading and validating a plan file: text in, [`Plan`] or every problem out.
//!
//! [`load_file`] reads a file (or stdin for `-`), [`load_reader`] any reader, and
//! [`parse_plan`] a string; all three end in the same validation. Input above
//! [`MAX_PLAN_BYTES`] is rejected before parsing. A YAML or JSON error is reported alone,
//! with its line; after a successful parse every semantic problem is collected (up to
//! [`super::error::MAX_REPORTED_ERRORS`]) with the line of the offending value.
//!
//! Dependencies form two graphs. Items depend on items (`deps`). Gates wait for gates
//! (`needs`) and, implicitly, for every gate of their item's deps; that second relation
//! is modelled with two virtual nodes per item (`start` → each dep's `done`, `done` ← each
//! gate of the item) so the gate graph stays linear in the size of the plan. The private
//! `graph` submodule finds one concrete cycle per strongly connected component (printed
//! without the virtual nodes) and, for an acyclic graph, the merge-pyramid levels; the
//! private `fields` submodule checks the policy and each gate's own fields.
//!
//! Everything here is synchronous and pure apart from reading the input.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use serde_saphyr::{MessageFormatter, Spanned};

use super::error::{Collector, PlanErrorKind, PlanErrors};
use super::raw::{RawGate, RawItem, RawPlan};
use super::{Gate, Item, MAX_GATES, Plan, Policy, VERIFY_ITEM};
use crate::ids::{GateId, GateIdx, ItemId, ItemIdx, is_valid_id};
use graph::{DepGraph, group_levels};

mod fields;
mod graph;
mod reports;

/// Largest plan input accepted, in bytes; larger input is rejected before parsing.
pub const MAX_PLAN_BYTES: usize = 64 * 1024 * 1024;

/// Source name used in errors for a plan read from standard input.
pub const STDIN_NAME: &str = "<stdin>";

/// Syntax of a plan file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanFormat {
    /// YAML (the default for any extension other than `.json`).
    Yaml,
    /// JSON.
    Json,
}

impl PlanFormat {
    /// `Json` for a `.json` extension (any case), `Yaml` otherwise.
    pub fn from_path(path: &Path) -> Self {
        match path.extension() {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Yaml,
        }
    }
}

/// Loads and validates the plan at `path`; `-` reads YAML from stdin with the current
/// directory as base. Relative `workdir`s resolve against the file's (absolute) directory.
pub fn load_file(path: &Path) -> Result<Plan, PlanErrors> {
    let read_error = |name: &str, error| PlanErrors::single(name, 0, PlanErrorKind::Read { error });
    if path == Path::new("-") {
        let base_dir = std::env::current_dir().map_err(|e| read_error(STDIN_NAME, e))?;
        return load_reader(io::stdin().lock(), PlanFormat::Yaml, STDIN_NAME, &base_dir);
    }
    let name = path.display().to_string();
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let base_dir = std::path::absolute(parent).map_err(|e| read_error(&name, e))?;
    let file = File::open(path).map_err(|e| read_error(&name, e))?;
    load_reader(file, PlanFormat::from_path(path), &name, &base_dir)
}

/// Reads at most [`MAX_PLAN_BYTES`] from `reader` and parses them as [`parse_plan`] does.
pub fn load_reader(
    reader: impl Read,
    format: PlanFormat,
    source_name: &str,
    base_dir: &Path,
) -> Result<Plan, PlanErrors> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_PLAN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| PlanErrors::single(source_name, 0, PlanErrorKind::Read { error }))?;
    if bytes.len() > MAX_PLAN_BYTES {
        return Err(too_large(source_name));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| PlanErrors::single(source_name, 0, PlanErrorKind::NotUtf8))?;
    parse_plan(&text, format, source_name, base_dir)
}

/// Parses and validates plan `text`. `source_name` names the input in errors; relative
/// `workdir`s resolve against `base_dir`.
pub fn parse_plan(
    text: &str,
    format: PlanFormat,
    source_name: &str,
    base_dir: &Path,
) -> Result<Plan, PlanErrors> {
    if text.len() > MAX_PLAN_BYTES {
        return Err(too_large(source_name));
    }
    let raw = match format {
        PlanFormat::Yaml => parse_yaml(text, source_name)?,
        PlanFormat::Json => parse_json(text, source_name)?,
    };
    validate(raw, source_name, base_dir)
}

fn too_large(source_name: &str) -> PlanErrors {
    let limit = MAX_PLAN_BYTES as u64;
    PlanErrors::single(source_name, 0, PlanErrorKind::TooLarge { limit })
}

fn parse_yaml(text: &str, source_name: &str) -> Result<RawPlan, PlanErrors> {
    // The default budget (1M events, 250k nodes) is sized for config files; a plan of
    // MAX_GATES gates needs more. Every event or node costs at least a byte of input, so
    // the input limit bounds the work; the alias limits stay at their defaults.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = MAX_PLAN_BYTES;
    budget.max_nodes = MAX_PLAN_BYTES;
    let options = serde_saphyr::options! { budget: Some(budget), with_snippet: false };
    match serde_saphyr::from_str_with_options::<Option<RawPlan>>(text, options) {
        Ok(Some(raw)) => Ok(raw),
        Ok(None) => Err(PlanErrors::single(source_name, 0, PlanErrorKind::EmptyFile)),
        Err(err) => {
            let line = err.location().map_or(0, |l| l.line());
            let mut inner = &err;
            while let serde_saphyr::Error::AliasError { error, .. }
            | serde_saphyr::Error::WithSnippet { error, .. } = inner
            {
                inner = error;
            }
            let message = serde_saphyr::DefaultMessageFormatter.format_message(inner);
            let message = message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Err(PlanErrors::single(
                source_name,
                line,
                PlanErrorKind::Parse { message },
            ))
        }
    }
}

fn parse_json(text: &str, source_name: &str) -> Result<RawPlan, PlanErrors> {
    if text.trim().is_empty() {
        return Err(PlanErrors::single(source_name, 0, PlanErrorKind::EmptyFile));
    }
    serde_json::from_str(text).map_err(|err| {
        let full = err.to_string();
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        PlanErrors::single(
            source_name,
            err.line() as u64,
            PlanErrorKind::Parse { message },
        )
    })
}

/// The line of a spanned value (0 when unknown, as for JSON input).
fn line<T>(spanned: &Spanned<T>) -> u64 {
    spanned.referenced.line()
}

/// Turns a parsed plan into a [`Plan`], collecting every problem.
fn validate(raw: RawPlan, file: &str, base_dir: &Path) -> Result<Plan, PlanErrors> {
    let mut errs = Collector::new(file);
    match &raw.version {
        None => errs.push(0, PlanErrorKind::MissingVersion),
        Some(v) if v.value != 1 => {
            errs.push(
                line(v),
                PlanErrorKind::UnsupportedVersion { version: v.value },
            );
        }
        Some(_) => {}
    }
    let name = match raw.name {
        None => {
            errs.push(0, PlanErrorKind::MissingName);
            String::new()
        }
        Some(name) => {
            if name.value.trim().is_empty() {
                errs.push(line(&name), PlanErrorKind::EmptyName);
            }
            name.value
        }
    };
    let policy = fields::policy(&raw.policy, &mut errs);
    let source = raw
        .source
        .as_ref()
        .and_then(|s| fields::source(s, base_dir, &mut errs));

    let (count, list_line, list_empty) = match (&raw.items, &raw.gates) {
        (Some(_), Some(gates)) => {
            errs.push(line(gates), PlanErrorKind::BothForms);
            return Err(errs.into_errors());
        }
        (None, None) => {
            errs.push(0, PlanErrorKind::MissingGates);
            return Err(errs.into_errors());
        }
        (Some(items), None) => {
            let count = items.value.iter().map(|i| i.gates.len()).sum();
            (count, line(items), items.value.is_empty())
        }
        (None, Some(gates)) => (gates.value.len(), line(gates), gates.value.is_empty()),
    };
    if list_empty {
        errs.push(list_line, PlanErrorKind::EmptyPlan);
    }
    if count > MAX_GATES {
        // Nothing useful can be said about a million gates one by one.
        errs.push(
            list_line,
            PlanErrorKind::TooManyGates {
                count,
                limit: MAX_GATES,
            },
        );
        return Err(errs.into_errors());
    }

    let mut builder = Builder {
        errs,
        base_dir,
        policy,
        gates: Vec::with_capacity(count),
        gate_lines: Vec::with_capacity(count),
        gate_index: HashMap::with_capacity(count),
    };
    let (items, levels) = match (raw.items, raw.gates) {
        (Some(items), _) => builder.items_form(&items.value, raw.source.is_some()),
        (None, Some(gates)) => (Vec::new(), builder.flat_form(&gates.value)),
        (None, None) => (Vec::new(), Vec::new()),
    };
    let Builder {
        mut errs,
        policy,
        gates,
        gate_lines,
        ..
    } = builder;
    if source.is_some() {
        for (gate, &at) in gates.iter().zip(&gate_lines) {
            check_inside_repo(gate, at, &mut errs);
        }
    } else if let Some(land) = &raw.policy.land {
        let kind = PlanErrorKind::LandWithoutSource {
            field: "policy.land",
        };
        errs.push(line(land), kind);
    }
    let verify = match raw.verify {
        Some(list) if !list.value.is_empty() => {
            if source.is_none() {
                let kind = PlanErrorKind::LandWithoutSource { field: "verify" };
                errs.push(line(&list), kind);
            }
            let mut builder = Builder {
                errs,
                base_dir,
                policy: policy.clone(),
                gates: Vec::with_capacity(list.value.len()),
                gate_lines: Vec::with_capacity(list.value.len()),
                gate_index: HashMap::with_capacity(list.value.len()),
            };
            builder.verify_form(&list.value);
            errs = builder.errs;
            if source.is_some() {
                for (gate, &at) in builder.gates.iter().zip(&builder.gate_lines) {
                    check_inside_repo(gate, at, &mut errs);
                }
            }
            let gates = builder.gates;
            Some(Arc::new(Plan {
                name: name.clone(),
                base_dir: base_dir.to_path_buf(),
                policy: Policy {
                    land: false,
                    ..policy.clone()
                },
                source: source.clone(),
                items: vec![Item {
                    id: ItemId::new(VERIFY_ITEM),
                    git_ref: None,
                    deps: Vec::new(),
                    gates: (0..gates.len() as u32).map(GateIdx).collect(),
                    level: 0,
                }],
                gates,
                levels: vec![vec![0]],
                verify: None,
            }))
        }
        _ => None,
    };
    errs.finish(Plan {
        name,
        base_dir: base_dir.to_path_buf(),
        policy,
        source,
        items,
        gates,
        levels,
        verify,
    })
}

/// A gate of a source-aware plan runs in a checkout: its `workdir` and `inputs` must
/// stay inside it.
fn check_inside_repo(gate: &Gate, at: u64, errs: &mut Collector) {
    let outside = |field, value: &str| PlanErrorKind::OutsideRepo {
        gate: gate.id.clone(),
        field,
        value: value.to_owned(),
    };
    let workdir = gate.workdir_rel.as_str();
    if Path::new(workdir).is_absolute() || fields::climbs_above_root(workdir) {
        errs.push(at, outside("workdir", workdir));
        return;
    }
    for glob in &gate.inputs {
        if glob.starts_with('/') || fields::climbs_above_root(&format!("{workdir}/{glob}")) {
            errs.push(at, outside("inputs", glob));
        }
    }
}

/// State shared by the two plan forms while gates are built.
struct Builder<'a> {
    /// Every problem found so far.
    errs: Collector,
    /// Directory relative `workdir`s resolve against.
    base_dir: &'a Path,
    /// The validated policy, source of gate defaults.
    policy: Policy,
    /// Gates in plan order (including ones with errors; the plan is dropped then).
    gates: Vec<Gate>,
    /// Line of each gate's id (0 when unknown), for errors found after parsing fields.
    gate_lines: Vec<u64>,
    /// Full gate id to index; the first definition wins.
    gate_index: HashMap<String, u32>,
}

impl Builder<'_> {
    /// Validates the item form; returns the items and their levels.
    fn items_form(
        &mut self,
        raw_items: &[RawItem],
        has_source: bool,
    ) -> (Vec<Item>, Vec<Vec<u32>>) {
        let mut item_index: HashMap<&str, u32> = HashMap::with_capacity(raw_items.len());
        let mut items: Vec<Item> = Vec::with_capacity(raw_items.len());
        for (i, raw) in raw_items.iter().enumerate() {
            let id = raw.id.value.as_str();
            if !is_valid_id(id) {
                let kind = PlanErrorKind::InvalidItemId { id: id.to_owned() };
                self.errs.push(line(&raw.id), kind);
            } else if item_index.insert(id, i as u32).is_some() {
                let kind = PlanErrorKind::DuplicateItem {
                    item: ItemId::new(id),
                };
                self.errs.push(line(&raw.id), kind);
            }
            if raw.gates.is_empty() {
                let kind = PlanErrorKind::EmptyItem {
                    item: ItemId::new(id),
                };
                self.errs.push(line(&raw.id), kind);
            }
            let gates = raw
                .gates
                .iter()
                .map(|gate| self.add_gate(gate, format!("{id}/{}", gate.id.value), Some(i)))
                .collect();
            let git_ref = raw.git_ref.as_ref().and_then(|r| {
                let item = Some(ItemId::new(id));
                if !has_source {
                    let kind = PlanErrorKind::RefWithoutSource {
                        item: ItemId::new(id),
                    };
                    self.errs.push(line(r), kind);
                    return None;
                }
                fields::git_ref(r, item, "ref", &mut self.errs)
            });
            items.push(Item {
                id: ItemId::new(id),
                git_ref,
                deps: Vec::new(),
                gates,
                level: 0,
            });
        }

        for (i, raw) in raw_items.iter().enumerate() {
            let mut deps = Vec::with_capacity(raw.deps.len());
            for dep in &raw.deps {
                let item = || items[i].id.clone();
                match item_index.get(dep.value.as_str()) {
                    Some(&d) if d as usize == i => {
                        self.errs
                            .push(line(dep), PlanErrorKind::SelfDep { item: item() });
                    }
                    Some(&d) => deps.push(ItemIdx(d)),
                    None => {
                        let dep_id = dep.value.clone();
                        let kind = PlanErrorKind::UnknownDep {
                            item: item(),
                            dep: dep_id,
                        };
                        self.errs.push(line(dep), kind);
                    }
                }
            }
            deps.sort_unstable();
            deps.dedup();
            items[i].deps = deps;
        }

        let mut g = 0;
        for (raw, item) in raw_items.iter().zip(&items) {
            for gate in &raw.gates {
                self.resolve_needs(g, gate, Some(item.id.as_str()));
                g += 1;
            }
        }

        let mut item_graph = DepGraph::new(items.len(), 0);
        for (i, item) in items.iter().enumerate() {
            for d in &item.deps {
                item_graph.add_edge(i, d.ix());
            }
        }
        let item_deps = item_graph.analyze(items.len());
        for cycle in &item_deps.cycles {
            let ids = cycle.iter().map(|&i| items[i].id.clone()).collect();
            let kind = PlanErrorKind::ItemCycle { cycle: ids };
            let at = cycle.first().map_or(0, |&i| line(&raw_items[i].id));
            self.errs.push(at, kind);
        }

        // Gate graph: gates 0..n, then per item i a virtual `start` (n + 2i), which waits
        // for the `done` node of each dep, and `done` (n + 2i + 1), which waits for each of
        // the item's gates. With cyclic item deps only the `needs` edges are checked, so
        // the item cycle is not reported a second time.
        let n = self.gates.len();
        let mut graph = self.needs_graph(n + 2 * items.len(), 2 * n);
        if item_deps.levels.is_some() {
            for (i, item) in items.iter().enumerate() {
                let (start, done) = (n + 2 * i, n + 2 * i + 1);
                for g in &item.gates {
                    graph.add_edge(g.ix(), start);
                    graph.add_edge(done, g.ix());
                }
                for d in &item.deps {
                    graph.add_edge(start, n + 2 * d.ix() + 1);
                }
            }
        }
        self.report_gate_cycles(&graph.analyze(n).cycles);

        let Some(levels) = item_deps.levels else {
            return (items, Vec::new());
        };
        for (item, &level) in items.iter_mut().zip(&levels) {
            item.level = level;
        }
        (items, group_levels(&levels))
    }

    /// Validates the flat form; returns the gate levels.
    fn flat_form(&mut self, raw_gates: &[RawGate]) -> Vec<Vec<u32>> {
        for gate in raw_gates {
            self.add_gate(gate, gate.id.value.clone(), None);
        }
        for (g, gate) in raw_gates.iter().enumerate() {
            self.resolve_needs(g, gate, None);
        }
        let n = self.gates.len();
        let analysis = self.needs_graph(n, 0).analyze(n);
        self.report_gate_cycles(&analysis.cycles);
        analysis
            .levels
            .map(|l| group_levels(&l))
            .unwrap_or_default()
    }

    /// Validates the `verify` gates: one item, [`VERIFY_ITEM`], whose gates `need` only
    /// each other.
    fn verify_form(&mut self, raw_gates: &[RawGate]) {
        for gate in raw_gates {
            self.add_gate(gate, format!("{VERIFY_ITEM}/{}", gate.id.value), Some(0));
        }
        for (g, gate) in raw_gates.iter().enumerate() {
            self.resolve_needs(g, gate, Some(VERIFY_ITEM));
        }
        let n = self.gates.len();
        let analysis = self.needs_graph(n, 0).analyze(n);
        self.report_gate_cycles(&analysis.cycles);
    }

    /// Records one [`PlanErrorKind::GateCycle`] per cycle, at the first gate's line.
    fn report_gate_cycles(&mut self, cycles: &[Vec<usize>]) {
        for cycle in cycles {
            let ids = cycle.iter().map(|&g| self.gates[g].id.clone()).collect();
            let kind = PlanErrorKind::GateCycle { cycle: ids };
            let at = cycle.first().map_or(0, |&g| self.gate_lines[g]);
            self.errs.push(at, kind);
        }
    }

    /// A graph of `nodes` nodes whose first `self.gates.len()` are the gates, with an edge
    /// from each gate to each gate it needs; room for `extra_edges` more.
    fn needs_graph(&self, nodes: usize, extra_edges: usize) -> DepGraph {
        let edges: usize = self.gates.iter().map(|g| g.needs.len()).sum();
        let mut graph = DepGraph::new(nodes, edges + extra_edges);
        for (i, gate) in self.gates.iter().enumerate() {
            for need in &gate.needs {
                graph.add_edge(i, need.ix());
            }
        }
        graph
    }

    /// Registers a gate's full id, validates its fields and appends it; returns its index.
    fn add_gate(&mut self, raw: &RawGate, full: String, item: Option<usize>) -> GateIdx {
        let idx = self.gates.len() as u32;
        let id_line = line(&raw.id);
        let id = GateId::new(full);
        if !is_valid_id(&raw.id.value) {
            let kind = PlanErrorKind::InvalidGateId { id: id.to_string() };
            self.errs.push(id_line, kind);
        } else if self.gate_index.insert(id.to_string(), idx).is_some() {
            let kind = PlanErrorKind::DuplicateGate { gate: id.clone() };
            self.errs.push(id_line, kind);
        }
        let item = item.map(|i| ItemIdx(i as u32));
        let gate = fields::gate(raw, id, item, &self.policy, self.base_dir, &mut self.errs);
        self.gates.push(gate);
        self.gate_lines.push(id_line);
        GateIdx(idx)
    }

    /// Resolves gate `g`'s `needs` (`item` is its item id in the item form).
    fn resolve_needs(&mut self, g: usize, raw: &RawGate, item: Option<&str>) {
        let mut needs = Vec::with_capacity(raw.needs.len());
        // Reused for `item/gate` of a same-item need, to keep allocation off the hot path.
        let mut qualified = String::new();
        for need in &raw.needs {
            let text = need.value.as_str();
            let full = match (item, text.split_once('/')) {
                (Some(_), Some((i, gate))) if is_valid_id(i) && is_valid_id(gate) => text,
                (Some(item), None) if is_valid_id(text) => {
                    qualified.clear();
                    qualified.push_str(item);
                    qualified.push('/');
                    qualified.push_str(text);
                    qualified.as_str()
                }
                (None, None) if is_valid_id(text) => text,
                _ => {
                    let kind = PlanErrorKind::InvalidNeed {
                        gate: self.gates[g].id.clone(),
                        need: text.to_owned(),
                    };
                    self.errs.push(line(need), kind);
                    continue;
                }
            };
            match self.gate_index.get(full) {
                Some(&n) if n as usize == g => {
                    let kind = PlanErrorKind::SelfNeed {
                        gate: self.gates[g].id.clone(),
                    };
                    self.errs.push(line(need), kind);
                }
                Some(&n) => needs.push(GateIdx(n)),
                None => {
                    let kind = PlanErrorKind::UnknownNeed {
                        gate: self.gates[g].id.clone(),
                        need: full.to_owned(),
                    };
                    self.errs.push(line(need), kind);
                }
            }
        }
        needs.sort_unstable();
        needs.dedup();
        self.gates[g].needs = needs;
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
