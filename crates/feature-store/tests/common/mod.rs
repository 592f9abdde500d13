//! Test helpers: a real redis-server per test on its own port, and apps on
//! either backend.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::Router;
use feature_store::{SeedArgs, StoreArgs};
use mesh_kit::{Health, ServerArgs};

pub fn seed_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/customers.csv")
}

pub use test_support::RedisServer;
pub use test_support::http::{call, get, post_json as post, put_json as put};

pub async fn seed(redis: &RedisServer) {
    let args = SeedArgs {
        redis_url: redis.url(),
        seed_file: seed_file(),
        redis_timeout: Duration::from_secs(5),
    };
    let report = feature_store::seed(&args).await.expect("seed");
    assert_eq!(report.entities, 5822);
}

pub fn store_args(redis: Option<&RedisServer>) -> StoreArgs {
    let mut args = StoreArgs::for_seed_file(seed_file());
    args.redis_url = redis.map(RedisServer::url);
    args.health_interval = Duration::from_millis(100);
    args
}

/// The app, waited on until ready.
pub async fn app(args: &StoreArgs) -> (Router, Health) {
    mesh_kit::telemetry::init_for_tests();
    let (router, _state, health) = feature_store::app(args, ServerArgs::for_tests())
        .await
        .expect("feature store starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !health.is_ready() {
        assert!(
            Instant::now() < deadline,
            "feature store never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (router, health)
}

/// The seed file parsed independently of the crate under test.
pub fn seed_rows() -> (Vec<String>, Vec<(String, Vec<f64>)>) {
    let text = std::fs::read_to_string(seed_file()).unwrap();
    let mut lines = text.lines();
    let names = lines
        .next()
        .unwrap()
        .split(',')
        .skip(3)
        .map(str::to_owned)
        .collect();
    let rows = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (
                cells[0].to_owned(),
                cells[3..].iter().map(|c| c.parse().unwrap()).collect(),
            )
        })
        .collect();
    (names, rows)
}
