use std::time::Duration;

use gatehouse_proto::leader::not_leader;
use gatehouse_proto::v1;
use tonic::{Code, Status};

use super::*;
use crate::client::connect::parse_urls;
use crate::client::fake_plans::{FakeCoordinator, Script, dead_url};

const SEC: Duration = Duration::from_secs(1);

fn search(urls: &[&str]) -> Search {
    let urls: Vec<String> = urls.iter().map(|u| (*u).to_owned()).collect();
    Search::new(&urls)
}

fn try_(url: &str) -> Step {
    Step::Try(url.to_owned())
}

fn not_leader_failure(leader: Option<&str>) -> Failure {
    Failure::NotLeader {
        leader: leader.map(str::to_owned),
        message: "not the leader".into(),
    }
}

#[test]
fn the_list_is_walked_then_retried_with_growing_delays_until_the_budget_is_spent() {
    let budget = 10 * SEC;
    let mut s = search(&["a", "b"]);
    assert_eq!(s.next(Duration::ZERO, budget), try_("a"));
    s.failed("a", Failure::Connect("refused".into()));
    assert_eq!(s.next(Duration::ZERO, budget), try_("b"));
    s.failed("b", not_leader_failure(None));
    assert_eq!(s.next(Duration::ZERO, budget), Step::Wait(RETRY_FIRST));
    assert_eq!(s.next(Duration::ZERO, budget), try_("a"));
    assert_eq!(s.next(Duration::ZERO, budget), try_("b"));
    assert_eq!(s.next(SEC, budget), Step::Wait(2 * RETRY_FIRST));
    s.next(SEC, budget);
    s.next(SEC, budget);
    // The last wait never goes past the budget.
    assert_eq!(
        s.next(Duration::from_millis(9_950), budget),
        Step::Wait(Duration::from_millis(50))
    );
    s.next(budget, budget);
    s.next(budget, budget);
    assert_eq!(s.next(budget, budget), Step::GiveUp);
}

#[test]
fn a_zero_budget_still_tries_every_url_once() {
    let mut s = search(&["a", "b"]);
    assert_eq!(s.next(SEC, Duration::ZERO), try_("a"));
    assert_eq!(s.next(SEC, Duration::ZERO), try_("b"));
    assert_eq!(s.next(SEC, Duration::ZERO), Step::GiveUp);
}

#[test]
fn a_named_leader_is_tried_at_once_even_outside_the_list() {
    let mut s = search(&["a", "b"]);
    assert_eq!(s.next(Duration::ZERO, SEC), try_("a"));
    s.failed("a", not_leader_failure(Some("http://leader:1")));
    assert_eq!(s.next(Duration::ZERO, SEC), try_("http://leader:1"));
    // The leader is gone too: the list goes on where it was.
    s.failed("http://leader:1", Failure::Connect("refused".into()));
    assert_eq!(s.next(Duration::ZERO, SEC), try_("b"));
}

#[test]
fn coordinators_naming_each_other_are_followed_a_bounded_number_of_times() {
    let mut s = search(&["a", "b"]);
    let mut tries = 0;
    loop {
        match s.next(Duration::ZERO, SEC) {
            Step::Try(url) => {
                tries += 1;
                assert!(tries < 50, "spins");
                let other = if url == "a" { "b" } else { "a" };
                s.failed(&url, not_leader_failure(Some(other)));
            }
            Step::Wait(_) => break,
            Step::GiveUp => panic!("gave up within the budget"),
        }
    }
    assert_eq!(
        tries,
        2 + MAX_REDIRECTS as usize,
        "the list plus the redirects"
    );
}

#[test]
fn a_preferred_url_goes_first() {
    let mut s = search(&["a"]);
    s.prefer("http://hint:1".into());
    assert_eq!(s.next(Duration::ZERO, SEC), try_("http://hint:1"));
    assert_eq!(s.next(Duration::ZERO, SEC), try_("a"));
}

#[test]
fn giving_up_names_the_urls_and_the_last_reason() {
    let mut s = search(&["http://a:1", "http://b:2"]);
    s.failed("http://a:1", Failure::Connect("connection refused".into()));
    match s.give_up(30 * SEC) {
        ClientError::Unreachable {
            urls,
            reason,
            after,
        } => {
            assert_eq!(urls, ["http://a:1", "http://b:2"]);
            assert_eq!(reason, "http://a:1: connection refused");
            assert_eq!(after, 30 * SEC);
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
    let mut s = search(&["http://a:1"]);
    s.failed("http://a:1", not_leader_failure(None));
    let e = s.give_up(30 * SEC);
    assert!(matches!(e, ClientError::NoLeader { .. }), "{e:?}");
    assert!(
        e.message().contains("http://a:1: not the leader"),
        "{}",
        e.message()
    );
}

#[test]
fn retry_delays_double_up_to_the_cap() {
    let mut backoff = retry_backoff();
    let delays: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).collect();
    assert_eq!(delays[0], RETRY_FIRST);
    assert_eq!(delays[1], 2 * RETRY_FIRST);
    assert_eq!(delays[3], 8 * RETRY_FIRST);
    assert_eq!(delays[39], RETRY_MAX);
}

#[test]
fn only_answers_that_accepted_nothing_resend_a_submit() {
    let hinted = not_leader(Some("http://leader:7700/"));
    for resend in [Resend::IfNotAccepted, Resend::Idempotent] {
        assert_eq!(
            classify(&hinted, resend),
            Some(Failure::NotLeader {
                leader: Some("http://leader:7700".into()),
                message: hinted.message().into(),
            })
        );
        assert!(matches!(
            classify(&not_leader(None), resend),
            Some(Failure::NotLeader { leader: None, .. })
        ));
        assert_eq!(
            classify(&Status::invalid_argument("bad plan"), resend),
            None
        );
        assert_eq!(classify(&Status::not_found("no plan"), resend), None);
    }
    let unusable = not_leader(Some("ftp://elsewhere"));
    assert!(matches!(
        classify(&unusable, Resend::IfNotAccepted),
        Some(Failure::NotLeader { leader: None, .. })
    ));

    // Unavailable, or broken in transport: the submit may have been accepted.
    let shutting_down = Status::unavailable("shutting down");
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
    let broken = Status::from_error(Box::new(io));
    assert_eq!(broken.code(), Code::Unknown);
    for status in [&shutting_down, &broken] {
        assert_eq!(classify(status, Resend::IfNotAccepted), None, "{status:?}");
        assert!(
            matches!(
                classify(status, Resend::Idempotent),
                Some(Failure::Broken(_))
            ),
            "{status:?}"
        );
    }
    // A server's own error is final, even for a read.
    assert_eq!(classify(&Status::internal("bug"), Resend::Idempotent), None);
}

fn cluster(urls: &[&str], budget: Duration) -> Cluster {
    let urls = parse_urls(&urls.join(",")).expect("valid urls");
    Cluster::new(urls, budget, Default::default())
}

async fn submit(cluster: &Cluster) -> Result<(Coordinator, v1::SubmitPlanResponse), ClientError> {
    let call = cluster.call(
        Resend::IfNotAccepted,
        None,
        cluster.budget,
        SEC * 5,
        |mut client| async move { client.submit_plan(v1::SubmitPlanRequest::default()).await },
    );
    tokio::time::timeout(SEC * 20, call)
        .await
        .expect("the call ends in time")
}

async fn list_plans(
    cluster: &Cluster,
) -> Result<(Coordinator, v1::ListPlansResponse), ClientError> {
    let call = cluster.call(
        Resend::Idempotent,
        None,
        cluster.budget,
        SEC * 5,
        |mut client| async move { client.list_plans(v1::ListPlansRequest {}).await },
    );
    tokio::time::timeout(SEC * 20, call)
        .await
        .expect("the call ends in time")
}

#[tokio::test]
async fn a_follower_sends_the_call_to_the_leader_it_names() {
    let leader = FakeCoordinator::start(Script::default()).await;
    let follower = FakeCoordinator::start(Script {
        follower_of: Some(Some(leader.url.clone())),
        ..Script::default()
    })
    .await;
    // Only the follower is listed, and no retry is allowed: the redirect does it.
    let (coord, resp) = submit(&cluster(&[&follower.url], Duration::ZERO))
        .await
        .expect("submitted through the redirect");
    assert_eq!(resp.plan_id, "p-1");
    assert_eq!(coord.url, leader.url);
    assert_eq!(follower.count("SubmitPlan"), 1);
    assert_eq!(leader.count("SubmitPlan"), 1, "accepted exactly once");
    follower.stop().await;
    leader.stop().await;
}

#[tokio::test]
async fn calls_wait_out_an_election_and_pass_unreachable_urls() {
    let dead = dead_url().await;
    let electing = FakeCoordinator::start(Script {
        electing: 3,
        ..Script::default()
    })
    .await;
    let (coord, _) = submit(&cluster(&[&dead, &electing.url], 10 * SEC))
        .await
        .expect("submitted once a leader was elected");
    assert_eq!(coord.url, electing.url);
    assert_eq!(
        electing.count("SubmitPlan"),
        4,
        "three refusals, then accepted"
    );
    electing.stop().await;
}

#[tokio::test]
async fn a_submit_is_not_resent_after_an_answer_that_may_have_accepted_it() {
    let closing = FakeCoordinator::start(Script {
        unavailable: true,
        ..Script::default()
    })
    .await;
    let c = cluster(&[&closing.url], 10 * SEC);
    let err = submit(&c).await.expect_err("unavailable");
    assert!(
        matches!(&err, ClientError::MaybeAccepted { url, .. } if *url == closing.url),
        "{err:?}"
    );
    assert!(err.message().contains("shutting down"), "{}", err.message());
    assert_eq!(closing.count("SubmitPlan"), 1, "never re-sent");

    // A read is re-sent until the failover timeout runs out.
    let c = cluster(&[&closing.url], Duration::from_millis(400));
    let err = list_plans(&c).await.expect_err("still unavailable");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(
        closing.count("ListPlans") >= 2,
        "re-sent: {:?}",
        closing.calls()
    );
    closing.stop().await;
}

#[tokio::test]
async fn nothing_reachable_fails_after_the_budget_naming_the_urls() {
    let a = dead_url().await;
    let b = dead_url().await;
    let c = cluster(&[&a, &b], Duration::from_millis(300));
    let err = list_plans(&c).await.expect_err("nothing listens");
    let message = err.message();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(message.contains(&a) && message.contains(&b), "{message}");
    assert_eq!(err.exit_code(), crate::EXIT_UNREACHABLE);
}

#[test]
fn a_plaintext_leader_named_over_tls_is_not_followed() {
    let not_leader = |leader: &str| Failure::NotLeader {
        leader: Some(leader.to_string()),
        message: "not the leader".into(),
    };
    let followed = |from: &str, to: &str| match no_downgrade(from, not_leader(to)) {
        Failure::NotLeader { leader, .. } => leader,
        other => panic!("{other:?}"),
    };
    assert_eq!(followed("https://a:1", "http://b:1"), None);
    assert_eq!(followed("https://a:1", "b:1"), None);
    assert_eq!(
        followed("https://a:1", "https://b:1").as_deref(),
        Some("https://b:1")
    );
    assert_eq!(
        followed("http://a:1", "http://b:1").as_deref(),
        Some("http://b:1")
    );
    assert_eq!(
        followed("http://a:1", "https://b:1").as_deref(),
        Some("https://b:1")
    );
    match no_downgrade("https://a:1", not_leader("http://b:1")) {
        Failure::NotLeader { message, .. } => {
            assert!(message.contains("is not https"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
