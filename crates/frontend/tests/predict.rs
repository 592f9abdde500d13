//! The prediction flow against real upstreams: features from the feature
//! store, scores from the cohort's model, sticky assignment, beta group.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use frontend::cohort::Assigner;
use mesh_kit::fault::FaultArgs;
use mesh_kit::propagation::SERVED_BY_HEADER;
use serde_json::{Value, json};
use test_support::http::send;

fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn scores_match_the_offline_reference_for_each_users_model() {
    let up = Upstreams::start().await;
    let args = up.args();
    let app = frontend(&args);
    let assigner = Assigner::new(args.experiment_salt.clone(), args.canary_percent);
    let reference = reference();
    for (i, user) in reference.user_ids.iter().enumerate() {
        let a = get(&app, &format!("/predict?user_id={user}")).await;
        assert_eq!(a.status, 200, "{}", a.json);
        let expected_cohort = assigner.assign(user, false).cohort;
        let version = match expected_cohort {
            frontend::cohort::Cohort::Baseline => "v1",
            frontend::cohort::Cohort::Candidate => "v2",
        };
        assert_eq!(a.json["cohort"], expected_cohort.as_str());
        assert_eq!(a.json["model_version"], version, "user {user}");
        assert_eq!(a.headers["x-model-version"], version);
        let score = a.json["score"].as_f64().unwrap();
        let want = reference.outputs[version].probability[i];
        assert!(
            (score - want).abs() < 1e-5,
            "user {user}: {score} vs onnxruntime {want}"
        );
        let decision = if score >= args.threshold {
            "offer"
        } else {
            "no_offer"
        };
        assert_eq!(a.json["decision"], decision);
        assert_eq!(a.json["degraded"], false);
        assert_eq!(a.json["user_id"], user.as_str());
        assert!(a.json["decision_id"].as_str().unwrap().contains('.'));
        let trace_id = a.json["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32);
        assert_eq!(
            a.json["request_id"],
            a.headers["x-request-id"].to_str().unwrap()
        );
    }
}

#[tokio::test]
async fn the_user_id_may_come_from_query_body_number_or_header() {
    let up = Upstreams::start().await;
    let app = frontend(&up.args());
    let by_query = get(&app, "/predict?user_id=42").await;
    let by_body = post_json(&app, "/predict", &json!({"user_id": "42"})).await;
    let by_number = post_json(&app, "/predict", &json!({"user_id": 42})).await;
    let by_header = send(&app, get_with("/predict", &[("x-user-id", "42")])).await;
    let by_header_post = send(
        &app,
        Request::post("/predict")
            .header("x-user-id", "42")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    for a in [&by_body, &by_number, &by_header, &by_header_post] {
        assert_eq!(a.status, 200, "{}", a.json);
        for field in ["user_id", "score", "cohort", "model_version", "decision"] {
            assert_eq!(a.json[field], by_query.json[field], "{field}");
        }
    }
    // An explicit user id beats the header.
    let both = send(&app, get_with("/predict?user_id=7", &[("x-user-id", "42")])).await;
    assert_eq!(both.json["user_id"], "7");
}

#[tokio::test]
async fn a_user_sees_one_version_and_beta_forces_the_candidate() {
    let up = Upstreams::start().await;
    let mut args = up.args();
    args.canary_percent = 30;
    let app = frontend(&args);
    let mut seen = std::collections::HashMap::<String, Value>::new();
    for round in 0..3 {
        for user in 1..=60 {
            let a = get(&app, &format!("/predict?user_id={user}")).await;
            let v = a.json["model_version"].clone();
            let first = seen.entry(user.to_string()).or_insert_with(|| v.clone());
            assert_eq!(*first, v, "user {user} switched version in round {round}");
        }
    }
    let candidates = seen.values().filter(|v| *v == "v2").count();
    assert!(
        (8..=30).contains(&candidates),
        "{candidates} of 60 on v2 at 30%"
    );

    let baseline_user = seen.iter().find(|(_, v)| *v == "v1").unwrap().0.clone();
    let forced = send(
        &app,
        get_with(
            &format!("/predict?user_id={baseline_user}"),
            &[("x-user-group", "beta")],
        ),
    )
    .await;
    assert_eq!(forced.json["model_version"], "v2");
    assert_eq!(forced.json["cohort"], "candidate");
    assert_eq!(forced.json["assignment"], "beta-group");
    let cookie = forced.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("mlmesh_group=beta;"), "{cookie}");

    // A browser sends the cookie back instead of the header.
    let by_cookie = send(
        &app,
        get_with(
            &format!("/predict?user_id={baseline_user}"),
            &[("cookie", "theme=dark; mlmesh_group=beta")],
        ),
    )
    .await;
    assert_eq!(by_cookie.json["model_version"], "v2");
    assert!(by_cookie.headers.get("set-cookie").is_none());

    // ?group=none leaves the group and clears the cookie.
    let left = send(
        &app,
        get_with(
            &format!("/predict?user_id={baseline_user}&group=none"),
            &[("cookie", "mlmesh_group=beta")],
        ),
    )
    .await;
    assert_eq!(left.json["model_version"], "v1");
    assert!(
        left.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn unknown_users_are_404_and_decisions_are_counted_by_version() {
    let up = Upstreams::start().await;
    let app = frontend(&up.args());
    let missing = get(&app, "/predict?user_id=999999").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json["error"].as_str().unwrap().contains("999999"));

    let mut by_version = std::collections::HashMap::<(String, String), u64>::new();
    for user in 1..=40 {
        let a = get(&app, &format!("/predict?user_id={user}")).await;
        *by_version
            .entry((
                a.json["model_version"].as_str().unwrap().to_owned(),
                a.json["decision"].as_str().unwrap().to_owned(),
            ))
            .or_default() += 1;
    }
    let text = test_support::http::get_text(&app, "/metrics").await;
    for ((version, decision), n) in &by_version {
        let cohort = if version == "v2" {
            "candidate"
        } else {
            "baseline"
        };
        let got = sample(
            &text,
            "mlmesh_frontend_decisions",
            &[
                ("model_version", version),
                ("cohort", cohort),
                ("decision", decision),
                ("degraded", "false"),
            ],
        )
        .value;
        assert_eq!(got, *n as f64, "{version}/{decision}");
    }
    assert_eq!(
        sample(&text, "mlmesh_frontend_canary_percent", &[]).value,
        10.0
    );
    let fs_calls = sample(
        &text,
        "mlmesh_frontend_upstream_request_duration_seconds",
        &[("upstream", "feature-store")],
    )
    .value;
    assert_eq!(fs_calls, 41.0, "40 users + 1 unknown");
}

#[tokio::test]
async fn shadow_traffic_reaches_the_shadow_model_marked_as_shadow() {
    let up = Upstreams::start().await;
    let shadow = model("v2", FaultArgs::default()).await;
    let mut args = up.args();
    args.shadow_url = Some(shadow.base());
    let app = frontend(&args);
    let n = 20;
    for user in 1..=n {
        let a = get(&app, &format!("/predict?user_id={user}")).await;
        assert_eq!(a.status, 200);
    }
    // Mirroring is fire-and-forget: wait until the shadow has seen them all.
    let mut shadowed = 0.0;
    for _ in 0..100 {
        let text = test_support::http::fetch_text(&shadow.url("/metrics")).await;
        shadowed = samples(&text, "mlmesh_inference_requests")
            .iter()
            .filter(|s| s.labels.get("traffic").map(String::as_str) == Some("shadow"))
            .map(|s| s.value)
            .sum();
        if shadowed >= f64::from(n) {
            break;
        }
        tokio::time::sleep(timeout(50)).await;
    }
    assert_eq!(
        shadowed,
        f64::from(n),
        "every live call mirrored as shadow traffic"
    );
    let text = test_support::http::get_text(&app, "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "mlmesh_frontend_shadow_requests",
            &[("result", "sent")]
        )
        .value,
        f64::from(n)
    );
}

#[tokio::test]
async fn every_answer_names_the_replicas_that_served_it() {
    let features = feature_store_on(named("feature-store-7f9c4-a1")).await;
    let v1 = model_on("v1", named("model-inference-v1-5d8b-b2")).await;
    let v2 = model_on("v2", named("model-inference-v2-6c7d-c3")).await;
    let args = frontend::FrontendArgs::direct(features.base(), v1.base(), v2.base());
    let app = frontend::app(&args, named("frontend-6b5f-d4")).expect("frontend starts");
    let assigner = Assigner::new(args.experiment_salt.clone(), args.canary_percent);
    let mut seen = std::collections::BTreeSet::new();
    for user in reference().user_ids {
        let a = get(&app, &format!("/predict?user_id={user}")).await;
        assert_eq!(a.status, 200, "{}", a.json);
        let model = match assigner.assign(&user, false).cohort {
            frontend::cohort::Cohort::Baseline => "model-inference-v1-5d8b-b2",
            frontend::cohort::Cohort::Candidate => "model-inference-v2-6c7d-c3",
        };
        assert_eq!(
            a.json["served_by"],
            json!({
                "frontend": "frontend-6b5f-d4",
                "feature_store": "feature-store-7f9c4-a1",
                "model_inference": model,
            }),
            "user {user}"
        );
        assert_eq!(a.headers[SERVED_BY_HEADER], "frontend-6b5f-d4");
        seen.insert(model);
    }
    assert_eq!(seen.len(), 2, "the reference users cover both cohorts");
    // Errors and probes name the replica too: a 404 seen through the mesh
    // says which pod gave it.
    let missing = get(&app, "/predict?user_id=999999").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.headers[SERVED_BY_HEADER], "frontend-6b5f-d4");
    let probe = get(&app, "/healthz").await;
    assert_eq!(probe.headers[SERVED_BY_HEADER], "frontend-6b5f-d4");

    // Degraded: the feature store answered, no model did.
    let args = frontend::FrontendArgs::direct(features.base(), dead_url(), dead_url());
    let app = frontend::app(&args, named("frontend-6b5f-d4")).expect("frontend starts");
    let a = get(&app, "/predict?user_id=42").await;
    assert_eq!(a.json["degraded"], true, "{}", a.json);
    assert_eq!(
        a.json["served_by"],
        json!({"frontend": "frontend-6b5f-d4", "feature_store": "feature-store-7f9c4-a1", "model_inference": null})
    );

    // Outside Kubernetes nothing is named and no header is sent.
    let up = Upstreams::start().await;
    let a = get(&frontend(&up.args()), "/predict?user_id=42").await;
    assert_eq!(
        a.json["served_by"],
        json!({"frontend": null, "feature_store": null, "model_inference": null})
    );
    assert!(a.headers.get(SERVED_BY_HEADER).is_none());
}
