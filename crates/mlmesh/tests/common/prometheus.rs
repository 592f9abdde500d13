//! Debian's real Prometheus scraping an `mlmesh up` stack with the compose
//! config, rewritten for loopback.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::http::fetch_json;
use test_support::redis_server::free_port;

use super::Stack;

pub struct Prometheus {
    child: Child,
    pub base: String,
    _dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Debian's Prometheus with docker/prometheus/prometheus.yml, its compose
/// host names rewritten to the stack's loopback ports.
pub async fn prometheus(stack: &Stack) -> Prometheus {
    let config = std::fs::read_to_string(super::repo().join("docker/prometheus/prometheus.yml"))
        .unwrap()
        .replace("frontend:8080", &stack.frontend.replace("http://", ""))
        .replace(
            "feature-store:8080",
            &format!("127.0.0.1:{}", stack.feature_store_port),
        )
        .replace(
            "model-inference-v1:8080",
            &format!("127.0.0.1:{}", stack.v1_port),
        )
        .replace(
            "model-inference-v2:8080",
            &format!("127.0.0.1:{}", stack.v2_port),
        )
        .replace("scrape_interval: 5s", "scrape_interval: 1s");
    start(config).await
}

/// Debian's Prometheus with `config` (scrape intervals the caller's).
pub async fn start(config: String) -> Prometheus {
    let bin = "/usr/bin/prometheus";
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} is missing: apt-get install -y prometheus (scripts/test.sh checks for it)"
    );
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("mlmesh-prom-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{base}/-/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "prometheus never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Prometheus {
        child,
        base,
        _dir: dir,
    }
}

pub async fn query(prom: &Prometheus, expr: &str) -> Value {
    let url =
        reqwest::Url::parse_with_params(&format!("{}/api/v1/query", prom.base), &[("query", expr)])
            .unwrap();
    fetch_json(url.as_str()).await
}

impl Prometheus {
    /// Waits until the four services are scraped and up, under the compose
    /// config's three jobs.
    pub async fn wait_for_all_targets(&self) {
        self.wait_for_targets(&["feature-store", "frontend", "model-inference"])
            .await
    }

    /// Waits until four targets are up, under exactly `jobs`.
    pub async fn wait_for_targets(&self, jobs_wanted: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = fetch_json(&format!("{}/api/v1/targets", self.base)).await;
            let active = t["data"]["activeTargets"].as_array().unwrap().clone();
            let up: Vec<_> = active.iter().filter(|t| t["health"] == "up").collect();
            if active.len() == 4 && up.len() == 4 {
                let jobs: BTreeSet<&str> = up
                    .iter()
                    .map(|t| t["labels"]["job"].as_str().unwrap())
                    .collect();
                let want: BTreeSet<&str> = jobs_wanted.iter().copied().collect();
                assert_eq!(jobs, want);
                return;
            }
            assert!(Instant::now() < deadline, "targets not all up: {active:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
