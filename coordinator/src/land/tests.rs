//! The landing decisions, driven directly: a fake fold (each state named after the
//! commits folded so far) and scripted `verify` and push answers.

use std::path::Path;
use std::sync::Arc;

use gatehouse_common::ids::ItemIdx;
use gatehouse_common::plan::{Plan, PlanFormat, parse_plan};
use gatehouse_common::source::{
    Base, BlockReason, CommitId, ItemSource, ItemState, Resolution, TreeId,
};

use super::*;

/// A commit id derived from `seed`.
fn id(seed: &str) -> CommitId {
    use std::hash::{Hash, Hasher};
    let mut hex = String::new();
    for salt in 0..3u8 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, seed).hash(&mut h);
        hex.push_str(&format!("{:016x}", h.finish()));
    }
    CommitId::parse(&hex[..40]).expect("commit id")
}

/// The state after folding `commits` onto the base, as the fake fold names it.
fn state(commits: &[&str]) -> CommitId {
    if commits.is_empty() {
        return id("base");
    }
    id(&format!("state {}", commits.join("+")))
}

/// A plan: items `a` <- `b` <- `c` (a stack) and an independent `d`, optionally with
/// `verify` gates, resolved with every item ready unless `blocked` names it.
fn plan(verify: bool, blocked: &[(&str, BlockReason)]) -> Plan {
    let verify_block = if verify {
        "verify:\n  - { id: integration, run: 'true' }\n"
    } else {
        ""
    };
    let text = format!(
        "version: 1\nname: p\nsource: {{ repo: 'file:///nowhere', base: main }}\n{verify_block}items:\n\
         - {{ id: a, ref: a, gates: [{{ id: t, run: 'true' }}] }}\n\
         - {{ id: b, ref: b, deps: [a], gates: [{{ id: t, run: 'true' }}] }}\n\
         - {{ id: c, ref: c, deps: [b], gates: [{{ id: t, run: 'true' }}] }}\n\
         - {{ id: d, ref: d, gates: [{{ id: t, run: 'true' }}] }}\n"
    );
    let mut plan = parse_plan(&text, PlanFormat::Yaml, "p.yaml", Path::new("/")).expect("plan");
    let stacks: [&[&str]; 4] = [&["a"], &["a", "b"], &["a", "b", "c"], &["d"]];
    let items = ["a", "b", "c", "d"]
        .iter()
        .zip(stacks)
        .map(|(name, stack)| {
            let state = match blocked.iter().find(|(b, _)| b == name) {
                Some((_, reason)) => ItemState::Blocked {
                    reason: *reason,
                    message: "no".into(),
                    paths: vec!["f".into()],
                },
                None => ItemState::Ready {
                    stack: stack.iter().map(|c| id(c)).collect(),
                    commit: state(stack),
                    tree: TreeId::parse(&"e".repeat(40)).expect("tree"),
                },
            };
            ItemSource {
                git_ref: Some((*name).into()),
                commit: Some(id(name)),
                state,
            }
        })
        .collect();
    let resolution = Resolution {
        base: Ok(Base {
            git_ref: "main".into(),
            commit: id("base"),
            tree: TreeId::parse(&"e".repeat(40)).expect("tree"),
        }),
        items,
        gates: vec![None; plan.gates.len()],
    };
    plan.source.as_mut().expect("source").resolution = Some(Arc::new(resolution));
    plan
}

/// The items that passed, in merge order, as the core's summary lists them.
fn order(plan: &Plan, passed: &[&str]) -> Vec<ItemIdx> {
    plan.merge_order(|i| passed.contains(&plan.item(i).id.as_str()))
}

fn item(plan: &Plan, name: &str) -> ItemIdx {
    ItemIdx(
        plan.items
            .iter()
            .position(|i| i.id.as_str() == name)
            .expect("item") as u32,
    )
}

/// Names of commits, back from their ids (for readable assertions).
fn fold(commits: &[CommitId]) -> Vec<CommitId> {
    let names: Vec<&str> = commits
        .iter()
        .map(|c| {
            ["a", "b", "c", "d"]
                .into_iter()
                .find(|n| id(n) == *c)
                .expect("known commit")
        })
        .collect();
    (1..=names.len()).map(|k| state(&names[..k])).collect()
}

/// Runs a landing to its end: every fold succeeds, `verify` passes on a prefix iff
/// `verify_passes(prefix)`, pushes answer from `pushes` in turn. Returns the last
/// command and every `verify` prefix asked for.
fn run(
    lander: &mut Lander,
    verify_passes: impl Fn(usize) -> bool,
    mut pushes: Vec<PushOutcome>,
) -> (LandCommand, Vec<usize>) {
    let mut verified = Vec::new();
    let mut cmd = lander.start();
    loop {
        let event = match &cmd {
            LandCommand::Combine { commits } => LandEvent::Combined(Ok(fold(commits))),
            LandCommand::Verify { prefix, .. } => {
                verified.push(*prefix);
                LandEvent::Verified {
                    prefix: *prefix,
                    passed: verify_passes(*prefix),
                }
            }
            LandCommand::Push { .. } => LandEvent::Pushed(pushes.remove(0)),
            LandCommand::Respeculate { .. } | LandCommand::Finish(_) => {
                return (cmd, verified);
            }
        };
        cmd = lander.handle(event);
    }
}

fn report(cmd: LandCommand) -> LandReport {
    match cmd {
        LandCommand::Finish(report) => report,
        other => panic!("expected a finished landing, got {other:?}"),
    }
}

const ALL: &[&str] = &["a", "b", "c", "d"];

#[test]
fn a_single_stack_is_verified_by_its_own_gates() {
    let plan = plan(true, &[]);
    let order = order(&plan, &["a", "b", "c"]);
    let failed = [false, false, false, true];
    let mut lander = Lander::new(&plan, &order, &failed, LandOptions::default()).expect("lander");
    let (cmd, verified) = run(&mut lander, |_| true, vec![PushOutcome::Updated]);
    assert!(
        verified.is_empty(),
        "c's own state is the whole combination"
    );
    let report = report(cmd);
    assert_eq!(report.tip, Some(state(&["a", "b", "c"])));
    assert_eq!(
        report.landed,
        vec![
            (item(&plan, "a"), state(&["a"])),
            (item(&plan, "b"), state(&["a", "b"])),
            (item(&plan, "c"), state(&["a", "b", "c"])),
        ]
    );
    assert_eq!(report.left_out, vec![(item(&plan, "d"), LeftOut::Failed)]);
    assert!(!report.all_landed());
}

#[test]
fn independent_stacks_are_verified_together_once() {
    let plan = plan(true, &[]);
    let order = order(&plan, ALL);
    let mut lander =
        Lander::new(&plan, &order, &[false; 4], LandOptions::default()).expect("lander");
    let (cmd, verified) = run(&mut lander, |_| true, vec![PushOutcome::Updated]);
    assert_eq!(verified, vec![4]);
    let report = report(cmd);
    assert!(report.all_landed(), "{report:?}");
    assert_eq!(report.tip, Some(state(&["a", "b", "c", "d"])));
    assert_eq!(report.verify_runs, 1);
}

#[test]
fn without_verify_gates_the_combination_is_pushed_as_is() {
    let plan = plan(false, &[]);
    let order = order(&plan, ALL);
    let mut lander =
        Lander::new(&plan, &order, &[false; 4], LandOptions::default()).expect("lander");
    let (cmd, verified) = run(&mut lander, |_| false, vec![PushOutcome::Updated]);
    assert!(verified.is_empty());
    assert!(report(cmd).all_landed());
}

#[test]
fn a_failing_combination_lands_the_longest_passing_prefix_and_names_the_culprit() {
    let plan = plan(true, &[]);
    let order = order(&plan, ALL);
    let d = item(&plan, "d");
    let mut lander =
        Lander::new(&plan, &order, &[false; 4], LandOptions::default()).expect("lander");
    // d is last in merge order (a, b, c, d); with it the tip fails.
    let (cmd, verified) = run(&mut lander, |k| k < 4, vec![PushOutcome::Updated]);
    // Prefix 2 (a+b) and 3 (a+b+c) are tested stacks: no run for them.
    assert_eq!(verified, vec![4], "only the whole tip needs a run");
    let report = report(cmd);
    assert_eq!(report.tip, Some(state(&["a", "b", "c"])));
    assert_eq!(report.left_out, vec![(d, LeftOut::Culprit)]);
}

#[test]
fn a_tested_stack_counts_as_verified_during_bisection() {
    // `verify` would fail from a+b on, but a+b and a+b+c are the states b's and c's own
    // gates passed on: they are taken as verified, so the whole tip is the only run
    // and d, the first untested addition, is the culprit.
    let plan = plan(true, &[]);
    let order = order(&plan, ALL);
    let mut lander =
        Lander::new(&plan, &order, &[false; 4], LandOptions::default()).expect("lander");
    let (cmd, verified) = run(&mut lander, |k| k < 2, vec![PushOutcome::Updated]);
    assert_eq!(verified, vec![4]);
    let report = report(cmd);
    assert_eq!(report.landed.len(), 3);
    assert_eq!(report.left_out, vec![(item(&plan, "d"), LeftOut::Culprit)]);
}

#[test]
fn a_culprit_in_the_middle_is_found_by_binary_search() {
    // Four independent items: every prefix is an untested combination.
    let text = "version: 1\nname: p\nsource: { repo: 'file:///nowhere', base: main }\n\
                verify: [{ id: v, run: 'true' }]\nitems:\n"
        .to_string()
        + &(0..8)
            .map(|i| format!("- {{ id: i{i}, ref: i{i}, gates: [{{ id: t, run: 'true' }}] }}\n"))
            .collect::<String>();
    let mut plan = parse_plan(&text, PlanFormat::Yaml, "p.yaml", Path::new("/")).expect("plan");
    let items = (0..8)
        .map(|i| ItemSource {
            git_ref: Some(format!("i{i}")),
            commit: Some(id(&format!("i{i}"))),
            state: ItemState::Ready {
                stack: vec![id(&format!("i{i}"))],
                commit: id(&format!("alone {i}")),
                tree: TreeId::parse(&"e".repeat(40)).expect("tree"),
            },
        })
        .collect();
    plan.source.as_mut().expect("source").resolution = Some(Arc::new(Resolution {
        base: Ok(Base {
            git_ref: "main".into(),
            commit: id("base"),
            tree: TreeId::parse(&"e".repeat(40)).expect("tree"),
        }),
        items,
        gates: vec![None; 8],
    }));
    let order = plan.merge_order(|_| true);
    let mut lander =
        Lander::new(&plan, &order, &[false; 8], LandOptions::default()).expect("lander");
    let mut cmd = lander.start();
    let mut verified = Vec::new();
    let report = loop {
        cmd = match cmd {
            LandCommand::Combine { commits } => {
                let states = (1..=commits.len())
                    .map(|k| id(&format!("combo {k}")))
                    .collect();
                lander.handle(LandEvent::Combined(Ok(states)))
            }
            LandCommand::Verify { prefix, items, .. } => {
                assert_eq!(items.len(), prefix);
                verified.push(prefix);
                lander.handle(LandEvent::Verified {
                    prefix,
                    passed: prefix < 6,
                })
            }
            LandCommand::Push { landing, .. } => {
                assert_eq!(landing.len(), 5);
                lander.handle(LandEvent::Pushed(PushOutcome::Updated))
            }
            LandCommand::Finish(report) => break report,
            other => panic!("unexpected {other:?}"),
        };
    };
    assert_eq!(verified, vec![8, 4, 6, 5]);
    assert_eq!(report.verify_runs, 4);
    assert_eq!(report.left_out[0], (ItemIdx(5), LeftOut::Culprit));
    assert_eq!(
        report.left_out[1],
        (
            ItemIdx(6),
            LeftOut::AfterCulprit {
                culprit: ItemIdx(5)
            }
        )
    );
    assert_eq!(report.tip, Some(id("combo 5")));
}

#[test]
fn a_combination_conflict_leaves_the_item_and_its_stack_out() {
    let plan = plan(true, &[]);
    let order = order(&plan, ALL);
    let mut lander =
        Lander::new(&plan, &order, &[false; 4], LandOptions::default()).expect("lander");
    let LandCommand::Combine { commits } = lander.start() else {
        panic!("expected a fold first");
    };
    assert_eq!(commits.len(), 4);
    // b (index 1) merges on a alone but not here; c is stacked on it.
    let cmd = lander.handle(LandEvent::Combined(Err(CombineConflict {
        at: 1,
        paths: vec!["src/x".into()],
    })));
    let LandCommand::Combine { commits } = cmd else {
        panic!("expected a second fold, got {cmd:?}");
    };
    assert_eq!(commits, vec![id("a"), id("d")]);
    let cmd = lander.handle(LandEvent::Combined(Ok(fold(&commits))));
    assert!(
        matches!(cmd, LandCommand::Verify { prefix: 2, .. }),
        "{cmd:?}"
    );
    let cmd = lander.handle(LandEvent::Verified {
        prefix: 2,
        passed: true,
    });
    assert!(matches!(cmd, LandCommand::Push { .. }));
    let report = report(lander.handle(LandEvent::Pushed(PushOutcome::Updated)));
    assert_eq!(
        report.left_out,
        vec![
            (
                item(&plan, "b"),
                LeftOut::CombinationConflict {
                    paths: vec!["src/x".into()]
                }
            ),
            (
                item(&plan, "c"),
                LeftOut::Below {
                    item: item(&plan, "b")
                }
            ),
        ]
    );
}

#[test]
fn a_moved_branch_respeculates_until_retries_run_out() {
    let plan = plan(false, &[]);
    let order = order(&plan, ALL);
    let options = LandOptions {
        retries_left: 1,
        ..LandOptions::default()
    };
    let mut lander = Lander::new(&plan, &order, &[false; 4], options).expect("lander");
    let moved = PushOutcome::Moved {
        now: Some(id("other")),
    };
    let (cmd, _) = run(&mut lander, |_| true, vec![moved.clone()]);
    assert_eq!(cmd, LandCommand::Respeculate { now: id("other") });

    let mut last = Lander::new(&plan, &order, &[false; 4], LandOptions::default()).expect("lander");
    let report = report(run(&mut last, |_| true, vec![moved]).0);
    assert_eq!(
        report.error,
        Some(LandFailure::BaseMoved {
            now: Some(id("other"))
        })
    );
    assert!(report.landed.is_empty() && report.tip.is_none());
    assert!(
        report
            .left_out
            .iter()
            .all(|(_, r)| *r == LeftOut::NotPushed)
    );
    assert_eq!(report.left_out.len(), 4);
}

#[test]
fn the_report_logged_before_a_push_is_the_one_a_landed_push_ends_with() {
    let plan = plan(true, &[]);
    let order = order(&plan, &["a", "b", "c"]);
    let failed = [false, false, false, true];
    let mut lander = Lander::new(&plan, &order, &failed, LandOptions::default()).expect("lander");
    assert_eq!(lander.report_if_pushed(), None);
    let LandCommand::Combine { commits } = lander.start() else {
        panic!("a fold first");
    };
    let cmd = lander.handle(LandEvent::Combined(Ok(fold(&commits))));
    assert!(matches!(cmd, LandCommand::Push { .. }), "{cmd:?}");
    let before = lander.report_if_pushed().expect("a report while pushing");
    let after = report(lander.handle(LandEvent::Pushed(PushOutcome::Updated)));
    assert_eq!(before, after);
}

#[test]
fn a_refused_push_changes_nothing_and_says_why() {
    let plan = plan(false, &[]);
    let order = order(&plan, ALL);
    let mut lander =
        Lander::new(&plan, &order, &[false; 4], LandOptions::default()).expect("lander");
    let refused = PushOutcome::Refused {
        reason: "protected branch".into(),
    };
    let report = report(run(&mut lander, |_| true, vec![refused]).0);
    assert_eq!(
        report.error,
        Some(LandFailure::Refused {
            reason: "protected branch".into()
        })
    );
    assert!(report.tip.is_none());
}

#[test]
fn a_dry_run_verifies_but_never_pushes() {
    let plan = plan(true, &[]);
    let order = order(&plan, ALL);
    let options = LandOptions {
        dry_run: true,
        retries_left: 3,
        ..LandOptions::default()
    };
    let mut lander = Lander::new(&plan, &order, &[false; 4], options).expect("lander");
    let (cmd, verified) = run(&mut lander, |_| true, Vec::new());
    assert_eq!(verified, vec![4]);
    let report = report(cmd);
    assert!(report.dry_run && report.all_landed());
    assert_eq!(report.tip, Some(state(&["a", "b", "c", "d"])));
}

#[test]
fn blocked_items_are_left_out_with_their_reason_and_nothing_else_runs() {
    let plan = plan(
        true,
        &[
            ("a", BlockReason::MergeConflict),
            ("d", BlockReason::Source),
        ],
    );
    let mut lander = Lander::new(&plan, &[], &[false; 4], LandOptions::default()).expect("lander");
    let report = report(lander.start());
    assert_eq!(
        report.left_out,
        vec![
            (
                item(&plan, "a"),
                LeftOut::Conflict {
                    paths: vec!["f".into()]
                }
            ),
            (item(&plan, "b"), LeftOut::Skipped),
            (item(&plan, "c"), LeftOut::Skipped),
            (item(&plan, "d"), LeftOut::Source),
        ]
    );
    assert_eq!(report.verify_runs, 0);
}

#[test]
fn answers_nobody_asked_for_are_ignored() {
    let plan = plan(true, &[]);
    let order = order(&plan, ALL);
    let mut lander =
        Lander::new(&plan, &order, &[false; 4], LandOptions::default()).expect("lander");
    let first = lander.start();
    let again = lander.handle(LandEvent::Pushed(PushOutcome::Updated));
    assert_eq!(first, again, "the same fold is asked for again");
}

#[test]
fn a_plan_without_source_cannot_land() {
    let plan = parse_plan(
        "version: 1\nname: p\ngates: [{ id: a, run: 'true' }]\n",
        PlanFormat::Yaml,
        "p.yaml",
        Path::new("/"),
    )
    .expect("plan");
    assert_eq!(
        Lander::new(&plan, &[], &[], LandOptions::default()).err(),
        Some(LandError::NoSource)
    );
}
