//! `mlmesh feature-store seed` as users run it, against a real redis-server.

mod common;

use std::process::Output;

use test_support::RedisServer;
use test_support::redis_server::REFUSED_PORT;

/// `mlmesh feature-store seed` of the committed rows into `url`.
fn seed_with(url: &str, extra: &[&str]) -> Output {
    common::mlmesh()
        .args(["feature-store", "seed", "--redis-url", url])
        .args(extra)
        .arg("--file")
        .arg(common::models().join("customers.csv"))
        .output()
        .unwrap()
}

fn seed(url: &str) -> Output {
    seed_with(url, &[])
}

#[test]
fn seed_loads_every_row_idempotently_and_says_so() {
    let redis = RedisServer::start();
    for _ in 0..2 {
        let out = seed(&redis.url());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("seeded 5822 entities (85 features each)"),
            "{stdout}"
        );
        // 5,822 rows and the "seeded" marker the feature store's readiness checks.
        assert_eq!(redis.query(&["DBSIZE"]), "5823", "re-seeding adds nothing");
        assert_eq!(
            redis.query(&["EXISTS", feature_store::store::SEEDED_KEY]),
            "1"
        );
    }
    assert_eq!(redis.query(&["HGET", "mlmesh:fs:v1:42", "MOSTYPE"]), "11");
    assert_eq!(
        redis.query(&["HLEN", "mlmesh:fs:v1:42"]),
        "86",
        "85 features and the event time"
    );
}

#[test]
fn seed_fails_loudly_when_redis_is_unreachable() {
    let out = seed(&format!("redis://127.0.0.1:{REFUSED_PORT}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("seeding redis://127.0.0.1") && stderr.contains("customers.csv"),
        "{stderr}"
    );
}

/// A stand-in for the Istio sidecar's agent on its fixed port 15020, counting
/// `POST /quitquitquit` calls.
async fn fake_istio_agent() -> (
    test_support::serve::Served,
    std::sync::Arc<std::sync::atomic::AtomicU32>,
) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let calls = std::sync::Arc::new(AtomicU32::new(0));
    let counted = std::sync::Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/quitquitquit",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "OK" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:15020")
        .await
        .expect("port 15020 (the Istio agent's) is free on a test machine");
    (test_support::serve::serve_on(listener, app), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_job_stops_its_istio_sidecar_only_after_success() {
    use std::sync::atomic::Ordering;
    let (_agent, calls) = fake_istio_agent().await;
    let redis = RedisServer::start();
    let ok_url = redis.url();
    let bad_url = format!("redis://127.0.0.1:{REFUSED_PORT}");
    // Blocking: the fake agent answers on this test's runtime meanwhile.
    let run =
        |url: String| tokio::task::spawn_blocking(move || seed_with(&url, &["--quit-istio-proxy"]));
    // Failed: the sidecar must stay, so the Job's retry still has a network.
    let failed = run(bad_url).await.unwrap();
    assert!(!failed.status.success());
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let done = run(ok_url).await.unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("asked the Istio sidecar to exit: 200 OK")
    );
}
