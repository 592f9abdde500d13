//! Test helpers: model paths, the committed reference outputs, and an app
//! spawned on an ephemeral port with a shutdown trigger the test controls.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;

use mesh_kit::server::{ServeOptions, serve_on};
use mesh_kit::{Health, ServerArgs};
use model_inference::ModelArgs;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const N_FEATURES: usize = 85;

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

pub fn model_path(version: &str) -> PathBuf {
    models_dir().join(format!("propensity-{version}.onnx"))
}

pub fn model_args(version: &str) -> ModelArgs {
    ModelArgs::for_model(model_path(version), version)
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    pub user_ids: Vec<String>,
    pub inputs: Vec<Vec<f32>>,
    pub outputs: std::collections::HashMap<String, RefOutputs>,
}

#[derive(Debug, Deserialize)]
pub struct RefOutputs {
    pub logit: Vec<f64>,
    pub probability: Vec<f64>,
}

pub fn reference() -> Reference {
    let text = std::fs::read_to_string(models_dir().join("reference_outputs.json"))
        .expect("reference outputs");
    serde_json::from_str(&text).expect("parse reference outputs")
}

/// An OIP infer body for `rows` (flat data).
pub fn infer_body(rows: &[Vec<f32>]) -> Value {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({"inputs": [{"name": "features", "shape": [rows.len(), N_FEATURES], "datatype": "FP32", "data": data}]})
}

/// The `probability` output's values of an OIP infer answer.
pub fn probabilities(v: &Value) -> Vec<f64> {
    let out = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probability")
        .unwrap();
    out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Little-endian FP32 bytes, as the binary extension and raw gRPC contents carry them.
pub fn le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Scores equal the reference's within 1e-5, row for row.
pub fn close(got: &[f32], want: &[f64]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(x, y)| (f64::from(*x) - y).abs() < 1e-5)
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The gRPC listener (inference.GRPCInferenceService, grpc.health.v1).
    pub grpc_addr: SocketAddr,
    pub client: reqwest::Client,
    pub health: Health,
    stop: Option<oneshot::Sender<()>>,
    pub server: JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    pub async fn spawn(model: ModelArgs, server: ServerArgs) -> Self {
        mesh_kit::telemetry::init_for_tests();
        let timing = ServeOptions::from(&server);
        let (svc, state) = model_inference::build(&model, server).expect("model loads");
        let health = svc.health();
        // gRPC beside REST, as the binary serves it (--grpc-listen).
        let grpc_app = svc.grpc_router(
            model_inference::grpc::routes(state.clone()),
            model_inference::grpc::probes(state.clone()),
        );
        let app = svc.router(
            model_inference::router(state.clone()),
            model_inference::probes(state),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = stopped.await;
            let _ = tx.send(true);
        });
        let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let server = tokio::spawn(serve_on(
            listener,
            app,
            health.clone(),
            timing,
            signal(rx.clone()),
        ));
        tokio::spawn(serve_on(
            grpc_listener,
            grpc_app,
            health.clone(),
            timing,
            signal(rx),
        ));
        Self {
            addr,
            grpc_addr,
            client: reqwest::Client::new(),
            health,
            stop: Some(stop),
            server,
        }
    }

    /// A `grpc.health.v1` client on the gRPC listener.
    pub async fn grpc_health(
        &self,
    ) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn infer_url(&self) -> String {
        self.url("/v2/models/propensity/infer")
    }

    /// Scores `rows` in one infer call; the answer's JSON.
    pub async fn infer(&self, rows: &[Vec<f32>]) -> Value {
        self.client
            .post(self.infer_url())
            .json(&infer_body(rows))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Stands in for SIGTERM.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn metrics_text(&self) -> String {
        test_support::http::fetch_text(&self.url("/metrics")).await
    }
}

pub use test_support::metrics::{sample, samples};
