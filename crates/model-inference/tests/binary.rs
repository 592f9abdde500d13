//! The binary tensor data extension, the statistics extension and the model
//! configuration, through the router with `oneshot`: answers equal to the
//! JSON path's, and a table of lying or malformed framings, each a 400 with
//! a JSON message, the service healthy after.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use common::{N_FEATURES, close, infer_body, le, model_args, probabilities, reference};
use http_body_util::BodyExt;
use mesh_kit::ServerArgs;
use serde_json::{Value, json};
use test_support::http::{get, post_json};
use tower::ServiceExt;

const INFER: &str = "/v2/models/propensity/infer";

fn app() -> Router {
    model_inference::app(&model_args("v1"), ServerArgs::for_tests())
        .unwrap()
        .0
}

struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// POSTs `json` followed by `binary`, with `header` as the
/// Inference-Header-Content-Length (`Some("")` = the JSON's true length).
async fn framed(app: &Router, json: &str, binary: &[u8], header: Option<&str>) -> Raw {
    let mut body = json.as_bytes().to_vec();
    body.extend_from_slice(binary);
    // Without the header the body must be JSON (else 415), so say it is.
    let content_type = if header.is_some() {
        oip::OCTET_STREAM
    } else {
        "application/json"
    };
    let mut req = Request::post(INFER).header(header::CONTENT_TYPE, content_type);
    match header {
        Some("") => req = req.header(oip::HEADER_LENGTH, json.len()),
        Some(h) => req = req.header(oip::HEADER_LENGTH, h),
        None => {}
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    Raw {
        status: res.status(),
        headers: res.headers().clone(),
        body: res.into_body().collect().await.unwrap().to_bytes().to_vec(),
    }
}

/// A binary answer decoded with the same types a client uses.
fn decode(raw: &Raw) -> (Value, Vec<f32>) {
    let len: usize = raw.headers[oip::HEADER_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (json, binary) = oip::split_body(&raw.body, Some(len.to_string().as_bytes())).unwrap();
    let mut res: oip::InferResponse = serde_json::from_slice(json).unwrap();
    let header: Value = serde_json::from_slice(json).unwrap();
    res.take_binary(binary).unwrap();
    (header, res.output("probability").unwrap().to_vec())
}

fn binary_request(rows: usize, extra: &str) -> String {
    format!(
        r#"{{"id":"b-1","inputs":[{{"name":"features","shape":[{rows},{N_FEATURES}],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}]{extra}}}"#,
        rows * N_FEATURES * 4
    )
}

#[tokio::test]
async fn binary_in_and_out_equals_the_reference_and_the_json_path() {
    let app = app();
    let r = reference();
    let rows: Vec<f32> = r.inputs[..8].iter().flatten().copied().collect();
    let want = &r.outputs["v1"].probability[..8];

    // Binary in, every output in binary (what Triton's client asks by default).
    let raw = framed(
        &app,
        &binary_request(8, r#","parameters":{"binary_data_output":true}"#),
        &le(&rows),
        Some(""),
    )
    .await;
    assert_eq!(
        raw.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&raw.body)
    );
    assert_eq!(raw.headers[header::CONTENT_TYPE], oip::OCTET_STREAM);
    assert_eq!(raw.headers["x-model-version"], "v1");
    let (head, got) = decode(&raw);
    assert_eq!(head["id"], "b-1");
    assert!(close(&got, want), "{got:?} vs {want:?}");
    for out in head["outputs"].as_array().unwrap() {
        assert!(out.get("data").is_none(), "{out}");
        assert_eq!(out["parameters"]["binary_data_size"], 8 * 4, "{out}");
    }

    // Binary in, JSON out (no binary output asked for): a plain JSON answer.
    let raw = framed(&app, &binary_request(8, ""), &le(&rows), Some("")).await;
    assert_eq!(raw.status, StatusCode::OK);
    assert!(!raw.headers.contains_key(oip::HEADER_LENGTH));
    let json: Value = serde_json::from_slice(&raw.body).unwrap();
    let from_json_path = probabilities(
        &post_json(&app, INFER, &infer_body(&r.inputs[..8]))
            .await
            .json,
    );
    assert_eq!(
        probabilities(&json),
        from_json_path,
        "binary and JSON inputs score alike"
    );

    // Per-output choice: probability in binary, logit in JSON.
    let outputs = r#","outputs":[{"name":"logit","parameters":{"binary_data":false}},{"name":"probability","parameters":{"binary_data":true}}]"#;
    let raw = framed(&app, &binary_request(8, outputs), &le(&rows), Some("")).await;
    let (head, got) = decode(&raw);
    assert!(close(&got, want));
    assert_eq!(head["outputs"][0]["name"], "logit");
    assert_eq!(head["outputs"][0]["data"].as_array().unwrap().len(), 8);
    assert_eq!(
        raw.body.len()
            - raw.headers[oip::HEADER_LENGTH]
                .to_str()
                .unwrap()
                .parse::<usize>()
                .unwrap(),
        8 * 4
    );

    // JSON in, binary out, via the request-wide parameter.
    let mut body = infer_body(&r.inputs[..8]);
    body["parameters"] = json!({"binary_data_output": true});
    let raw = framed(&app, &body.to_string(), &[], Some("")).await;
    assert!(close(&decode(&raw).1, want));
}

#[tokio::test]
async fn lying_or_malformed_framing_is_a_400_with_a_message_and_the_service_stays_healthy() {
    let app = app();
    let row = vec![0.5f32; N_FEATURES];
    let one = binary_request(1, "");
    let with_size = |size: &str| one.replace(&format!("{}", N_FEATURES * 4), size);
    let input = |params: &str, data: &str| {
        format!(
            r#"{{"inputs":[{{"name":"features","shape":[1,{N_FEATURES}],"datatype":"FP32"{params}{data}}}]}}"#
        )
    };
    let mut nan = row.clone();
    nan[3] = f32::NAN;
    let mut inf = row.clone();
    inf[84] = f32::NEG_INFINITY;
    let full = le(&row);
    // (what, JSON part, binary part, header length, the message must say)
    type Case<'a> = (&'a str, String, Vec<u8>, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "header not a number",
            one.clone(),
            full.clone(),
            Some("abc"),
            "whole number",
        ),
        (
            "header negative",
            one.clone(),
            full.clone(),
            Some("-5"),
            "whole number",
        ),
        (
            "header overflowing",
            one.clone(),
            full.clone(),
            Some("99999999999999999999999"),
            "whole number",
        ),
        (
            "header past the body",
            one.clone(),
            full.clone(),
            Some("100000"),
            "has only",
        ),
        (
            "header cuts the JSON",
            one.clone(),
            full.clone(),
            Some("20"),
            "invalid inference request",
        ),
        (
            "header zero",
            one.clone(),
            full.clone(),
            Some("0"),
            "invalid inference request",
        ),
        (
            "size past the body",
            with_size("680"),
            full.clone(),
            Some(""),
            "only 340 are left",
        ),
        (
            "size huge",
            with_size("18446744073709551612"),
            full.clone(),
            Some(""),
            "only 340 are left",
        ),
        (
            "size negative",
            with_size("-4"),
            full.clone(),
            Some(""),
            "whole number",
        ),
        (
            "size fractional",
            with_size("1.5"),
            full.clone(),
            Some(""),
            "whole number",
        ),
        (
            "size a string",
            with_size("\"340\""),
            full.clone(),
            Some(""),
            "whole number",
        ),
        (
            "size overflowing u64",
            with_size("1e30"),
            full.clone(),
            Some(""),
            "whole number",
        ),
        (
            "size not whole FP32 values",
            with_size("339"),
            full[..339].to_vec(),
            Some(""),
            "not a whole number of FP32",
        ),
        (
            "fewer values than the shape",
            with_size("336"),
            full[..336].to_vec(),
            Some(""),
            "data values",
        ),
        (
            "bytes nobody claims",
            one.clone(),
            [full.clone(), vec![0; 8]].concat(),
            Some(""),
            "belong to no input",
        ),
        (
            "size without the header",
            one.clone(),
            Vec::new(),
            None,
            "no inference-header-content-length",
        ),
        (
            "both data and size",
            input(
                r#","parameters":{"binary_data_size":340}"#,
                &format!(r#","data":{:?}"#, row),
            ),
            full.clone(),
            Some(""),
            "both",
        ),
        (
            "neither data nor size",
            input("", ""),
            Vec::new(),
            Some(""),
            "neither",
        ),
        (
            "a BYTES tensor",
            one.replace("FP32", "BYTES"),
            full.clone(),
            Some(""),
            "BYTES in binary",
        ),
        ("NaN", one.clone(), le(&nan), Some(""), "finite"),
        ("infinity", one.clone(), le(&inf), Some(""), "finite"),
        (
            "binary_data not a bool",
            binary_request(
                1,
                r#","outputs":[{"name":"probability","parameters":{"binary_data":"yes"}}]"#,
            ),
            full.clone(),
            Some(""),
            "true or false",
        ),
        (
            "binary_data_output not a bool",
            binary_request(1, r#","parameters":{"binary_data_output":1}"#),
            full.clone(),
            Some(""),
            "true or false",
        ),
    ];
    assert!(cases.len() >= 15);
    for (what, json, binary, header, want) in &cases {
        let raw = framed(&app, json, binary, *header).await;
        let body: Value = serde_json::from_slice(&raw.body).unwrap_or_else(|e| {
            panic!(
                "{what}: non-JSON answer {}: {e}",
                String::from_utf8_lossy(&raw.body)
            )
        });
        assert_eq!(raw.status, StatusCode::BAD_REQUEST, "{what}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{what}: {msg:?} lacks {want:?}");
    }
    // Still healthy, and still scoring binary requests.
    assert_eq!(get(&app, "/v2/health/ready").await.status, StatusCode::OK);
    let raw = framed(&app, &one, &full, Some("")).await;
    assert_eq!(raw.status, StatusCode::OK);
    // The failures were counted as such in the statistics.
    let s = get(&app, "/v2/models/propensity/stats").await.json;
    let stats = &s["model_stats"][0]["inference_stats"];
    assert_eq!(stats["fail"]["count"], cases.len(), "{s}");
    assert_eq!(stats["success"]["count"], 1, "{s}");
}

#[tokio::test]
async fn statistics_count_requests_rows_runs_and_batch_sizes() {
    let app = app();
    let r = reference();
    let s = get(&app, "/v2/models/propensity/stats").await.json;
    assert_eq!(s["model_stats"][0]["inference_count"], 0, "{s}");
    assert_eq!(s["model_stats"][0]["last_inference"], 0);
    for rows in [1usize, 3, 8] {
        let a = post_json(&app, INFER, &infer_body(&r.inputs[..rows])).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let bad = post_json(&app, INFER, &json!({"inputs": []})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    for path in [
        "/v2/models/stats",
        "/v2/models/propensity/stats",
        "/v2/models/propensity/versions/v1/stats",
    ] {
        let a = get(&app, path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        let m = &a.json["model_stats"][0];
        assert_eq!(
            (m["name"].as_str(), m["version"].as_str()),
            (Some("propensity"), Some("v1"))
        );
        assert_eq!(
            m["inference_count"], 12,
            "{path}: rows of successful requests"
        );
        let st = &m["inference_stats"];
        assert_eq!(st["success"]["count"], 3);
        assert_eq!(st["fail"]["count"], 1);
        assert!(st["success"]["ns"].as_u64().unwrap() > 0);
        assert_eq!(st["queue"]["count"], 3);
        assert_eq!(st["compute_infer"]["count"], 3);
        // Sequential requests run alone: one model run each, at its own size.
        assert_eq!(m["execution_count"], 3);
        let sizes: Vec<u64> = m["batch_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["batch_size"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, [1, 3, 8], "{path}");
        assert!(m["last_inference"].as_u64().unwrap() > 1_700_000_000_000);
    }
    for path in [
        "/v2/models/other/stats",
        "/v2/models/propensity/versions/v9/stats",
    ] {
        assert_eq!(
            get(&app, path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[tokio::test]
async fn configuration_and_extensions_are_advertised() {
    let app = app();
    let a = get(&app, "/v2").await;
    let ext: Vec<&str> = a.json["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(ext, oip::EXTENSIONS);
    for path in [
        "/v2/models/propensity/config",
        "/v2/models/propensity/versions/v1/config",
    ] {
        let c = get(&app, path).await;
        assert_eq!(c.status, StatusCode::OK, "{path}");
        assert_eq!(c.json["name"], "propensity");
        assert_eq!(
            c.json["input"],
            json!([{"name": "features", "data_type": "TYPE_FP32", "dims": [N_FEATURES]}])
        );
        assert_eq!(
            c.json["output"][1],
            json!({"name": "probability", "data_type": "TYPE_FP32", "dims": [1]})
        );
        assert!(c.json["max_batch_size"].as_u64().unwrap() >= 8);
    }
    assert_eq!(
        get(&app, "/v2/models/other/config").await.status,
        StatusCode::NOT_FOUND
    );
}
