//! Triton's own Python clients (`tritonclient`, from PyPI) against a served
//! model, unchanged, over HTTP and gRPC: their defaults (binary / raw
//! tensors), JSON only, mixed, metadata, configuration, readiness,
//! statistics, `id` echo, output filters, 8-row batches equal to the
//! reference outputs within 1e-5.

mod common;

use std::process::Command;

use common::{TestApp, model_args, models_dir};
use mesh_kit::ServerArgs;
use serde_json::Value;

/// Pinned so a client release cannot change what this test proves.
const PACKAGES: &[&str] = &["tritonclient[http,grpc]==2.73.0", "numpy==2.4.6"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritons_http_and_grpc_clients_work_unchanged() {
    let python = test_support::python::venv(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("triton-venv"),
        PACKAGES,
    );
    let app = TestApp::spawn(model_args("v2"), ServerArgs::for_tests()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/triton_client.py");
    let url = app.addr.to_string();
    let grpc_url = app.grpc_addr.to_string();
    let reference = models_dir().join("reference_outputs.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([url.as_str(), grpc_url.as_str(), "propensity", "v2"])
            .arg(reference)
            .output()
            .expect("run the client script")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let checks: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for c in &checks {
        println!("{c}");
    }
    assert!(
        out.status.success(),
        "the Triton client failed a check:\n{stdout}\n{stderr}"
    );
    assert!(
        checks.iter().filter(|c| c["ok"] == true).count() >= 30,
        "fewer checks ran than written:\n{stdout}"
    );
    assert_eq!(checks.last().unwrap()["done"], true, "{stdout}");
}
