//! Progressive delivery (k8s/progressive/): the controllers' analysis asks
//! the verdict service that k8s/base runs, on its real path and port, about
//! versions the model's pods really have, and reads the answer the way the
//! service writes it — a rollback fails the analysis, a promote or continue
//! passes it, and a source that is down stays an error (retried).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use serde::Deserialize;
use serde_json::json;

use super::{Manifests, env_value, labels, pod_spec, selects, url_host, workloads};

/// The fields of Argo Rollouts' AnalysisTemplate that mlmesh uses (no
/// Rust bindings exist; unknown fields are reported by `typed`, and every
/// field is also held to Argo Rollouts v1.9.1's CRD by `fields`).
#[derive(Debug, Clone, Deserialize)]
pub struct AnalysisTemplate {
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub spec: AnalysisTemplateSpec,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AnalysisTemplateSpec {
    #[serde(default)]
    pub args: Vec<Arg>,
    pub metrics: Vec<Metric>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Arg {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    pub name: String,
    pub interval: Option<String>,
    pub failure_limit: Option<i64>,
    pub consecutive_error_limit: Option<i64>,
    pub success_condition: Option<String>,
    pub failure_condition: Option<String>,
    pub provider: Provider,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Provider {
    pub web: Option<Web>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Web {
    pub url: String,
    pub timeout_seconds: Option<i64>,
    pub json_path: Option<String>,
}

pub fn check(m: &Manifests, problems: &mut Vec<String>) {
    // The model versions the pods really run.
    let versions: BTreeSet<String> = workloads(m)
        .iter()
        .filter(|(_, t, _)| labels(t).get("app").map(String::as_str) == Some("model-inference"))
        .filter_map(|(_, t, _)| labels(t).get("version").cloned())
        .collect();
    for t in &m.analysis_templates {
        let name = t.metadata.name.clone().unwrap_or_default();
        for metric in &t.spec.metrics {
            let origin = format!("AnalysisTemplate {name} metric {}", metric.name);
            let Some(web) = &metric.provider.web else {
                continue;
            };
            let mut url = web.url.clone();
            for a in &t.spec.args {
                url = url.replace(
                    &format!("{{{{args.{}}}}}", a.name),
                    a.value.as_deref().unwrap_or_default(),
                );
            }
            check_verdict_url(m, &origin, &url, &versions, problems);
            if web.json_path.as_deref() != Some("{$}") {
                problems.push(format!(
                    "{origin}: jsonPath must be {{$}}, so `result` is the whole report"
                ));
            }
            // The conditions, evaluated on each answer the service can give.
            let (ok, fail) = (
                metric.success_condition.clone().unwrap_or_default(),
                metric.failure_condition.clone().unwrap_or_default(),
            );
            for (verdict, should_fail) in [
                ("promote", false),
                ("continue", false),
                ("rollback", true),
                ("invalid", true),
            ] {
                let result = json!({ "verdict": verdict });
                let failed = crate::common::argo_condition(&fail, &result);
                let passed = crate::common::argo_condition(&ok, &result);
                if failed != should_fail || passed == should_fail {
                    problems.push(format!(
                        "{origin}: on a `{verdict}` it {} (successCondition {ok:?}, failureCondition {fail:?})",
                        if failed { "fails" } else if passed { "passes" } else { "is inconclusive" }
                    ));
                }
            }
            // A Prometheus blip (502) is an error: retried, never at once fatal.
            if metric.consecutive_error_limit.unwrap_or(4) < 1 {
                problems.push(format!(
                    "{origin}: consecutiveErrorLimit below 1 aborts the rollout on one unreadable Prometheus answer"
                ));
            }
            if metric.interval.is_none() {
                problems.push(format!("{origin}: no interval: the verdict would be asked once, not while the canary runs"));
            }
            // The service may take two source timeouts to answer (it bounds
            // the whole read by that); Argo must wait longer than that.
            let source_timeout = verdict_source_timeout(m);
            let waits = Duration::from_secs(web.timeout_seconds.unwrap_or(10).max(0) as u64);
            if waits <= source_timeout * 2 {
                problems.push(format!(
                    "{origin}: timeoutSeconds {waits:?} is not above the verdict service's worst case (2 x SOURCE_TIMEOUT = {:?})",
                    source_timeout * 2
                ));
            }
            if metric.failure_limit.unwrap_or(0) != 0 {
                problems.push(format!(
                    "{origin}: failureLimit must be 0: a rollback verdict already is the sequential test's decision, waiting for more only exposes more users"
                ));
            }
        }
    }
}

/// `url` asks the verdict Service of this set, on its path, for versions
/// the model really has, with every verdict in a 200 (`status=ok`).
fn check_verdict_url(
    m: &Manifests,
    origin: &str,
    url: &str,
    versions: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    let Some((host, port)) = url_host(url) else {
        problems.push(format!("{origin}: {url} names no host:port"));
        return;
    };
    let svc = m
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(host.as_str()));
    let fronts_verdict = svc.is_some_and(|s| {
        let sel = s
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let has_port = s
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .is_some_and(|ps| ps.iter().any(|p| p.port == i32::from(port)));
        has_port
            && workloads(m).iter().any(|(_, t, _)| {
                selects(&sel, &labels(t)) && pod_spec(t).containers.iter().any(serves_verdict)
            })
    });
    if !fronts_verdict {
        problems.push(format!(
            "{origin}: {host}:{port} is not the verdict Service (a Service port in front of `mlmesh analyze serve`)"
        ));
    }
    let rest = url.split("://").nth(1).unwrap_or_default();
    let path_and_query = rest
        .split_once('/')
        .map(|(_, p)| format!("/{p}"))
        .unwrap_or_default();
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((&path_and_query, ""));
    if path != verdict::VERDICT_PATH {
        problems.push(format!(
            "{origin}: path {path} is not {}",
            verdict::VERDICT_PATH
        ));
    }
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    if !params.contains(&("status", "ok")) {
        problems.push(format!(
            "{origin}: needs status=ok: Argo counts a non-2xx as an error to retry, so a rollback must come as a 200 for failureCondition to see it"
        ));
    }
    for key in ["baseline", "candidate"] {
        match params.iter().find(|(k, _)| *k == key) {
            Some((_, v)) if versions.contains(*v) => {}
            Some((_, v)) => problems.push(format!(
                "{origin}: {key} {v} is not a version the model's pods run ({versions:?})"
            )),
            None => problems.push(format!("{origin}: names no {key}")),
        }
    }
}

/// SOURCE_TIMEOUT of the pod that runs `mlmesh analyze serve` (its default
/// when unset).
fn verdict_source_timeout(m: &Manifests) -> Duration {
    workloads(m)
        .iter()
        .flat_map(|(_, t, _)| pod_spec(t).containers.iter())
        .find(|c| serves_verdict(c))
        .and_then(|c| env_value(c, "SOURCE_TIMEOUT"))
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(10))
}

/// Whether the container runs `mlmesh analyze serve`.
fn serves_verdict(c: &Container) -> bool {
    c.args
        .as_deref()
        .is_some_and(|a| a.starts_with(&["analyze".into(), "serve".into()]))
}
