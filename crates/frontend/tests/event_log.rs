//! The event log from the frontend, against a real `redis-server`: every
//! decision is an `exposure` (user, cohort, assignment, the version that
//! answered, the request id the models saw), every recorded feedback an
//! `outcome` of that decision's request id.

mod common;

use common::*;
use events::Event;
use serde_json::{Value, json};
use test_support::redis_server::RedisServer;

async fn logged(redis: &RedisServer, want: usize) -> Vec<Event> {
    test_support::event_log::wait_for(&redis.url(), "the events", |e| e.len() >= want).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_exposures_and_feedback_is_an_outcome_of_the_same_request() {
    let redis = RedisServer::start();
    let up = Upstreams::start().await;
    let mut args = up.args();
    args.canary_percent = 50;
    args.events.event_log_url = Some(redis.url());
    let app = frontend(&args);
    let mut answers: Vec<Value> = Vec::new();
    for user in 1..=40 {
        let a = get(&app, &format!("/predict?user_id={user}")).await;
        assert_eq!(a.status, 200, "{}", a.json);
        answers.push(a.json);
    }
    let offer = answers
        .iter()
        .find(|a| a["decision"] == "offer")
        .expect("an offer among 40 users")
        .clone();
    let body = json!({"decision_id": offer["decision_id"], "outcome": "accepted"});
    let fb = post_json(&app, "/feedback", &body).await;
    assert_eq!(fb.json["recorded"], true, "{}", fb.json);
    // A retry is not a second outcome.
    post_json(&app, "/feedback", &body).await;

    let events = logged(&redis, 41).await;
    let exposures: Vec<&events::Exposure> = events
        .iter()
        .filter_map(|e| match e {
            Event::Exposure(x) => Some(x),
            _ => None,
        })
        .collect();
    assert_eq!(exposures.len(), 40);
    for (x, a) in exposures.iter().zip(&answers) {
        assert_eq!(x.user_id, a["user_id"].as_str().unwrap());
        assert_eq!(x.request_id, a["request_id"].as_str().unwrap());
        assert!(!x.request_id.is_empty());
        assert_eq!(x.cohort, a["cohort"].as_str().unwrap());
        assert_eq!(x.version.as_deref(), a["model_version"].as_str());
    }
    let cohorts: std::collections::BTreeSet<&str> =
        exposures.iter().map(|x| x.cohort.as_str()).collect();
    assert_eq!(cohorts.len(), 2, "both cohorts exposed: {cohorts:?}");

    let outcomes: Vec<&events::Outcome> = events
        .iter()
        .filter_map(|e| match e {
            Event::Outcome(o) => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let o = outcomes[0];
    assert_eq!(o.request_id, offer["request_id"].as_str().unwrap());
    assert_eq!(o.user_id, offer["user_id"].as_str().unwrap());
    assert_eq!(o.version, offer["model_version"].as_str().unwrap());
    assert!(o.accepted);
}
