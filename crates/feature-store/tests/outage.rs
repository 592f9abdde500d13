//! Redis dies mid-traffic: answers turn into fast 503s, readiness fails, and
//! the same service instance recovers by itself when Redis is back.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{RedisServer, app, get, seed, store_args};

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_traffic() {
    let mut redis = RedisServer::start();
    seed(&redis).await;
    let args = store_args(Some(&redis));
    let timeout = args.redis_timeout;
    let (app, health) = app(&args).await;
    for _ in 0..20 {
        assert_eq!(get(&app, "/v1/features/42").await.status, StatusCode::OK);
    }

    redis.kill();
    for _ in 0..10 {
        let started = Instant::now();
        let a = get(&app, "/v1/features/42").await;
        let took = started.elapsed();
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.json);
        assert!(
            a.json["error"].as_str().unwrap().contains("feature store"),
            "{}",
            a.json
        );
        // Bounded by the configured timeout (plus scheduling slack), never a hang.
        assert!(
            took < timeout + Duration::from_millis(500),
            "503 took {took:?}"
        );
    }
    wait_for("readiness to fail", Duration::from_secs(5), || {
        !health.is_ready()
    })
    .await;

    let redis = RedisServer::start_on(redis.port);
    seed(&redis).await;
    wait_for("readiness to recover", Duration::from_secs(10), || {
        health.is_ready()
    })
    .await;
    // The same instance serves again, with no error, and keeps doing so.
    for _ in 0..20 {
        let a = get(&app, "/v1/features/42").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    }
    // Every connection broke and came back; the metric counts re-established
    // connections, not requests.
    let text = test_support::http::get_text(&app, "/metrics").await;
    let reconnects = test_support::metrics::sample(
        &text,
        "mlmesh_feature_store_reconnects",
        &[("backend", "redis")],
    )
    .value;
    assert!(reconnects >= 1.0, "reconnects: {reconnects}");
}
