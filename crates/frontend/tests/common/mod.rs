//! The frontend's real upstreams, in process: a feature store on the
//! embedded store and model-inference v1 and v2, each on its own port.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use frontend::FrontendArgs;
use mesh_kit::ServerArgs;
use mesh_kit::fault::FaultArgs;
use serde::Deserialize;
use test_support::serve::{Served, serve};

pub use test_support::http::{Answer, call, get, post_json};
pub use test_support::metrics::{sample, samples};

/// `mlmesh_frontend_upstream_errors{upstream, kind}` in a `/metrics` text.
pub fn upstream_errors(metrics: &str, upstream: &str, kind: &str) -> f64 {
    sample(
        metrics,
        "mlmesh_frontend_upstream_errors",
        &[("upstream", upstream), ("kind", kind)],
    )
    .value
}

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

pub async fn feature_store() -> Served {
    feature_store_on(ServerArgs::for_tests()).await
}

/// The feature store with `server`'s settings (e.g. a pod name).
pub async fn feature_store_on(server: ServerArgs) -> Served {
    serve(feature_store_app(models_dir().join("customers.csv"), server).await).await
}

/// The embedded feature store seeded from `seed_file`, once it is ready.
pub async fn feature_store_app(seed_file: std::path::PathBuf, server: ServerArgs) -> Router {
    mesh_kit::telemetry::init_for_tests();
    let args = feature_store::StoreArgs::for_seed_file(seed_file);
    let (app, _state, health) = feature_store::app(&args, server)
        .await
        .expect("feature store starts");
    // The readiness watcher's first ping runs in the background.
    for _ in 0..200 {
        if health.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(health.is_ready(), "the embedded store turns ready");
    app
}

pub async fn model(version: &str, faults: FaultArgs) -> Served {
    let mut server = ServerArgs::for_tests();
    server.faults = faults;
    model_on(version, server).await
}

/// Model `version` with `server`'s settings (faults, a pod name).
pub async fn model_on(version: &str, server: ServerArgs) -> Served {
    mesh_kit::telemetry::init_for_tests();
    let args = model_inference::ModelArgs::for_model(
        models_dir().join(format!("propensity-{version}.onnx")),
        version,
    );
    let (app, _state) = model_inference::app(&args, server).expect("model loads");
    serve(app).await
}

/// Upstreams of one frontend under test.
pub struct Upstreams {
    pub features: Served,
    pub v1: Served,
    pub v2: Served,
}

impl Upstreams {
    pub async fn start() -> Self {
        Self {
            features: feature_store().await,
            v1: model("v1", FaultArgs::default()).await,
            v2: model("v2", FaultArgs::default()).await,
        }
    }

    /// `direct` routing to these upstreams, 10% canary.
    pub fn args(&self) -> FrontendArgs {
        FrontendArgs::direct(self.features.base(), self.v1.base(), self.v2.base())
    }
}

pub fn frontend(args: &FrontendArgs) -> Router {
    mesh_kit::telemetry::init_for_tests();
    frontend::app(args, ServerArgs::for_tests()).expect("frontend starts")
}

/// Test server settings for a replica named `pod` (`--pod-name`).
pub fn named(pod: &str) -> ServerArgs {
    let mut server = ServerArgs::for_tests();
    server.pod_name = Some(pod.to_owned());
    server
}

/// A URL nothing listens on.
pub fn dead_url() -> String {
    let port = test_support::redis_server::REFUSED_PORT;
    format!("http://127.0.0.1:{port}")
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    pub user_ids: Vec<String>,
    /// Each user's feature row, in the models' column order.
    pub inputs: Vec<Vec<f64>>,
    pub outputs: std::collections::HashMap<String, RefOutputs>,
}

#[derive(Debug, Deserialize)]
pub struct RefOutputs {
    pub probability: Vec<f64>,
}

/// Probabilities onnxruntime computed offline for some users, by version.
pub fn reference() -> Reference {
    let text = std::fs::read_to_string(models_dir().join("reference_outputs.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn timeout(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Model `version` on both of its ports, REST and gRPC, as the binary
/// serves it (`--grpc-listen`).
pub struct BothPorts {
    pub rest: Served,
    pub grpc: Served,
}

pub async fn model_both(version: &str) -> BothPorts {
    mesh_kit::telemetry::init_for_tests();
    let args = model_inference::ModelArgs::for_model(
        models_dir().join(format!("propensity-{version}.onnx")),
        version,
    );
    let (svc, state) = model_inference::build(&args, ServerArgs::for_tests()).expect("model loads");
    let grpc = svc.grpc_router(
        model_inference::grpc::routes(state.clone()),
        model_inference::grpc::probes(state.clone()),
    );
    let rest = svc.router(
        model_inference::router(state.clone()),
        model_inference::probes(state),
    );
    BothPorts {
        rest: serve(rest).await,
        grpc: serve(grpc).await,
    }
}
