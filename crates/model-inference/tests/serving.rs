//! The service on a real socket: micro-batching, deadlines, overload,
//! graceful drain, and the metrics it exposes.

mod common;

use std::time::Duration;

use common::{
    N_FEATURES, TestApp, infer_body, model_args, probabilities, reference, sample, samples,
};
use mesh_kit::ServerArgs;
use serde_json::Value;

/// 24 distinct rows: the reference customers plus perturbed copies.
fn rows() -> Vec<Vec<f32>> {
    let r = reference();
    let mut rows = r.inputs.clone();
    for (i, base) in r.inputs.iter().cycle().take(14).enumerate() {
        rows.push(
            base.iter()
                .enumerate()
                .map(|(j, v)| if j % 7 == i % 7 { v + 1.0 } else { *v })
                .collect(),
        );
    }
    rows
}

#[tokio::test]
async fn concurrent_single_rows_equal_one_batched_request_in_order() {
    let mut args = model_args("v2");
    // One worker and a generous gathering window make coalescing certain.
    args.workers = Some(1);
    args.max_queue_delay = Duration::from_millis(200);
    let app = TestApp::spawn(args, ServerArgs::for_tests()).await;
    let rows = rows();

    let batched = app.infer(&rows).await;
    let batched = probabilities(&batched);
    assert_eq!(batched.len(), rows.len());

    let singles = rows.iter().map(|row| {
        let req = app
            .client
            .post(app.infer_url())
            .json(&infer_body(std::slice::from_ref(row)));
        async move { probabilities(&req.send().await.unwrap().json::<Value>().await.unwrap())[0] }
    });
    let singles = futures_join_all(singles).await;
    for (i, (s, b)) in singles.iter().zip(&batched).enumerate() {
        assert!((s - b).abs() < 1e-6, "row {i}: single {s} vs batched {b}");
    }

    let text = app.metrics_text().await;
    let runs = sample(&text, "mlmesh_inference_batch_rows", &[("version", "v2")]);
    let single_requests = rows.len() as f64;
    // One run for the batched request; the singles must have shared runs.
    assert!(
        runs.value < 1.0 + single_requests,
        "no coalescing: {} runs for {} single-row requests",
        runs.value - 1.0,
        single_requests
    );
}

/// Runs the futures concurrently on the runtime and collects their outputs in order.
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn request_whose_deadline_passes_in_the_queue_gets_504() {
    let mut args = model_args("v1");
    args.workers = Some(1);
    args.max_queue_delay = Duration::from_millis(300);
    let app = TestApp::spawn(args, ServerArgs::for_tests()).await;
    let body = infer_body(&reference().inputs[..1]);

    // Waits ~300ms for company; Envoy said only 50ms were left.
    let res = app
        .client
        .post(app.infer_url())
        .header("x-envoy-expected-rq-timeout-ms", "50")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    let err: Value = res.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("deadline"), "{err}");

    // A generous deadline is honoured.
    let res = app
        .client
        .post(app.infer_url())
        .header("x-envoy-expected-rq-timeout-ms", "5000")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let text = app.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            "mlmesh_inference_requests",
            &[
                ("outcome", "expired"),
                ("traffic", "live"),
                ("protocol", "http")
            ]
        )
        .value,
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "mlmesh_inference_requests",
            &[("outcome", "ok"), ("traffic", "live"), ("protocol", "http")]
        )
        .value,
        1.0
    );
}

#[tokio::test]
async fn a_flood_is_answered_with_200_or_429_never_5xx_and_every_answer_is_counted() {
    let mut args = model_args("v2");
    args.workers = Some(1);
    args.queue_capacity = 1;
    let app = TestApp::spawn(args, ServerArgs::for_tests()).await;
    let body = infer_body(&vec![vec![1.0; N_FEATURES]; 64]);
    // Whether any request is shed depends on scheduling (the queue bound
    // itself is unit-tested in the batcher); what must hold is the contract.
    let reqs = (0..96).map(|_| {
        let req = app.client.post(app.infer_url()).json(&body);
        async move {
            let res = req.send().await.unwrap();
            (
                res.status().as_u16(),
                res.headers().get("retry-after").cloned(),
            )
        }
    });
    let answers = futures_join_all(reqs).await;
    let mut shed = 0;
    for (status, retry_after) in &answers {
        match status {
            200 => {}
            429 => {
                shed += 1;
                assert_eq!(retry_after.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
            }
            other => panic!("overload must answer 200 or 429, got {other}"),
        }
    }
    let text = app.metrics_text().await;
    let rejected = sample(
        &text,
        "mlmesh_inference_requests",
        &[
            ("outcome", "rejected"),
            ("traffic", "live"),
            ("protocol", "http"),
        ],
    )
    .value;
    assert_eq!(
        rejected,
        f64::from(shed),
        "every 429 is counted as rejected"
    );
    let ok = sample(
        &text,
        "mlmesh_inference_requests",
        &[("outcome", "ok"), ("traffic", "live"), ("protocol", "http")],
    )
    .value;
    assert_eq!(ok + rejected, answers.len() as f64);
}

#[tokio::test]
async fn in_flight_requests_finish_while_readiness_fails_during_drain() {
    let mut server = ServerArgs::for_tests();
    server.drain_delay = Duration::from_millis(600);
    // Slow every business request so one is surely in flight at SIGTERM.
    server.faults.fault_delay = Duration::from_millis(1200);
    let mut app = TestApp::spawn(model_args("v1"), server).await;
    let body = infer_body(&reference().inputs[..1]);

    let in_flight = tokio::spawn(app.client.post(app.infer_url()).json(&body).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;

    for path in ["/readyz", "/v2/health/ready"] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 503, "{path} must fail while draining");
    }
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "still live while draining"
    );
    assert!(!app.health.is_ready());

    let res = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-mlmesh-fault"], "delay");
    assert_eq!(probabilities(&res.json().await.unwrap()).len(), 1);

    tokio::time::timeout(Duration::from_secs(5), app.server)
        .await
        .expect("server stops after draining")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_app_labels_and_exemplars() {
    let app = TestApp::spawn(model_args("v2"), ServerArgs::for_tests()).await;
    let rows = reference().inputs;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    // Envoy marks mirrored requests by suffixing the Host. Sent first: each
    // histogram bucket keeps only its latest exemplar, and this request starts
    // a trace of its own.
    let res = app
        .client
        .post(app.infer_url())
        .header("host", "model-inference-shadow:8080")
        .json(&infer_body(&rows[..1]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for _ in 0..3 {
        let res = app
            .client
            .post(app.infer_url())
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .json(&infer_body(&rows[..2]))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    for _ in 0..2 {
        let res = app
            .client
            .post(app.infer_url())
            .body("{")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
    }
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = res.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"));

    let req = |traffic, outcome| {
        sample(
            &text,
            "mlmesh_inference_requests",
            &[
                ("model", "propensity"),
                ("version", "v2"),
                ("traffic", traffic),
                ("protocol", "http"),
                ("outcome", outcome),
            ],
        )
        .value
    };
    assert_eq!(req("live", "ok"), 3.0);
    assert_eq!(req("shadow", "ok"), 1.0);
    assert_eq!(req("live", "invalid"), 2.0);
    assert_eq!(req("live", "error"), 0.0);

    let scores = |traffic| {
        sample(
            &text,
            "mlmesh_prediction_score",
            &[("version", "v2"), ("traffic", traffic)],
        )
        .value
    };
    assert_eq!(scores("live"), 6.0, "one score per row answered");
    assert_eq!(scores("shadow"), 1.0);
    for family in [
        "mlmesh_inference_queue_wait_seconds",
        "mlmesh_inference_compute_seconds",
        "mlmesh_inference_batch_rows",
    ] {
        let s = sample(&text, family, &[("model", "propensity"), ("version", "v2")]);
        assert!(s.value >= 1.0, "{family} observed nothing");
    }
    assert_eq!(samples(&text, "mlmesh_inference_queue_depth").len(), 1);

    let route = "/v2/models/{name}/infer";
    let http = |status| {
        sample(
            &text,
            "mlmesh_http_requests",
            &[("route", route), ("method", "POST"), ("status", status)],
        )
        .value
    };
    assert_eq!(http("200"), 4.0);
    assert_eq!(http("400"), 2.0);
    let latency = sample(
        &text,
        "mlmesh_http_request_duration_seconds",
        &[("route", route), ("status", "200")],
    );
    assert_eq!(latency.value, 4.0);
    assert!(
        latency.exemplar_trace_ids.iter().any(|t| t == trace_id),
        "latency exemplars {:?} should link to the caller's trace {trace_id}",
        latency.exemplar_trace_ids
    );
    // Probes and scrapes stay out of the RED metrics.
    assert!(
        samples(&text, "mlmesh_http_requests")
            .iter()
            .all(|s| !s.labels["route"].contains("health") && s.labels["route"] != "/metrics")
    );
}
