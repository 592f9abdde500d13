//! The counters `mlmesh analyze` decides on: users once per user (the
//! randomization unit), a user's first outcome per version, and the model
//! call's latency per version.

mod common;

use common::*;
use mesh_kit::metrics::names;
use serde_json::{Value, json};

#[tokio::test]
async fn users_and_their_outcomes_are_counted_once_each() {
    let up = Upstreams::start().await;
    let app = frontend(&up.args()); // 10% canary
    let users = 1..=60u32;
    let mut offers: Vec<Value> = Vec::new();
    let mut candidates = 0;
    for round in 0..3 {
        for u in users.clone() {
            let a = get(&app, &format!("/predict?user_id={u}")).await;
            assert_eq!(a.status, 200, "{}", a.json);
            if round == 0 && a.json["cohort"] == "candidate" {
                candidates += 1;
            }
            if a.json["decision"] == "offer" {
                offers.push(a.json);
            }
        }
    }
    // Two beta users, twice each: forced, not randomized.
    for _ in 0..2 {
        for u in [5001, 5002] {
            let a = get(&app, &format!("/predict?user_id={u}&group=beta")).await;
            assert_eq!(a.json["assignment"], "beta-group");
        }
    }
    // Every offer answered: three decisions per offered user.
    for d in &offers {
        let body = json!({"decision_id": d["decision_id"], "outcome": "accepted"});
        assert_eq!(post_json(&app, "/feedback", &body).await.status, 200);
    }
    let offered_users = {
        let mut ids: Vec<&str> = offers
            .iter()
            .map(|d| d["user_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    assert!(
        offered_users > 0 && offers.len() == 3 * offered_users,
        "{} offers to {offered_users} users",
        offers.len()
    );

    let text = test_support::http::get_text(&app, "/metrics").await;
    let users_family = names::exposed(names::FRONTEND_USERS, "");
    let users_of = |cohort: &str, assignment: &str| {
        sample(
            &text,
            &users_family,
            &[("cohort", cohort), ("assignment", assignment)],
        )
        .value
    };
    assert_eq!(users_of("candidate", "bucket"), f64::from(candidates));
    assert_eq!(users_of("baseline", "bucket"), f64::from(60 - candidates));
    assert_eq!(users_of("candidate", "beta-group"), 2.0);

    let per_user = samples(&text, &names::exposed(names::FRONTEND_USER_OUTCOMES, ""));
    let total: f64 = per_user.iter().map(|s| s.value).sum();
    assert_eq!(
        total, offered_users as f64,
        "one outcome per user, not per decision"
    );
    let per_decision: f64 = samples(&text, &names::exposed(names::FRONTEND_OUTCOMES, ""))
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(per_decision, offers.len() as f64);

    // One latency observation per model call, under the answering version.
    let latency = samples(&text, &names::exposed(names::FRONTEND_MODEL_LATENCY, ""));
    let calls: f64 = latency.iter().map(|s| s.value).sum();
    assert_eq!(calls, 3.0 * 60.0 + 4.0);
    let v2 = sample(
        &text,
        &names::exposed(names::FRONTEND_MODEL_LATENCY, ""),
        &[("model_version", "v2")],
    );
    assert_eq!(v2.value, f64::from(3 * candidates + 4));
}

#[tokio::test]
async fn a_failing_model_call_is_timed_under_its_version() {
    let up = Upstreams::start().await;
    let mut args = up.args();
    args.canary_percent = 100;
    args.model_v2_url = Some(dead_url());
    let app = frontend(&args);
    let a = get(&app, "/predict?user_id=1").await;
    assert_eq!(a.json["degraded"], true, "{}", a.json);
    let text = test_support::http::get_text(&app, "/metrics").await;
    let s = sample(
        &text,
        &names::exposed(names::FRONTEND_MODEL_LATENCY, ""),
        &[("model_version", "v2")],
    );
    assert_eq!(s.value, 1.0);
}
