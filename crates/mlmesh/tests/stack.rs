//! End to end, with real processes: `mlmesh up` (and single services), a real
//! `redis-server`, and an OTLP/HTTP collector that decodes what they export.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Proc, Stack};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Value, json};
use test_support::RedisServer;
use test_support::http::{fetch_json, fetch_text};
use test_support::otlp::{AnyValue, Export, collector, hex};
use test_support::proxy::Recorder;
use test_support::redis_server::free_port;
use tokio::sync::mpsc::UnboundedReceiver;

const SPAN_KIND_SERVER: i32 = 2;
const SPAN_KIND_CLIENT: i32 = 3;

/// A span with the name of the service that exported it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    span: Span,
}

impl Got {
    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                AnyValue::IntValue(i) => Some(i.to_string()),
                _ => None,
            })
    }
}

fn spans_of(export: &Export) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in &export.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                out.push(Got {
                    service: service.clone(),
                    span: span.clone(),
                });
            }
        }
    }
    out
}

/// Collects the spans of `trace` until `done` holds (or panics after 20 s).
async fn collect_trace(
    exports: &mut UnboundedReceiver<Export>,
    seen: &mut Vec<Got>,
    trace: &str,
    done: impl Fn(&[Got]) -> bool,
) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let of_trace: Vec<Got> = seen
            .iter()
            .filter(|g| hex(&g.span.trace_id) == trace)
            .cloned()
            .collect();
        if done(&of_trace) {
            return of_trace;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, exports.recv()).await {
            Ok(Some(e)) => seen.extend(spans_of(&e)),
            _ => panic!(
                "trace {trace} incomplete; have {:?}",
                of_trace
                    .iter()
                    .map(|g| (&g.service, &g.span.name))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

fn find<'a>(spans: &'a [Got], service: &str, name: &str, kind: i32) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|g| g.service == service && g.span.name == name && g.span.kind == kind)
        .collect()
}

/// The model call's client and server span names over REST.
const REST_HOP: (&str, &str) = ("POST model-inference", "POST /v2/models/{name}/infer");

fn complete(spans: &[Got]) -> bool {
    complete_over(spans, REST_HOP)
}

/// Whether the frontend's, the feature store's and the model's server
/// spans (the model's named `hop.1`) are all in.
fn complete_over(spans: &[Got], hop: (&str, &str)) -> bool {
    !find(spans, "frontend", "GET /predict", SPAN_KIND_SERVER).is_empty()
        && !find(
            spans,
            "feature-store",
            "GET /v1/features/{entity_id}",
            SPAN_KIND_SERVER,
        )
        .is_empty()
        && !find(spans, "model-inference", hop.1, SPAN_KIND_SERVER).is_empty()
}

/// Asserts the shape of one request's trace: the frontend's server span
/// continues the caller's span, and each upstream's server span is the child
/// of the frontend's client span for that call.
fn assert_one_unbroken_trace(spans: &[Got], caller_span: &str, request_id: &str) {
    assert_one_unbroken_trace_over(spans, caller_span, request_id, REST_HOP);
}

/// [`assert_one_unbroken_trace`] with the model called over `hop` (its
/// client and server span names).
fn assert_one_unbroken_trace_over(
    spans: &[Got],
    caller_span: &str,
    request_id: &str,
    hop: (&str, &str),
) {
    let server = find(spans, "frontend", "GET /predict", SPAN_KIND_SERVER);
    assert_eq!(server.len(), 1);
    let server = server[0];
    assert_eq!(
        hex(&server.span.parent_span_id),
        caller_span,
        "frontend continues the caller"
    );
    for (client_name, service, server_name) in [
        (
            "GET feature-store",
            "feature-store",
            "GET /v1/features/{entity_id}",
        ),
        (hop.0, "model-inference", hop.1),
    ] {
        let client = find(spans, "frontend", client_name, SPAN_KIND_CLIENT);
        assert_eq!(client.len(), 1, "{client_name}");
        let client = client[0];
        assert_eq!(
            client.span.parent_span_id, server.span.span_id,
            "{client_name} is a child of the frontend's server span"
        );
        let upstream = find(spans, service, server_name, SPAN_KIND_SERVER);
        assert_eq!(upstream.len(), 1, "{service}");
        assert_eq!(
            upstream[0].span.parent_span_id, client.span.span_id,
            "{service}'s server span is the child of the frontend's client span"
        );
        assert_eq!(
            upstream[0].attr("request_id").as_deref(),
            Some(request_id),
            "{service}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unbroken_trace_per_request_for_b3_and_w3c_callers() {
    let redis = RedisServer::start();
    let (endpoint, mut exports) = collector().await;
    let ports = Stack::ports();
    let [_, fs, v1, v2] = ports;
    // Recorders between the frontend and its upstreams show what went over the wire.
    let rec_fs = Recorder::start(&format!("http://127.0.0.1:{fs}")).await;
    let rec_v1 = Recorder::start(&format!("http://127.0.0.1:{v1}")).await;
    let rec_v2 = Recorder::start(&format!("http://127.0.0.1:{v2}")).await;
    let stack = Stack::start(
        ports,
        &[
            "--redis-url",
            &redis.url(),
            "--set",
            &format!("frontend.FEATURE_STORE_URL={}", rec_fs.base()),
            "--set",
            &format!("frontend.MODEL_V1_URL={}", rec_v1.base()),
            "--set",
            &format!("frontend.MODEL_V2_URL={}", rec_v2.base()),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    assert_eq!(
        redis.query(&["EXISTS", "mlmesh:fs:v1:42"]).trim(),
        "1",
        "up --redis-url seeded Redis"
    );
    let client = reqwest::Client::new();
    let mut seen = Vec::new();

    let b3 = (
        "463ac35c9f6413ad48485a3953bb6124",
        "a2fb4a1d1a96d312",
        vec![
            (
                "x-b3-traceid",
                "463ac35c9f6413ad48485a3953bb6124".to_owned(),
            ),
            ("x-b3-spanid", "a2fb4a1d1a96d312".to_owned()),
            ("x-b3-sampled", "1".to_owned()),
            ("x-request-id", "e2e-b3".to_owned()),
        ],
    );
    let w3c = (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
        vec![
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            ),
            ("x-request-id", "e2e-w3c".to_owned()),
        ],
    );
    for (user, (trace, caller_span, headers)) in [("42", b3), ("43", w3c)] {
        let request_id = headers
            .iter()
            .find(|(k, _)| *k == "x-request-id")
            .unwrap()
            .1
            .clone();
        let mut req = client.get(format!("{}/predict?user_id={user}", stack.frontend));
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-request-id"], request_id.as_str());
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["trace_id"], trace);
        assert_eq!(body["degraded"], false, "{body}");

        let spans = collect_trace(&mut exports, &mut seen, trace, complete).await;
        assert_one_unbroken_trace(&spans, caller_span, &request_id);

        // What the upstreams received: the same request id, and the same
        // trace in both B3 and W3C form whichever the caller used.
        let version = body["model_version"].as_str().unwrap();
        let model_rec = if version == "v2" { &rec_v2 } else { &rec_v1 };
        let sent: Vec<_> = rec_fs
            .seen()
            .into_iter()
            .chain(model_rec.seen())
            .filter(|s| {
                s.headers
                    .get("x-request-id")
                    .is_some_and(|v| v == request_id.as_str())
            })
            .collect();
        assert!(sent.len() >= 2, "feature store and model both called");
        for s in &sent {
            let h = |n: &str| s.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(h("x-b3-traceid").as_deref(), Some(trace), "{}", s.path);
            assert_eq!(h("x-b3-sampled").as_deref(), Some("1"));
            assert!(h("traceparent").unwrap().contains(trace));
            assert_eq!(h("x-user-id").as_deref(), Some(user));
            assert!(h("x-mlmesh-cohort").is_some());
        }
    }
    assert!(stack.stop().success(), "Ctrl-C stops mlmesh up cleanly");
}

/// `--model-protocol grpc`: the frontend calls the models over gRPC, and
/// the trace goes on unbroken across that hop (context in gRPC metadata,
/// spans named as OpenTelemetry's RPC conventions say), scores unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_hop_to_the_model_keeps_one_unbroken_trace() {
    let (endpoint, mut exports) = collector().await;
    let stack = Stack::start(
        Stack::ports(),
        &["--model-protocol", "grpc", "--canary-percent", "50"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    // The banner's later lines may still be on their way through the pipe.
    let said = |s: &Stack| s.stdout.lock().unwrap().contains("models called over grpc");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !said(&stack) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(said(&stack), "the banner says which protocol");
    let method = format!("{}/ModelInfer", oip::GRPC_SERVICE);
    let hop = (method.as_str(), method.as_str());
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    let mut versions = HashSet::new();
    for (i, user) in ["42", "43", "44", "45", "46", "47"].into_iter().enumerate() {
        let trace = format!("{:032x}", 0x5eed_0000 + i);
        let caller = format!("{:016x}", 0xca11_0000 + i);
        let request_id = format!("e2e-grpc-{i}");
        let res = client
            .get(format!("{}/predict?user_id={user}", stack.frontend))
            .header("traceparent", format!("00-{trace}-{caller}-01"))
            .header("x-request-id", &request_id)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["degraded"], false, "{body}");
        versions.insert(body["model_version"].as_str().unwrap().to_owned());
        let spans = collect_trace(&mut exports, &mut seen, &trace, |s| complete_over(s, hop)).await;
        assert_one_unbroken_trace_over(&spans, &caller, &request_id, hop);
        let call = find(&spans, "frontend", &method, SPAN_KIND_CLIENT)[0];
        assert_eq!(call.attr("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(call.attr("rpc.grpc.status_code").as_deref(), Some("0"));
    }
    assert_eq!(
        versions.len(),
        2,
        "both models answered over gRPC: {versions:?}"
    );
    assert!(stack.stop().success(), "Ctrl-C stops mlmesh up cleanly");
}

/// Under load `mlmesh up`'s frontend reads the features of the decisions
/// that reach the store at the same moment in one batch call
/// (`--feature-reads auto` in `direct` mode): the call sits in the trace of
/// the decision that led it, and every other decision of the batch links to
/// that decision's span, so each trace still leads to its read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_feature_read_is_in_its_leaders_trace_and_linked_from_the_others() {
    const BURST: usize = 24;
    let (endpoint, mut exports) = collector().await;
    let stack = Stack::start(
        Stack::ports(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    let client = reqwest::Client::new();
    let frontend = stack.frontend.clone();
    let decide = |trace: String, user: usize| {
        let request = client
            .get(format!("{frontend}/predict?user_id={user}"))
            .header(
                "traceparent",
                format!("00-{trace}-{:016x}-01", 0xb0_0000 + user),
            );
        async move {
            let res = request.send().await.unwrap();
            assert_eq!(res.status(), 200);
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["degraded"], false, "{body}");
        }
    };
    // The first read learns the store's order; batches come after.
    decide(format!("{:032x}", 0xfeed), 1).await;
    let mut seen = Vec::new();
    // Decisions sent at once overlap in the frontend; a burst whose reads
    // all happened to go alone is sent again.
    for burst in 0..5 {
        let traces: Vec<String> = (0..BURST)
            .map(|i| format!("{:032x}", 0xba7c_0000 + burst * 100 + i))
            .collect();
        let calls = traces
            .iter()
            .enumerate()
            .map(|(i, t)| tokio::spawn(decide(t.clone(), 100 + burst * BURST + i)));
        for call in calls.collect::<Vec<_>>() {
            call.await.unwrap();
        }
        let mut servers = HashMap::new();
        let (mut leaders, mut followers) = (Vec::new(), Vec::new());
        for trace in &traces {
            let decided = |spans: &[Got]| {
                !find(spans, "frontend", "GET /predict", SPAN_KIND_SERVER).is_empty()
                    && !find(spans, "model-inference", REST_HOP.1, SPAN_KIND_SERVER).is_empty()
            };
            let spans = collect_trace(&mut exports, &mut seen, trace, decided).await;
            let server = find(&spans, "frontend", "GET /predict", SPAN_KIND_SERVER)[0].clone();
            servers.insert(trace.clone(), server.span.span_id.clone());
            let batch = find(&spans, "frontend", "POST feature-store", SPAN_KIND_CLIENT);
            let alone = find(&spans, "frontend", "GET feature-store", SPAN_KIND_CLIENT);
            match (batch.len(), alone.len()) {
                (1, 0) => leaders.push((trace.clone(), batch[0].span.span_id.clone())),
                (0, 1) => {}
                (0, 0) => followers.push((trace.clone(), server)),
                other => panic!("trace {trace}: feature-store calls {other:?}"),
            }
        }
        if followers.is_empty() {
            continue;
        }
        assert!(!leaders.is_empty(), "a follower's batch was led by someone");
        for (trace, leader_call) in &leaders {
            let spans = collect_trace(&mut exports, &mut seen, trace, |spans| {
                !find(
                    spans,
                    "feature-store",
                    "POST /v1/features:batch",
                    SPAN_KIND_SERVER,
                )
                .is_empty()
            })
            .await;
            let store = find(
                &spans,
                "feature-store",
                "POST /v1/features:batch",
                SPAN_KIND_SERVER,
            );
            assert_eq!(
                &store[0].span.parent_span_id, leader_call,
                "the store's span is the child of the leader's batch call"
            );
        }
        for (trace, server) in &followers {
            let links: Vec<(String, Vec<u8>)> = server
                .span
                .links
                .iter()
                .map(|l| (hex(&l.trace_id), l.span_id.clone()))
                .collect();
            assert_eq!(links.len(), 1, "trace {trace}: {links:?}");
            let (to_trace, to_span) = &links[0];
            assert!(
                leaders.iter().any(|(t, _)| t == to_trace),
                "trace {trace} links to {to_trace}, which led no batch"
            );
            assert_eq!(
                &servers[to_trace], to_span,
                "the link is to the leader's decision span"
            );
        }
        println!(
            "burst {burst}: {} decisions, {} batch leaders, {} followers",
            BURST,
            leaders.len(),
            followers.len()
        );
        assert!(stack.stop().success());
        return;
    }
    panic!("no burst of {BURST} decisions shared a feature read");
}

/// Model versions seen per user, from `x-model-version`.
async fn versions_by_user(
    base: &str,
    users: impl Iterator<Item = u32>,
    repeats: usize,
) -> HashMap<u32, HashSet<String>> {
    use futures_like::for_each_concurrent;
    let client = reqwest::Client::new();
    let jobs: Vec<u32> = users
        .flat_map(|u| std::iter::repeat_n(u, repeats))
        .collect();
    let results = for_each_concurrent(jobs, 16, |u| {
        let client = client.clone();
        let url = format!("{base}/predict?user_id={u}");
        async move {
            let res = client.get(url).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let v = res.headers()["x-model-version"]
                .to_str()
                .unwrap()
                .to_owned();
            (u, v)
        }
    })
    .await;
    let mut by_user: HashMap<u32, HashSet<String>> = HashMap::new();
    for (u, v) in results {
        by_user.entry(u).or_default().insert(v);
    }
    by_user
}

/// Bounded concurrency without pulling in `futures` for one helper.
mod futures_like {
    use std::future::Future;
    use std::sync::Arc;

    pub async fn for_each_concurrent<T, F, Fut, R>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
    where
        F: Fn(T) -> Fut,
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        let permits = Arc::new(tokio::sync::Semaphore::new(limit));
        let mut handles = Vec::with_capacity(items.len());
        for item in items {
            let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
            let fut = f(item);
            handles.push(tokio::spawn(async move {
                let r = fut.await;
                drop(permit);
                r
            }));
        }
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_stick_to_one_version_and_raising_the_canary_only_adds_users() {
    let users = 1..=1000u32;
    let stack = Stack::start(Stack::ports(), &[], &[]);
    let at10 = versions_by_user(&stack.frontend, users.clone(), 5).await;
    assert!(stack.stop().success());

    let switched: Vec<_> = at10.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        switched.is_empty(),
        "users who saw two versions: {switched:?}"
    );
    let on_v2: HashSet<u32> = at10
        .iter()
        .filter(|(_, v)| v.contains("v2"))
        .map(|(u, _)| *u)
        .collect();
    let share = on_v2.len() as f64 / 10.0;
    assert!((8.0..=12.0).contains(&share), "v2 share at 10%: {share}%");
    eprintln!("v2 share at 10%: {share}%");

    let stack = Stack::start(Stack::ports(), &["--canary-percent", "20"], &[]);
    let at20 = versions_by_user(&stack.frontend, users, 1).await;
    assert!(stack.stop().success());
    let on_v2_at20: HashSet<u32> = at20
        .iter()
        .filter(|(_, v)| v.contains("v2"))
        .map(|(u, _)| *u)
        .collect();
    assert!(
        on_v2.is_subset(&on_v2_at20),
        "candidates moved back to baseline: {:?}",
        on_v2.difference(&on_v2_at20).collect::<Vec<_>>()
    );
    // 1,000 users are a sample: the binomial standard deviation at 20% is
    // 1.26 points, so ±3 points is ~2.4 sigma (this salt and these users give 22.4%).
    let share = on_v2_at20.len() as f64 / 10.0;
    assert!((17.0..=23.0).contains(&share), "v2 share at 20%: {share}%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_lands_under_the_deciding_version_and_forgeries_do_not() {
    let stack = Stack::start(Stack::ports(), &["--canary-percent", "50"], &[]);
    let client = reqwest::Client::new();
    let mut sent: HashMap<String, u32> = HashMap::new();
    for user in 1..=120 {
        let d = fetch_json(&format!("{}/predict?user_id={user}", stack.frontend)).await;
        if d["decision"] != "offer" {
            continue;
        }
        let res = client
            .post(format!("{}/feedback", stack.frontend))
            .json(&json!({"decision_id": d["decision_id"], "outcome": "accepted"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        *sent
            .entry(d["model_version"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(sent.len() == 2, "offers from both versions: {sent:?}");

    let forged = client
        .post(format!("{}/feedback", stack.frontend))
        .json(&json!({"decision_id": "eyJ1IjoiNDIiLCJtIjoidjIifQ.c2lnbmF0dXJl", "outcome": "accepted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);

    let text = fetch_text(&format!("{}/metrics", stack.frontend)).await;
    for (version, n) in &sent {
        let got: f64 = test_support::metrics::samples(&text, "mlmesh_frontend_outcomes")
            .iter()
            .filter(|s| s.labels["model_version"] == *version && s.labels["outcome"] == "accepted")
            .map(|s| s.value)
            .sum();
        assert_eq!(got, f64::from(*n), "accepted outcomes for {version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_stops_degrades_answers_within_the_timeout_and_recovers() {
    let (fs_port, v1_port, v2_port, fe_port) = (free_port(), free_port(), free_port(), free_port());
    let models = common::models();
    let store = Proc::start(
        &["feature-store"],
        fs_port,
        &[(
            "SEED_FILE",
            models.join("customers.csv").display().to_string(),
        )],
    )
    .await;
    let model = |version: &str| {
        vec![
            (
                "MODEL_PATH",
                models
                    .join(format!("propensity-{version}.onnx"))
                    .display()
                    .to_string(),
            ),
            ("MODEL_VERSION", version.to_owned()),
        ]
    };
    let mut v1 = Proc::start(&["model-inference"], v1_port, &model("v1")).await;
    let _v2 = Proc::start(&["model-inference"], v2_port, &model("v2")).await;
    let frontend = Proc::start(
        &["frontend"],
        fe_port,
        &[
            ("ROUTING_MODE", "direct".into()),
            ("FEATURE_STORE_URL", store.base.clone()),
            ("MODEL_V1_URL", v1.base.clone()),
            ("MODEL_V2_URL", format!("http://127.0.0.1:{v2_port}")),
            ("CANARY_PERCENT", "0".into()),
            ("UPSTREAM_TIMEOUT", "500ms".into()),
        ],
    )
    .await;
    let predict = || async {
        let started = Instant::now();
        let body = fetch_json(&format!("{}/predict?user_id=42", frontend.base)).await;
        (body, started.elapsed())
    };
    let (ok, _) = predict().await;
    assert_eq!(ok["degraded"], false);
    assert_eq!(ok["model_version"], "v1");

    v1.kill();
    let (down, took) = predict().await;
    assert_eq!(down["degraded"], true, "{down}");
    assert_eq!(down["decision"], "no_offer");
    assert_eq!(down["model_version"], "v1");
    assert_eq!(down["reason"], "model v1 unavailable", "{down}");
    // Refused connections fail at once; the bound is the 500 ms timeout plus slack.
    assert!(
        took < Duration::from_secs(2),
        "degraded answer took {took:?}"
    );

    let _v1_again = Proc::start(&["model-inference"], v1_port, &model("v1")).await;
    let (back, _) = predict().await;
    assert_eq!(back["degraded"], false, "recovered with no restart: {back}");
    assert_eq!(back["model_version"], "v1");
    assert_eq!(back["score"], ok["score"]);
}

/// A busy port (compose or the kind cluster on 8080) is named before any
/// service starts, with the flag that moves the stack.
#[test]
fn a_busy_port_is_named_before_anything_starts() {
    // The free ports are only free when picked: the parallel tests' own
    // listeners and outgoing connections can take one before `mlmesh up`
    // checks it. A port other than the one held here named busy is that
    // race, so the run is repeated on fresh ports; the assertions stay.
    for attempt in 1.. {
        let ports = common::Stack::ports();
        let busy = std::net::TcpListener::bind(("127.0.0.1", ports[2])).unwrap();
        let started = Instant::now();
        let out = common::mlmesh()
            .current_dir(common::repo())
            .args(["up", "--port", &ports[0].to_string()])
            .args(["--feature-store-port", &ports[1].to_string()])
            .args(["--model-v1-port", &ports[2].to_string()])
            .args(["--model-v2-port", &ports[3].to_string()])
            .output()
            .unwrap();
        drop(busy);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let raced = [0, 1, 3]
            .iter()
            .any(|&i| stderr.contains(&format!("port {} on 127.0.0.1 (for", ports[i])));
        if raced && attempt < 5 {
            eprintln!("attempt {attempt}: another port was taken meanwhile; again on fresh ports");
            continue;
        }
        assert!(
            stderr.contains(&format!(
                "port {} on 127.0.0.1 (for the model v1) is not free",
                ports[2]
            )),
            "{stderr}"
        );
        assert!(stderr.contains("--port / MLMESH_PORT"), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "it failed fast"
        );
        return;
    }
}

/// Every command line of every process on this machine, for "is this
/// secret visible in `ps`?".
fn all_cmdlines() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_password_is_never_printed_nor_on_a_command_line() {
    const PW: &str = "s3cret-Redis-pw-7f1c";
    let redis = RedisServer::start_with_password(PW);
    let url = redis.url();
    assert!(url.contains(PW));

    // clap shows env values in --help unless told not to.
    for args in [&["up"][..], &["feature-store"], &["feature-store", "seed"]] {
        let out = common::mlmesh()
            .args(args)
            .arg("--help")
            .env("REDIS_URL", &url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("REDIS_URL"), "{args:?} documents REDIS_URL");
        assert!(
            !text.contains(PW),
            "mlmesh {args:?} --help shows the password:\n{text}"
        );
    }

    // A failing seed names the Redis it tried, without the password.
    let refused = format!(
        "redis://:{PW}@127.0.0.1:{}",
        test_support::redis_server::REFUSED_PORT
    );
    let out = common::mlmesh()
        .args(["feature-store", "seed", "--redis-timeout", "300ms"])
        .env("REDIS_URL", &refused)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "seeding a refused port failed: {printed}"
    );
    assert!(printed.contains("redis://***@127.0.0.1:1"), "{printed}");
    assert!(!printed.contains(PW), "{printed}");

    // `mlmesh up` against the real passworded Redis: it works (the password
    // reached every child), and neither its output nor any process's command
    // line (watched while the seed child and the services start) holds it.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let watching = watching.clone();
        std::thread::spawn(move || {
            let mut leaks = Vec::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                leaks.extend(all_cmdlines().into_iter().filter(|c| c.contains(PW)));
                std::thread::sleep(Duration::from_millis(2));
            }
            leaks
        })
    };
    let stack = Stack::start(Stack::ports(), &[], &[("REDIS_URL", url.clone())]);
    let d = fetch_json(&format!("{}/predict?user_id=42", stack.frontend)).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let leaks = watcher.join().unwrap();
    assert_eq!(
        d["degraded"], false,
        "served from the passworded Redis: {d}"
    );
    assert_eq!(redis.query(&["EXISTS", "mlmesh:fs:v1:42"]), "1", "seeded");
    let printed = stack.stdout.lock().unwrap().clone();
    assert!(
        printed.contains("Redis at redis://***@127.0.0.1:"),
        "{printed}"
    );
    assert!(!printed.contains(PW), "{printed}");
    assert!(
        leaks.is_empty(),
        "the password on a command line: {leaks:?}"
    );
    drop(stack);
}

/// The runtime threads of each service `up` started (its children, by
/// subcommand), which tokio names `tokio-rt-worker`.
fn runtime_threads_of_children(up: u32) -> Vec<(String, usize)> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let dir = entry.path();
        let stat = read(&dir.join("stat"));
        // `pid (comm) state ppid …`: the comm may hold spaces, so after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(up) {
            continue;
        }
        let cmdline = read(&dir.join("cmdline"));
        let Some(service) = cmdline.split('\0').nth(1) else {
            continue;
        };
        let threads = std::fs::read_dir(dir.join("task"))
            .map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .filter(|t| read(&t.path().join("comm")).trim() == "tokio-rt-worker")
                    .count()
            })
            .unwrap_or(0);
        found.push((service.to_owned(), threads));
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_each_service_on_one_runtime_thread_unless_told_otherwise() {
    // As a 1-CPU pod of k8s/base would: four services on a laptop's cores
    // hand work between fewer threads.
    let stack = Stack::start(Stack::ports(), &[], &[]);
    let threads = runtime_threads_of_children(stack.child.id());
    assert_eq!(
        threads,
        [
            ("feature-store".to_owned(), 1),
            ("frontend".to_owned(), 1),
            ("model-inference".to_owned(), 1),
            ("model-inference".to_owned(), 1),
        ],
        "one runtime thread per service"
    );
    let d = fetch_json(&format!("{}/predict?user_id=42", stack.frontend)).await;
    assert_eq!(
        d["degraded"], false,
        "the stack decides on one thread each: {d}"
    );
    drop(stack);

    // A `--set` (or the user's own TOKIO_WORKER_THREADS) wins.
    let stack = Stack::start(
        Stack::ports(),
        &["--set", "frontend.TOKIO_WORKER_THREADS=3"],
        &[],
    );
    let threads = runtime_threads_of_children(stack.child.id());
    assert!(
        threads.contains(&("frontend".to_owned(), 3)),
        "the frontend took the --set: {threads:?}"
    );
    assert!(
        threads.contains(&("feature-store".to_owned(), 1)),
        "{threads:?}"
    );
    drop(stack);
    let stack = Stack::start(
        Stack::ports(),
        &[],
        &[("TOKIO_WORKER_THREADS", "2".to_owned())],
    );
    let threads = runtime_threads_of_children(stack.child.id());
    assert!(
        threads.iter().all(|(_, n)| *n == 2) && threads.len() == 4,
        "the user's own value reaches every service: {threads:?}"
    );
}
