//! The real binary as users and Kubernetes run it: flags and env, a real
//! SIGTERM, a model that fails to load, and spans received over real OTLP.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use test_support::otlp::{AnyValue, collector, hex};

mod common;
use common::{models, sigterm, wait_exit};

/// Starts `mlmesh model-inference` on an ephemeral port; returns the child and its address.
fn start(extra_env: &[(&str, &str)]) -> (Child, String) {
    let (child, addr, _) = start_with_grpc(extra_env);
    (child, addr)
}

/// [`start`], also returning the gRPC listener's address.
fn start_with_grpc(extra_env: &[(&str, &str)]) -> (Child, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlmesh"));
    cmd.args(["model-inference", "--listen", "127.0.0.1:0"])
        .env("GRPC_LISTEN", "127.0.0.1:0")
        .env("MODEL_PATH", models().join("propensity-v2.onnx"))
        .env("MODEL_VERSION", "v2")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn mlmesh");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && (v["message"] == "listening" || v["message"] == "gRPC listening")
            {
                let addr = v["addr"].as_str().unwrap().to_owned();
                let _ = tx.send((v["message"] == "listening", addr));
            }
        }
    });
    let (mut http, mut grpc) = (None, None);
    while http.is_none() || grpc.is_none() {
        let (is_http, addr) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("mlmesh logs both addresses");
        *(if is_http { &mut http } else { &mut grpc }) = Some(addr);
    }
    (child, http.unwrap(), grpc.unwrap())
}

fn body() -> Value {
    json!({"inputs": [{"name": "features", "shape": [1, 85], "datatype": "FP32", "data": vec![1.0; 85]}]})
}

#[tokio::test]
async fn sigterm_fails_readiness_then_drains_in_flight_requests() {
    let (mut child, addr) = start(&[("DRAIN_DELAY", "700ms"), ("FAULT_DELAY", "1500ms")]);
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");
    assert_eq!(
        client.get(url("/readyz")).send().await.unwrap().status(),
        200
    );

    let in_flight = tokio::spawn(
        client
            .post(url("/v2/models/propensity/infer"))
            .json(&body())
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(150)).await;

    let ready = client.get(url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness flips first");
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "draining");
    // Still serving during the drain delay: the mesh may not have caught up yet.
    assert_eq!(
        client
            .get(url("/v2/models/propensity"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let res = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-model-version"], "v2");

    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(status.success(), "clean exit after drain: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sigterm_moves_every_keep_alive_client_and_fails_none() {
    let (mut child, addr) = start(&[("DRAIN_DELAY", "1s")]);
    // 16 keep-alive clients, each on its own pooled connection, infer in a
    // loop until an answer says `Connection: close` (a client then goes to
    // another replica). Before the fix, the listener's close dropped their
    // idle connections under them.
    let url = format!("http://{addr}/v2/models/propensity/infer");
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let (mut answered, mut failed) = (0usize, Vec::new());
                loop {
                    match client.post(&url).json(&body()).send().await {
                        Ok(r) => {
                            let close = r
                                .headers()
                                .get("connection")
                                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                            if r.status() == 200 {
                                answered += 1;
                            } else {
                                failed.push(format!("status {}", r.status()));
                            }
                            if close {
                                return (answered, true, failed);
                            }
                        }
                        Err(e) => {
                            failed.push(format!("{e:?}"));
                            return (answered, false, failed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&child);
    let (mut answered, mut told, mut failed) = (0, 0, Vec::new());
    for c in clients {
        let (n, close, f) = c.await.unwrap();
        answered += n;
        told += usize::from(close);
        failed.extend(f);
    }
    println!(
        "SIGTERM under 16 keep-alive clients: {answered} answered, {told} told to close, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(told, 16);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(status.success(), "clean exit after drain: {status:?}");
}

#[test]
fn a_model_that_fails_to_load_exits_non_zero_naming_file_and_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_mlmesh"))
        .args(["model-inference", "--listen", "127.0.0.1:0", "--model-path"])
        .arg(models().join("customers.csv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("customers.csv") && stderr.contains("cannot load model"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_mlmesh"))
        .args(["model-inference", "--model-path", "/nonexistent/model.onnx"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/model.onnx") && stderr.contains("no such file"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_from_a_registry_is_served_only_when_its_digest_matches() {
    let bytes = std::fs::read(models().join("propensity-v2.onnx")).unwrap();
    let sha256 = model_inference::fetch::sha256_hex(&bytes);
    let registry = test_support::serve::serve(axum::Router::new().route(
        "/m/v2.onnx",
        axum::routing::get(move || async move { bytes }),
    ))
    .await;
    let url = registry.url("/m/v2.onnx");
    let dir = std::env::temp_dir().join(format!("mlmesh-registry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("model.onnx");
    let cache_str = cache.display().to_string();

    // The wrong digest: the service never starts, and says why.
    let wrong = "ab".repeat(32);
    let bin = env!("CARGO_BIN_EXE_mlmesh");
    let out = tokio::process::Command::new(bin)
        .args(["model-inference", "--listen", "127.0.0.1:0"])
        .env("MODEL_PATH", &cache)
        .env("MODEL_DOWNLOAD_URL", &url)
        .env("MODEL_SHA256", &wrong)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [url.as_str(), &wrong, &sha256, "refusing to serve it"] {
        assert!(stderr.contains(part), "stderr lacks {part}: {stderr}");
    }
    assert!(!cache.exists(), "a model that failed its digest was kept");

    // A URL without a digest is a usage error.
    let out = tokio::process::Command::new(bin)
        .args([
            "model-inference",
            "--model-path",
            &cache_str,
            "--model-download-url",
            &url,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model-sha256"));

    // The right digest: downloaded into the cache, then served and ready.
    let (mut child, addr) = tokio::task::spawn_blocking({
        let (url, sha256, cache) = (url.clone(), sha256.clone(), cache_str.clone());
        move || {
            start(&[
                ("MODEL_PATH", cache.as_str()),
                ("MODEL_DOWNLOAD_URL", url.as_str()),
                ("MODEL_SHA256", sha256.as_str()),
            ])
        }
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let res = client
        .post(format!("http://{addr}/v2/models/propensity/infer"))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        std::fs::read(models().join("propensity-v2.onnx")).unwrap()
    );
    child.kill().ok();
    child.wait().ok();
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_flag_values_are_refused_with_the_reason() {
    for (env, value) in [
        ("FAULT_ERROR_RATE", "1.5"),
        ("MAX_BATCH_SIZE", "0"),
        ("FAULT_SCORE_NOISE", "-1"),
        ("DRAIN_DELAY", "soon"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mlmesh"))
            .args(["model-inference", "--model-path"])
            .arg(models().join("propensity-v1.onnx"))
            .env(env, value)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{env}={value} must be a usage error"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(value), "{env}: {stderr}");
    }
}

#[tokio::test]
async fn exports_the_server_span_over_otlp_continuing_the_b3_trace_and_flushes_on_shutdown() {
    let (endpoint, mut exports) = collector().await;
    let (child, addr) = start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        // Far longer than the test: spans can only arrive through the shutdown flush.
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ("DRAIN_DELAY", "0s"),
    ]);
    let trace = "a3ce929d0e0e47364bf92f3577b34da6";
    let parent = "00f067aa0ba902b7";
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v2/models/propensity/infer"))
        .header("x-b3-traceid", trace)
        .header("x-b3-spanid", parent)
        .header("x-b3-sampled", "1")
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let export = stop_and_flush(child, &mut exports).await;
    let rs = &export.resource_spans[0];
    let service = rs
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .unwrap();
    assert_eq!(
        service.value.as_ref().unwrap().value,
        Some(AnyValue::StringValue("model-inference".into()))
    );
    let spans: Vec<_> = rs.scope_spans.iter().flat_map(|s| &s.spans).collect();
    let server = spans
        .iter()
        .find(|s| s.name == "POST /v2/models/{name}/infer")
        .unwrap_or_else(|| {
            panic!(
                "no infer span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex(&server.trace_id), trace, "continues the caller's trace");
    assert_eq!(
        hex(&server.parent_span_id),
        parent,
        "child of the caller's span"
    );
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
}

/// `mlmesh healthcheck` (the image's probe, and the tool the README's
/// authorization demo runs in the app container): 0 on 2xx; otherwise exit 1
/// with the status and the refusal's body, so `RBAC: access denied` shows.
#[test]
fn healthcheck_passes_on_ready_and_shows_why_a_call_was_refused() {
    let (mut child, addr) = start(&[]);
    let check = |path: &str| {
        Command::new(env!("CARGO_BIN_EXE_mlmesh"))
            .args(["healthcheck", &format!("http://{addr}{path}")])
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check("/readyz").status.success() {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = check("/v2/models/nope");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("404 Not Found"), "{stderr}");
    assert!(
        stderr.contains(r#"{"error":"#),
        "the body is shown: {stderr}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM, a clean exit within 10 s, and the spans it flushed on the way out.
async fn stop_and_flush(
    mut child: Child,
    exports: &mut tokio::sync::mpsc::UnboundedReceiver<test_support::otlp::Export>,
) -> test_support::otlp::Export {
    sigterm(&child);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(5), exports.recv())
        .await
        .expect("spans flushed at shutdown")
        .unwrap()
}

fn grpc_infer_request() -> oip::grpc::ModelInferRequest {
    oip::grpc::ModelInferRequest {
        model_name: "propensity".into(),
        inputs: vec![oip::grpc::model_infer_request::InferInputTensor {
            name: "features".into(),
            datatype: oip::FP32.into(),
            shape: vec![1, 85],
            ..Default::default()
        }],
        raw_input_contents: vec![[1.0f32; 85].iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

async fn grpc_client(
    addr: &str,
) -> oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>
{
    oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient::connect(format!(
        "http://{addr}"
    ))
    .await
    .expect("gRPC connects")
}

#[tokio::test]
async fn grpc_spans_continue_the_callers_w3c_trace() {
    let (endpoint, mut exports) = collector().await;
    let (child, _, grpc) = start_with_grpc(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ("DRAIN_DELAY", "0s"),
    ]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(grpc_infer_request());
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().unwrap(),
    );
    let res = grpc_client(&grpc).await.model_infer(req).await.unwrap();
    assert_eq!(res.metadata().get("x-model-version").unwrap(), "v2");
    assert_eq!(res.into_inner().raw_output_contents.len(), 2);
    let export = stop_and_flush(child, &mut exports).await;
    let spans: Vec<_> = export
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let server = spans
        .iter()
        .find(|s| s.name == format!("{}/ModelInfer", oip::GRPC_SERVICE))
        .unwrap_or_else(|| {
            panic!(
                "no gRPC span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex(&server.trace_id), trace, "continues the caller's trace");
    assert_eq!(hex(&server.parent_span_id), parent);
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    let attr = |k: &str| {
        server
            .attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.as_ref()?.value.clone())
    };
    assert_eq!(
        attr("rpc.system"),
        Some(AnyValue::StringValue("grpc".into()))
    );
    assert_eq!(
        attr("rpc.method"),
        Some(AnyValue::StringValue("ModelInfer".into()))
    );
}

#[tokio::test]
async fn sigterm_turns_grpc_health_off_then_finishes_in_flight_calls() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let (mut child, _, grpc) =
        start_with_grpc(&[("DRAIN_DELAY", "700ms"), ("FAULT_DELAY", "1500ms")]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = |h: tonic_health::pb::HealthCheckResponse| h.status;
    let serving = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(serving), ServingStatus::Serving as i32);

    let mut client =
        oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
    let in_flight = tokio::spawn(async move { client.model_infer(grpc_infer_request()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Health is a probe: the injected delay does not touch it.
    let draining = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status(draining),
        ServingStatus::NotServing as i32,
        "health turns off first"
    );
    let answered = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(answered.into_inner().raw_output_contents.len(), 2);
    let exit = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(exit.success());
}
