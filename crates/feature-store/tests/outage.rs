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

/// Redis comes back empty (memory-only, restarted): without `--reseed` the
/// service says it is not ready rather than serve NOT_FOUND for everyone as
/// "ready", and turns ready once someone seeds.
#[tokio::test]
async fn a_redis_that_lost_the_seed_rows_is_not_ready() {
    let mut redis = RedisServer::start();
    seed(&redis).await;
    let args = store_args(Some(&redis));
    let (app, health) = app(&args).await;
    assert_eq!(get(&app, "/v1/features/42").await.status, StatusCode::OK);

    redis.kill();
    let redis = RedisServer::start_on(redis.port);
    wait_for("readiness to fail", Duration::from_secs(5), || {
        !health.is_ready()
    })
    .await;
    // Reachable but empty: it stays unready (many health intervals).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!health.is_ready(), "ready over an empty Redis");
    assert_eq!(redis.query(&["DBSIZE"]), "0", "nothing seeded it");

    seed(&redis).await;
    wait_for("readiness after seeding", Duration::from_secs(5), || {
        health.is_ready()
    })
    .await;
    assert_eq!(get(&app, "/v1/features/42").await.status, StatusCode::OK);
}

/// With `--reseed`, the same restart heals itself: the rows are loaded again
/// and served, counted once in the metrics.
#[tokio::test]
async fn with_reseed_a_redis_restart_heals_itself() {
    let mut redis = RedisServer::start();
    seed(&redis).await;
    let mut args = store_args(Some(&redis));
    args.reseed = true;
    let (app, health) = app(&args).await;
    let before = get(&app, "/v1/features/42").await;
    assert_eq!(before.status, StatusCode::OK);

    redis.kill();
    let redis = RedisServer::start_on(redis.port);
    wait_for("re-seeded and ready", Duration::from_secs(10), || {
        health.is_ready() && redis.query(&["EXISTS", feature_store::store::SEEDED_KEY]) == "1"
    })
    .await;
    let after = get(&app, "/v1/features/42").await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.json);
    assert_eq!(
        after.json["values"], before.json["values"],
        "the same row is back"
    );
    let (_, rows) = common::seed_rows();
    assert_eq!(
        redis.query(&["DBSIZE"]),
        (rows.len() + 1).to_string(),
        "every seed row and the marker"
    );
    let text = test_support::http::get_text(&app, "/metrics").await;
    let reseeds = test_support::metrics::sample(&text, "mlmesh_feature_store_reseeds", &[]).value;
    assert_eq!(reseeds, 1.0);
}

#[tokio::test]
async fn a_dropped_service_lets_go_of_redis_and_its_readiness_watch_ends() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let (app, health) = app(&store_args(Some(&redis))).await;
    assert_eq!(get(&app, "/v1/features/42").await.status, StatusCode::OK);
    let ours = || {
        redis
            .query(&["CLIENT", "LIST"])
            .lines()
            .filter(|l| l.contains("name=mlmesh-feature-store"))
            .count()
    };
    assert!(ours() > 0, "the store is connected");
    // The readiness watch held the service forever (and its connections
    // with it); now it holds a weak reference and ends with its owner.
    drop(app);
    drop(health);
    wait_for(
        "the store's Redis connections to close",
        Duration::from_secs(10),
        || ours() == 0,
    )
    .await;
}
