//! Test helpers: a real redis-server per test on its own port, and apps on
//! either backend.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use feature_store::{SeedArgs, StoreArgs};
use http_body_util::BodyExt;
use mesh_kit::{Health, ServerArgs};
use serde_json::Value;
use tower::ServiceExt;

pub fn seed_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/customers.csv")
}

/// `redis-server` as a child process on a port of its own, without persistence.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: apt-get install -y redis-server (scripts/test.sh checks for it)");
        let server = Self {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(server.url()).unwrap();
        loop {
            let pong = client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

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

pub struct Answer {
    pub status: StatusCode,
    pub json: Value,
}

pub async fn call(
    app: &Router,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{method} {path}: {status} with non-JSON body {bytes:?}: {e}"));
    Answer { status, json }
}

pub async fn get(app: &Router, path: &str) -> Answer {
    call(app, "GET", path, None, Body::empty()).await
}

pub async fn post(app: &Router, path: &str, body: &Value) -> Answer {
    call(
        app,
        "POST",
        path,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

pub async fn put(app: &Router, path: &str, body: &Value) -> Answer {
    call(app, "PUT", path, Some("application/json"), body.to_string()).await
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
