//! Gate transitions shared by the core's event handlers: finishing a gate and
//! propagating the result (readiness of dependents, skips, fail-fast), and stopping a
//! plan early.

use std::time::Duration;

use gatehouse_common::exec::{AttemptRef, ExitStatus, GateResult, GateSpec};
use gatehouse_common::ids::{GateIdx, SessionKey};
use gatehouse_common::plan::{MAX_RETRY_BACKOFF, Plan};

use super::plan_run::{GateState, Landed, PlanRun, SharedPass, Stopping};
use super::types::*;
use super::{CoreConfig, Sink};

/// Backoff before the attempt after the `failures`-th failure: `first * 2^(failures-1)`,
/// capped at [`MAX_RETRY_BACKOFF`].
pub fn retry_backoff(first: Duration, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(MAX_RETRY_BACKOFF)
}

/// How a gate ends.
pub(super) struct Done {
    pub(super) terminal: Terminal,
    pub(super) attempt: u32,
    pub(super) worker: Option<SessionKey>,
    pub(super) cached: bool,
    pub(super) flaky: bool,
    pub(super) result: Option<GateResult>,
    pub(super) reason: Option<&'static str>,
    pub(super) cause: Option<GateIdx>,
    /// Its flaky and quarantined tests.
    pub(super) verdict: Option<Box<gatehouse_common::reports::TestVerdict>>,
    /// Whether gates waiting on the same key may take its pass (`false` for a flaky
    /// pass that is not cached: they run and measure it again).
    pub(super) share: bool,
}

impl Done {
    pub(super) fn new(terminal: Terminal, attempt: u32) -> Self {
        Self {
            terminal,
            attempt,
            worker: None,
            cached: false,
            flaky: false,
            result: None,
            reason: None,
            cause: None,
            verdict: None,
            share: true,
        }
    }

    pub(super) fn reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
}

pub(super) fn gate_event(
    run: &PlanRun,
    g: GateIdx,
    status: GateStatus,
    attempt: u32,
    worker: Option<SessionKey>,
) -> GateEvent {
    // Published events name the worker, not its session.
    GateEvent::new(run.id.clone(), g, status, attempt, worker.map(|k| k.worker))
}

pub(super) fn gate_spec(plan: &Plan, g: GateIdx) -> GateSpec {
    let gate = plan.gate(g);
    GateSpec {
        plan_name: plan.name.clone(),
        gate: gate.id.clone(),
        item: gate.item.map(|i| plan.item(i).id.clone()),
        run: gate.run.clone(),
        env: gate.env.clone(),
        workdir: gate.workdir.clone(),
        workdir_rel: gate.workdir_rel.clone(),
        timeout: gate.timeout,
        memory: gate.memory,
        checkout: plan.source.as_ref().and_then(|source| {
            let resolution = source.resolution.as_ref()?;
            resolution.checkout(plan, &source.repo, g)
        }),
        reports: gate.reports.clone(),
    }
}

/// An attempt lost with its worker (or stopped by the worker on its own): it runs again
/// as a new attempt without using a retry, until `max_worker_losses`; then the gate ends
/// as `failed` (the given `failed` outcome, with reason `worker_lost`).
pub(super) fn lose_attempt(
    run: &mut PlanRun,
    sink: &mut Sink,
    config: &CoreConfig,
    g: GateIdx,
    failed: Done,
) {
    let gr = run.gate_mut(g);
    gr.losses += 1;
    if gr.losses >= config.max_worker_losses {
        finish_gate(run, sink, config, g, failed.reason("worker_lost"));
    } else if run.stopping == Stopping::No {
        run.push_ready(g, sink.now);
    } else {
        let done = Done::new(Terminal::Cancelled, failed.attempt).reason("cancelled");
        finish_gate(run, sink, config, g, done);
    }
}

/// A gate whose prerequisites all passed: through the cache check when caching is on.
/// The check carries the keys of its prerequisites (all passed, so all looked up or
/// restored), from which the driver computes its key.
pub(super) fn make_ready(run: &mut PlanRun, sink: &mut Sink, g: GateIdx) {
    if run.options.use_cache {
        run.set_state(g, GateState::CheckingCache);
        let deps = run.plan.prerequisites(g).map(|d| run.gate(d).key).collect();
        sink.cmds.push(Command::CheckCache {
            plan: run.id.clone(),
            gate: g,
            deps,
        });
    } else {
        run.push_ready(g, sink.now);
    }
}

/// Every gate ends here: its terminal state and count and, if it led a single flight,
/// the landing that settles the flight's waiters (see [`super::flights`]). `passed`:
/// its pass, when it passed by running and its pass may be shared.
pub(super) fn end_gate(
    run: &mut PlanRun,
    sink: &mut Sink,
    g: GateIdx,
    terminal: Terminal,
    (cached, flaky): (bool, bool),
    passed: Option<SharedPass>,
) {
    run.set_state(g, GateState::Done(terminal));
    run.count(terminal, cached, flaky);
    let gr = run.gate_mut(g);
    if let (true, Some(key)) = (std::mem::take(&mut gr.leads), gr.key) {
        sink.landed.push_back(Landed {
            plan: run.id.clone(),
            gate: g,
            key,
            passed: passed.filter(|_| terminal == Terminal::Passed),
        });
    }
}

/// Records a terminal state, publishes it and propagates it to dependents.
pub(super) fn finish_gate(
    run: &mut PlanRun,
    sink: &mut Sink,
    config: &CoreConfig,
    g: GateIdx,
    done: Done,
) {
    end_gate(
        run,
        sink,
        g,
        done.terminal,
        (done.cached, done.flaky),
        done.result
            .clone()
            .filter(|_| done.share)
            .map(|result| SharedPass {
                result,
                flaky: done
                    .flaky
                    .then(|| done.verdict.as_deref().cloned().unwrap_or_default()),
            }),
    );
    let mut ev = gate_event(
        run,
        g,
        GateStatus::Finished(done.terminal),
        done.attempt,
        done.worker,
    );
    ev.cached = done.cached;
    ev.flaky = done.flaky;
    ev.result = done.result;
    ev.reason = done.reason;
    ev.cause = done.cause;
    ev.verdict = done.verdict;
    sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
    match done.terminal {
        Terminal::Passed => propagate_pass(run, sink, g),
        Terminal::Failed | Terminal::TimedOut => {
            if run.plan.policy.fail_fast && run.stopping == Stopping::No {
                stop_plan(run, sink, Stopping::FailFast, config.kill_grace, false);
            } else {
                skip_dependents(run, sink, g);
            }
        }
        Terminal::Skipped | Terminal::Cancelled => skip_dependents(run, sink, g),
    }
    if run.is_finished() {
        sink.finished.push(run.id.clone());
    }
}

pub(super) fn propagate_pass(run: &mut PlanRun, sink: &mut Sink, g: GateIdx) {
    let mut newly_ready = Vec::new();
    for d in run.graph.needed_by(g) {
        newly_ready.push(d);
    }
    if let Some(item) = run.plan.gate(g).item {
        let left = &mut run.item_remaining[item.ix()];
        *left -= 1;
        if *left == 0 {
            for dep_item in run.graph.dependent_items(item) {
                newly_ready.extend(run.plan.item(dep_item).gates.iter().copied());
            }
        }
    }
    for d in newly_ready {
        let gr = run.gate_mut(d);
        gr.pending -= 1;
        if gr.pending == 0 && gr.state == GateState::Blocked && run.stopping == Stopping::No {
            make_ready(run, sink, d);
        }
    }
}

/// Fails, before anything starts, every gate not yet ended that the run's options
/// block (its code cannot be built: `merge_conflict`, `source`), then lets the failures
/// propagate like any other: dependents skipped, or fail-fast.
pub(super) fn fail_blocked_gates(run: &mut PlanRun, sink: &mut Sink, config: &CoreConfig) {
    let blocked = run.options.blocked.clone();
    let mut failed = Vec::new();
    for (g, reason) in blocked {
        if g.ix() >= run.plan.gates.len() || matches!(run.gate(g).state, GateState::Done(_)) {
            continue;
        }
        end_gate(run, sink, g, Terminal::Failed, (false, false), None);
        let mut ev = gate_event(run, g, GateStatus::Finished(Terminal::Failed), 0, None);
        ev.reason = Some(reason);
        sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
        failed.push(g);
    }
    if failed.is_empty() {
        return;
    }
    if run.plan.policy.fail_fast && run.stopping == Stopping::No {
        stop_plan(run, sink, Stopping::FailFast, config.kill_grace, false);
    } else {
        for g in failed {
            skip_dependents(run, sink, g);
        }
    }
    if run.is_finished() {
        sink.finished.push(run.id.clone());
    }
}

/// Skips every blocked gate that transitively waits for `failed` (through `needs`, and
/// through item `deps` once the failed gate's item can no longer pass).
pub(super) fn skip_dependents(run: &mut PlanRun, sink: &mut Sink, failed: GateIdx) {
    let mut stack: Vec<GateIdx> = Vec::new();
    // The gates of items that depend on a doomed item are queued once per item, not
    // once per gate of it, so propagation stays O(gates + edges).
    let push_dependents = |run: &mut PlanRun, g: GateIdx, stack: &mut Vec<GateIdx>| {
        stack.extend(run.graph.needed_by(g));
        if let Some(item) = run.plan.gate(g).item
            && !std::mem::replace(&mut run.item_doomed[item.ix()], true)
        {
            for dep_item in run.graph.dependent_items(item) {
                stack.extend(run.plan.item(dep_item).gates.iter().copied());
            }
        }
    };
    push_dependents(run, failed, &mut stack);
    while let Some(g) = stack.pop() {
        if run.gate(g).state != GateState::Blocked {
            continue;
        }
        end_gate(run, sink, g, Terminal::Skipped, (false, false), None);
        let mut ev = gate_event(run, g, GateStatus::Finished(Terminal::Skipped), 0, None);
        ev.reason = Some("dependency_failed");
        ev.cause = Some(failed);
        sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
        push_dependents(run, g, &mut stack);
    }
}

/// Stops a plan early: running attempts get a cancel; every gate not started ends as
/// skipped (fail-fast) or cancelled (cancel). O(gates), once per plan.
pub(super) fn stop_plan(
    run: &mut PlanRun,
    sink: &mut Sink,
    why: Stopping,
    grace: Duration,
    force: bool,
) {
    run.stopping = why;
    let (terminal, reason) = match why {
        Stopping::FailFast => (Terminal::Skipped, "fail_fast"),
        _ => (Terminal::Cancelled, "cancelled"),
    };
    for i in 0..run.gates.len() {
        let g = GateIdx(i as u32);
        match run.gate(g).state.clone() {
            GateState::Blocked
            | GateState::CheckingCache
            | GateState::AwaitingLeader
            | GateState::Ready
            | GateState::Parked
            | GateState::InDoubt { .. } => {
                end_gate(run, sink, g, terminal, (false, false), None);
                let mut ev = gate_event(run, g, GateStatus::Finished(terminal), 0, None);
                ev.reason = Some(reason);
                sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
            }
            GateState::Backoff { .. } => {
                // It ran and failed, and will not be retried: under fail-fast it ends with
                // that failure; on cancel it is cancelled. Either way with its last result.
                let gr = run.gate_mut(g);
                let last = gr.last_failure.take();
                let attempt = gr.attempt;
                let timed_out = last
                    .as_ref()
                    .is_some_and(|r| matches!(r.status, ExitStatus::TimedOut));
                let (t, why) = match why {
                    Stopping::FailFast if timed_out => (Terminal::TimedOut, "timeout"),
                    Stopping::FailFast => (
                        Terminal::Failed,
                        last.as_ref().map_or("exit_code", |r| r.status.reason()),
                    ),
                    _ => (Terminal::Cancelled, "cancelled"),
                };
                end_gate(run, sink, g, t, (false, false), None);
                let mut ev = gate_event(run, g, GateStatus::Finished(t), attempt, None);
                ev.reason = Some(why);
                ev.result = last;
                sink.cmds.push(Command::Emit(PlanEvent::Gate(ev)));
            }
            GateState::Running { worker, attempt } => {
                run.set_state(
                    g,
                    GateState::Stopping {
                        worker: worker.clone(),
                        attempt,
                        then: Terminal::Cancelled,
                    },
                );
                sink.cmds
                    .push(cancel_attempt(run, g, worker, attempt, grace));
            }
            GateState::Stopping {
                worker, attempt, ..
            } if force => {
                sink.cmds
                    .push(cancel_attempt(run, g, worker, attempt, Duration::ZERO));
            }
            GateState::Stopping { .. } | GateState::Done(_) => {}
        }
    }
    run.ready.clear();
    if run.is_finished() {
        sink.finished.push(run.id.clone());
    }
}

fn cancel_attempt(
    run: &PlanRun,
    g: GateIdx,
    worker: SessionKey,
    attempt: u32,
    grace: Duration,
) -> Command {
    Command::CancelAttempt {
        worker,
        attempt: AttemptRef {
            plan: run.id.clone(),
            gate: g,
            attempt,
        },
        grace,
    }
}
