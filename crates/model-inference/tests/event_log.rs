//! The event log from model-inference, against a real `redis-server`: one
//! `prediction` per scored row, with the request id a mirrored copy keeps,
//! the caller's trace id, live or shadow from the Host, the answered score
//! and the row's hash; with Redis down, inference answers as before.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{TestApp, infer_body, model_args, probabilities, reference};
use events::{Event, LIVE, Prediction, SHADOW};
use mesh_kit::ServerArgs;
use test_support::redis_server::RedisServer;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn predictions(redis: &RedisServer, want: usize) -> Vec<Prediction> {
    test_support::event_log::wait_for(&redis.url(), "the predictions", |e| e.len() >= want)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::Prediction(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scored_row_is_logged_live_and_shadow_with_its_request_id() {
    let redis = RedisServer::start();
    let mut args = model_args("v2");
    args.events.event_log_url = Some(redis.url());
    let app = TestApp::spawn(args, ServerArgs::for_tests()).await;
    let rows: Vec<Vec<f32>> = reference().inputs.into_iter().take(3).collect();

    let mut answers = BTreeMap::new();
    for (host, request_id) in [
        (None, "req-live"),
        (Some("model-inference-shadow:8080"), "req-live"),
    ] {
        let mut req = app
            .client
            .post(app.infer_url())
            .header("x-request-id", request_id)
            .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
            .json(&infer_body(&rows));
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        let traffic = if host.is_some() { SHADOW } else { LIVE };
        answers.insert(traffic, probabilities(&res.json().await.unwrap()));
    }

    let logged = predictions(&redis, 6).await;
    assert_eq!(logged.len(), 6, "{logged:#?}");
    for p in &logged {
        assert_eq!(p.request_id, "req-live");
        assert_eq!(p.trace_id.as_deref(), Some(TRACE));
        assert_eq!((&*p.model, &*p.version), ("propensity", "v2"));
        let row = p.row as usize;
        assert_eq!(p.input_hash, events::input_hash(&rows[row]), "row {row}");
        let answered = answers[p.traffic][row];
        assert!(
            (f64::from(p.score) - answered).abs() < 1e-6,
            "{} row {row}: logged {} answered {answered}",
            p.traffic,
            p.score
        );
    }
    let shadow = logged.iter().filter(|p| p.traffic == SHADOW).count();
    assert_eq!(shadow, 3, "the Host -shadow suffix marks the copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_inference_answers_and_the_drops_are_counted() {
    let mut redis = RedisServer::start();
    let mut args = model_args("v1");
    args.events.event_log_url = Some(redis.url());
    let app = TestApp::spawn(args, ServerArgs::for_tests()).await;
    redis.kill();
    let rows: Vec<Vec<f32>> = reference().inputs.into_iter().take(2).collect();
    for _ in 0..50 {
        let v = app.infer(&rows).await;
        assert_eq!(probabilities(&v).len(), 2, "{v}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = app.metrics_text().await;
        let dropped: f64 = test_support::metrics::samples(&text, "mlmesh_events_dropped")
            .iter()
            .map(|s| s.value)
            .sum();
        if dropped >= 100.0 {
            let written: f64 = test_support::metrics::samples(&text, "mlmesh_events_written")
                .iter()
                .map(|s| s.value)
                .sum();
            assert_eq!(written, 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "drops not counted: {dropped}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
