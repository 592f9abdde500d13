//! Open Inference Protocol conformance and bad-input handling, driven through
//! the router with `oneshot` (no sockets).

mod common;

use axum::Router;
use axum::http::{StatusCode, header};
use common::{N_FEATURES, infer_body, model_args, reference};
use mesh_kit::ServerArgs;
use serde_json::{Value, json};

fn app() -> Router {
    model_inference::app(&model_args("v1"), ServerArgs::for_tests())
        .unwrap()
        .0
}

use test_support::http::{call, get, post_json};

const INFER: &str = "/v2/models/propensity/infer";

#[tokio::test]
async fn server_and_health_endpoints() {
    let app = app();
    let a = get(&app, "/v2").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["name"], "mlmesh-model-inference");
    assert!(a.json["version"].is_string() && a.json["extensions"].is_array());
    for path in ["/v2/health/live", "/v2/health/ready", "/healthz", "/readyz"] {
        let a = get(&app, path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.headers["x-model-version"], "v1", "{path}");
    }
}

#[tokio::test]
async fn model_metadata_and_readiness_plain_and_versioned() {
    let app = app();
    for path in ["/v2/models/propensity", "/v2/models/propensity/versions/v1"] {
        let a = get(&app, path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.json["name"], "propensity");
        assert_eq!(a.json["versions"], json!(["v1"]));
        assert_eq!(
            a.json["inputs"],
            json!([{"name": "features", "datatype": "FP32", "shape": [-1, N_FEATURES]}])
        );
        assert_eq!(
            a.json["outputs"],
            json!([
                {"name": "logit", "datatype": "FP32", "shape": [-1, 1]},
                {"name": "probability", "datatype": "FP32", "shape": [-1, 1]},
            ])
        );
        let names = a.json["parameters"]["feature_names"].as_str().unwrap();
        assert_eq!(names.split(',').count(), N_FEATURES);
        assert!(names.starts_with("MOSTYPE,"));
    }
    for path in [
        "/v2/models/propensity/ready",
        "/v2/models/propensity/versions/v1/ready",
    ] {
        let a = get(&app, path).await;
        assert_eq!(
            (a.status, &a.json),
            (StatusCode::OK, &json!({"ready": true})),
            "{path}"
        );
    }
    for path in [
        "/v2/models/other",
        "/v2/models/propensity/versions/v2",
        "/v2/models/other/ready",
    ] {
        let a = get(&app, path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(a.json["error"].as_str().unwrap().contains("not found"));
    }
}

#[tokio::test]
async fn infer_echoes_id_and_matches_the_reference() {
    let app = app();
    let r = reference();
    let mut body = infer_body(&r.inputs);
    body["id"] = json!("req-42");
    let a = post_json(&app, INFER, &body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.headers["x-model-version"], "v1");
    assert!(a.headers.contains_key("x-request-id"));
    assert_eq!(a.json["id"], "req-42");
    assert_eq!(a.json["model_name"], "propensity");
    assert_eq!(a.json["model_version"], "v1");
    let outputs = a.json["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    let prob = &outputs[1];
    assert_eq!(prob["name"], "probability");
    assert_eq!(prob["datatype"], "FP32");
    assert_eq!(prob["shape"], json!([r.inputs.len(), 1]));
    for (got, want) in prob["data"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&r.outputs["v1"].probability)
    {
        assert!((got.as_f64().unwrap() - want).abs() < 1e-5);
    }

    // No id in, no id out.
    let a = post_json(&app, INFER, &infer_body(&r.inputs[..1])).await;
    assert!(a.json.get("id").is_none());
}

#[tokio::test]
async fn nested_data_equals_flat_data() {
    let app = app();
    let r = reference();
    let flat = post_json(&app, INFER, &infer_body(&r.inputs[..3])).await;
    let nested = json!({"inputs": [{"name": "features", "shape": [3, N_FEATURES], "datatype": "FP32", "data": r.inputs[..3]}]});
    let nested = post_json(&app, INFER, &nested).await;
    assert_eq!(nested.status, StatusCode::OK, "{}", nested.json);
    assert_eq!(flat.json["outputs"], nested.json["outputs"]);
}

#[tokio::test]
async fn outputs_filter_and_versioned_infer_path() {
    let app = app();
    let r = reference();
    let mut body = infer_body(&r.inputs[..2]);
    body["outputs"] = json!([{"name": "probability"}]);
    for path in [INFER, "/v2/models/propensity/versions/v1/infer"] {
        let a = post_json(&app, path, &body).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.json);
        let outputs = a.json["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "{path}");
        assert_eq!(outputs[0]["name"], "probability");
        assert_eq!(outputs[0]["shape"], json!([2, 1]));
    }
    // Order follows the request.
    body["outputs"] =
        json!([{"name": "probability"}, {"name": "logit", "parameters": {"binary_data": false}}]);
    let a = post_json(&app, INFER, &body).await;
    let names: Vec<&str> = a.json["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["probability", "logit"]);
}

/// (what, method, path, content-type, body, expected status)
type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, String, u16);

fn row_data(rows: usize) -> Vec<f32> {
    vec![1.0; rows * N_FEATURES]
}

fn tensor(name: &str, shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_json_errors_and_the_service_stays_healthy() {
    let app = app();
    let ok = |data: Value| tensor("features", json!([1, N_FEATURES]), "FP32", data);
    let one = json!(row_data(1));
    let with_value = |v: Value| {
        let mut d = row_data(1).into_iter().map(Value::from).collect::<Vec<_>>();
        d[7] = v;
        ok(Value::Array(d))
    };
    let json_ct = Some("application/json");
    let j = |v: Value| v.to_string();
    let with_outputs = |outputs: Value| {
        let mut b = ok(one.clone());
        b["outputs"] = outputs;
        j(b)
    };
    let huge_body = format!("{{\"inputs\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20));

    let cases: Vec<Case> = vec![
        (
            "invalid JSON",
            "POST",
            INFER,
            json_ct,
            "{\"inputs\": [".into(),
            400,
        ),
        ("empty body", "POST", INFER, json_ct, String::new(), 400),
        (
            "JSON array body",
            "POST",
            INFER,
            json_ct,
            "[1, 2]".into(),
            400,
        ),
        ("missing inputs", "POST", INFER, json_ct, "{}".into(), 400),
        (
            "inputs not a list",
            "POST",
            INFER,
            json_ct,
            "{\"inputs\": {}}".into(),
            400,
        ),
        (
            "no inputs",
            "POST",
            INFER,
            json_ct,
            "{\"inputs\": []}".into(),
            400,
        ),
        (
            "unknown input name",
            "POST",
            INFER,
            json_ct,
            j(tensor("x", json!([1, N_FEATURES]), "FP32", one.clone())),
            400,
        ),
        (
            "extra input",
            "POST",
            INFER,
            json_ct,
            {
                let mut b = ok(one.clone());
                let extra =
                    tensor("extra", json!([1, 1]), "FP32", json!([1.0]))["inputs"][0].clone();
                b["inputs"].as_array_mut().unwrap().push(extra);
                j(b)
            },
            400,
        ),
        (
            "duplicate input",
            "POST",
            INFER,
            json_ct,
            {
                let mut b = ok(one.clone());
                let dup = b["inputs"][0].clone();
                b["inputs"].as_array_mut().unwrap().push(dup);
                j(b)
            },
            400,
        ),
        (
            "wrong datatype",
            "POST",
            INFER,
            json_ct,
            j(tensor(
                "features",
                json!([1, N_FEATURES]),
                "INT32",
                one.clone(),
            )),
            400,
        ),
        (
            "BYTES data",
            "POST",
            INFER,
            json_ct,
            j(tensor("features", json!([1, 1]), "BYTES", json!(["abc"]))),
            400,
        ),
        (
            "rank-1 shape",
            "POST",
            INFER,
            json_ct,
            j(tensor("features", json!([N_FEATURES]), "FP32", one.clone())),
            400,
        ),
        (
            "rank-3 shape",
            "POST",
            INFER,
            json_ct,
            j(tensor(
                "features",
                json!([1, 1, N_FEATURES]),
                "FP32",
                one.clone(),
            )),
            400,
        ),
        (
            "wrong feature count",
            "POST",
            INFER,
            json_ct,
            j(tensor(
                "features",
                json!([1, 84]),
                "FP32",
                json!(vec![1.0; 84]),
            )),
            400,
        ),
        (
            "shape/data mismatch",
            "POST",
            INFER,
            json_ct,
            j(tensor(
                "features",
                json!([2, N_FEATURES]),
                "FP32",
                one.clone(),
            )),
            400,
        ),
        (
            "empty batch",
            "POST",
            INFER,
            json_ct,
            j(tensor(
                "features",
                json!([0, N_FEATURES]),
                "FP32",
                json!([]),
            )),
            400,
        ),
        (
            "negative dimension",
            "POST",
            INFER,
            json_ct,
            j(tensor(
                "features",
                json!([-1, N_FEATURES]),
                "FP32",
                one.clone(),
            )),
            400,
        ),
        (
            "oversized batch",
            "POST",
            INFER,
            json_ct,
            j(tensor(
                "features",
                json!([65, N_FEATURES]),
                "FP32",
                json!(row_data(65)),
            )),
            413,
        ),
        (
            "absurd batch dimension",
            "POST",
            INFER,
            json_ct,
            j(tensor(
                "features",
                json!([1_000_000_000_000_i64, N_FEATURES]),
                "FP32",
                one.clone(),
            )),
            413,
        ),
        ("oversized body", "POST", INFER, json_ct, huge_body, 413),
        (
            "NaN as a string",
            "POST",
            INFER,
            json_ct,
            j(with_value(json!("NaN"))),
            400,
        ),
        (
            "NaN literal",
            "POST",
            INFER,
            json_ct,
            j(ok(one.clone())).replacen("1.0", "NaN", 1),
            400,
        ),
        (
            "1e39 overflows FP32",
            "POST",
            INFER,
            json_ct,
            j(ok(one.clone())).replacen("1.0", "1e39", 1),
            400,
        ),
        (
            "-1e39 overflows FP32",
            "POST",
            INFER,
            json_ct,
            j(ok(one.clone())).replacen("1.0", "-1e39", 1),
            400,
        ),
        (
            "null element",
            "POST",
            INFER,
            json_ct,
            j(with_value(Value::Null)),
            400,
        ),
        (
            "boolean element",
            "POST",
            INFER,
            json_ct,
            j(with_value(json!(true))),
            400,
        ),
        (
            "data is a scalar",
            "POST",
            INFER,
            json_ct,
            j(tensor("features", json!([1, 1]), "FP32", json!(5))),
            400,
        ),
        (
            "unknown output",
            "POST",
            INFER,
            json_ct,
            with_outputs(json!([{"name": "score"}])),
            400,
        ),
        (
            "duplicate output",
            "POST",
            INFER,
            json_ct,
            with_outputs(json!([{"name": "logit"}, {"name": "logit"}])),
            400,
        ),
        (
            "empty outputs list",
            "POST",
            INFER,
            json_ct,
            with_outputs(json!([])),
            400,
        ),
        (
            "misspelt top-level field",
            "POST",
            INFER,
            json_ct,
            "{\"input\": []}".into(),
            400,
        ),
        (
            "id is not a string",
            "POST",
            INFER,
            json_ct,
            {
                let mut b = ok(one.clone());
                b["id"] = json!(7);
                j(b)
            },
            400,
        ),
        (
            "unknown model",
            "POST",
            "/v2/models/other/infer",
            json_ct,
            j(ok(one.clone())),
            404,
        ),
        (
            "unknown version",
            "POST",
            "/v2/models/propensity/versions/v9/infer",
            json_ct,
            j(ok(one.clone())),
            404,
        ),
        (
            "text/plain",
            "POST",
            INFER,
            Some("text/plain"),
            j(ok(one.clone())),
            415,
        ),
        (
            "curl's default form type",
            "POST",
            INFER,
            Some("application/x-www-form-urlencoded"),
            j(ok(one.clone())),
            415,
        ),
        ("GET on infer", "GET", INFER, None, String::new(), 405),
        (
            "DELETE on metadata",
            "DELETE",
            "/v2/models/propensity",
            None,
            String::new(),
            405,
        ),
        (
            "unknown path",
            "GET",
            "/v3/models",
            None,
            String::new(),
            404,
        ),
    ];
    assert!(cases.len() >= 25);

    for (what, method, path, ct, body, want) in cases {
        let a = call(&app, method, path, ct, body).await;
        assert_eq!(a.status.as_u16(), want, "{what}: {}", a.json);
        let msg = a.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error message in {}", a.json));
        assert!(!msg.is_empty(), "{what}");
        assert_eq!(
            a.headers[header::CONTENT_TYPE],
            "application/json",
            "{what}"
        );
        assert_eq!(a.headers["x-model-version"], "v1", "{what}");
    }

    assert_eq!(get(&app, "/v2/health/ready").await.status, StatusCode::OK);
    let a = post_json(&app, INFER, &ok(one)).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "a good request still works: {}",
        a.json
    );
}

#[tokio::test]
async fn error_messages_say_what_to_fix() {
    let app = app();
    let a = post_json(
        &app,
        INFER,
        &tensor(
            "features",
            json!([1, N_FEATURES]),
            "INT64",
            json!(row_data(1)),
        ),
    )
    .await;
    assert!(
        a.json["error"].as_str().unwrap().contains("FP32"),
        "{}",
        a.json
    );
    let a = post_json(
        &app,
        INFER,
        &tensor(
            "features",
            json!([65, N_FEATURES]),
            "FP32",
            json!(row_data(65)),
        ),
    )
    .await;
    assert!(
        a.json["error"].as_str().unwrap().contains("maximum of 64"),
        "{}",
        a.json
    );
    let a = call(&app, "POST", INFER, Some("text/plain"), "{}").await;
    assert!(
        a.json["error"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{}",
        a.json
    );
}

/// The request bodies the README tells people to `curl -d @...` must work.
#[tokio::test]
async fn readme_example_requests_work() {
    let app = app();
    let dir = common::models_dir().join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json")
            && path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("infer")
        {
            let body: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let a = post_json(&app, INFER, &body).await;
            assert_eq!(a.status, StatusCode::OK, "{}: {}", path.display(), a.json);
            assert_eq!(a.json["id"], body["id"]);
            seen += 1;
        }
    }
    assert!(seen >= 2, "examples/ lost its request bodies");
    let body: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("infer-user-42.json")).unwrap())
            .unwrap();
    let a = post_json(&app, INFER, &body).await;
    let r = reference();
    let i = r.user_ids.iter().position(|u| u == "42").unwrap();
    let got = a.json["outputs"][1]["data"][0].as_f64().unwrap();
    assert!(
        (got - r.outputs["v1"].probability[i]).abs() < 1e-5,
        "user 42 scores {got}"
    );
}

/// A caller may state the column order it built its rows in; a model with a
/// different order refuses (409) instead of scoring shuffled features.
#[tokio::test]
async fn a_stated_feature_order_must_match_the_models() {
    let app = app();
    let meta = get(&app, "/v2/models/propensity").await;
    let names = meta.json["parameters"]["feature_names"]
        .as_str()
        .unwrap()
        .to_owned();
    let with = |parameters: Value| {
        let mut body = tensor(
            "features",
            json!([1, N_FEATURES]),
            "FP32",
            json!(row_data(1)),
        );
        body["parameters"] = parameters;
        body
    };

    let a = post_json(&app, INFER, &with(json!({ "feature_names": names }))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);

    let mut swapped: Vec<&str> = names.split(',').collect();
    swapped.swap(3, 4);
    let a = post_json(
        &app,
        INFER,
        &with(json!({ "feature_names": swapped.join(",") })),
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.json);
    let error = a.json["error"].as_str().unwrap();
    assert!(
        error.contains("column 3") && error.contains("metadata"),
        "{error}"
    );

    let a = post_json(&app, INFER, &with(json!({ "feature_names": "MOSTYPE" }))).await;
    assert_eq!(
        a.status,
        StatusCode::CONFLICT,
        "a prefix is not the order: {}",
        a.json
    );

    // The whole list and one more, or spaced out, is not the order either.
    for longer in [
        format!("{names},EXTRA"),
        format!("{names},"),
        names.replace(',', ", "),
    ] {
        let a = post_json(&app, INFER, &with(json!({ "feature_names": longer }))).await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{longer:.40}: {}", a.json);
    }

    let a = post_json(&app, INFER, &with(json!({ "feature_names": ["MOSTYPE"] }))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.json);

    // The order's digest from the metadata stands for the names: 16 hex
    // digits, accepted as they are, refused once anything else.
    let fingerprint = meta.json["parameters"]["feature_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fingerprint.len(), 16, "{fingerprint}");
    assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
    let a = post_json(
        &app,
        INFER,
        &with(json!({ "feature_fingerprint": fingerprint })),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let mut other = fingerprint.clone().into_bytes();
    other[15] = if other[15] == b'0' { b'1' } else { b'0' };
    let other = String::from_utf8(other).unwrap();
    for stated in [
        json!({ "feature_fingerprint": other }),
        json!({ "feature_fingerprint": "" }),
        // Both stated: each must hold.
        json!({ "feature_names": names, "feature_fingerprint": other }),
        json!({ "feature_names": swapped.join(","), "feature_fingerprint": fingerprint }),
    ] {
        let a = post_json(&app, INFER, &with(stated.clone())).await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{stated}: {}", a.json);
        let error = a.json["error"].as_str().unwrap();
        assert!(error.contains("metadata"), "{error}");
    }
    let a = post_json(&app, INFER, &with(json!({ "feature_fingerprint": 42 }))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.json);

    // Other parameters are still ignored, as OIP allows.
    let a = post_json(&app, INFER, &with(json!({ "priority": 1 }))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}
