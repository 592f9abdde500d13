//! `mlmesh analyze serve` against real `mlmesh up` stacks, and played the
//! way the controllers call it: Argo Rollouts' `web` metric with the exact
//! conditions of k8s/progressive/argo-rollouts/analysis-template.yaml, and
//! Flagger's webhook rule (a POST; up to 202 passes) with the URL and
//! threshold of k8s/progressive/flagger/canary.yaml. A failing candidate is
//! aborted by both, a healthy one passes both, a Prometheus that is down is
//! "retry" (502) and never a rollback, polls arriving together share one
//! evaluation, and bad queries are 400 with a JSON error.

mod common;

use std::time::Duration;

use common::{Proc, Stack};
use serde_json::Value;
use test_support::redis_server::{REFUSED_PORT, free_port};
use verdict::{CACHE_HEADER, VERDICT_HEADER, VERDICT_PATH};

/// `mlmesh analyze serve ARGS` on a free port, ready.
async fn serve(args: &[String]) -> Proc {
    let mut argv: Vec<&str> = vec!["analyze", "serve"];
    argv.extend(args.iter().map(String::as_str));
    Proc::start(&argv, free_port(), &[]).await
}

async fn get(base: &str, query: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let res = reqwest::get(format!("{base}{VERDICT_PATH}{query}"))
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body: Value = res.json().await.expect("every answer is JSON");
    (status, headers, body)
}

/// The AnalysisTemplate as shipped: its query (with the args' defaults put
/// in) and its two conditions.
struct ArgoTemplate {
    query: String,
    success: String,
    failure: String,
    failure_limit: u64,
    consecutive_error_limit: u64,
}

fn argo_template() -> ArgoTemplate {
    let text = std::fs::read_to_string(
        common::repo().join("k8s/progressive/argo-rollouts/analysis-template.yaml"),
    )
    .unwrap();
    let t: Value = serde_yaml_ng::from_str(&text).unwrap();
    let metric = &t["spec"]["metrics"][0];
    let mut url = metric["provider"]["web"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    for arg in t["spec"]["args"].as_array().unwrap() {
        let name = arg["name"].as_str().unwrap();
        url = url.replace(
            &format!("{{{{args.{name}}}}}"),
            arg["value"].as_str().unwrap(),
        );
    }
    assert_eq!(
        metric["provider"]["web"]["jsonPath"], "{$}",
        "result is the whole body"
    );
    let (path, query) = url.split_once('?').unwrap();
    assert!(path.ends_with(VERDICT_PATH), "{url}");
    ArgoTemplate {
        query: format!("?{query}"),
        success: metric["successCondition"].as_str().unwrap().to_owned(),
        failure: metric["failureCondition"].as_str().unwrap().to_owned(),
        failure_limit: metric["failureLimit"].as_u64().unwrap_or(0),
        consecutive_error_limit: metric["consecutiveErrorLimit"].as_u64().unwrap_or(4),
    }
}

/// The Canary as shipped: its verdict webhook's query and its threshold.
struct FlaggerCanary {
    query: String,
    threshold: u32,
}

fn flagger_canary() -> FlaggerCanary {
    let text = std::fs::read_to_string(common::repo().join("k8s/progressive/flagger/canary.yaml"))
        .unwrap();
    let c: Value = serde_yaml_ng::from_str(&text).unwrap();
    let analysis = &c["spec"]["analysis"];
    let hook = analysis["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["type"] == "rollout")
        .expect("a rollout webhook");
    let (path, query) = hook["url"].as_str().unwrap().split_once('?').unwrap();
    assert!(path.ends_with(VERDICT_PATH), "{path}");
    FlaggerCanary {
        query: format!("?{query}"),
        threshold: analysis["threshold"].as_u64().unwrap() as u32,
    }
}

#[derive(Debug, PartialEq)]
enum ArgoPhase {
    Running,
    Successful,
    Failed,
    Error,
}

/// Polls as Argo's AnalysisRun does (one measurement per poll) until it
/// fails or errors, or `successes` measurements have succeeded.
async fn play_argo(base: &str, t: &ArgoTemplate, successes: u64) -> (ArgoPhase, Vec<String>) {
    let (mut failed, mut errors_in_a_row, mut ok) = (0, 0, 0);
    let mut seen = Vec::new();
    for _ in 0..120 {
        let (status, _, body) = get(base, &t.query).await;
        if !(200..300).contains(&status) {
            seen.push(format!("error {status}"));
            errors_in_a_row += 1;
            if errors_in_a_row > t.consecutive_error_limit {
                return (ArgoPhase::Error, seen);
            }
        } else {
            errors_in_a_row = 0;
            let verdict = body["verdict"].as_str().unwrap_or_default().to_owned();
            if common::argo_condition(&t.failure, &body) {
                seen.push(format!("failed {verdict}"));
                failed += 1;
                if failed > t.failure_limit {
                    return (ArgoPhase::Failed, seen);
                }
            } else if common::argo_condition(&t.success, &body) {
                seen.push(format!("successful {verdict}"));
                ok += 1;
                if ok >= successes {
                    return (ArgoPhase::Successful, seen);
                }
            } else {
                seen.push(format!("inconclusive {verdict}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (ArgoPhase::Running, seen)
}

/// Flagger's rule: a webhook POSTed with the canary's payload passes when
/// it answers 200..=202; `threshold` failed checks roll back.
async fn play_flagger(base: &str, query: &str, threshold: u32, checks: u32) -> (bool, Vec<u16>) {
    let client = reqwest::Client::new();
    let payload = serde_json::json!({
        "name": "model-inference", "namespace": "mlmesh", "phase": "Progressing",
        "checksum": "abc", "metadata": {"type": "rollout"}
    });
    let (mut failed, mut statuses) = (0, Vec::new());
    for _ in 0..checks {
        let res = client
            .post(format!("{base}{VERDICT_PATH}{query}"))
            .json(&payload)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        statuses.push(status);
        if status > 202 {
            failed += 1;
            if failed >= threshold {
                return (true, statuses);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (false, statuses)
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn evaluations(metrics: &str) -> f64 {
    test_support::metrics::samples(metrics, "mlmesh_verdict_evaluations")
        .iter()
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_aborted_by_argo_and_by_flagger() {
    let stack = Stack::start(Stack::ports(), common::FAILING_CANDIDATE, &[]);
    // Started before the load: the template's window is taken from the
    // service's own readings, beginning with its first.
    let mut args = stack.scrape_args();
    args.extend(["--cache-ttl".into(), "200ms".into()]);
    let svc = serve(&args).await;
    let t = argo_template();
    let (status, _, first) = get(&svc.base, &t.query).await;
    assert_eq!(status, 200, "{first:#}");
    assert_eq!(
        first["verdict"], "continue",
        "nothing has happened yet: {first:#}"
    );
    // 200/s each: the two stacks of this file run at once on CI's two
    // cores, and a starved stack degrades answers instead of calling models.
    common::load(&stack, &["--requests", "2000", "--rate", "200/s"]).await;

    // As people and Flagger see it: the status says rollback.
    let (status, headers, report) = get(&svc.base, "?baseline=v1&candidate=v2").await;
    assert_eq!(status, 409, "{report:#}");
    assert_eq!(headers[VERDICT_HEADER], "rollback");
    assert_eq!(report["schema"], "mlmesh.analyze/v1");
    assert_eq!(report["verdict"], "rollback");
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("errors (critical)"),
        "{report:#}"
    );

    let (phase, seen) = play_argo(&svc.base, &t, 3).await;
    assert_eq!(phase, ArgoPhase::Failed, "{seen:?}");
    assert_eq!(
        seen,
        ["failed rollback"],
        "aborted at the first measurement"
    );
    let f = flagger_canary();
    let (rolled_back, statuses) =
        play_flagger(&svc.base, &f.query, f.threshold, f.threshold + 3).await;
    assert!(rolled_back, "{statuses:?}");
    assert_eq!(
        statuses,
        vec![409; f.threshold as usize],
        "rolled back at the threshold"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_passes_both_and_concurrent_polls_share_one_evaluation() {
    let stack = Stack::start(Stack::ports(), &[], &[]);
    let mut args = stack.scrape_args();
    args.extend(["--cache-ttl".into(), "2s".into()]);
    let svc = serve(&args).await;
    let t = argo_template();
    // The template's first reading, the start of its window.
    assert_eq!(get(&svc.base, &t.query).await.0, 200);
    common::load(&stack, &["--requests", "1500", "--rate", "200/s"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 20 polls at once on a fresh query: one read of the source, 19 from the cache.
    let before = evaluations(&metrics(&svc.base).await);
    let polls = (0..20).map(|_| {
        let base = svc.base.clone();
        async move { get(&base, "?baseline=v1&candidate=v2").await }
    });
    let answers = futures_join(polls).await;
    let verdicts: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(_, _, b)| b["verdict"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    let hits = answers
        .iter()
        .filter(|(_, h, _)| h[CACHE_HEADER] == "hit")
        .count();
    assert_eq!(hits, 19);
    assert_eq!(evaluations(&metrics(&svc.base).await) - before, 1.0);
    let verdict = verdicts.into_iter().next().unwrap();
    assert!(
        ["promote", "continue"].contains(&verdict.as_str()),
        "{verdict}"
    );
    assert_eq!(answers[0].0, 200);

    // Both controllers let it go on, Argo on the change since its first reading.
    let (phase, seen) = play_argo(&svc.base, &t, 3).await;
    assert_eq!(phase, ArgoPhase::Successful, "{seen:?}");
    let (_, _, windowed) = get(&svc.base, &t.query).await;
    let calls = &windowed["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "errors")
        .unwrap()["samples"];
    assert!(
        calls["baseline"].as_u64().unwrap() + calls["candidate"].as_u64().unwrap() >= 1400,
        "the load is inside the template's window: {windowed:#}"
    );
    let f = flagger_canary();
    let (rolled_back, statuses) = play_flagger(&svc.base, &f.query, f.threshold, 3).await;
    assert!(
        !rolled_back && statuses.iter().all(|s| *s == 200),
        "{statuses:?}"
    );

    // Bad queries: 400, JSON, and no evaluation spent on them.
    let before = evaluations(&metrics(&svc.base).await);
    for (query, says) in [
        ("?baseline=v1&candidate=v1", "both v1"),
        ("?window=soon", "window \"soon\""),
        ("?window=1s", "outside 10s..30d"),
        ("?candidate=v2%22%7D", "is not a model version"),
        ("?status=maybe", "unknown variant `maybe`"),
        ("?canary=v2", "unknown field"),
        ("?baseline=a&baseline=b", "duplicate field"),
    ] {
        let (status, _, body) = get(&svc.base, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    assert_eq!(evaluations(&metrics(&svc.base).await), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_prometheus_is_retry_never_rollback() {
    let svc = serve(&[
        "--prometheus".into(),
        format!("http://127.0.0.1:{REFUSED_PORT}"),
        "--cache-ttl".into(),
        "100ms".into(),
        "--source-timeout".into(),
        "2s".into(),
    ])
    .await;
    for query in ["?baseline=v1&candidate=v2", "?status=ok&window=10m"] {
        let (status, headers, body) = get(&svc.base, query).await;
        assert_eq!(status, 502, "{query}: {body}");
        assert_eq!(headers["retry-after"], "15");
        let error = body["error"].as_str().unwrap();
        assert!(error.starts_with("no verdict: Prometheus at"), "{error}");
    }
    // Argo errors (and retries) on every poll; it never sees a failure.
    let t = argo_template();
    let (phase, seen) = play_argo(&svc.base, &t, 1).await;
    assert_eq!(phase, ArgoPhase::Error, "{seen:?}");
    assert!(seen.iter().all(|s| s == "error 502"), "{seen:?}");
    let down = test_support::metrics::sample(
        &metrics(&svc.base).await,
        "mlmesh_verdict_evaluations",
        &[("outcome", "unavailable")],
    );
    assert!(down.value >= 2.0);
}

/// Runs the futures concurrently and returns their results in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
