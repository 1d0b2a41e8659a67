//! The plan model: what `gatehouse run`, `gatehouse validate` and the coordinator accept.
//!
//! A plan file (YAML or JSON, see `docs/plan-format.md`) is parsed into the raw serde
//! structs of [`raw`], then [`validate`] turns it into a [`Plan`]: every id resolved to a
//! dense index, every duration and size typed, every limit checked, cycles rejected and
//! the merge-pyramid levels computed. A [`Plan`] is immutable and shared as `Arc<Plan>`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::PathBuf;
use std::time::Duration;

use crate::ids::{GateId, GateIdx, ItemId, ItemIdx};
use crate::source::PlanSource;

pub mod error;
pub mod raw;
pub mod validate;

pub use error::{PlanError, PlanErrors};
pub use validate::{PlanFormat, load_file, load_reader, parse_plan};

/// Maximum number of gates in one plan.
pub const MAX_GATES: usize = 100_000;
/// Maximum length of a gate's `run` in bytes.
pub const MAX_RUN_BYTES: usize = 64 * 1024;
/// Maximum number of `env` entries of one gate.
pub const MAX_ENV_VARS: usize = 256;
/// Maximum number of `labels` of one gate.
pub const MAX_LABELS: usize = 64;
/// Default memory request of a gate.
pub const DEFAULT_MEMORY: u64 = 256 * 1024 * 1024;
/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default first retry backoff.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Upper bound of the (doubling) retry backoff.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// A validated plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The plan's `name`.
    pub name: String,
    /// Directory that relative `workdir`s resolve against (the plan file's directory,
    /// or the current directory for stdin).
    pub base_dir: PathBuf,
    /// Plan-wide policy with defaults applied.
    pub policy: Policy,
    /// The repository the plan gates (`None`: gates run in the plan's directory).
    pub source: Option<PlanSource>,
    /// Items in plan order (empty in the flat form).
    pub items: Vec<Item>,
    /// All gates in plan order; `GateIdx(i)` is `gates[i]`.
    pub gates: Vec<Gate>,
    /// Merge-pyramid levels: item indices per level in the item form, gate indices per
    /// level in the flat form (each level in plan order).
    pub levels: Vec<Vec<u32>>,
    /// The `verify` gates, as a plan of their own: one item, [`VERIFY_ITEM`], holding
    /// them (ids `verify/<id>`), with this plan's policy and source. Landing runs it on
    /// a combined tip ([`crate::source::Resolution`] attached then). `None`: no `verify`.
    pub verify: Option<std::sync::Arc<Plan>>,
}

/// The id of the one item of a plan's `verify` gates.
pub const VERIFY_ITEM: &str = "verify";

/// Whether the plan uses `items:` or top-level `gates:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanForm {
    /// `items:` with gates grouped per item.
    Items,
    /// Top-level `gates:` with global ids.
    Flat,
}

/// Plan-wide policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Running gates of this plan at once; `None`: the number of executor slots.
    pub max_parallel: Option<u32>,
    /// First failure cancels running gates and skips the rest.
    pub fail_fast: bool,
    /// Default extra attempts for a failed or timed-out gate.
    pub retries: u32,
    /// First retry backoff, doubled per attempt, capped at [`MAX_RETRY_BACKOFF`].
    pub retry_backoff: Duration,
    /// Default per-attempt timeout.
    pub timeout: Duration,
    /// Default for gates' `cache`.
    pub cache: bool,
    /// Mixed into every cache key.
    pub cache_salt: String,
    /// Land the items that passed when the gates end (`policy.land`; `--land` too).
    pub land: bool,
    /// Default for gates' `retry_on`.
    pub retry_on: RetryOn,
    /// Tests whose failures do not fail their gate.
    pub quarantine: Quarantine,
    /// Store a gate that passed only after a failure, or with flaky tests, in the
    /// cache (its hits then keep the flaky flag and the flaky tests). Off by default, so
    /// the next run measures it again.
    pub cache_flaky: bool,
}

/// Which failed attempts are retried (up to `retries`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryOn {
    /// Every failure or timeout.
    #[default]
    Any,
    /// Only a failure whose failed tests (from the gate's reports) are all known flaky;
    /// any other failure fails the gate at once.
    Flaky,
}

impl RetryOn {
    /// As written in a plan.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::Any => "any",
            RetryOn::Flaky => "flaky",
        }
    }
}

/// `policy.quarantine`: tests whose failures do not fail their gate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quarantine {
    /// A test whose flake score is at least this is quarantined (0 < threshold <= 1).
    pub threshold: Option<f64>,
    /// Tests quarantined by name.
    pub tests: Vec<QuarantinedTest>,
}

/// One test quarantined by name until a date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantinedTest {
    /// A glob over the test's name (`class::name`, see `reports::TestId::name_for_humans`).
    pub test: String,
    /// The end of its last day (UTC), in milliseconds since the Unix epoch: a run read
    /// after it no longer counts the test quarantined.
    pub until_unix_ms: u64,
}

impl Quarantine {
    /// Whether anything is quarantined at all.
    pub fn is_set(&self) -> bool {
        self.threshold.is_some() || !self.tests.is_empty()
    }

    /// The named tests, compiled for matching.
    pub fn named(&self) -> NamedQuarantine {
        let globs = self
            .tests
            .iter()
            .filter_map(|t| {
                // Validation accepted every pattern; one that does not compile is skipped.
                let glob = globset::Glob::new(&t.test).ok()?.compile_matcher();
                Some((glob, t.until_unix_ms))
            })
            .collect();
        NamedQuarantine { globs }
    }
}

/// `policy.quarantine.tests`, compiled.
#[derive(Clone, Debug, Default)]
pub struct NamedQuarantine {
    globs: Vec<(globset::GlobMatcher, u64)>,
}

impl NamedQuarantine {
    /// Whether the test named `name` (`TestId::name_for_humans`) is quarantined by
    /// name in a run at `at_unix_ms`.
    pub fn covers(&self, name: &str, at_unix_ms: u64) -> bool {
        self.globs
            .iter()
            .any(|(glob, until)| at_unix_ms <= *until && glob.is_match(name))
    }
}

/// Most `reports` patterns per gate.
pub const MAX_REPORT_PATTERNS: usize = 32;
/// Most `policy.quarantine.tests` entries.
pub const MAX_QUARANTINED_TESTS: usize = 1000;

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_parallel: None,
            fail_fast: false,
            retries: 0,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            timeout: DEFAULT_TIMEOUT,
            cache: true,
            cache_salt: String::new(),
            land: false,
            retry_on: RetryOn::Any,
            quarantine: Quarantine::default(),
            cache_flaky: false,
        }
    }
}

/// An item (for example a pull request) of the item form.
#[derive(Clone, Debug)]
pub struct Item {
    /// The item's id.
    pub id: ItemId,
    /// Its change (`ref`, as written), in a source-aware plan; `None`: it builds on `base`.
    pub git_ref: Option<String>,
    /// Items whose gates must all pass before any gate of this one starts (plan order).
    pub deps: Vec<ItemIdx>,
    /// This item's gates, in plan order.
    pub gates: Vec<GateIdx>,
    /// Merge-pyramid level: 0 without deps, else 1 + the deepest dep's level.
    pub level: u32,
}

/// A validated gate with every default applied.
#[derive(Clone, Debug)]
pub struct Gate {
    /// Full id (`item/gate`, or `gate` in the flat form).
    pub id: GateId,
    /// The item this gate belongs to (item form only).
    pub item: Option<ItemIdx>,
    /// Shell command, run as `sh -c <run>`.
    pub run: String,
    /// Gates that must pass before this one starts (deduplicated, plan order).
    pub needs: Vec<GateIdx>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Extra attempts after a failure or timeout.
    pub retries: u32,
    /// Added to the inherited environment.
    pub env: BTreeMap<String, String>,
    /// `workdir` as written, relative to the plan directory (`.` by default); this
    /// form, not the absolute path, goes into the cache key.
    pub workdir_rel: String,
    /// Absolute working directory.
    pub workdir: PathBuf,
    /// Globs relative to `workdir` whose files' contents go into the cache key.
    pub inputs: Vec<String>,
    /// Memory request in bytes, used for admission.
    pub memory: u64,
    /// Whether the result cache is used for this gate.
    pub cache: bool,
    /// Worker labels this gate requires: it runs only on a worker that has every one.
    pub labels: BTreeMap<String, String>,
    /// JUnit XML report globs relative to `workdir`, read after every attempt.
    pub reports: Vec<String>,
    /// Which failed attempts are retried.
    pub retry_on: RetryOn,
}

impl Plan {
    /// Whether the plan uses the item form.
    pub fn form(&self) -> PlanForm {
        if self.items.is_empty() {
            PlanForm::Flat
        } else {
            PlanForm::Items
        }
    }

    /// The gate at `idx`.
    pub fn gate(&self, idx: GateIdx) -> &Gate {
        &self.gates[idx.ix()]
    }

    /// The item at `idx`.
    pub fn item(&self, idx: ItemIdx) -> &Item {
        &self.items[idx.ix()]
    }

    /// The gates `gate` directly waits for: its `needs`, then every gate of each item in
    /// its item's `deps` (what its cache key and its readiness depend on).
    pub fn prerequisites(&self, gate: GateIdx) -> impl Iterator<Item = GateIdx> + '_ {
        let g = self.gate(gate);
        let item_deps = g
            .item
            .map(|i| self.item(i).deps.as_slice())
            .unwrap_or_default();
        g.needs.iter().copied().chain(
            item_deps
                .iter()
                .flat_map(|d| self.item(*d).gates.iter().copied()),
        )
    }

    /// Every item `item` transitively depends on (not itself), in no particular order:
    /// the items below it in its stack.
    pub fn ancestors(&self, item: ItemIdx) -> Vec<ItemIdx> {
        let mut seen = vec![false; self.items.len()];
        let mut out = Vec::new();
        let mut todo: Vec<ItemIdx> = self.item(item).deps.clone();
        while let Some(d) = todo.pop() {
            if std::mem::replace(&mut seen[d.ix()], true) {
                continue;
            }
            out.push(d);
            todo.extend(self.item(d).deps.iter().copied());
        }
        out
    }

    /// The items for which `included` holds and whose deps are all in the order, in
    /// topological order (Kahn), ties broken by plan order: the merge order of the
    /// items that passed, and the order a stack's changes are merged in.
    pub fn merge_order(&self, included: impl Fn(ItemIdx) -> bool) -> Vec<ItemIdx> {
        let n = self.items.len();
        let mut indeg = vec![0u32; n];
        let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, item) in self.items.iter().enumerate() {
            indeg[i] = item.deps.len() as u32;
            for d in &item.deps {
                dependents[d.ix()].push(i as u32);
            }
        }
        let mut heap: BinaryHeap<Reverse<u32>> = (0..n as u32)
            .filter(|&i| indeg[i as usize] == 0 && included(ItemIdx(i)))
            .map(Reverse)
            .collect();
        let mut order = Vec::new();
        while let Some(Reverse(i)) = heap.pop() {
            order.push(ItemIdx(i));
            for &d in &dependents[i as usize] {
                indeg[d as usize] -= 1;
                if indeg[d as usize] == 0 && included(ItemIdx(d)) {
                    heap.push(Reverse(d));
                }
            }
        }
        order
    }

    /// Levels as ids: item ids per level (item form) or gate ids (flat form).
    pub fn level_ids(&self) -> Vec<Vec<String>> {
        let name = |i: &u32| match self.form() {
            PlanForm::Items => self.items[*i as usize].id.to_string(),
            PlanForm::Flat => self.gates[*i as usize].id.to_string(),
        };
        self.levels
            .iter()
            .map(|level| level.iter().map(name).collect())
            .collect()
    }
}
