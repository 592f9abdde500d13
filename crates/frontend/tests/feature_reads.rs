//! `--feature-reads`: concurrent decisions sharing one feature-store call,
//! against the real feature store, and what happens when it will not batch.

mod common;

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use frontend::FeatureReads;
use frontend::metrics::FEATURE_READ_USERS;
use mesh_kit::metrics::names::exposed;
use mesh_kit::propagation::{COHORT_HEADER, USER_ID_HEADER};
use test_support::proxy::Recorder;
use tokio::task::JoinSet;

const BATCH_PATH: &str = "/v1/features:batch";

/// Each user's score, or the status when there is none, all asked at once
/// (one task each, as connections are served).
async fn decide_at_once(app: &Router, users: &[String]) -> BTreeMap<String, Result<f64, u16>> {
    let mut tasks = JoinSet::new();
    for user in users {
        let (app, user) = (app.clone(), user.clone());
        tasks.spawn(async move {
            let a = get(&app, &format!("/predict?user_id={user}")).await;
            let result = if a.status == StatusCode::OK {
                assert_eq!(a.json["degraded"], false, "{user}: {}", a.json);
                Ok(a.json["score"].as_f64().unwrap())
            } else {
                Err(a.status.as_u16())
            };
            (user, result)
        });
    }
    tasks.join_all().await.into_iter().collect()
}

/// `mlmesh_frontend_feature_read_users`: how many feature-store calls were made.
async fn store_calls(app: &Router) -> f64 {
    let text = test_support::http::get_text(app, "/metrics").await;
    sample(&text, &exposed(FEATURE_READ_USERS, ""), &[]).value
}

/// 60 customers of the seed file, then 5 the store does not know.
fn users() -> Vec<String> {
    (1..=60)
        .map(|i| (i * 97).to_string())
        .chain((0..5).map(|i| format!("ghost-{i}")))
        .collect()
}

#[tokio::test]
async fn concurrent_decisions_share_a_read_and_score_as_if_alone() {
    let up = Upstreams::start().await;
    let mut args = up.args();
    assert_eq!(args.feature_reads, FeatureReads::Auto);
    assert!(
        args.batches_feature_reads(),
        "direct mode batches by default"
    );
    let (to_batched, to_single) = (
        Recorder::start(&up.features.base()).await,
        Recorder::start(&up.features.base()).await,
    );
    args.feature_store_url = to_batched.base();
    let batched = frontend(&args);
    args.feature_store_url = to_single.base();
    args.feature_reads = FeatureReads::Single;
    let single = frontend(&args);

    let users = users();
    // The first read of each frontend learns the store's order (a batch
    // needs it), one at a time.
    for app in [&batched, &single] {
        let a = get(app, &format!("/predict?user_id={}", users[0])).await;
        assert_eq!(a.status, 200, "{}", a.json);
    }
    let shared = decide_at_once(&batched, &users).await;
    let alone = decide_at_once(&single, &users).await;
    // The same features give the same score, up to the model's own
    // batching (float sums in another order), as the reference tests allow.
    assert_eq!(shared.len(), alone.len());
    for (user, got) in &shared {
        match (got, &alone[user]) {
            (Ok(a), Ok(b)) => assert!((a - b).abs() < 1e-5, "{user}: {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{user}"),
        }
    }
    let unknown = shared.values().filter(|r| **r == Err(404)).count();
    assert_eq!(unknown, 5);

    let calls = store_calls(&batched).await;
    println!(
        "{} decisions at once: {calls} feature-store calls, the first read included",
        users.len()
    );
    assert!(
        calls <= users.len() as f64 / 4.0,
        "{} decisions at once made {calls} feature-store calls",
        users.len()
    );
    let seen = to_batched.seen();
    assert_eq!(seen.len() as f64, calls, "the metric counts every call");
    let batches: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "POST" && s.path == BATCH_PATH)
        .collect();
    assert!(!batches.is_empty(), "batched reads go to {BATCH_PATH}");
    for b in &batches {
        // A batch is no one user's: the mesh must not route it as theirs.
        assert!(!b.headers.contains_key(USER_ID_HEADER), "{:?}", b.headers);
        assert!(!b.headers.contains_key(COHORT_HEADER), "{:?}", b.headers);
        assert!(
            b.headers.contains_key("traceparent"),
            "traced as the leader's"
        );
    }
    let seen = to_single.seen();
    assert!(
        seen.iter().all(|s| s.method == "GET"),
        "single never batches"
    );
    assert_eq!(seen.len(), 1 + users.len());
    assert_eq!(store_calls(&single).await, seen.len() as f64);
}

#[tokio::test]
async fn mesh_mode_reads_one_by_one_unless_told() {
    let up = Upstreams::start().await;
    let mut args = up.args();
    args.routing = frontend::RoutingMode::Mesh;
    args.model_url = up.v1.base();
    assert!(
        !args.batches_feature_reads(),
        "per-user routing in the mesh"
    );
    let app = frontend(&args);
    let users = users();
    decide_at_once(&app, &users).await;
    assert_eq!(store_calls(&app).await, users.len() as f64);

    args.feature_reads = FeatureReads::Batched;
    assert!(args.batches_feature_reads());
    let app = frontend(&args);
    get(&app, &format!("/predict?user_id={}", users[0])).await;
    decide_at_once(&app, &users).await;
    assert!(store_calls(&app).await < users.len() as f64);
}

/// The real feature store behind a front that answers batches itself.
async fn store_whose_batches_answer(
    status: StatusCode,
    up: &Upstreams,
) -> test_support::serve::Served {
    let store = up.features.base();
    let client = reqwest::Client::new();
    let app = Router::new()
        .route(
            BATCH_PATH,
            axum::routing::post(move || async move {
                (
                    status,
                    axum::Json(serde_json::json!({"error": "no batches here"})),
                )
            }),
        )
        .fallback(move |req: Request<Body>| {
            let (client, store) = (client.clone(), store.clone());
            async move {
                let url = format!("{store}{}", req.uri());
                let res = client.get(url).send().await.unwrap();
                let status = res.status().as_u16();
                let ct = res.headers().get("content-type").cloned();
                let fp = res
                    .headers()
                    .get(mesh_kit::propagation::FEATURE_FINGERPRINT_HEADER)
                    .cloned();
                let mut out = axum::response::Response::new(Body::from(res.bytes().await.unwrap()));
                *out.status_mut() = StatusCode::from_u16(status).unwrap();
                if let Some(ct) = ct {
                    out.headers_mut().insert("content-type", ct);
                }
                if let Some(fp) = fp {
                    out.headers_mut()
                        .insert(mesh_kit::propagation::FEATURE_FINGERPRINT_HEADER, fp);
                }
                out
            }
        });
    test_support::serve::serve(app).await
}

/// A frontend (`mlmesh up`'s settings) whose store answers batches with
/// `status`, after its first read has taught it the store's order; what
/// it needs kept alive beside it.
async fn frontend_whose_batches_answer(
    status: StatusCode,
) -> (Router, Upstreams, test_support::serve::Served) {
    let up = Upstreams::start().await;
    let store = store_whose_batches_answer(status, &up).await;
    let mut args = up.args();
    args.feature_store_url = store.base();
    let app = frontend(&args);
    get(&app, &format!("/predict?user_id={}", users()[0])).await;
    (app, up, store)
}

#[tokio::test]
async fn a_store_that_refuses_batches_is_read_one_by_one() {
    // A store from before the binary batch form refuses its fields: 400.
    let (app, _up, _store) = frontend_whose_batches_answer(StatusCode::BAD_REQUEST).await;
    let users = users();
    let first = decide_at_once(&app, &users).await;
    let again = decide_at_once(&app, &users).await;
    assert_eq!(
        first.values().map(Result::is_ok).collect::<Vec<_>>(),
        again.values().map(Result::is_ok).collect::<Vec<_>>()
    );
    let scored = first.values().filter(|r| r.is_ok()).count();
    assert_eq!(
        scored,
        users.len() - 5,
        "every known user scored: {first:?}"
    );
}

#[tokio::test]
async fn a_failed_batch_degrades_each_of_its_decisions() {
    let (app, _up, _store) = frontend_whose_batches_answer(StatusCode::SERVICE_UNAVAILABLE).await;
    let users = users();
    let mut tasks = JoinSet::new();
    for user in &users {
        let (app, user) = (app.clone(), user.clone());
        tasks.spawn(async move { get(&app, &format!("/predict?user_id={user}")).await });
    }
    let answers = tasks.join_all().await;
    assert!(
        store_calls(&app).await < users.len() as f64,
        "some reads were batched"
    );
    // Those that read alone got the store's answer (a score, or 404 for a
    // ghost); those in a batch its 503, each degraded with the same reason.
    let degraded = answers
        .iter()
        .filter(|a| a.json["degraded"] == true)
        .count();
    assert!(degraded > 1, "a failed batch degrades its decisions");
    for a in &answers {
        if a.json["degraded"] == true {
            assert_eq!(a.status, 200, "{}", a.json);
            // As a single read answered 503 would say.
            assert_eq!(a.json["reason"], "feature store failed", "{}", a.json);
        } else {
            assert!(a.status == 200 || a.status == 404, "{}", a.json);
        }
    }
}
