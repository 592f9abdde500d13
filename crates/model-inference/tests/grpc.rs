//! The gRPC protocol on its own port, driven with a tonic client generated
//! from the same proto: metadata, readiness, health, configuration,
//! statistics, raw and typed tensors equal to the reference, and a table
//! of bad requests, each a proper status code with a message, the service
//! healthy after.

mod common;

use std::collections::HashMap;

use common::{N_FEATURES, TestApp, close, le, model_args, reference};
use mesh_kit::ServerArgs;
use oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use oip::grpc::infer_parameter::ParameterChoice;
use oip::grpc::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use oip::grpc::{self as pb, InferParameter, InferTensorContents};
use test_support::metrics::sample;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

type Client = GrpcInferenceServiceClient<Channel>;

async fn client(app: &TestApp) -> Client {
    GrpcInferenceServiceClient::connect(format!("http://{}", app.grpc_addr))
        .await
        .expect("connect over h2c")
}

fn input(rows: usize, contents: Option<Vec<f32>>) -> InferInputTensor {
    InferInputTensor {
        name: "features".into(),
        datatype: "FP32".into(),
        shape: vec![rows as i64, N_FEATURES as i64],
        parameters: HashMap::new(),
        contents: contents.map(|fp32_contents| InferTensorContents {
            fp32_contents,
            ..Default::default()
        }),
    }
}

/// The model's Triton configuration over gRPC.
async fn model_config(c: &mut Client) -> pb::ModelConfig {
    c.model_config(pb::ModelConfigRequest {
        name: "propensity".into(),
        version: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .config
    .unwrap()
}

fn raw_request(rows: &[f32], n: usize) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "propensity".into(),
        id: "g-1".into(),
        inputs: vec![input(n, None)],
        raw_input_contents: vec![le(rows)],
        ..Default::default()
    }
}

fn raw_floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[tokio::test]
async fn metadata_readiness_health_config_and_statistics() {
    let app = TestApp::spawn(model_args("v1"), ServerArgs::for_tests()).await;
    let mut c = client(&app).await;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str, version: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("propensity", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("propensity", "v1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_eq!(
        c.model_ready(ready("other", "")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.model_ready(ready("propensity", "v9"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let server = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server.name, "mlmesh-model-inference");
    assert_eq!(server.extensions, oip::EXTENSIONS);
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "propensity".into(),
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (meta.name.as_str(), meta.versions.as_slice()),
        ("propensity", &["v1".to_owned()][..])
    );
    assert_eq!(meta.inputs[0].name, "features");
    assert_eq!(meta.inputs[0].shape, [-1, N_FEATURES as i64]);
    assert_eq!(meta.outputs.len(), 2);

    let config = model_config(&mut c).await;
    assert_eq!(config.input[0].dims, [N_FEATURES as i64]);
    assert_eq!(config.input[0].data_type, pb::DataType::TypeFp32 as i32);
    assert_eq!(config.max_batch_size, 64);

    let mut health = app.grpc_health().await;
    for service in ["", oip::GRPC_SERVICE] {
        let h = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    // Two inferences, then the statistics say so, over gRPC as over REST.
    let r = reference();
    let rows: Vec<f32> = r.inputs[..2].iter().flatten().copied().collect();
    for _ in 0..2 {
        c.model_infer(raw_request(&rows, 2)).await.unwrap();
    }
    let stats = c
        .model_statistics(pb::ModelStatisticsRequest {
            name: "propensity".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = &stats.model_stats[0];
    assert_eq!((s.inference_count, s.execution_count), (4, 2));
    assert_eq!(
        s.inference_stats
            .as_ref()
            .unwrap()
            .success
            .as_ref()
            .unwrap()
            .count,
        2
    );
    let all = c
        .model_statistics(pb::ModelStatisticsRequest::default())
        .await
        .unwrap();
    assert_eq!(all.into_inner().model_stats.len(), 1);

    // Draining: readiness and health turn with the REST probes.
    app.health.begin_drain();
    assert!(
        !c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let h = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn raw_and_typed_tensors_equal_the_reference() {
    let app = TestApp::spawn(model_args("v2"), ServerArgs::for_tests()).await;
    let mut c = client(&app).await;
    let r = reference();
    let rows: Vec<f32> = r.inputs[..8].iter().flatten().copied().collect();
    let want = &r.outputs["v2"].probability[..8];

    // Raw in, raw out (Triton's clients): outputs in model order.
    let res = c.model_infer(raw_request(&rows, 8)).await.unwrap();
    assert_eq!(res.metadata().get("x-model-version").unwrap(), "v2");
    let res = res.into_inner();
    assert_eq!(
        (
            res.model_name.as_str(),
            res.model_version.as_str(),
            res.id.as_str()
        ),
        ("propensity", "v2", "g-1")
    );
    assert_eq!(res.outputs[1].name, "probability");
    assert_eq!(res.outputs[1].shape, [8, 1]);
    assert!(res.outputs.iter().all(|o| o.contents.is_none()));
    let raw = raw_floats(&res.raw_output_contents[1]);
    assert!(close(&raw, want), "{raw:?} vs {want:?}");

    // Typed in, typed out, one output asked for, on the versioned model.
    let typed = pb::ModelInferRequest {
        model_name: "propensity".into(),
        model_version: "v2".into(),
        inputs: vec![input(8, Some(rows.clone()))],
        outputs: vec![InferRequestedOutputTensor {
            name: "probability".into(),
            parameters: HashMap::new(),
        }],
        ..Default::default()
    };
    let res = c.model_infer(typed).await.unwrap().into_inner();
    assert!(res.raw_output_contents.is_empty());
    assert_eq!(res.outputs.len(), 1);
    let typed = &res.outputs[0].contents.as_ref().unwrap().fp32_contents;
    assert_eq!(typed, &raw, "raw and typed tensors score alike");

    // The stated feature order is checked over gRPC too.
    let mut stated = raw_request(&rows, 8);
    stated.parameters.insert(
        oip::FEATURE_NAMES.into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam("A,B".into())),
        },
    );
    let e = c.model_infer(stated).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // And by its digest: the configuration's is taken, another is refused.
    let config = model_config(&mut c).await;
    let fingerprint = &config.parameters[oip::FEATURE_FINGERPRINT].string_value;
    assert_eq!(fingerprint.len(), 16, "{fingerprint}");
    let digest = |value: &str| {
        let mut stated = raw_request(&rows, 8);
        stated.parameters.insert(
            oip::FEATURE_FINGERPRINT.into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::StringParam(value.into())),
            },
        );
        stated
    };
    c.model_infer(digest(fingerprint)).await.unwrap();
    let e = c.model_infer(digest("0123456789abcdef")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Counted under protocol="grpc" in the same metrics as REST.
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |outcome: &str| {
        sample(
            &text,
            "mlmesh_inference_requests",
            &[
                ("protocol", "grpc"),
                ("traffic", "live"),
                ("outcome", outcome),
            ],
        )
        .value
    };
    assert_eq!((count("ok"), count("invalid")), (3.0, 2.0));
}

#[tokio::test]
async fn bad_requests_get_proper_status_codes_and_the_service_stays_healthy() {
    let mut args = model_args("v1");
    args.max_body_bytes = 64 << 10;
    let app = TestApp::spawn(args, ServerArgs::for_tests()).await;
    let mut c = client(&app).await;
    let row = vec![0.5f32; N_FEATURES];
    let ok = || raw_request(&row, 1);
    let with = |f: &dyn Fn(&mut pb::ModelInferRequest)| {
        let mut r = ok();
        f(&mut r);
        r
    };
    let mut nan = row.clone();
    nan[7] = f32::NAN;
    let cases: Vec<(&str, pb::ModelInferRequest, Code, &str)> = vec![
        (
            "unknown model",
            with(&|r| r.model_name = "other".into()),
            Code::NotFound,
            "not found",
        ),
        (
            "unknown version",
            with(&|r| r.model_version = "v9".into()),
            Code::NotFound,
            "not found",
        ),
        (
            "wrong datatype",
            with(&|r| r.inputs[0].datatype = "INT64".into()),
            Code::InvalidArgument,
            "INT64",
        ),
        (
            "wrong datatype, typed",
            with(&|r| {
                r.raw_input_contents.clear();
                r.inputs[0].datatype = "FP64".into();
                r.inputs[0].contents = Some(InferTensorContents {
                    fp64_contents: vec![0.5; N_FEATURES],
                    ..Default::default()
                });
            }),
            Code::InvalidArgument,
            "FP64",
        ),
        (
            "typed contents of another type",
            with(&|r| {
                r.raw_input_contents.clear();
                r.inputs[0].contents = Some(InferTensorContents {
                    int_contents: vec![1; N_FEATURES],
                    ..Default::default()
                });
            }),
            Code::InvalidArgument,
            "int_contents",
        ),
        (
            "shape and data disagree",
            with(&|r| r.inputs[0].shape = vec![2, N_FEATURES as i64]),
            Code::InvalidArgument,
            "data values",
        ),
        (
            "wrong width",
            with(&|r| r.inputs[0].shape = vec![1, 84]),
            Code::InvalidArgument,
            "features per row",
        ),
        (
            "rank 1",
            with(&|r| r.inputs[0].shape = vec![N_FEATURES as i64]),
            Code::InvalidArgument,
            "shape [batch",
        ),
        (
            "both contents and raw",
            with(&|r| {
                r.inputs[0].contents = Some(InferTensorContents {
                    fp32_contents: vec![0.5; N_FEATURES],
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "both",
        ),
        (
            "more raw entries than inputs",
            with(&|r| r.raw_input_contents.push(le(&row))),
            Code::InvalidArgument,
            "raw_input_contents for 1 inputs",
        ),
        (
            "raw not whole FP32",
            with(&|r| r.raw_input_contents[0].pop().map(|_| ()).unwrap_or(())),
            Code::InvalidArgument,
            "whole number",
        ),
        (
            "NaN",
            with(&|r| r.raw_input_contents[0] = le(&nan)),
            Code::InvalidArgument,
            "finite",
        ),
        (
            "unknown input",
            with(&|r| r.inputs[0].name = "x".into()),
            Code::InvalidArgument,
            "unexpected input",
        ),
        (
            "no input",
            with(&|r| {
                r.inputs.clear();
                r.raw_input_contents.clear();
            }),
            Code::InvalidArgument,
            "missing input",
        ),
        (
            "unknown output",
            with(&|r| {
                r.outputs.push(InferRequestedOutputTensor {
                    name: "nope".into(),
                    parameters: HashMap::new(),
                })
            }),
            Code::InvalidArgument,
            "unknown output",
        ),
        (
            "batch over the limit",
            {
                let rows = vec![0.5f32; N_FEATURES * 65];
                raw_request(&rows, 65)
            },
            Code::InvalidArgument,
            "exceeds the maximum",
        ),
    ];
    assert!(cases.len() >= 15);
    for (what, req, code, want) in cases {
        let e = c.model_infer(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(
            e.message().contains(want),
            "{what}: {:?} lacks {want:?}",
            e.message()
        );
    }
    // A message past --max-body-bytes is refused before it is decoded.
    let huge = raw_request(&vec![0.5f32; 20_000], 1);
    let e = c.model_infer(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // Still healthy, still scoring.
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let res = c.model_infer(ok()).await.unwrap().into_inner();
    assert_eq!(raw_floats(&res.raw_output_contents[1]).len(), 1);
}

#[tokio::test]
async fn injected_errors_are_grpc_unavailable_and_spare_the_health_probe() {
    let mut server = ServerArgs::for_tests();
    server.faults.fault_error_rate = 1.0;
    let app = TestApp::spawn(model_args("v1"), server).await;
    let mut c = client(&app).await;
    let row = vec![0.5f32; N_FEATURES];
    let e = c.model_infer(raw_request(&row, 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("FAULT_ERROR_RATE"), "{e:?}");
    let mut health = app.grpc_health().await;
    let h = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, ServingStatus::Serving as i32);
}
