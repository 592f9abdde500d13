//! Feedback, the page, and bad input: every mistake is a 4xx JSON error.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::{Value, json};

/// A decision for some user whose decision is `want` ("offer" or "no_offer").
async fn decision_with(app: &axum::Router, want: &str) -> Value {
    for user in 1..=200 {
        let a = get(app, &format!("/predict?user_id={user}")).await;
        if a.json["decision"] == want {
            return a.json;
        }
    }
    panic!("no {want} among the first 200 users");
}

/// A decision among users `from..` whose decision is `want`.
async fn decision_from(app: &axum::Router, want: &str, from: u32) -> Value {
    for user in from..from + 200 {
        let a = get(app, &format!("/predict?user_id={user}")).await;
        if a.json["decision"] == want {
            return a.json;
        }
    }
    panic!("no {want} among 200 users from {from}");
}

#[tokio::test]
async fn feedback_is_counted_once_under_the_deciding_version() {
    let up = Upstreams::start().await;
    let mut args = up.args();
    args.canary_percent = 100; // every decision is v2's
    let app = frontend(&args);
    let first = decision_with(&app, "offer").await;
    let user: u32 = first["user_id"].as_str().unwrap().parse().unwrap();
    let second = decision_from(&app, "offer", user + 1).await;
    assert_eq!(first["model_version"], "v2");
    let send = |d: &Value, outcome: &str| {
        let body = json!({"decision_id": d["decision_id"], "outcome": outcome});
        let app = app.clone();
        async move { post_json(&app, "/feedback", &body).await }
    };

    let a = send(&first, "accepted").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["recorded"], true);
    assert_eq!(a.json["model_version"], "v2");
    assert_eq!(a.json["outcome"], "accepted");
    // A retry (lost response, double click) is answered the same, not counted.
    let a = send(&first, "accepted").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["recorded"], false);
    // Changing the answer is refused.
    let a = send(&first, "declined").await;
    assert_eq!(a.status, 409, "{}", a.json);
    assert!(
        a.json["error"]
            .as_str()
            .unwrap()
            .contains("already recorded as accepted"),
        "{}",
        a.json
    );
    // `?user_id=` (for a gateway hashing on it) must name the decision's
    // own user: another is refused before anything is recorded.
    let body = json!({"decision_id": second["decision_id"], "outcome": "declined"});
    let a = post_json(&app, &format!("/feedback?user_id={user}"), &body).await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert!(
        a.json["error"].as_str().unwrap().contains("another user"),
        "{}",
        a.json
    );
    let own = second["user_id"].as_str().unwrap();
    let a = post_json(&app, &format!("/feedback?user_id={own}"), &body).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["recorded"], true);
    // The same answer without the parameter is the retry it is.
    let a = send(&second, "declined").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["recorded"], false);

    let text = test_support::http::get_text(&app, "/metrics").await;
    let outcomes = |o: &str| {
        sample(
            &text,
            "mlmesh_frontend_outcomes",
            &[
                ("model_version", "v2"),
                ("cohort", "candidate"),
                ("outcome", o),
            ],
        )
        .value
    };
    assert_eq!(outcomes("accepted"), 1.0);
    assert_eq!(outcomes("declined"), 1.0);
}

#[tokio::test]
async fn forged_expired_and_foreign_decision_ids_are_rejected() {
    let up = Upstreams::start().await;
    let args = up.args();
    let app = frontend(&args);
    let d = decision_with(&app, "offer").await;
    let token = d["decision_id"].as_str().unwrap();
    let (payload, tag) = token.split_once('.').unwrap();

    // Claim the decision was v2's when it was v1's (or vice versa).
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
    let other = if claims["m"] == "v1" { "v2" } else { "v1" };
    claims["m"] = json!(other);
    let forged = format!("{}.{tag}", b64.encode(claims.to_string()));

    let mut other_key = args.clone();
    other_key.decision_key = Some("another-experiment".into());
    let foreign = decision_with(&frontend(&other_key), "offer").await["decision_id"].clone();

    for bad in [
        json!(forged),
        foreign,
        json!("garbage"),
        json!(format!("{payload}.")),
        json!(""),
    ] {
        let a = post_json(
            &app,
            "/feedback",
            &json!({"decision_id": bad, "outcome": "accepted"}),
        )
        .await;
        assert_eq!(a.status, 400, "{bad}: {}", a.json);
        assert!(a.json["error"].as_str().unwrap().contains("decision_id"));
    }
    let text = test_support::http::get_text(&app, "/metrics").await;
    assert!(
        !text.contains("mlmesh_frontend_outcomes_total{"),
        "nothing recorded from rejected feedback:\n{text}"
    );

    let no_offer = decision_with(&app, "no_offer").await;
    let a = post_json(
        &app,
        "/feedback",
        &json!({"decision_id": no_offer["decision_id"], "outcome": "accepted"}),
    )
    .await;
    assert_eq!(a.status, 409, "{}", a.json);
}

#[tokio::test]
async fn bad_requests_get_4xx_json_errors() {
    let up = Upstreams::start().await;
    let app = frontend(&up.args());
    let long = format!("/predict?user_id={}", "9".repeat(65));
    let cases: Vec<(&str, &str, Option<&str>, String, u16)> = vec![
        ("GET", "/predict", None, String::new(), 400),
        ("GET", "/predict?user_id=", None, String::new(), 400),
        ("GET", "/predict?user_id=a%20b", None, String::new(), 400),
        (
            "GET",
            "/predict?user_id=..%2F..%2Fetc",
            None,
            String::new(),
            400,
        ),
        ("GET", &long, None, String::new(), 400),
        (
            "POST",
            "/predict",
            Some("application/json"),
            "{".into(),
            400,
        ),
        (
            "POST",
            "/predict",
            Some("application/json"),
            "{}".into(),
            400,
        ),
        (
            "POST",
            "/predict",
            Some("application/json"),
            r#"{"user_id": null}"#.into(),
            400,
        ),
        (
            "POST",
            "/predict",
            Some("application/json"),
            r#"{"user_id": [1]}"#.into(),
            400,
        ),
        (
            "POST",
            "/predict",
            Some("application/json"),
            r#"{"user_id": -1}"#.into(),
            400,
        ),
        (
            "POST",
            "/predict",
            Some("application/json"),
            r#"{"user_id": "1", "extra": 1}"#.into(),
            400,
        ),
        (
            "POST",
            "/predict",
            Some("text/plain"),
            r#"{"user_id": "1"}"#.into(),
            415,
        ),
        (
            "POST",
            "/predict",
            Some("application/json"),
            format!(r#"{{"user_id": "{}"}}"#, "1".repeat(20_000)),
            413,
        ),
        (
            "POST",
            "/feedback",
            Some("application/json"),
            "{}".into(),
            400,
        ),
        (
            "POST",
            "/feedback",
            Some("application/json"),
            r#"{"decision_id": "x"}"#.into(),
            400,
        ),
        (
            "POST",
            "/feedback",
            Some("application/json"),
            r#"{"decision_id": "x", "outcome": "maybe"}"#.into(),
            400,
        ),
        (
            "POST",
            "/feedback",
            Some("application/json"),
            r#"{"decision_id": 1, "outcome": "accepted"}"#.into(),
            400,
        ),
        (
            "POST",
            "/feedback",
            Some("application/x-www-form-urlencoded"),
            r#"{"decision_id": "x", "outcome": "accepted"}"#.into(),
            415,
        ),
        ("PUT", "/predict", None, String::new(), 405),
        ("GET", "/feedback", None, String::new(), 405),
        ("GET", "/nowhere", None, String::new(), 404),
    ];
    for (method, path, ct, body, want) in cases {
        let a = call(&app, method, path, ct, body.clone()).await;
        assert_eq!(
            a.status.as_u16(),
            want,
            "{method} {path} {}: {}",
            &body[..body.len().min(60)],
            a.json
        );
        assert!(a.json["error"].is_string(), "{method} {path}: {}", a.json);
    }
}

#[tokio::test]
async fn the_page_is_served_with_its_form() {
    let up = Upstreams::start().await;
    let app = frontend(&up.args());
    let res = tower::ServiceExt::oneshot(app, Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // Only the page's own inline script and style may run (the browser
    // test runs the page under this policy).
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let html = String::from_utf8(bytes.to_vec()).unwrap();
    for id in [
        "predict-form",
        "user-id",
        "decision",
        "model-version",
        "trace-id",
        "accept",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "page lacks #{id}");
    }
    // Relative URLs, so the page works behind a gateway path prefix.
    assert!(html.contains("fetch(\"predict?") && html.contains("fetch(\"feedback?"));
}
