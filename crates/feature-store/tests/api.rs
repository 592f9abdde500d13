//! Bad input gets clear 4xx JSON errors; metrics expose what happened.

mod common;

use axum::body::Body;
use common::{app, call, get, post, store_args};
use serde_json::json;

/// (what, method, path, content-type, body, expected status)
type Case<'a> = (&'a str, &'a str, String, Option<&'a str>, String, u16);

#[tokio::test]
async fn bad_input_gets_4xx_json_errors_and_nothing_is_written() {
    let (app, health) = app(&store_args(None)).await;
    let long_id = "9".repeat(65);
    let batch = "/v1/features:batch";
    let ct = Some("application/json");
    let too_many: Vec<String> = (1..=1001).map(|i| i.to_string()).collect();
    let huge = format!("{{\"entity_ids\": [\"{}\"]}}", "1".repeat(2 << 20));
    let cases: Vec<Case> = vec![
        (
            "id with a space",
            "GET",
            "/v1/features/a%20b".into(),
            None,
            String::new(),
            400,
        ),
        (
            "id with a slash",
            "GET",
            "/v1/features/a%2Fb".into(),
            None,
            String::new(),
            400,
        ),
        (
            "over-long id",
            "GET",
            format!("/v1/features/{long_id}"),
            None,
            String::new(),
            400,
        ),
        (
            "unknown feature in subset",
            "GET",
            "/v1/features/1?features=NOPE".into(),
            None,
            String::new(),
            400,
        ),
        (
            "empty subset",
            "GET",
            "/v1/features/1?features=".into(),
            None,
            String::new(),
            400,
        ),
        (
            "statuses neither true nor false",
            "GET",
            "/v1/features/1?statuses=no".into(),
            None,
            String::new(),
            400,
        ),
        (
            "names neither true nor false",
            "GET",
            "/v1/features/1?names=0".into(),
            None,
            String::new(),
            400,
        ),
        (
            "a format that is neither json nor binary",
            "GET",
            "/v1/features/1?format=xml".into(),
            None,
            String::new(),
            400,
        ),
        (
            "the binary form with names",
            "GET",
            "/v1/features/1?format=binary&names=true".into(),
            None,
            String::new(),
            400,
        ),
        (
            "the binary form with statuses",
            "GET",
            "/v1/features/1?format=binary&statuses=true".into(),
            None,
            String::new(),
            400,
        ),
        (
            "the binary form of an unknown feature",
            "GET",
            "/v1/features/1?format=binary&features=NOPE".into(),
            None,
            String::new(),
            400,
        ),
        (
            "invalid JSON",
            "POST",
            batch.into(),
            ct,
            "{\"entity_ids\": [".into(),
            400,
        ),
        (
            "missing entity_ids",
            "POST",
            batch.into(),
            ct,
            "{}".into(),
            400,
        ),
        (
            "entity_ids not a list",
            "POST",
            batch.into(),
            ct,
            "{\"entity_ids\": \"1\"}".into(),
            400,
        ),
        (
            "numeric entity ids",
            "POST",
            batch.into(),
            ct,
            "{\"entity_ids\": [1, 2]}".into(),
            400,
        ),
        (
            "empty batch",
            "POST",
            batch.into(),
            ct,
            "{\"entity_ids\": []}".into(),
            400,
        ),
        (
            "batch statuses not a boolean",
            "POST",
            batch.into(),
            ct,
            json!({"entity_ids": ["1"], "statuses": "no"}).to_string(),
            400,
        ),
        (
            "batch names not a boolean",
            "POST",
            batch.into(),
            ct,
            json!({"entity_ids": ["1"], "names": 0}).to_string(),
            400,
        ),
        (
            "batch format neither json nor binary",
            "POST",
            batch.into(),
            ct,
            json!({"entity_ids": ["1"], "format": "xml"}).to_string(),
            400,
        ),
        (
            "binary batch with names",
            "POST",
            batch.into(),
            ct,
            json!({"entity_ids": ["1"], "format": "binary", "names": true}).to_string(),
            400,
        ),
        (
            "bad id in batch",
            "POST",
            batch.into(),
            ct,
            json!({"entity_ids": ["1", "no way"]}).to_string(),
            400,
        ),
        (
            "oversized batch",
            "POST",
            batch.into(),
            ct,
            json!({"entity_ids": too_many}).to_string(),
            413,
        ),
        ("oversized body", "POST", batch.into(), ct, huge, 413),
        (
            "unknown field",
            "POST",
            batch.into(),
            ct,
            "{\"entity_ids\": [\"1\"], \"feature\": []}".into(),
            400,
        ),
        (
            "unknown feature in batch",
            "POST",
            batch.into(),
            ct,
            json!({"entity_ids": ["1"], "features": ["NOPE"]}).to_string(),
            400,
        ),
        (
            "text/plain",
            "POST",
            batch.into(),
            Some("text/plain"),
            json!({"entity_ids": ["1"]}).to_string(),
            415,
        ),
        (
            "form content type",
            "POST",
            batch.into(),
            Some("application/x-www-form-urlencoded"),
            "entity_ids=1".into(),
            415,
        ),
        (
            "GET on batch",
            "GET",
            batch.into(),
            None,
            String::new(),
            405,
        ),
        (
            "write: unknown feature",
            "PUT",
            "/v1/features/1".into(),
            ct,
            json!({"features": {"NOPE": 1}}).to_string(),
            400,
        ),
        (
            "write: string value",
            "PUT",
            "/v1/features/1".into(),
            ct,
            json!({"features": {"MOSTYPE": "1"}}).to_string(),
            400,
        ),
        (
            "write: null value",
            "PUT",
            "/v1/features/1".into(),
            ct,
            json!({"features": {"MOSTYPE": null}}).to_string(),
            400,
        ),
        (
            "write: 1e400",
            "PUT",
            "/v1/features/1".into(),
            ct,
            "{\"features\": {\"MOSTYPE\": 1e400}}".into(),
            400,
        ),
        (
            "write: NaN",
            "PUT",
            "/v1/features/1".into(),
            ct,
            "{\"features\": {\"MOSTYPE\": NaN}}".into(),
            400,
        ),
        (
            "write: nothing",
            "PUT",
            "/v1/features/1".into(),
            ct,
            json!({"features": {}}).to_string(),
            400,
        ),
        (
            "write: bad time",
            "PUT",
            "/v1/features/1".into(),
            ct,
            json!({"features": {"MOSTYPE": 1}, "event_time": "yesterday"}).to_string(),
            400,
        ),
        (
            "write: bad id",
            "PUT",
            "/v1/features/a%20b".into(),
            ct,
            json!({"features": {"MOSTYPE": 1}}).to_string(),
            400,
        ),
        (
            "write: text/plain",
            "PUT",
            "/v1/features/1".into(),
            Some("text/plain"),
            json!({"features": {"MOSTYPE": 1}}).to_string(),
            415,
        ),
        (
            "unknown path",
            "GET",
            "/v2/features/1".into(),
            None,
            String::new(),
            404,
        ),
        // Each of these answered text/plain from axum's own extractors.
        (
            "features given twice in the query",
            "GET",
            "/v1/features/1?features=MOSTYPE&features=MAANTHUI".into(),
            None,
            String::new(),
            400,
        ),
        (
            "invalid UTF-8 in the id",
            "GET",
            "/v1/features/%FF".into(),
            None,
            String::new(),
            400,
        ),
        (
            "invalid UTF-8 in a write's id",
            "PUT",
            "/v1/features/%FF".into(),
            ct,
            json!({"features": {"MOSTYPE": 1}}).to_string(),
            400,
        ),
        // Amplification: a repeated name repeated its value in every row.
        (
            "duplicate feature in subset",
            "GET",
            "/v1/features/1?features=MOSTYPE,MOSTYPE".into(),
            None,
            String::new(),
            400,
        ),
        (
            "duplicate feature in batch",
            "POST",
            batch.into(),
            ct,
            json!({"entity_ids": ["1"], "features": vec!["MOSTYPE"; 20_000]}).to_string(),
            400,
        ),
        // FP32 is what the model reads: 1e39 is +inf there.
        (
            "write: 1e39 (infinite as f32)",
            "PUT",
            "/v1/features/1".into(),
            ct,
            "{\"features\": {\"MOSTYPE\": 1e39}}".into(),
            400,
        ),
        (
            "write: -1e39",
            "PUT",
            "/v1/features/1".into(),
            ct,
            "{\"features\": {\"MOSTYPE\": -1e39}}".into(),
            400,
        ),
        (
            "write: year 9999",
            "PUT",
            "/v1/features/1".into(),
            ct,
            json!({"features": {"MOSTYPE": 1}, "event_time": "9999-12-31T23:59:59Z"}).to_string(),
            400,
        ),
        (
            "write: two hours ahead",
            "PUT",
            "/v1/features/1".into(),
            ct,
            json!({"features": {"MOSTYPE": 1}, "event_time": humantime::format_rfc3339(std::time::SystemTime::now() + std::time::Duration::from_secs(7200)).to_string()}).to_string(),
            400,
        ),
    ];
    for (what, method, path, content_type, body, want) in cases {
        // `call` fails on any answer that is not JSON.
        let a = call(&app, method, &path, content_type, Body::from(body)).await;
        assert_eq!(a.status.as_u16(), want, "{what}: {}", a.json);
        assert_eq!(a.headers["content-type"], "application/json", "{what}");
        assert_eq!(a.headers["x-content-type-options"], "nosniff", "{what}");
        assert!(
            a.json["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            a.json
        );
    }
    // The largest value FP32 holds, and a time a minute ahead (clock skew),
    // are accepted.
    let ok = call(
        &app,
        "PUT",
        "/v1/features/2",
        ct,
        Body::from(
            json!({"features": {"MOSTYPE": f64::from(f32::MAX)}, "event_time": humantime::format_rfc3339(std::time::SystemTime::now() + std::time::Duration::from_secs(60)).to_string()})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    // None of the rejected writes touched customer 1.
    let a = get(&app, "/v1/features/1?features=MOSTYPE").await;
    assert_eq!(a.json["features"]["MOSTYPE"], 33.0);
    assert!(health.is_ready());
}

#[tokio::test]
async fn metrics_count_lookups_by_status() {
    let (app, _) = app(&store_args(None)).await;
    get(&app, "/v1/features/1").await;
    get(&app, "/v1/features/nobody").await;
    post(
        &app,
        "/v1/features:batch",
        &json!({"entity_ids": ["1", "2", "ghost"]}),
    )
    .await;

    let text = test_support::http::get_text(&app, "/metrics").await;
    let value = |family: &str, labels: &[(&str, &str)]| {
        test_support::metrics::sample(&text, family, labels).value
    };
    assert_eq!(
        value(
            "mlmesh_feature_lookups",
            &[("backend", "memory"), ("status", "present")]
        ),
        3.0
    );
    assert_eq!(
        value(
            "mlmesh_feature_lookups",
            &[("backend", "memory"), ("status", "not_found")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "mlmesh_feature_lookups",
            &[("backend", "memory"), ("status", "error")]
        ),
        0.0
    );
    assert_eq!(
        value("mlmesh_feature_batch_entities", &[("backend", "memory")]),
        1.0
    );
    assert_eq!(
        value("mlmesh_feature_lookup_seconds", &[("backend", "memory")]),
        3.0
    );
    assert_eq!(
        value(
            "mlmesh_feature_store_errors",
            &[("backend", "memory"), ("kind", "timeout")]
        ),
        0.0
    );
    assert_eq!(
        value(
            "mlmesh_http_requests",
            &[("route", "/v1/features/{entity_id}"), ("status", "404")]
        ),
        1.0
    );
}
