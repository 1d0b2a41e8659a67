//! Output of `gatehouse run`: NDJSON (`--json`), plain lines (not a TTY), a live
//! progress display (TTY), or just the summary (`--quiet`). The renderer only formats;
//! it owns the tallies it shows and nothing else.

mod json;
mod text;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::ids::GateIdx;
use gatehouse_common::plan::Plan;
use gatehouse_coordinator::core::{GateEvent, GateStatus, PlanSummary, Terminal};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How `gatehouse run` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Json,
    Plain,
    Tty,
    Quiet,
}

/// Live progress display: a bar with counts, and a line listing running gates.
struct Live {
    _multi: MultiProgress,
    bar: ProgressBar,
    running_line: ProgressBar,
}

pub struct Renderer {
    mode: Mode,
    plan: Arc<Plan>,
    /// Terminal state per gate, as reported.
    states: Vec<Option<Terminal>>,
    /// Running gates (for the live display), in start order.
    running: BTreeMap<GateIdx, u32>,
    passed: u32,
    failed: u32,
    /// Gates in a terminal state.
    done: u32,
    live: Option<Live>,
}

impl Renderer {
    pub fn new(mode: Mode, plan: Arc<Plan>, _slots: u32) -> Self {
        let live = (mode == Mode::Tty).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let bar = multi.add(ProgressBar::new(plan.gates.len() as u64));
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
            states: vec![None; plan.gates.len()],
            plan,
            running: BTreeMap::new(),
            passed: 0,
            failed: 0,
            done: 0,
            live,
        }
    }

    /// One gate event.
    pub fn gate(&mut self, ev: &GateEvent) {
        match &ev.status {
            GateStatus::Running => {
                self.running.insert(ev.gate, ev.attempt);
            }
            GateStatus::Retrying { .. } => {
                self.running.remove(&ev.gate);
            }
            GateStatus::Finished(t) => {
                self.running.remove(&ev.gate);
                self.states[ev.gate.ix()] = Some(*t);
                self.done += 1;
                match t {
                    Terminal::Passed => self.passed += 1,
                    Terminal::Failed | Terminal::TimedOut => self.failed += 1,
                    _ => {}
                }
            }
            GateStatus::Dispatched | GateStatus::Waiting { .. } => {}
        }
        match self.mode {
            Mode::Json => json::gate(&self.plan, ev),
            Mode::Plain => {
                if let Some(line) = text::gate_line(&self.plan, ev) {
                    text::print_line(&line);
                }
            }
            Mode::Tty => self.update_live(ev),
            Mode::Quiet => {}
        }
    }

    fn update_live(&self, ev: &GateEvent) {
        let Some(live) = &self.live else { return };
        if !matches!(
            ev.status,
            GateStatus::Finished(Terminal::Passed | Terminal::Skipped)
        ) && let Some(line) = text::gate_line(&self.plan, ev)
        {
            live.bar.println(line);
        }
        let done = u64::from(self.done);
        live.bar.set_position(done);
        let total = self.plan.gates.len() as u64;
        let queued = total - done - self.running.len() as u64;
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
            .map(|g| self.plan.gate(*g).id.as_str())
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

    /// A signal arrived (`n`: how many so far).
    pub fn interrupted(&self, n: u32) {
        let msg = if n == 1 {
            "interrupted: cancelling running gates (SIGTERM, then SIGKILL after the grace period); interrupt again to kill now"
        } else {
            "interrupted again: killing running gates now"
        };
        match &self.live {
            Some(live) => live.bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// The plan's last event.
    pub fn summary(&mut self, s: &PlanSummary) {
        if let Some(live) = self.live.take() {
            live.running_line.finish_and_clear();
            live.bar.finish_and_clear();
        }
        match self.mode {
            Mode::Json => json::summary(&self.plan, s),
            _ => text::summary(&self.plan, &self.states, s),
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
