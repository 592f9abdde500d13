//! The compose stack's observability files against the real services: every
//! metric and label the Grafana dashboard and the Prometheus config use must
//! exist in what the services expose, and Debian's real Prometheus, running
//! the compose config rewritten for loopback, must scrape `mlmesh up` and
//! answer every dashboard query with data.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use clap::Parser;
use common::Stack;
use common::prometheus::{prometheus, query};
use regex::Regex;
use serde_json::Value;
use test_support::http::{fetch_json, fetch_text};

/// Labels Prometheus adds from the scrape config, not the services.
const TARGET_LABELS: &[&str] = &["service", "version", "job", "instance"];

fn dashboard_exprs() -> Vec<String> {
    let path = common::repo().join("docker/grafana/dashboards/mlmesh-experiment.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(d["title"], "mlmesh experiment");
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10);
    exprs
}

/// A stack set up for every kind of traffic the dashboard shows: both
/// versions, shadow mirroring, injected v2 errors (degraded decisions).
fn experiment_stack() -> Stack {
    Stack::start(
        Stack::ports(),
        &[
            "--canary-percent",
            "50",
            "--shadow",
            "--set",
            "v2.FAULT_ERROR_RATE=0.2",
        ],
        &[],
    )
}

/// Six seconds of customers, with feedback, against `stack`.
fn traffic(stack: &Stack) -> tokio::task::JoinHandle<()> {
    let mut cfg = loadtest::Config::try_parse_from([
        "mlmesh-loadtest",
        &stack.frontend,
        "--feedback",
        "--duration",
        "6s",
        // A steady trickle, not a flood: on a busy CI box a saturated debug
        // build answers scrapes late, and late scrapes leave gaps in rate().
        "--rate",
        "60/s",
        // One request per customer: ~360 distinct customers, so some of the
        // offers are accepted (about 1 in 8) and the acceptance panel has data.
        "--requests-per-user",
        "1",
    ])
    .unwrap();
    cfg.users_file = common::models().join("customers.csv");
    cfg.quiet = true;
    let users = loadtest::users::load(&cfg.users_file, false, 0.0, 1).unwrap();
    tokio::spawn(async move {
        let r = loadtest::run::run(&cfg, users).await.unwrap();
        assert!(r.requests > 100, "{}", r.render());
        assert!(
            r.all.accepted > 0,
            "no accepted offers to chart:\n{}",
            r.render()
        );
    })
}

/// Sample name → (label name → values seen), from OpenMetrics text.
type Exposed = HashMap<String, BTreeMap<String, BTreeSet<String>>>;

fn exposed(texts: &[String]) -> Exposed {
    let line =
        Regex::new(r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\})?\s"#)
            .unwrap();
    let pair = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)""#).unwrap();
    let mut out: Exposed = HashMap::new();
    for text in texts {
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(c) = line.captures(l) else { continue };
            let labels = out.entry(c[1].to_owned()).or_default();
            if let Some(ls) = c.get(2) {
                for p in pair.captures_iter(ls.as_str()) {
                    labels
                        .entry(p[1].to_owned())
                        .or_default()
                        .insert(p[2].to_owned());
                }
            }
        }
    }
    out
}

/// Problems with one PromQL expression against what the services expose.
fn check_expr(expr: &str, exposed: &Exposed) -> Vec<String> {
    let metric = Regex::new(r"\b(mlmesh_[a-z0-9_]+)").unwrap();
    // Label values may contain braces (route="/v2/models/{name}/infer").
    let selector =
        Regex::new(r#"\b(mlmesh_[a-z0-9_]+)\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\}"#).unwrap();
    let matcher = Regex::new(r#"([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    let by = Regex::new(r"\bby\s*\(([^)]*)\)").unwrap();
    let mut problems = Vec::new();
    let names: Vec<&str> = metric
        .captures_iter(expr)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    for n in &names {
        if !exposed.contains_key(*n) {
            problems.push(format!("metric {n} is not exposed by any service"));
        }
    }
    let known = |label: &str| {
        label == "le"
            || TARGET_LABELS.contains(&label)
            || names
                .iter()
                .any(|n| exposed.get(*n).is_some_and(|ls| ls.contains_key(label)))
    };
    for c in selector.captures_iter(expr) {
        let name = &c[1];
        for m in matcher.captures_iter(&c[2]) {
            let (label, op, value) = (&m[1], &m[2], &m[3]);
            if TARGET_LABELS.contains(&label) {
                continue;
            }
            match exposed.get(name).and_then(|ls| ls.get(label)) {
                None => problems.push(format!("{name} has no label {label}")),
                // An equality matcher on a value no series has matches nothing.
                Some(values) if op == "=" && !values.contains(value) => problems.push(format!(
                    "{name}{{{label}=\"{value}\"}} matches no series (values: {values:?})"
                )),
                Some(_) => {}
            }
        }
    }
    for c in by.captures_iter(expr) {
        for label in c[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
            if !known(label) {
                problems.push(format!(
                    "`by ({label})`: no metric in the expression has it"
                ));
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_dashboard_uses_is_exposed() {
    let stack = experiment_stack();
    traffic(&stack).await.unwrap();
    let bases = [
        stack.frontend.clone(),
        format!("http://127.0.0.1:{}", stack.feature_store_port),
        format!("http://127.0.0.1:{}", stack.v1_port),
        format!("http://127.0.0.1:{}", stack.v2_port),
    ];
    let mut texts = Vec::new();
    for b in &bases {
        texts.push(fetch_text(&format!("{b}/metrics")).await);
    }
    let exposed = exposed(&texts);
    let mut problems = Vec::new();
    for e in dashboard_exprs() {
        for p in check_expr(&e, &exposed) {
            problems.push(format!("{p}\n    in: {e}"));
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard problems:\n{}",
        problems.join("\n")
    );

    // The Prometheus config scrapes /metrics on the services' port, with the
    // target labels the dashboard relies on.
    let prom =
        std::fs::read_to_string(common::repo().join("docker/prometheus/prometheus.yml")).unwrap();
    for needle in [
        "frontend:8080",
        "feature-store:8080",
        "model-inference-v1:8080",
        "model-inference-v2:8080",
        "metrics_path: /metrics",
        "honor_labels: true",
    ] {
        assert!(prom.contains(needle), "prometheus.yml lacks {needle}");
    }
    for label in TARGET_LABELS.iter().take(2) {
        assert!(
            prom.contains(&format!("{label}: ")),
            "prometheus.yml sets no {label} label"
        );
    }
    // The checker itself catches mistakes (it is not vacuous).
    assert!(!check_expr("rate(mlmesh_nope_total[1m])", &exposed).is_empty());
    assert!(
        !check_expr(
            r#"mlmesh_frontend_decisions_total{decison="offer"}"#,
            &exposed
        )
        .is_empty()
    );
    assert!(
        !check_expr(
            r#"mlmesh_inference_requests_total{traffic="mirror"}"#,
            &exposed
        )
        .is_empty()
    );
    assert!(
        !check_expr(
            "sum by (modelversion) (mlmesh_frontend_decisions_total)",
            &exposed
        )
        .is_empty()
    );
    assert!(
        !check_expr(
            r#"mlmesh_http_request_duration_seconds_bucket{service="model-inference",route="/v2/models/{name}/inferr"}"#,
            &exposed
        )
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_the_stack_and_every_dashboard_query_has_data() {
    let stack = experiment_stack();
    let prom = prometheus(&stack).await;

    prom.wait_for_all_targets().await;
    // Traffic only once every target is being scraped, so each rate() window
    // sees the counters move (scraped only after the traffic, every rate is 0
    // and every ratio NaN).
    traffic(&stack).await.unwrap();

    // Every query must return data; scrapes land once a second, so give the
    // slowest series (two points in a rate window) a few seconds to arrive.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut empty = dashboard_exprs();
    while !empty.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut still = Vec::new();
        for e in empty {
            let r = query(&prom, &e).await;
            assert_eq!(r["status"], "success", "Prometheus rejected {e}: {r}");
            let series = r["data"]["result"].as_array().unwrap();
            let has_number = series.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            });
            if !has_number {
                still.push(e);
            }
        }
        empty = still;
    }
    if !empty.is_empty() {
        let raw = query(&prom, "mlmesh_frontend_decisions_total").await;
        eprintln!("raw decisions series: {raw}");
        for e in &empty {
            eprintln!("{e} => {}", query(&prom, e).await);
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );

    // The version split the dashboard shows is the one the stack runs (50%).
    let share = query(
        &prom,
        "100 * sum by (model_version) (mlmesh_frontend_decisions_total) / scalar(sum(mlmesh_frontend_decisions_total))",
    )
    .await;
    for s in share["data"]["result"].as_array().unwrap() {
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!((35.0..65.0).contains(&v), "{s}");
    }

    // Exemplars were stored: latency points link to trace ids.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/query_exemplars", prom.base),
        &[
            ("query", "mlmesh_http_request_duration_seconds_bucket"),
            ("start", &(now - 120).to_string()),
            ("end", &(now + 5).to_string()),
        ],
    )
    .unwrap();
    let ex = fetch_json(url.as_str()).await;
    let trace_ids: Vec<&str> = ex["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["exemplars"].as_array().unwrap().iter())
        .filter_map(|e| e["labels"]["trace_id"].as_str())
        .collect();
    assert!(!trace_ids.is_empty(), "no exemplars: {ex}");
    assert!(trace_ids.iter().all(|t| t.len() == 32));
}
