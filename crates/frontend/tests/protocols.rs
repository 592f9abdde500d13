//! `--model-protocol`: the frontend scores every user the same over OIP
//! REST with JSON tensors, with binary tensors and over gRPC, each protocol
//! really on the wire (the model's own metrics and a recording proxy say
//! so), and failures are classified alike.

mod common;

use common::*;
use oip::Protocol;
use test_support::proxy::Recorder;

const PROTOCOLS: [Protocol; 3] = [Protocol::HttpJson, Protocol::HttpBinary, Protocol::Grpc];

/// A frontend on `v1`/`v2` over `protocol`, everyone on the baseline
/// (`canary` 0) or the candidate (100).
fn frontend_over(
    features: &str,
    v1: &BothPorts,
    v2: &BothPorts,
    protocol: Protocol,
    canary: u8,
) -> axum::Router {
    let mut args =
        frontend::FrontendArgs::direct(features.to_owned(), v1.rest.base(), v2.rest.base());
    args.model_protocol = protocol;
    args.model_v1_grpc_url = Some(v1.grpc.base());
    args.model_v2_grpc_url = Some(v2.grpc.base());
    args.canary_percent = canary;
    frontend(&args)
}

fn requests_over(metrics: &str, protocol: &str) -> f64 {
    samples(metrics, "mlmesh_inference_requests")
        .iter()
        .filter(|s| s.labels.get("protocol").map(String::as_str) == Some(protocol))
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn every_protocol_gives_every_user_the_same_score() {
    let features = feature_store().await;
    let (v1, v2) = (model_both("v1").await, model_both("v2").await);
    let reference = reference();
    for (canary, version, model) in [(0, "v1", &v1), (100, "v2", &v2)] {
        let mut scores: Vec<Vec<f64>> = Vec::new();
        for protocol in PROTOCOLS {
            let before = fetch_metrics(model).await;
            let app = frontend_over(&features.base(), &v1, &v2, protocol, canary);
            let mut of_protocol = Vec::new();
            for (i, user) in reference.user_ids.iter().enumerate() {
                let a = get(&app, &format!("/predict?user_id={user}")).await;
                assert_eq!(a.status, 200, "{protocol} {user}: {}", a.json);
                assert_eq!(a.json["degraded"], false, "{protocol} {user}: {}", a.json);
                assert_eq!(a.json["model_version"], version, "{protocol}");
                let score = a.json["score"].as_f64().unwrap();
                let want = reference.outputs[version].probability[i];
                assert!(
                    (score - want).abs() < 1e-5,
                    "{protocol}, user {user}: {score} vs onnxruntime {want}"
                );
                of_protocol.push(score);
            }
            // The calls went over this protocol's port.
            let after = fetch_metrics(model).await;
            let port = if protocol == Protocol::Grpc {
                "grpc"
            } else {
                "http"
            };
            let n = reference.user_ids.len() as f64;
            assert_eq!(
                requests_over(&after, port) - requests_over(&before, port),
                n,
                "{protocol}: {n} infer calls counted under protocol={port}"
            );
            scores.push(of_protocol);
        }
        // Bit for bit: the same FP32 values went in, the same came out.
        assert_eq!(scores[0], scores[1], "{version}: JSON vs binary tensors");
        assert_eq!(scores[0], scores[2], "{version}: JSON vs gRPC");
    }
}

async fn fetch_metrics(model: &BothPorts) -> String {
    test_support::http::fetch_text(&model.rest.url("/metrics")).await
}

#[tokio::test]
async fn binary_tensors_are_what_goes_over_the_wire() {
    let features = feature_store().await;
    let v1 = model_both("v1").await;
    let rec = Recorder::start(&v1.rest.base()).await;
    let mut args = frontend::FrontendArgs::direct(features.base(), rec.base(), rec.base());
    args.model_protocol = Protocol::HttpBinary;
    args.canary_percent = 0;
    let app = frontend(&args);
    let a = get(&app, "/predict?user_id=42").await;
    assert_eq!(a.json["degraded"], false, "{}", a.json);
    let infer: Vec<_> = rec
        .seen()
        .into_iter()
        .filter(|s| s.path.ends_with("/infer"))
        .collect();
    assert_eq!(infer.len(), 1);
    let h = &infer[0].headers;
    assert_eq!(h["content-type"], oip::OCTET_STREAM);
    let json_len: usize = h[oip::HEADER_LENGTH].to_str().unwrap().parse().unwrap();
    let body_len: usize = h["content-length"].to_str().unwrap().parse().unwrap();
    let width = reference().inputs[0].len();
    assert_eq!(
        body_len - json_len,
        width * 4,
        "the features as raw FP32 after the JSON"
    );
}

#[tokio::test]
async fn a_grpc_model_that_is_down_or_refuses_is_classified_as_over_rest() {
    let features = feature_store().await;
    let (v1, v2) = (model_both("v1").await, model_both("v2").await);

    // Down: nothing listens on the gRPC URL.
    let mut args = frontend::FrontendArgs::direct(features.base(), v1.rest.base(), v2.rest.base());
    args.model_protocol = Protocol::Grpc;
    args.model_v1_grpc_url = Some(dead_url());
    args.model_v2_grpc_url = Some(v2.grpc.base());
    args.canary_percent = 0;
    let app = frontend(&args);
    let a = get(&app, "/predict?user_id=42").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["degraded"], true, "{}", a.json);
    assert_eq!(a.json["reason"], "model v1 unavailable", "{}", a.json);
    let text = test_support::http::get_text(&app, "/metrics").await;
    assert_eq!(upstream_errors(&text, "model-inference", "connect"), 1.0);

    // Refused: a model name the server does not serve is NOT_FOUND, read as
    // the 404 REST would answer, and attributed to the version.
    args.model_v1_grpc_url = Some(v1.grpc.base());
    args.model_name = "no-such-model".into();
    let app = frontend(&args);
    let a = get(&app, "/predict?user_id=42").await;
    assert_eq!(a.json["degraded"], true, "{}", a.json);
    assert_eq!(a.json["reason"], "model v1 failed", "{}", a.json);
    let text = test_support::http::get_text(&app, "/metrics").await;
    assert_eq!(upstream_errors(&text, "model-inference", "status"), 1.0);
}

#[test]
fn a_grpc_url_defaults_to_the_rest_hosts_grpc_port() {
    let mut args = frontend::FrontendArgs::direct(
        "http://fs:8080".into(),
        "http://model-inference-v1:8080".into(),
        "http://model-inference-v2:8080/".into(),
    );
    args.model_protocol = Protocol::Grpc;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Building the frontend connects lazily: no model needs to be up.
    let _guard = rt.enter();
    assert!(frontend::app(&args, mesh_kit::ServerArgs::for_tests()).is_ok());
    args.model_v1_url = Some("not a url".into());
    let err = frontend::app(&args, mesh_kit::ServerArgs::for_tests())
        .expect_err("no gRPC URL can be derived from a non-URL");
    assert!(err.to_string().contains("grpc-url"), "{err}");
}

#[tokio::test]
async fn a_shadow_is_mirrored_in_the_live_protocol() {
    let features = feature_store().await;
    let (v1, v2) = (model_both("v1").await, model_both("v2").await);
    for protocol in PROTOCOLS {
        let mut args =
            frontend::FrontendArgs::direct(features.base(), v1.rest.base(), v2.rest.base());
        args.model_protocol = protocol;
        args.model_v1_grpc_url = Some(v1.grpc.base());
        args.model_v2_grpc_url = Some(v2.grpc.base());
        args.shadow_url = Some(v2.rest.base());
        args.shadow_grpc_url = Some(v2.grpc.base());
        args.canary_percent = 0;
        let port = if protocol == Protocol::Grpc {
            "grpc"
        } else {
            "http"
        };
        let shadowed = |text: &str| -> f64 {
            samples(text, "mlmesh_inference_requests")
                .iter()
                .filter(|s| {
                    s.labels.get("traffic").map(String::as_str) == Some("shadow")
                        && s.labels.get("protocol").map(String::as_str) == Some(port)
                })
                .map(|s| s.value)
                .sum()
        };
        let before = shadowed(&fetch_metrics(&v2).await);
        let app = frontend(&args);
        let a = get(&app, "/predict?user_id=42").await;
        assert_eq!(a.json["model_version"], "v1", "{protocol}: v1 answers");
        // Fire-and-forget: wait for the copy to land.
        let mut after = before;
        for _ in 0..100 {
            after = shadowed(&fetch_metrics(&v2).await);
            if after > before {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(
            after - before,
            1.0,
            "{protocol}: v2 counted one call as shadow (Host suffixed -shadow) over {port}"
        );
    }
}
