//! Progressive delivery (k8s/progressive/): the controllers' analysis asks
//! the verdict service that k8s/base runs, on its real path and port, about
//! versions the model's pods really have, and reads the answer the way the
//! service writes it — a rollback fails the analysis, a promote or continue
//! passes it, and a source that is down stays an error (retried).

use std::collections::BTreeSet;
use std::time::Duration;

use istio_api_rs::networking::v1::virtual_service::VirtualService;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::json;

use super::{Manifests, env_value, labels, pod_spec, selects, short_host, url_host, workloads};

/// The fields of Argo Rollouts' AnalysisTemplate that mlmesh uses (no
/// Rust bindings exist; unknown fields are reported by `typed`, and every
/// field is also held to Argo Rollouts v1.9.1's CRD by `fields`).
#[derive(Debug, Clone, Deserialize)]
pub struct AnalysisTemplate {
    pub metadata: ObjectMeta,
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
    // The verdict compares versions by the model's own MODEL_VERSION (in
    // every answer and metric); the pods' `version` label is what Istio,
    // Kiali and the controllers see: they must be one name.
    for (name, t, _) in workloads(m) {
        for c in pod_spec(t).containers.iter().filter(|c| {
            c.args
                .as_ref()
                .and_then(|a| a.first())
                .is_some_and(|a| a == "model-inference")
        }) {
            let env = env_value(c, "MODEL_VERSION");
            if env != labels(t).get("version").cloned() {
                problems.push(format!(
                    "{name}: pod label version {:?} is not its MODEL_VERSION {env:?}, the version the metrics and the verdict name",
                    labels(t).get("version")
                ));
            }
        }
    }
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
            check_verdict_url(m, &origin, &url, &versions, true, problems);
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
/// the model really has, with every verdict in a 200 (`status=ok`) when
/// `status_ok` (Argo reads the body; Flagger only the status).
fn check_verdict_url(
    m: &Manifests,
    origin: &str,
    url: &str,
    versions: &BTreeSet<String>,
    status_ok: bool,
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
    if status_ok && !params.contains(&("status", "ok")) {
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

// === The controllers' own resources (the fields mlmesh uses) ===

/// Argo Rollouts' Rollout: k8s/progressive/argo-rollouts/rollout.yaml.
#[derive(Debug, Clone, Deserialize)]
pub struct Rollout {
    pub metadata: ObjectMeta,
    pub spec: RolloutSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    pub replicas: Option<i32>,
    pub revision_history_limit: Option<i32>,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    pub strategy: RolloutStrategy,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RolloutStrategy {
    pub canary: CanaryStrategy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    pub traffic_routing: TrafficRouting,
    pub analysis: Option<RolloutAnalysis>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrafficRouting {
    pub istio: IstioRouting,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouting {
    pub virtual_service: VirtualServiceRef,
    pub destination_rule: DestinationRuleRef,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VirtualServiceRef {
    pub name: String,
    #[serde(default)]
    pub routes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleRef {
    pub name: String,
    pub stable_subset_name: String,
    pub canary_subset_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysis {
    pub templates: Vec<TemplateRef>,
    pub starting_step: Option<usize>,
    #[serde(default)]
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    pub template_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub set_weight: Option<i32>,
    pub pause: Option<Pause>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pause {
    pub duration: Option<String>,
}

/// Flagger's Canary: k8s/progressive/flagger/canary.yaml.
#[derive(Debug, Clone, Deserialize)]
pub struct FlaggerCanary {
    pub metadata: ObjectMeta,
    pub spec: FlaggerCanarySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlaggerCanarySpec {
    pub target_ref: TargetRef,
    pub progress_deadline_seconds: Option<i32>,
    pub service: FlaggerService,
    pub analysis: FlaggerAnalysis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlaggerService {
    pub name: Option<String>,
    pub port: i32,
    pub target_port: Option<IntOrString>,
    pub port_name: Option<String>,
    pub app_protocol: Option<String>,
    /// The target's other container ports join the generated Services.
    pub port_discovery: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlaggerAnalysis {
    pub interval: Option<String>,
    pub threshold: Option<i32>,
    #[serde(default)]
    pub step_weights: Vec<i32>,
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Webhook {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub url: String,
    pub timeout: Option<String>,
}

/// The JSON patches that make a controller's v1 into the v2 candidate.
pub const CANDIDATE: &str = "k8s/progressive/candidate-v2.yaml";
pub const FAILING_CANDIDATE: &str = "k8s/progressive/candidate-v2-failing.yaml";
/// The fault the failing candidate adds (mesh-kit's fault knob).
const FAULT_ENV: &str = "FAULT_ERROR_RATE";
/// The Deployments k8s/progressive/README.md has the user delete once a
/// controller runs model-inference.
pub const REPLACED: [&str; 2] = ["model-inference-v1", "model-inference-v2"];
/// Flagger's `-selector-labels` default, in its order of preference.
const FLAGGER_SELECTOR_LABELS: [&str; 3] = ["app", "name", "app.kubernetes.io/name"];
/// The label Argo Rollouts tells its ReplicaSets apart by.
const ARGO_HASH_LABEL: &str = "rollouts-pod-template-hash";

/// A Deployment's pod template (as JSON) by name.
fn template_of(m: &Manifests, name: &str) -> Option<serde_json::Value> {
    m.deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .and_then(|d| d.spec.as_ref())
        .map(|s| serde_json::to_value(&s.template).unwrap())
}

/// The first path where `a` and `b` differ, for a message.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, &format!("{at}/{k}")),
                _ => Some(format!("{at}/{k}")),
            })
        }
        (J::Array(x), J::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}/{i}"))),
        _ if a == b => None,
        _ => Some(at.to_owned()),
    }
}

/// `template` with `patch` applied where a Rollout or Deployment holds it.
fn patched(
    template: &serde_json::Value,
    patch: &json_patch::Patch,
) -> Result<serde_json::Value, String> {
    let mut doc = json!({ "spec": { "template": template } });
    json_patch::patch(&mut doc, patch).map_err(|e| e.to_string())?;
    Ok(doc["spec"]["template"].take())
}

fn patch_named<'a>(m: &'a Manifests, path: &str) -> Option<&'a json_patch::Patch> {
    m.patches.iter().find(|(p, _)| p == path).map(|(_, x)| x)
}

fn version_of(t: &PodTemplateSpec) -> Option<String> {
    labels(t).get("version").cloned()
}

/// Checks of the shipped files themselves (made on the union of what a
/// user may apply): the controllers' pod templates are k8s/base's, the
/// candidate patches make exactly k8s/base's v2, and the Canary's and the
/// Rollout's own fields say what the README promises.
pub fn check_shipped(m: &Manifests, problems: &mut Vec<String>) {
    let (Some(v1), Some(v2)) = (template_of(m, REPLACED[0]), template_of(m, REPLACED[1])) else {
        problems.push(format!("k8s/base has no Deployments {REPLACED:?}"));
        return;
    };
    // The candidate is k8s/base's v2, made from the v1 template.
    match patch_named(m, CANDIDATE) {
        None => problems.push(format!("{CANDIDATE} is missing")),
        Some(candidate) => {
            match patched(&v1, candidate) {
                Err(e) => problems.push(format!(
                    "{CANDIDATE} does not apply to k8s/base's v1 template: {e}"
                )),
                Ok(t) => {
                    if let Some(at) = first_difference(&t, &v2, "") {
                        problems.push(format!(
                            "{CANDIDATE}: the patched v1 template differs from k8s/base's model-inference-v2 at {at}"
                        ));
                    }
                }
            }
            check_failing_candidate(m, candidate, problems);
        }
    }
    for r in &m.rollouts {
        let name = r.metadata.name.clone().unwrap_or_default();
        let t = serde_json::to_value(&r.spec.template).unwrap();
        if let Some(at) = first_difference(&t, &v1, "") {
            problems.push(format!(
                "Rollout {name}: its pod template differs from k8s/base's model-inference-v1 at {at} (one definition: change k8s/base)"
            ));
        }
        if r.spec.revision_history_limit == Some(0) {
            problems.push(format!(
                "Rollout {name}: revisionHistoryLimit 0 keeps no old ReplicaSet, so `kubectl argo rollouts undo` has nothing to go back to"
            ));
        }
        let sel = r.spec.selector.match_labels.clone().unwrap_or_default();
        if sel.contains_key("version") {
            problems.push(format!(
                "Rollout {name}: a selector on `version` cannot match the next revision's pods (v2)"
            ));
        }
    }
    for c in &m.canaries {
        check_canary_fields(m, c, &v1, problems);
    }
}

/// The failing candidate is the healthy one plus one fault.
fn check_failing_candidate(
    m: &Manifests,
    candidate: &json_patch::Patch,
    problems: &mut Vec<String>,
) {
    let Some(failing) = patch_named(m, FAILING_CANDIDATE) else {
        problems.push(format!("{FAILING_CANDIDATE} is missing"));
        return;
    };
    let ops = |p: &json_patch::Patch| -> Vec<serde_json::Value> {
        p.0.iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    };
    let (healthy, failing) = (ops(candidate), ops(failing));
    if failing.len() != healthy.len() + 1 || failing[..healthy.len()] != healthy[..] {
        problems.push(format!(
            "{FAILING_CANDIDATE}: must be {CANDIDATE} plus one operation, so the two candidates differ only in the fault"
        ));
        return;
    }
    let extra = &failing[healthy.len()];
    let rate = extra["value"]["value"]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok());
    let ok = extra["op"] == "add"
        && extra["path"] == "/spec/template/spec/containers/0/env/-"
        && extra["value"]["name"] == FAULT_ENV
        && rate.is_some_and(|r| r > 0.0 && r <= 1.0)
        && crate::common::documented_env(&["model-inference"]).contains(FAULT_ENV);
    if !ok {
        problems.push(format!(
            "{FAILING_CANDIDATE}: its last operation must add {FAULT_ENV} in (0, 1] to the container's env, to make the candidate fail (got {extra})"
        ));
    }
}

/// The Canary's fields: its target is k8s/base's v1 template selected by
/// a label Flagger may rename, its Service is the one the frontend calls,
/// and its webhook asks the verdict in the form Flagger reads.
fn check_canary_fields(
    m: &Manifests,
    c: &FlaggerCanary,
    v1: &serde_json::Value,
    problems: &mut Vec<String>,
) {
    let name = c.metadata.name.clone().unwrap_or_default();
    let origin = format!("Canary {name}");
    let target = &c.spec.target_ref;
    let Some(dep) = m.deployments.iter().find(|d| {
        target.api_version == "apps/v1"
            && target.kind == "Deployment"
            && d.metadata.name.as_deref() == Some(target.name.as_str())
    }) else {
        problems.push(format!(
            "{origin}: targetRef {} {} {} is no Deployment here",
            target.api_version, target.kind, target.name
        ));
        return;
    };
    let spec = dep.spec.as_ref().unwrap();
    match flagger_selector_label(dep) {
        None => problems.push(format!(
            "{origin}: Deployment {}'s selector has none of Flagger's selector labels {FLAGGER_SELECTOR_LABELS:?}",
            target.name
        )),
        Some((label, _)) => {
            let mut t = serde_json::to_value(&spec.template).unwrap();
            if let Some(l) = t["metadata"]["labels"].as_object_mut() {
                l.remove(&label);
            }
            if let Some(at) = first_difference(&t, v1, "") {
                problems.push(format!(
                    "{origin}: Deployment {}'s pod template differs from k8s/base's model-inference-v1 at {at} (one definition: change k8s/base)",
                    target.name
                ));
            }
        }
    }
    // Flagger rolls back a canary that is not ready by the deadline: it
    // must outlast the candidate's own startup allowance (a downloaded model).
    let startup = |t: &PodTemplateSpec| -> i32 {
        pod_spec(t)
            .containers
            .iter()
            .filter_map(|c| c.startup_probe.as_ref())
            .map(|p| p.period_seconds.unwrap_or(10) * p.failure_threshold.unwrap_or(3))
            .max()
            .unwrap_or(0)
    };
    let deadline = c.spec.progress_deadline_seconds.unwrap_or(600);
    if let Some(canary) = candidate_of(m, &origin, &spec.template, &mut Vec::new())
        && deadline <= startup(&canary)
    {
        problems.push(format!(
            "{origin}: progressDeadlineSeconds {deadline} is not above the candidate's startup allowance ({} s): Flagger would roll back a v2 still starting",
            startup(&canary)
        ));
    }
    // The Service Flagger takes over is the one the frontend calls.
    let apex = c.spec.service.name.clone().unwrap_or(target.name.clone());
    let existing = m.services_by_name();
    match existing.get(&apex).and_then(|s| s.spec.as_ref()) {
        Some(s)
            if s.ports
                .iter()
                .flatten()
                .any(|p| p.port == c.spec.service.port) => {}
        _ => problems.push(format!(
            "{origin}: service {apex}:{} is not a port of the Service the frontend calls",
            c.spec.service.port
        )),
    }
    let a = &c.spec.analysis;
    if a.interval.is_none() {
        problems.push(format!("{origin}: analysis.interval is needed"));
    }
    if a.threshold.unwrap_or(0) < 1 {
        problems.push(format!("{origin}: analysis.threshold must be at least 1"));
    }
    let w = &a.step_weights;
    if w.is_empty() || w.windows(2).any(|p| p[0] >= p[1]) || w[0] < 1 || w[w.len() - 1] > 100 {
        problems.push(format!(
            "{origin}: stepWeights {w:?} must rise within 1..100"
        ));
    }
    let source_timeout = verdict_source_timeout(m);
    let verdict_hooks: Vec<&Webhook> = a
        .webhooks
        .iter()
        .filter(|h| h.url.contains(verdict::VERDICT_PATH))
        .collect();
    if verdict_hooks.is_empty() {
        problems.push(format!("{origin}: no webhook asks the verdict"));
    }
    let versions: BTreeSet<String> = [Some(v1), template_of(m, REPLACED[1]).as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|t| {
            t["metadata"]["labels"]["version"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    for h in verdict_hooks {
        let origin = format!("{origin} webhook {}", h.name);
        check_verdict_url(m, &origin, &h.url, &versions, false, problems);
        if h.kind.as_deref() != Some("rollout") {
            problems.push(format!(
                "{origin}: type must be `rollout`, run at every interval while the canary takes traffic"
            ));
        }
        if h.url.contains("status=ok") {
            problems.push(format!(
                "{origin}: status=ok makes a rollback a 200, and Flagger reads only the status: it would never roll back"
            ));
        }
        let waits = h
            .timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(10));
        if waits <= source_timeout * 2 {
            problems.push(format!(
                "{origin}: timeout {waits:?} is not above the verdict service's worst case (2 x SOURCE_TIMEOUT = {:?})",
                source_timeout * 2
            ));
        }
    }
}

/// The label of `dep`'s selector that Flagger renames (`-primary`).
fn flagger_selector_label(dep: &Deployment) -> Option<(String, String)> {
    let sel = dep
        .spec
        .as_ref()?
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    FLAGGER_SELECTOR_LABELS
        .iter()
        .find_map(|l| sel.get(*l).map(|v| ((*l).to_owned(), v.clone())))
}

/// The baseline and candidate a verdict URL or analysis asks about.
fn asked_versions(url: &str) -> (Option<String>, Option<String>) {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let get = |key: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
    };
    (get("baseline"), get("candidate"))
}

fn deployment(name: &str, replicas: Option<i32>, template: PodTemplateSpec) -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": super::NAMESPACE },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": labels(&template) },
            "template": template,
        }
    }))
    .unwrap()
}

fn with_label(t: &PodTemplateSpec, k: &str, v: &str) -> PodTemplateSpec {
    let mut t = t.clone();
    t.metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(k.to_owned(), v.to_owned());
    t
}

/// `t` with the candidate patch applied, or a problem.
fn candidate_of(
    m: &Manifests,
    origin: &str,
    t: &PodTemplateSpec,
    problems: &mut Vec<String>,
) -> Option<PodTemplateSpec> {
    let Some(patch) = patch_named(m, CANDIDATE) else {
        problems.push(format!("{CANDIDATE} is missing"));
        return None;
    };
    match patched(&serde_json::to_value(t).unwrap(), patch) {
        Ok(v) => Some(serde_json::from_value(v).unwrap()),
        Err(e) => {
            problems.push(format!("{CANDIDATE} does not apply to {origin}: {e}"));
            None
        }
    }
}

/// What the cluster holds while each controller runs a canary of v2, from
/// the union `m` and Argo's routing files `routing`: the Deployments the
/// README deletes are gone, the controller's routing replaced istio/'s by
/// name, and its pods (stable and canary, or primary and canary) and, for
/// Flagger, the Services it makes or takes over exist as the controller
/// makes them. Each set is then held to every check of `check`.
pub fn sets(
    m: &Manifests,
    routing: &Manifests,
    problems: &mut Vec<String>,
) -> Vec<(&'static str, Manifests)> {
    let mut out = Vec::new();
    let flagger_targets: BTreeSet<String> = m
        .canaries
        .iter()
        .map(|c| c.spec.target_ref.name.clone())
        .collect();
    for r in &m.rollouts {
        let mut s = m.clone();
        s.deployments.retain(|d| {
            let n = d.metadata.name.clone().unwrap_or_default();
            !REPLACED.contains(&n.as_str()) && !flagger_targets.contains(&n)
        });
        s.canaries.clear();
        if let Some(set) = argo_set(s, r, routing, problems) {
            out.push(("argo-rollouts", set));
        }
    }
    for c in &m.canaries {
        let mut s = m.clone();
        s.deployments
            .retain(|d| !REPLACED.contains(&d.metadata.name.as_deref().unwrap_or_default()));
        s.rollouts.clear();
        if let Some(set) = flagger_set(s, c, problems) {
            out.push(("flagger", set));
        }
    }
    out
}

fn argo_set(
    mut s: Manifests,
    r: &Rollout,
    routing: &Manifests,
    problems: &mut Vec<String>,
) -> Option<Manifests> {
    let name = r.metadata.name.clone().unwrap_or_default();
    let origin = format!("Rollout {name}");
    let istio = &r.spec.strategy.canary.traffic_routing.istio;
    let (vs_ref, dr_ref) = (&istio.virtual_service, &istio.destination_rule);
    // Argo's route: each named route has the stable and the canary subset.
    let Some((file, vs)) = routing
        .virtual_services
        .iter()
        .find(|(_, v)| v.metadata.name.as_deref() == Some(vs_ref.name.as_str()))
    else {
        problems.push(format!(
            "{origin}: VirtualService {} is not shipped beside it",
            vs_ref.name
        ));
        return None;
    };
    let Some(dr) = routing
        .destination_rules
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(dr_ref.name.as_str()))
    else {
        problems.push(format!(
            "{origin}: DestinationRule {} is not shipped beside it",
            dr_ref.name
        ));
        return None;
    };
    let http = vs.spec.http.clone().unwrap_or_default();
    if vs_ref.routes.is_empty() && http.len() != 1 {
        problems.push(format!(
            "{origin}: without `routes`, VirtualService {} must have exactly one http route",
            vs_ref.name
        ));
    }
    for route in &vs_ref.routes {
        let Some(h) = http
            .iter()
            .find(|h| h.name.as_deref() == Some(route.as_str()))
        else {
            problems.push(format!(
                "{origin}: VirtualService {} has no http route {route}",
                vs_ref.name
            ));
            continue;
        };
        let dests = h.route.clone().unwrap_or_default();
        for subset in [&dr_ref.stable_subset_name, &dr_ref.canary_subset_name] {
            if !dests
                .iter()
                .any(|d| d.destination.subset.as_ref() == Some(subset))
            {
                problems.push(format!(
                    "{file}: route {route}: DestinationRule subset {subset} not found in route (Argo refuses the Rollout)"
                ));
            }
        }
        for d in &dests {
            if short_host(&d.destination.host) != short_host(&dr.spec.host) {
                problems.push(format!(
                    "{file}: route {route} sends to {}, not DestinationRule {}'s host {}",
                    d.destination.host, dr_ref.name, dr.spec.host
                ));
            }
        }
    }
    // The subsets as Argo leaves them: its two, each with a ReplicaSet's hash.
    let mut dr = dr.clone();
    let mut found = BTreeSet::new();
    for sub in dr.spec.subsets.iter_mut().flatten() {
        let role = if sub.name == dr_ref.stable_subset_name {
            "stable"
        } else if sub.name == dr_ref.canary_subset_name {
            "canary"
        } else {
            problems.push(format!(
                "DestinationRule {}: Argo Rollouts deletes subset {} (only {} and {} stay)",
                dr_ref.name, sub.name, dr_ref.stable_subset_name, dr_ref.canary_subset_name
            ));
            continue;
        };
        found.insert(role);
        sub.labels
            .get_or_insert_with(Default::default)
            .insert(ARGO_HASH_LABEL.into(), role.into());
    }
    for (role, subset) in [
        ("stable", &dr_ref.stable_subset_name),
        ("canary", &dr_ref.canary_subset_name),
    ] {
        if !found.contains(role) {
            problems.push(format!(
                "DestinationRule {}: has no subset {subset}",
                dr_ref.name
            ));
        }
    }
    // Steps: rising weights up to 100, each held for a set time.
    let steps = &r.spec.strategy.canary.steps;
    let weights: Vec<i32> = steps.iter().filter_map(|s| s.set_weight).collect();
    if weights.windows(2).any(|w| w[0] >= w[1]) || weights.last() != Some(&100) {
        problems.push(format!("{origin}: setWeights {weights:?} must rise to 100"));
    }
    for (i, st) in steps.iter().enumerate() {
        if st.set_weight.is_some()
            && !steps
                .get(i + 1)
                .and_then(|n| n.pause.as_ref())
                .is_some_and(|p| {
                    p.duration
                        .as_deref()
                        .and_then(|d| humantime::parse_duration(d).ok())
                        .is_some()
                })
        {
            problems.push(format!(
                "{origin}: step {i} (setWeight) needs a timed pause after it, so the verdict sees each weight (an untimed pause waits for a person)"
            ));
        }
    }
    // The pods while v2 is the canary.
    let stable = r.spec.template.clone();
    let canary = candidate_of(&s, &origin, &stable, problems)?;
    let sel = r.spec.selector.match_labels.clone().unwrap_or_default();
    for (role, t) in [("stable", &stable), ("canary", &canary)] {
        if !selects(&sel, &labels(t)) {
            problems.push(format!(
                "{origin}: its selector {sel:?} does not select the {role} pods"
            ));
        }
    }
    // The analysis asks about these two versions.
    match &r.spec.strategy.canary.analysis {
        None => problems.push(format!(
            "{origin}: no analysis: nothing would stop a bad canary"
        )),
        Some(a) => {
            if a.starting_step.is_some_and(|st| st >= steps.len()) {
                problems.push(format!(
                    "{origin}: analysis.startingStep is past the last step"
                ));
            }
            for t in &a.templates {
                match s
                    .analysis_templates
                    .iter()
                    .find(|x| x.metadata.name.as_deref() == Some(t.template_name.as_str()))
                {
                    None => problems.push(format!(
                        "{origin}: AnalysisTemplate {} does not exist",
                        t.template_name
                    )),
                    Some(at) => {
                        for arg in &a.args {
                            if !at.spec.args.iter().any(|x| x.name == arg.name) {
                                problems.push(format!(
                                    "{origin}: AnalysisTemplate {} has no arg {}",
                                    t.template_name, arg.name
                                ));
                            }
                        }
                    }
                }
            }
            let arg = |n: &str| {
                a.args
                    .iter()
                    .find(|x| x.name == n)
                    .and_then(|x| x.value.clone())
            };
            for (key, want) in [
                ("baseline", version_of(&stable)),
                ("candidate", version_of(&canary)),
            ] {
                if arg(key) != want {
                    problems.push(format!(
                        "{origin}: analysis arg {key} {:?} is not the {} pods' version {want:?}",
                        arg(key),
                        if key == "baseline" {
                            "stable"
                        } else {
                            "canary"
                        }
                    ));
                }
            }
        }
    }
    s.deployments.push(deployment(
        &format!("{name}-stable"),
        r.spec.replicas,
        with_label(&stable, ARGO_HASH_LABEL, "stable"),
    ));
    s.deployments.push(deployment(
        &format!("{name}-canary"),
        r.spec.replicas,
        with_label(&canary, ARGO_HASH_LABEL, "canary"),
    ));
    s.virtual_services
        .retain(|(_, v)| v.metadata.name.as_deref() != Some(vs_ref.name.as_str()));
    s.virtual_services.push((file.clone(), vs.clone()));
    s.destination_rules
        .retain(|d| d.metadata.name.as_deref() != Some(dr_ref.name.as_str()));
    s.destination_rules.push(dr);
    Some(s)
}

fn flagger_set(
    mut s: Manifests,
    c: &FlaggerCanary,
    problems: &mut Vec<String>,
) -> Option<Manifests> {
    let name = c.metadata.name.clone().unwrap_or_default();
    let origin = format!("Canary {name}");
    let target_name = &c.spec.target_ref.name;
    let idx = s
        .deployments
        .iter()
        .position(|d| d.metadata.name.as_deref() == Some(target_name.as_str()))?;
    let target = s.deployments.remove(idx);
    let (label, value) = flagger_selector_label(&target)?;
    let spec = target.spec.clone().unwrap();
    // The primary: the target's template, its selector label renamed.
    let primary_value = format!("{value}-primary");
    let primary = with_label(&spec.template, &label, &primary_value);
    let canary = candidate_of(
        &s,
        &format!("Deployment {target_name}"),
        &spec.template,
        problems,
    )?;
    s.deployments.push(deployment(
        &format!("{target_name}-primary"),
        spec.replicas,
        primary.clone(),
    ));
    s.deployments
        .push(deployment(target_name, spec.replicas, canary.clone()));
    // The Services Flagger makes, the apex one taken over.
    let svc = &c.spec.service;
    let apex = svc.name.clone().unwrap_or(target_name.clone());
    let port = json!({
        "name": svc.port_name.clone().unwrap_or("http".into()),
        "port": svc.port,
        "targetPort": svc.target_port.clone().map(|p| serde_json::to_value(p).unwrap()).unwrap_or(json!(svc.port)),
        "appProtocol": svc.app_protocol,
    });
    let mut ports = vec![port];
    // portDiscovery: every other named container port, as Flagger adds it
    // (its name, the container port, TCP; Istio reads the protocol from the
    // name's prefix).
    if svc.port_discovery == Some(true) {
        let main = svc
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(svc.port));
        for c in &spec.template.spec.as_ref().unwrap().containers {
            for (i, cp) in c.ports.iter().flatten().enumerate() {
                let is_main = match &main {
                    IntOrString::Int(n) => cp.container_port == *n,
                    IntOrString::String(n) => cp.name.as_deref() == Some(n.as_str()),
                };
                if !is_main {
                    let name = cp.name.clone().unwrap_or(format!("tcp-{}-{i}", c.name));
                    ports.push(json!({
                        "name": name,
                        "port": cp.container_port,
                        "targetPort": cp.container_port,
                        "protocol": "TCP",
                    }));
                }
            }
        }
    }
    let service = |n: &str, selector: &str| -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": n, "namespace": super::NAMESPACE },
            "spec": { "type": "ClusterIP", "selector": { label.as_str(): selector }, "ports": ports }
        }))
        .unwrap()
    };
    s.services.retain(|x| {
        let n = x.metadata.name.clone().unwrap_or_default();
        n != apex && n != format!("{apex}-primary") && n != format!("{apex}-canary")
    });
    s.services.push(service(&apex, &primary_value));
    s.services
        .push(service(&format!("{apex}-primary"), &primary_value));
    s.services.push(service(&format!("{apex}-canary"), &value));
    // Its VirtualService replaces istio/'s of the same name.
    let vs: VirtualService = serde_json::from_value(json!({
        "metadata": { "name": apex, "namespace": super::NAMESPACE },
        "spec": {
            "hosts": [apex], "gateways": ["mesh"],
            "http": [{ "route": [
                { "destination": { "host": format!("{apex}-primary") }, "weight": 100 },
                { "destination": { "host": format!("{apex}-canary") }, "weight": 0 },
            ]}]
        }
    }))
    .unwrap();
    s.virtual_services
        .retain(|(_, v)| v.metadata.name.as_deref() != Some(apex.as_str()));
    s.virtual_services.push(("(made by Flagger)".into(), vs));
    // istio/'s subsets of the apex host would select only the primary's
    // pods: the README deletes that rule, and Flagger makes one per host it
    // routes to.
    s.destination_rules
        .retain(|d| short_host(&d.spec.host) != apex);
    for host in [format!("{apex}-primary"), format!("{apex}-canary")] {
        s.destination_rules.push(
            serde_json::from_value(json!({
                "metadata": { "name": host, "namespace": super::NAMESPACE },
                "spec": { "host": host }
            }))
            .unwrap(),
        );
    }
    // The webhook asks about the primary's and the canary's versions.
    for h in c
        .spec
        .analysis
        .webhooks
        .iter()
        .filter(|h| h.url.contains(verdict::VERDICT_PATH))
    {
        let (baseline, candidate) = asked_versions(&h.url);
        for (key, asked, want) in [
            ("baseline", baseline, version_of(&primary)),
            ("candidate", candidate, version_of(&canary)),
        ] {
            if asked != want {
                problems.push(format!(
                    "{origin} webhook {}: {key} {asked:?} is not the {} pods' version {want:?}",
                    h.name,
                    if key == "baseline" {
                        "primary"
                    } else {
                        "canary"
                    }
                ));
            }
        }
    }
    Some(s)
}
