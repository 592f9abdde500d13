//! `mlmesh feature-store seed` as users run it, against a real redis-server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Redis(Child, u16);

impl Redis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server not found: apt-get install -y redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child, port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.1)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.1.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn seed(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlmesh"))
        .args(["feature-store", "seed", "--redis-url", url, "--file"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/customers.csv"))
        .output()
        .unwrap()
}

#[test]
fn seed_loads_every_row_idempotently_and_says_so() {
    let redis = Redis::start();
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
        assert_eq!(redis.cli(&["dbsize"]), "5822", "re-seeding adds nothing");
    }
    assert_eq!(redis.cli(&["hget", "mlmesh:fs:v1:42", "MOSTYPE"]), "11");
    assert_eq!(
        redis.cli(&["hlen", "mlmesh:fs:v1:42"]),
        "86",
        "85 features and the event time"
    );
}

#[test]
fn seed_fails_loudly_when_redis_is_unreachable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = seed(&format!("redis://127.0.0.1:{port}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("seeding redis://127.0.0.1") && stderr.contains("customers.csv"),
        "{stderr}"
    );
}
