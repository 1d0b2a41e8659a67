use super::*;

fn text(write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    write(&mut out).expect("writes to a Vec");
    String::from_utf8(out).expect("utf-8")
}

fn gate(id: &str, item: &str, state: v1::GateState, attempt: u32) -> v1::GateStatus {
    v1::GateStatus {
        gate_id: id.into(),
        item_id: item.into(),
        state: state as i32,
        attempt,
        ..Default::default()
    }
}

fn running_plan() -> v1::GetPlanResponse {
    let mut passed = gate("pr-1/lint", "pr-1", v1::GateState::Passed, 1);
    passed.worker_id = "w-1".into();
    passed.result = Some(v1::AttemptResult {
        kind: v1::ExitKind::Exited as i32,
        duration_ms: 1500,
        ..Default::default()
    });
    let mut cached = gate("pr-1/test", "pr-1", v1::GateState::Passed, 0);
    cached.cached = true;
    v1::GetPlanResponse {
        plan: Some(v1::PlanInfo {
            plan_id: "p-7".into(),
            name: "train".into(),
            state: v1::PlanState::Running as i32,
            counts: Some(v1::Counts {
                total: 3,
                passed: 2,
                cached: 1,
                ..Default::default()
            }),
            submitted_unix_ms: 1_000,
            finished_unix_ms: 0,
        }),
        gates: vec![
            passed,
            cached,
            gate("pr-2/test", "pr-2", v1::GateState::Running, 1),
        ],
        levels: vec![
            v1::Level {
                ids: vec!["pr-1".into()],
            },
            v1::Level {
                ids: vec!["pr-2".into()],
            },
        ],
        summary: None,
        source: None,
        ..Default::default()
    }
}

#[test]
fn a_source_plan_s_status_shows_each_item_s_commits_or_why_it_has_none() {
    let mut p = running_plan();
    p.source = Some(v1::SourceInfo {
        repo: "https://***@git.example.com/app.git".into(),
        base_ref: "main".into(),
        base_commit: "a".repeat(40),
        base_tree: "e".repeat(40),
        error: String::new(),
        items: vec![
            v1::ItemSource {
                item_id: "pr-1".into(),
                r#ref: "feature/x".into(),
                commit: "b".repeat(40),
                speculative_commit: "c".repeat(40),
                tree: "f".repeat(40),
                ..Default::default()
            },
            v1::ItemSource {
                item_id: "pr-2".into(),
                r#ref: "clash".into(),
                commit: "d".repeat(40),
                reason: "merge_conflict".into(),
                error: "conflicts in a.txt".into(),
                paths: vec!["a.txt".into()],
                ..Default::default()
            },
        ],
    });
    let mut out = Vec::new();
    status_text(&mut out, &p, 5_000).expect("write");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(
        text.contains("source https://***@git.example.com/app.git @ main = aaaaaaaaaaaa"),
        "{text}"
    );
    assert!(
        text.contains("pr-1  feature/x  bbbbbbbbbbbb -> cccccccccccc (speculative merge)"),
        "{text}"
    );
    assert!(
        text.contains("pr-2  clash      dddddddddddd merge_conflict: conflicts in a.txt"),
        "{text}"
    );
    let json = status_json(&p);
    assert_eq!(
        json["source"]["items"][0]["speculative_commit"],
        "c".repeat(40)
    );
    assert_eq!(json["source"]["items"][1]["paths"][0], "a.txt");
    assert!(json["source"].get("event").is_none());
}

#[test]
fn status_shows_every_gate_the_counts_and_the_merge_order_to_come() {
    let out = text(|o| status_text(o, &running_plan(), 124_000));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "plan p-7 (train): running, submitted 2m03s ago");
    assert_eq!(
        lines[1],
        "GATE       STATE    ATTEMPT  WORKER  CACHED  RESULT"
    );
    assert_eq!(
        lines[2],
        "pr-1/lint  passed   1        w-1     no      exit 0, 1.5s"
    );
    assert_eq!(lines[3], "pr-1/test  passed   -        -       yes");
    assert_eq!(lines[4], "pr-2/test  running  1        -       no");
    assert_eq!(lines[5], "gates: 3 total, 2 passed (1 cached)");
    assert_eq!(lines[6], "merge order: (known when the plan ends)");
}

#[test]
fn status_of_a_finished_plan_uses_its_summary() {
    let mut p = running_plan();
    p.summary = Some(v1::PlanSummary {
        outcome: v1::PlanOutcome::Failed as i32,
        counts: Some(v1::Counts {
            total: 3,
            passed: 2,
            failed: 1,
            ..Default::default()
        }),
        merge_order: vec!["pr-1".into()],
        duration_ms: 2000,
        ..Default::default()
    });
    let out = text(|o| status_text(o, &p, 124_000));
    assert!(
        out.ends_with("gates: 3 total, 2 passed, 1 failed\nmerge order: pr-1\nfailed in 2.0s\n"),
        "{out}"
    );
    let v = status_json(&p);
    assert_eq!(v["plan_id"], "p-7");
    assert_eq!(v["state"], "running");
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["counts"]["failed"], 1);
    assert_eq!(v["merge_order"], json!(["pr-1"]));
    assert_eq!(v["levels"], json!([["pr-1"], ["pr-2"]]));
    assert_eq!(v["finished_unix_ms"], Value::Null);
    assert_eq!(v["gates"][0]["exit_code"], 0);
    assert_eq!(v["gates"][0]["duration_ms"], 1500);
    assert_eq!(v["gates"][1]["worker"], Value::Null);
    assert_eq!(v["gates"][2]["state"], "running");
}

#[test]
fn plans_and_workers_are_tables_or_one_object() {
    let info = running_plan().plan.expect("info");
    let out = text(|o| plans_text(o, std::slice::from_ref(&info), 61_000));
    assert_eq!(
        out,
        "ID   NAME   STATE    PASSED  FAILED  AGE\np-7  train  running  2/3     0       1m00s\n"
    );
    assert_eq!(plans_json(&[info])["plans"][0]["counts"]["cached"], 1);
    assert_eq!(text(|o| plans_text(o, &[], 0)), "no plans\n");

    let w = v1::WorkerStatus {
        worker_id: "w-1".into(),
        address: "10.0.0.2:7701".into(),
        state: v1::WorkerState::Ready as i32,
        slots_total: 8,
        slots_used: 2,
        memory_total_bytes: 16 << 30,
        memory_used_bytes: 3 << 29,
        last_heartbeat_age_ms: 800,
        ..Default::default()
    };
    let out = text(|o| workers_text(o, std::slice::from_ref(&w)));
    assert_eq!(
        out,
        "ID   ADDRESS        STATE  SLOTS  MEMORY      HEARTBEAT\nw-1  10.0.0.2:7701  ready  2/8    1.5Gi/16Gi  800ms ago\n"
    );
    let v = workers_json(&[w]);
    assert_eq!(v["workers"][0]["slots_used"], 2);
    assert_eq!(v["workers"][0]["state"], "ready");
    assert_eq!(text(|o| workers_text(o, &[])), "no workers\n");
}
