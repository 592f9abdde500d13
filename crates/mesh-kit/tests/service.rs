//! The cross-cutting layers every service gets from `Service::router`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use mesh_kit::propagation::Forwarded;
use mesh_kit::{ServerArgs, Service};
use serde_json::{Value, json};
use tower::ServiceExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// A business route that reports the headers it would send upstream.
async fn echo_outbound(fwd: Forwarded) -> axum::Json<Value> {
    let h = fwd.outbound_headers();
    let map: serde_json::Map<String, Value> = h
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap())))
        .collect();
    axum::Json(Value::Object(map))
}

fn app(args: ServerArgs) -> Router {
    mesh_kit::telemetry::init_for_tests();
    let svc = Service::new("test", args);
    svc.health().set_ready(true);
    svc.router(
        Router::new().route("/work", get(echo_outbound)),
        Router::new(),
    )
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = if headers
        .get("content-type")
        .is_some_and(|c| c.to_str().unwrap().contains("json"))
    {
        serde_json::from_slice(&bytes).unwrap()
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    (status, headers, body)
}

fn get_req(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn b3_in_becomes_w3c_and_b3_out_under_the_server_span() {
    let app = app(ServerArgs::for_tests());
    let (status, _, out) = send(
        &app,
        get_req(
            "/work",
            &[
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", PARENT_SPAN),
                ("x-b3-sampled", "1"),
                ("x-request-id", "req-7"),
                ("x-user-id", "42"),
                ("x-user-group", "beta"),
                ("cookie", "secret"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let tp = out["traceparent"].as_str().expect("traceparent injected");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[1], TRACE, "same trace continues");
    assert_ne!(
        parts[2], PARENT_SPAN,
        "the outbound parent is our server span, not the caller's"
    );
    assert_eq!(parts[3], "01");
    assert_eq!(out["x-b3-traceid"], TRACE);
    assert_eq!(out["x-b3-spanid"], parts[2]);
    assert_eq!(out["x-b3-sampled"], "1");
    assert_eq!(out["x-request-id"], "req-7");
    assert_eq!(out["x-user-id"], "42");
    assert_eq!(out["x-user-group"], "beta");
    assert!(
        out.get("cookie").is_none(),
        "only the listed headers travel"
    );
}

#[tokio::test]
async fn w3c_in_continues_the_same_trace() {
    let app = app(ServerArgs::for_tests());
    let tp = format!("00-{TRACE}-{PARENT_SPAN}-01");
    let (_, _, out) = send(&app, get_req("/work", &[("traceparent", &tp)])).await;
    assert_eq!(out["x-b3-traceid"], TRACE);
    assert!(out["traceparent"].as_str().unwrap().contains(TRACE));
}

#[tokio::test]
async fn request_id_is_created_when_missing_and_echoed() {
    let app = app(ServerArgs::for_tests());
    let (_, headers, out) = send(&app, get_req("/work", &[])).await;
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(
        out["x-request-id"], id,
        "the generated id is what travels upstream"
    );
    let (_, mine, _) = send(&app, get_req("/work", &[("x-request-id", "mine")])).await;
    assert_eq!(mine["x-request-id"], "mine");
    for echoed in [&headers["x-request-id"], &mine["x-request-id"]] {
        assert!(
            echoed.is_sensitive(),
            "an answer's request id is unique: HTTP/2 must not index it"
        );
    }
}

#[tokio::test]
async fn faults_hit_business_routes_only() {
    let mut args = ServerArgs::for_tests();
    args.faults.fault_error_rate = 1.0;
    args.faults.fault_delay = Duration::from_millis(50);
    let app = app(args);
    let started = std::time::Instant::now();
    let (status, headers, body) = send(&app, get_req("/work", &[])).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["x-mlmesh-fault"], "error");
    assert!(body["error"].as_str().unwrap().contains("FAULT_ERROR_RATE"));
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "the delay knob applied too"
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, headers, _) = send(&app, get_req(path, &[])).await;
        assert_eq!(status, StatusCode::OK, "{path} must not be faulted");
        assert!(headers.get("x-mlmesh-fault").is_none(), "{path}");
    }
}

/// FAULT_ERROR_STATUS picks the injected status (503 for Envoy's retries);
/// the body stays the JSON error.
#[tokio::test]
async fn the_injected_error_status_can_be_chosen() {
    let mut args = ServerArgs::for_tests();
    args.faults.fault_error_rate = 1.0;
    args.faults.fault_error_status = Some(503);
    let (status, headers, body) = send(&app(args), get_req("/work", &[])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-mlmesh-fault"], "error");
    assert!(body["error"].as_str().unwrap().contains("FAULT_ERROR_RATE"));
}

#[tokio::test]
async fn partial_error_rate_faults_roughly_that_share() {
    let mut args = ServerArgs::for_tests();
    args.faults.fault_error_rate = 0.3;
    let app = app(args);
    let mut errors = 0;
    for _ in 0..1000 {
        if send(&app, get_req("/work", &[])).await.0 == StatusCode::INTERNAL_SERVER_ERROR {
            errors += 1;
        }
    }
    // Binomial(1000, 0.3): sd ~14.5, so ±70 is ~5 sigma.
    assert!(
        (230..=370).contains(&errors),
        "{errors} of 1000 faulted at rate 0.3"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json() {
    let app = app(ServerArgs::for_tests());
    let (status, _, body) = send(&app, get_req("/nope", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("/nope"));
    let (status, _, body) = send(&app, Request::post("/work").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string());
    // Invented methods, on a known path and an unknown one.
    for (i, path) in ["/work", "/nope/deeper"].into_iter().enumerate() {
        let req = Request::builder()
            .method(format!("SCAN{i}").as_str())
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = send(&app, req).await;
        assert!(status.is_client_error(), "{path}: {status}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    // Both counted in the RED metrics, under bounded labels only.
    let (_, _, text) = send(&app, get_req("/metrics", &[])).await;
    let text = text.as_str().unwrap().to_owned();
    assert!(
        text.contains(r#"route="unmatched",method="GET",status="404""#),
        "404s are counted:\n{text}"
    );
    assert!(
        text.contains(r#"route="/work",method="POST",status="405""#),
        "{text}"
    );
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(
        !text.contains("SCAN"),
        "a client-chosen method became a label:\n{text}"
    );
}

#[tokio::test]
async fn readiness_reflects_health() {
    mesh_kit::telemetry::init_for_tests();
    let svc = Service::new("test", ServerArgs::for_tests());
    let health = svc.health();
    let app = svc.router(Router::new(), Router::new());
    assert_eq!(
        send(&app, get_req("/readyz", &[])).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    health.set_ready(true);
    assert_eq!(send(&app, get_req("/readyz", &[])).await.0, StatusCode::OK);
    health.begin_drain();
    let (status, _, body) = send(&app, get_req("/readyz", &[])).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("draining"))
    );
    assert_eq!(send(&app, get_req("/healthz", &[])).await.0, StatusCode::OK);
}
