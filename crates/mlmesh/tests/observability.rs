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

const COMPOSE_DASHBOARD: &str = "docker/grafana/dashboards/mlmesh-experiment.json";
/// The same dashboard for Istio's Grafana addon (k8s/addons/grafana/).
const K8S_DASHBOARD: &str = "k8s/addons/grafana/mlmesh-experiment.json";

fn read_json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::repo().join(rel)).unwrap()).unwrap()
}

fn dashboard_exprs() -> Vec<String> {
    let d = read_json(COMPOSE_DASHBOARD);
    assert_eq!(d["title"], "mlmesh experiment");
    exprs_of(&d)
}

fn exprs_of(d: &Value) -> Vec<String> {
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

    let empty = queries_without_data(&prom, dashboard_exprs()).await;
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

/// The expressions Prometheus answers with no finite number. Scrapes land
/// once a second, so the slowest series (two points in a rate window) get a
/// few seconds to arrive.
async fn queries_without_data(
    prom: &common::prometheus::Prometheus,
    exprs: Vec<String>,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut empty = exprs;
    while !empty.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut still = Vec::new();
        for e in empty {
            let r = query(prom, &e).await;
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
        let raw = query(prom, "mlmesh_frontend_decisions_total").await;
        eprintln!("raw decisions series: {raw}");
        for e in &empty {
            eprintln!("{e} => {}", query(prom, e).await);
        }
    }
    empty
}

// === the dashboard on Kubernetes (Istio's addons) ===

/// The compose dashboard rewritten for Istio's addons: the addon Prometheus'
/// `kubernetes-pods` job labels targets with the pod's labels (`app`,
/// `version`), `namespace` and `pod`; there is no `service` label. Its
/// Grafana datasource has no fixed uid, so panels take it from a variable.
fn kubernetes_dashboard(compose: &Value) -> Value {
    let selector = Regex::new(r#"\bservice(\s*(?:=~|!~|!=|=)\s*")"#).unwrap();
    let by = Regex::new(r"\bby\s*\(([^)]*)\)").unwrap();
    fn walk(v: &mut Value, f: &dyn Fn(&str, &mut Value)) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    f(k, x);
                    walk(x, f);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    let mut d = compose.clone();
    walk(&mut d, &|key, v| match (key, v) {
        ("expr", Value::String(e)) => {
            let e2 = selector.replace_all(e, "app$1");
            let e3 = by.replace_all(&e2, |c: &regex::Captures| {
                let labels: Vec<&str> = c[1]
                    .split(',')
                    .map(str::trim)
                    .map(|l| if l == "service" { "app" } else { l })
                    .collect();
                format!("by ({})", labels.join(", "))
            });
            *e = e3.into_owned();
        }
        ("legendFormat", Value::String(l)) => *l = l.replace("{{service}}", "{{app}}"),
        ("datasource", Value::Object(ds)) if ds.get("type") == Some(&"prometheus".into()) => {
            ds.insert("uid".into(), "${datasource}".into());
        }
        _ => {}
    });
    d["uid"] = "mlmesh-experiment-k8s".into();
    d["title"] = "mlmesh experiment (Kubernetes)".into();
    d["description"] = format!(
        "{} Generated from docker/grafana/dashboards/ for Istio's Prometheus addon (pod labels app/version).",
        compose["description"].as_str().unwrap_or_default()
    )
    .into();
    d["templating"]["list"] = serde_json::json!([{
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0
    }]);
    d
}

#[test]
fn the_kubernetes_dashboard_is_the_compose_one_over_pod_labels() {
    let want = kubernetes_dashboard(&read_json(COMPOSE_DASHBOARD));
    let path = common::repo().join(K8S_DASHBOARD);
    if std::env::var("MLMESH_BLESS").is_ok_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(&want).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let have = read_json(K8S_DASHBOARD);
    assert!(
        have == want,
        "{K8S_DASHBOARD} is stale: regenerate it with MLMESH_BLESS=1 cargo test -p mlmesh --test observability"
    );
    let by_service = Regex::new(r"by \([^)]*\bservice\b").unwrap();
    for e in exprs_of(&have) {
        assert!(!e.contains("service="), "compose's target label in {e}");
        assert!(!by_service.is_match(&e), "{e}");
    }
    // The kustomization packs exactly this file, and the patch mounts it
    // where the provider looks.
    let k = std::fs::read_to_string(common::repo().join("k8s/addons/grafana/kustomization.yaml"))
        .unwrap();
    assert!(k.contains("- mlmesh-experiment.json") && k.contains("- mlmesh-provider.yaml"));
    let provider =
        std::fs::read_to_string(common::repo().join("k8s/addons/grafana/mlmesh-provider.yaml"))
            .unwrap();
    let patch =
        std::fs::read_to_string(common::repo().join("k8s/addons/grafana/grafana-patch.yaml"))
            .unwrap();
    let path_line = provider
        .lines()
        .find_map(|l| l.trim().strip_prefix("path: "))
        .unwrap();
    assert!(
        patch.contains(&format!("mountPath: {path_line}")),
        "{path_line}"
    );
    assert!(patch.contains("subPath: mlmesh-provider.yaml"));
    assert!(
        patch.contains("name: mlmesh-grafana-dashboards")
            && k.contains("name: mlmesh-grafana-dashboards")
    );
    // Istio's addon names its container `grafana`: the strategic merge keys on it.
    assert!(patch.contains("- name: grafana"));
}

/// What the addon's `kubernetes-pods` job makes of a pod: its labels (with
/// `labelmap`'s renaming), `namespace` and `pod`, under `honor_labels`.
fn pod_target_labels(deployment: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(common::repo().join("k8s/base/deployments.yaml")).unwrap();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["metadata"]["name"].as_str() != Some(deployment) {
            continue;
        }
        let mut labels: BTreeMap<String, String> = v["spec"]["template"]["metadata"]["labels"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let k = k.as_str().unwrap().replace(['.', '/', '-'], "_");
                (k, v.as_str().unwrap().to_owned())
            })
            .collect();
        labels.insert("namespace".into(), "mlmesh".into());
        labels.insert("pod".into(), format!("{deployment}-6d4b9c7f5-x2x9q"));
        return labels;
    }
    panic!("no Deployment {deployment} in k8s/base/deployments.yaml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_istio_addons_pod_labels_every_kubernetes_dashboard_query_has_data() {
    let stack = experiment_stack();
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kubernetes-pods\n    honor_labels: true\n    metrics_path: /metrics\n    static_configs:\n",
    );
    for (deployment, port) in [
        (
            "frontend",
            stack.frontend.rsplit(':').next().unwrap().parse().unwrap(),
        ),
        ("feature-store", stack.feature_store_port),
        ("model-inference-v1", stack.v1_port),
        ("model-inference-v2", stack.v2_port),
    ] {
        config.push_str(&format!(
            "      - targets: [\"127.0.0.1:{port}\"]\n        labels:\n"
        ));
        for (k, v) in pod_target_labels(deployment) {
            config.push_str(&format!("          {k}: \"{v}\"\n"));
        }
    }
    let prom = common::prometheus::start(config).await;
    prom.wait_for_targets(&["kubernetes-pods"]).await;
    traffic(&stack).await.unwrap();

    let exprs = exprs_of(&read_json(K8S_DASHBOARD));
    let empty = queries_without_data(&prom, exprs.clone()).await;
    assert!(
        empty.is_empty(),
        "Kubernetes dashboard queries without data:\n{}",
        empty.join("\n")
    );
    // Not vacuous: the compose dashboard's `service` queries find nothing here.
    let compose_only: Vec<String> = dashboard_exprs()
        .into_iter()
        .filter(|e| e.contains("service=\"model-inference\""))
        .collect();
    assert!(!compose_only.is_empty());
    let r = query(&prom, &compose_only[0]).await;
    assert!(
        r["data"]["result"].as_array().unwrap().is_empty(),
        "compose's labels should match nothing under the addon's: {r}"
    );
}
