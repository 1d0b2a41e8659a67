//! Output of `gatehouse run`, `gatehouse submit --watch` and `gatehouse watch`: NDJSON
//! (`--json`), plain lines (not a TTY), a live progress display (TTY), or just the
//! summary (`--quiet`). The renderer only formats; it owns the tallies it shows and
//! nothing else.
//!
//! It works on a [`PlanView`] and [`GateUpdate`]s ([`view`]). The view comes from a
//! local plan or a coordinator's plan description ([`wire`]); the updates come from the
//! scheduler core's events ([`Renderer::core_gate`]), emitted in this process or decoded
//! from a coordinator's stream ([`wire`]), so the output of both is the same, byte for
//! byte.

pub mod json;
pub mod land;
pub mod reports;
pub mod source;
pub mod text;
pub mod view;
pub mod wire;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use gatehouse_common::events::{GateEvent, PlanSummary, Terminal};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use view::{GateUpdate, PlanView, SummaryView};

use view::Change;

/// How a plan's progress is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Json,
    Plain,
    Tty,
    Quiet,
}

impl Mode {
    /// `--json`, else `--quiet`, else the live display when stdout and stderr are both
    /// terminals, else plain lines.
    pub fn choose(json: bool, quiet: bool) -> Self {
        if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() && std::io::stdout().is_terminal() {
            Mode::Tty
        } else {
            Mode::Plain
        }
    }
}

/// Live progress display: a bar with counts, and a line listing running gates.
struct Live {
    _multi: MultiProgress,
    bar: ProgressBar,
    running_line: ProgressBar,
}

pub struct Renderer {
    mode: Mode,
    view: PlanView,
    /// Terminal state per gate, as reported.
    states: Vec<Option<Terminal>>,
    /// Running gates (for the live display) and their attempts, in plan order.
    running: BTreeMap<usize, u32>,
    passed: u32,
    failed: u32,
    /// Gates in a terminal state.
    done: u32,
    live: Option<Live>,
}

impl Renderer {
    pub fn new(mode: Mode, view: PlanView) -> Self {
        let live = (mode == Mode::Tty).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let bar = multi.add(ProgressBar::new(view.gates.len() as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.cyan} {elapsed_precise} [{bar:32.green/red}] {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let running_line = multi.add(ProgressBar::new_spinner());
            running_line.set_style(
                ProgressStyle::with_template("  {wide_msg:.dim}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            Live {
                _multi: multi,
                bar,
                running_line,
            }
        });
        Self {
            mode,
            states: vec![None; view.gates.len()],
            view,
            running: BTreeMap::new(),
            passed: 0,
            failed: 0,
            done: 0,
            live,
        }
    }

    /// The plan being shown.
    pub fn view(&self) -> &PlanView {
        &self.view
    }

    /// How it shows it.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Starts over: the plan's gates run again (landing re-speculated it on a new base).
    pub fn restart(&mut self) {
        let view = self.view.clone();
        self.finish();
        *self = Renderer::new(self.mode, view);
    }

    /// One gate event of the scheduler core (`gatehouse run`, or decoded from a
    /// coordinator's stream); dispatches are not shown.
    pub fn core_gate(&mut self, ev: &GateEvent) {
        if let Some(update) = GateUpdate::from_core(ev) {
            self.gate(&update);
        }
    }

    /// The scheduler core's last event of the plan (`gatehouse run`, or decoded from a
    /// coordinator's stream).
    pub fn core_summary(&mut self, s: &PlanSummary) {
        let summary = SummaryView::from_core(&self.view, s);
        self.summary(&summary);
    }

    /// One gate update. An update for a gate outside the view is ignored.
    pub fn gate(&mut self, ev: &GateUpdate<'_>) {
        if ev.gate >= self.states.len() {
            return;
        }
        match &ev.change {
            Change::Running => {
                self.running.insert(ev.gate, ev.attempt);
            }
            Change::Retrying { .. } => {
                self.running.remove(&ev.gate);
            }
            Change::Finished(t) => {
                self.running.remove(&ev.gate);
                self.states[ev.gate] = Some(*t);
                self.done += 1;
                match t {
                    Terminal::Passed => self.passed += 1,
                    Terminal::Failed | Terminal::TimedOut => self.failed += 1,
                    _ => {}
                }
            }
            Change::Waiting { .. } => {}
        }
        match self.mode {
            Mode::Json => json::emit(&json::gate_value(&self.view, ev)),
            Mode::Plain => {
                if let Some(line) = text::gate_line(&self.view, ev) {
                    text::print_line(&line);
                }
            }
            Mode::Tty => self.update_live(ev),
            Mode::Quiet => {}
        }
    }

    fn update_live(&self, ev: &GateUpdate<'_>) {
        let Some(live) = &self.live else { return };
        if !matches!(
            ev.change,
            Change::Finished(Terminal::Passed | Terminal::Skipped)
        ) && let Some(line) = text::gate_line(&self.view, ev)
        {
            live.bar.println(line);
        }
        let done = u64::from(self.done);
        live.bar.set_position(done);
        let total = self.view.gates.len() as u64;
        let queued = total
            .saturating_sub(done)
            .saturating_sub(self.running.len() as u64);
        live.bar.set_message(format!(
            "{} passed, {} failed, {} running, {} queued",
            self.passed,
            self.failed,
            self.running.len(),
            queued
        ));
        let names: Vec<&str> = self
            .running
            .keys()
            .take(8)
            .map(|g| self.view.gate_id(*g))
            .collect();
        let more = self.running.len().saturating_sub(names.len());
        let suffix = if more > 0 {
            format!(" +{more}")
        } else {
            String::new()
        };
        live.running_line.set_message(if names.is_empty() {
            String::new()
        } else {
            format!("running: {}{suffix}", names.join(", "))
        });
    }

    /// What a source plan's refs resolved to, once, before its gates (from a local
    /// plan through [`gatehouse_proto::convert::source::source_info`], or from a
    /// coordinator's `GetPlanResponse`).
    pub fn source(&self, info: Option<&gatehouse_proto::v1::SourceInfo>) {
        let Some(info) = info else { return };
        match self.mode {
            Mode::Json => json::emit(&source::json_value(info)),
            Mode::Plain => {
                for line in source::text_lines(info) {
                    text::print_line(&line);
                }
            }
            Mode::Tty => {
                for line in source::text_lines(info) {
                    self.notice(&line);
                }
            }
            Mode::Quiet => {}
        }
    }

    /// A signal arrived (`n`: how many so far).
    pub fn interrupted(&self, n: u32) {
        let msg = if n == 1 {
            "interrupted: cancelling running gates (SIGTERM, then SIGKILL after the grace period); interrupt again to kill now"
        } else {
            "interrupted again: killing running gates now"
        };
        self.notice(msg);
    }

    /// A message for the user on stderr (above the live display on a TTY).
    pub fn notice(&self, msg: &str) {
        match &self.live {
            Some(live) => live.bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// The plan's last event.
    pub fn summary(&mut self, s: &SummaryView) {
        if let Some(live) = self.live.take() {
            live.running_line.finish_and_clear();
            live.bar.finish_and_clear();
        }
        match self.mode {
            Mode::Json => json::emit(&json::summary_value(&self.view, s)),
            _ => text::summary(&self.view, &self.states, s),
        }
    }

    /// Clears the live display if the run ended without a summary.
    pub fn finish(&mut self) {
        if let Some(live) = self.live.take() {
            live.running_line.finish_and_clear();
            live.bar.finish_and_clear();
        }
    }
}

/// The last `max` bytes of `bytes` as (lossy) UTF-8.
pub fn tail_str(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
