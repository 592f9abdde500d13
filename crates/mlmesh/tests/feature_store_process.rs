//! `mlmesh feature-store seed` as users run it, against a real redis-server.

use std::path::PathBuf;
use std::process::{Command, Output};

use test_support::RedisServer;
use test_support::redis_server::free_port;

fn seed(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlmesh"))
        .args(["feature-store", "seed", "--redis-url", url, "--file"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/customers.csv"))
        .output()
        .unwrap()
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
        assert_eq!(redis.query(&["DBSIZE"]), "5822", "re-seeding adds nothing");
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
    let port = free_port();
    let out = seed(&format!("redis://127.0.0.1:{port}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("seeding redis://127.0.0.1") && stderr.contains("customers.csv"),
        "{stderr}"
    );
}
