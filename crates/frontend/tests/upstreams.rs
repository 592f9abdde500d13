//! What crosses the wire to the upstreams, and what happens when they are
//! down, slow or failing: a fast degraded answer, never a hang or a 5xx.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use common::*;
use frontend::RoutingMode;
use mesh_kit::fault::FaultArgs;
use serde_json::Value;
use test_support::http::send;
use test_support::proxy::Recorder;

/// A user the canary keeps on the baseline (v1).
fn baseline_user(args: &frontend::FrontendArgs) -> String {
    let a = frontend::cohort::Assigner::new(args.experiment_salt.clone(), args.canary_percent);
    (1..)
        .map(|u: u32| u.to_string())
        .find(|u| a.assign(u, false).cohort == frontend::cohort::Cohort::Baseline)
        .unwrap()
}

/// `reason` is the stable phrase for users, exactly: no URL, address or raw
/// error reaches them (those are in the logs and metrics).
fn assert_degraded(a: &Answer, reason: &str) {
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["degraded"], true, "{}", a.json);
    assert_eq!(a.json["decision"], "no_offer");
    assert_eq!(a.json["score"], Value::Null);
    assert_eq!(a.json["decision_id"], Value::Null);
    assert_eq!(a.json["reason"], reason, "{}", a.json);
}

fn degraded_count(text: &str, version: &str) -> f64 {
    samples(text, "mlmesh_frontend_decisions")
        .iter()
        .filter(|s| s.labels["degraded"] == "true" && s.labels["model_version"] == version)
        .map(|s| s.value)
        .sum()
}

/// v1 answering only after 5 s, far beyond any timeout in these tests.
async fn slow_v1() -> test_support::serve::Served {
    let delay = FaultArgs {
        fault_delay: Duration::from_secs(5),
        ..FaultArgs::default()
    };
    model("v1", delay).await
}

#[tokio::test]
async fn a_model_that_is_down_degrades_the_answer_and_is_counted() {
    let up = Upstreams::start().await;
    let mut args = up.args();
    args.model_v1_url = Some(dead_url());
    let app = frontend(&args);
    let user = baseline_user(&args);
    let a = get(&app, &format!("/predict?user_id={user}")).await;
    assert_eq!(a.json["cohort"], "baseline");
    assert_degraded(&a, "model v1 unavailable");
    assert_eq!(
        a.json["model_version"], "v1",
        "attributed to the version that failed"
    );
    let text = test_support::http::get_text(&app, "/metrics").await;
    assert_eq!(degraded_count(&text, "v1"), 1.0);
    assert_eq!(upstream_errors(&text, "model-inference", "connect"), 1.0);
}

#[tokio::test]
async fn a_feature_store_that_is_down_degrades_the_answer() {
    let up = Upstreams::start().await;
    let mut args = up.args();
    args.feature_store_url = dead_url();
    let app = frontend(&args);
    let a = get(&app, "/predict?user_id=42").await;
    assert_degraded(&a, "feature store unavailable");
    assert_eq!(a.json["model_version"], Value::Null);
    let text = test_support::http::get_text(&app, "/metrics").await;
    assert_eq!(degraded_count(&text, "unknown"), 1.0);
}

#[tokio::test]
async fn a_feature_store_answer_past_the_size_bound_is_unusable_not_read_whole() {
    // A confused store sending user 42's real features padded to 4 MiB
    // (a field the frontend skips): usable if read whole, so only the
    // frontend's 1 MiB bound makes it unusable.
    let up = Upstreams::start().await;
    let mut args = up.args();
    let real = reqwest::get(format!("{}/v1/features/42", args.feature_store_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let padded = format!(
        r#"{{"padding":[{}0],{}"#,
        "0,".repeat(2 << 20),
        real.trim_start().strip_prefix('{').unwrap()
    );
    let store = test_support::serve::serve(axum::Router::new().route(
        "/v1/features/{id}",
        axum::routing::get(move || std::future::ready(padded.clone())),
    ))
    .await;
    // The same answer under the bound is a normal decision.
    let small = format!(
        r#"{{"padding":[0],{}"#,
        real.trim_start().strip_prefix('{').unwrap()
    );
    let small_store = test_support::serve::serve(axum::Router::new().route(
        "/v1/features/{id}",
        axum::routing::get(move || std::future::ready(small.clone())),
    ))
    .await;
    args.feature_store_url = small_store.base();
    let a = get(&frontend(&args), "/predict?user_id=42").await;
    assert_eq!(a.json["degraded"], false, "{}", a.json);

    args.feature_store_url = store.base();
    let app = frontend(&args);
    let a = get(&app, "/predict?user_id=42").await;
    assert_degraded(&a, "feature store answered something unusable");
    let text = test_support::http::get_text(&app, "/metrics").await;
    assert_eq!(upstream_errors(&text, "feature-store", "invalid"), 1.0);
}

#[tokio::test]
async fn slow_and_failing_models_are_cut_off_by_the_timeout_or_reported() {
    let up = Upstreams::start().await;
    let slow = slow_v1().await;
    let failing = model(
        "v2",
        FaultArgs {
            fault_error_rate: 1.0,
            ..FaultArgs::default()
        },
    )
    .await;
    let mut args = up.args();
    args.model_v1_url = Some(slow.base());
    args.model_v2_url = Some(failing.base());
    args.upstream_timeout = timeout(300);
    let app = frontend(&args);
    let user = baseline_user(&args);

    let started = Instant::now();
    let a = get(&app, &format!("/predict?user_id={user}")).await;
    assert_degraded(&a, "model v1 timed out");
    // Not a benchmark: the point is that the answer does not wait out the 5 s fault.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let a = get(&app, &format!("/predict?user_id={user}&group=beta")).await;
    assert_degraded(&a, "model v2 failed");
    assert_eq!(a.json["model_version"], "v2");
    assert_eq!(a.headers["x-model-version"], "v2");
}

#[tokio::test]
async fn the_callers_deadline_shortens_the_upstream_budget() {
    let up = Upstreams::start().await;
    let slow = slow_v1().await;
    let mut args = up.args();
    args.model_v1_url = Some(slow.base());
    args.upstream_timeout = Duration::from_secs(30);
    let app = frontend(&args);
    let user = baseline_user(&args);
    let started = Instant::now();
    let a = send(
        &app,
        Request::get(format!("/predict?user_id={user}"))
            .header("x-envoy-expected-rq-timeout-ms", "400")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_degraded(&a, "model v1 timed out");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn mesh_mode_sends_one_url_the_cohort_and_the_callers_trace_and_ids() {
    let up = Upstreams::start().await;
    let features = Recorder::start(&up.features.base()).await;
    let models = Recorder::start(&up.v1.base()).await;
    let mut args = up.args();
    args.routing = RoutingMode::Mesh;
    args.model_url = models.base();
    args.feature_store_url = features.base();
    let app = frontend(&args);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let a = send(
        &app,
        Request::get("/predict?user_id=42")
            .header("x-b3-traceid", trace)
            .header("x-b3-spanid", "00f067aa0ba902b7")
            .header("x-b3-sampled", "1")
            .header("x-request-id", "lab-req-1")
            .header("x-user-group", "beta")
            .header("x-mlmesh-env", "green")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["trace_id"], trace);
    assert_eq!(a.json["request_id"], "lab-req-1");
    assert_eq!(a.headers["x-request-id"], "lab-req-1");

    let seen_fs = features.seen();
    let seen_model = models.seen();
    assert_eq!(seen_fs.len(), 1);
    // Only the values are asked for (the statuses would double the answer),
    // and the real store behind the proxy answered that with a decision.
    assert_eq!(seen_fs[0].path, "/v1/features/42?statuses=false");
    let paths: Vec<&str> = seen_model.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/v2/models/propensity", "/v2/models/propensity/infer"]
    );

    for s in seen_fs.iter().chain(&seen_model) {
        let h = |n: &str| s.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            h("x-request-id").as_deref(),
            Some("lab-req-1"),
            "{}",
            s.path
        );
        assert_eq!(h("x-user-id").as_deref(), Some("42"));
        assert_eq!(h("x-user-group").as_deref(), Some("beta"));
        assert_eq!(h("x-mlmesh-cohort").as_deref(), Some("candidate"));
        // A blue/green tester's choice reaches the hop the mesh routes on.
        assert_eq!(h("x-mlmesh-env").as_deref(), Some("green"));
        assert_eq!(h("x-b3-traceid").as_deref(), Some(trace));
        assert_eq!(h("x-b3-sampled").as_deref(), Some("1"));
        let tp = h("traceparent").unwrap();
        assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
        // The child span is the frontend's client span, never the caller's span.
        assert_ne!(h("x-b3-spanid").as_deref(), Some("00f067aa0ba902b7"));
        let budget: u64 = h("x-envoy-expected-rq-timeout-ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(budget > 0 && budget <= 1000, "{budget}");
    }

    // Leaving the group wins over the header, and the mesh sees the same
    // answer the frontend gave: no x-user-group, the baseline cohort.
    let user = baseline_user(&args);
    let left = send(
        &app,
        Request::get(format!("/predict?user_id={user}&group=none"))
            .header("x-user-group", "beta")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(left.json["cohort"], "baseline");
    let last = models.seen().pop().unwrap();
    assert!(
        last.headers.get("x-user-group").is_none(),
        "{:?}",
        last.headers
    );
    assert_eq!(last.headers["x-mlmesh-cohort"], "baseline");
}

/// The model behind a URL is replaced by one whose declared feature order
/// differs (two columns swapped), as a rollout under the same Service would.
/// The frontend must not keep sending its cached order: the model refuses it
/// (409), the frontend re-reads the metadata and scores with the new order.
#[tokio::test]
async fn a_model_rolled_out_with_another_feature_order_is_never_fed_the_old_one() {
    let dir = std::env::temp_dir().join(format!("mlmesh-swapped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let original = models_dir().join("propensity-v2.onnx");
    let bytes = std::fs::read(&original).unwrap();
    // One stable address whose model is replaced, as behind a Service.
    let load = |path: std::path::PathBuf| {
        let args = model_inference::ModelArgs::for_model(path, "v2");
        model_inference::app(&args, mesh_kit::ServerArgs::for_tests())
            .expect("model loads")
            .0
    };
    let current = std::sync::Arc::new(std::sync::Mutex::new(load(original)));
    let first_model = current.lock().unwrap().clone();
    let meta = get(&first_model, "/v2/models/propensity").await;
    let joined = meta.json["parameters"]["feature_names"]
        .as_str()
        .unwrap()
        .to_owned();
    let names: Vec<&str> = joined.split(',').collect();
    let (a, b) = ("MGODRK", "MGODPR");
    assert_eq!(
        a.len(),
        b.len(),
        "equal lengths keep the protobuf's framing"
    );
    let swapped = names
        .iter()
        .map(|n| match *n {
            n if n == a => b,
            n if n == b => a,
            n => n,
        })
        .collect::<Vec<_>>()
        .join(",");
    let at: Vec<usize> = bytes
        .windows(joined.len())
        .enumerate()
        .filter(|(_, w)| *w == joined.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the model declares its feature order once");
    let mut patched = bytes.clone();
    patched[at[0]..at[0] + joined.len()].copy_from_slice(swapped.as_bytes());
    let rolled_out = dir.join("propensity-v2-swapped.onnx");
    std::fs::write(&rolled_out, patched).unwrap();

    let behind = current.clone();
    let service = axum::Router::new().fallback(move |req: Request<Body>| {
        let app = behind.lock().unwrap().clone();
        async move { tower::ServiceExt::oneshot(app, req).await.unwrap() }
    });
    let model = test_support::serve::serve(service).await;
    let features = feature_store().await;
    let mut args = frontend::FrontendArgs::direct(features.base(), model.base(), model.base());
    args.canary_percent = 100;
    let app = frontend(&args);

    // A user whose two swapped features differ, so the order matters.
    let mut user_row = None;
    for u in 1..200u32 {
        let row = test_support::http::fetch_json(&features.url(&format!("/v1/features/{u}"))).await;
        if row["features"][a] != row["features"][b] {
            user_row = Some((u.to_string(), row["features"].clone()));
            break;
        }
    }
    let (user, row) = user_row.expect("a user with different values in the two columns");
    let before = get(&app, &format!("/predict?user_id={user}")).await;
    assert_eq!(before.json["degraded"], false, "{}", before.json);

    *current.lock().unwrap() = load(rolled_out);
    let after = get(&app, &format!("/predict?user_id={user}")).await;
    assert_eq!(after.status, 200, "{}", after.json);
    assert_eq!(after.json["degraded"], false, "{}", after.json);

    // What the new model says for the user's features in its own order.
    let data: Vec<f64> = swapped
        .split(',')
        .map(|n| row[n].as_f64().unwrap())
        .collect();
    let new_model = current.lock().unwrap().clone();
    let direct = post_json(
        &new_model,
        "/v2/models/propensity/infer",
        &serde_json::json!({"inputs": [{"name": "features", "shape": [1, data.len()], "datatype": "FP32", "data": data}]}),
    )
    .await;
    let expected = direct.json["outputs"][1]["data"][0].as_f64().unwrap();
    let got = after.json["score"].as_f64().unwrap();
    assert!(
        (got - expected).abs() < 1e-6,
        "scored {got}, the new model's order gives {expected}"
    );
    assert_ne!(
        before.json["score"], after.json["score"],
        "swapping two differing columns changes the score"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The store's column order is read once from an answer with names; then
/// the values come listed, in binary (doubles, no names). A store redeployed with
/// another order behind the same address is noticed by its fingerprint and
/// read with names again: the scores never change.
#[tokio::test]
async fn the_store_is_read_with_names_once_then_listed_until_its_order_changes() {
    let store = |csv| feature_store_app(csv, mesh_kit::ServerArgs::for_tests());
    // The same rows with the feature columns reversed: another schema order.
    let dir = std::env::temp_dir().join(format!("mlmesh-reordered-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let reversed: String = std::fs::read_to_string(models_dir().join("customers.csv"))
        .unwrap()
        .lines()
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            let (leading, features) = cells.split_at(3);
            let mut row = leading.to_vec();
            row.extend(features.iter().rev());
            row.join(",") + "\n"
        })
        .collect();
    let reordered_csv = dir.join("customers.csv");
    std::fs::write(&reordered_csv, reversed).unwrap();

    let current = std::sync::Arc::new(std::sync::Mutex::new(
        store(models_dir().join("customers.csv")).await,
    ));
    let behind = current.clone();
    let service = axum::Router::new().fallback(move |req: Request<Body>| {
        let app = behind.lock().unwrap().clone();
        async move { tower::ServiceExt::oneshot(app, req).await.unwrap() }
    });
    let stable = test_support::serve::serve(service).await;
    let recorder = Recorder::start(&stable.base()).await;
    let up = Upstreams::start().await;
    let mut args = up.args();
    args.feature_store_url = recorder.base();
    let app = frontend(&args);

    let score = |a: &Answer| {
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["degraded"], false, "{}", a.json);
        a.json["score"].as_f64().unwrap()
    };
    let first = score(&get(&app, "/predict?user_id=42").await);
    let listed = score(&get(&app, "/predict?user_id=42").await);
    let other = score(&get(&app, "/predict?user_id=7").await);
    *current.lock().unwrap() = store(reordered_csv).await;
    let after = score(&get(&app, "/predict?user_id=42").await);
    let listed_again = score(&get(&app, "/predict?user_id=7").await);
    assert_eq!(first, listed, "keyed and listed values score the same");
    assert_eq!(
        first, after,
        "the reordered store's values land in the same columns"
    );
    assert_eq!(other, listed_again);

    let paths: Vec<String> = recorder.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/v1/features/42?statuses=false",
            "/v1/features/42?statuses=false&names=false&format=binary",
            "/v1/features/7?statuses=false&names=false&format=binary",
            // The old order asked for; the reordered store's fingerprint refused it.
            "/v1/features/42?statuses=false&names=false&format=binary",
            "/v1/features/42?statuses=false",
            "/v1/features/7?statuses=false&names=false&format=binary",
        ]
    );
    std::fs::remove_dir_all(&dir).ok();
}
