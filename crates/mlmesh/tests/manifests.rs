//! k8s/ and istio/ validated offline, since no cluster runs here: every YAML
//! document is parsed into typed Kubernetes (k8s-openapi), Istio (types
//! generated from Istio 1.27's CRDs) or Gateway API (kube-rs' v1.5 bindings)
//! structs and any field those types do not know fails; Istio and Gateway API
//! documents are also held to the field lists of the releases k8s/kind/up.sh
//! installs (Istio 1.31, Gateway API v1.6.1: manifests/fields.rs). Then each
//! set a user applies is cross-checked the way `istioctl analyze` would,
//! against the binary and the header names the frontend really uses: sidecar
//! mode (k8s/base and istio/, both routing APIs) and ambient mode
//! (k8s/overlays/ambient rendered here, istio/gateway-api/, istio/ambient/),
//! and what the cluster holds while Argo Rollouts or Flagger runs a canary
//! (k8s/progressive/: manifests/progressive.rs builds it). Two more tests
//! break the real manifests on purpose (93 ways in sidecar mode, 15 in
//! ambient) and require each break to be reported.

#[path = "manifests/ambient.rs"]
mod ambient;
#[path = "manifests/auth.rs"]
mod auth;
mod common;
#[path = "manifests/fields.rs"]
mod fields;
#[path = "manifests/gateway_api.rs"]
mod gateway_api;
#[path = "manifests/kustomize.rs"]
mod kustomize;
#[path = "manifests/progressive.rs"]
mod progressive;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use istio_api_rs::networking::v1::destination_rule::DestinationRule;
use istio_api_rs::networking::v1::gateway::Gateway;
use istio_api_rs::networking::v1::service_entry::ServiceEntry;
use istio_api_rs::networking::v1::sidecar::{Sidecar, SidecarOutboundTrafficPolicyMode};
use istio_api_rs::networking::v1::virtual_service::VirtualService;
use istio_api_rs::networking::v1alpha3::envoy_filter::EnvoyFilter;
use istio_api_rs::security::v1::authorization_policy::AuthorizationPolicy;
use istio_api_rs::security::v1::authorization_policy::AuthorizationPolicyAction;
use istio_api_rs::security::v1::peer_authentication::PeerAuthentication;
use istio_api_rs::security::v1::request_authentication::RequestAuthentication;
use istio_api_rs::telemetry::v1::telemetry::Telemetry;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
// `::` for the crate: `gateway_api` alone is this test's module of checks.
use ::gateway_api::gateways::Gateway as ApiGateway;
use ::gateway_api::grpcroutes::GrpcRoute;
use ::gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSpec, PodTemplateSpec, Secret, Service, ServiceAccount,
};
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use frontend::cohort::{BETA_GROUP, Cohort};
use frontend::service::USER_ID_PARAM;
use mesh_kit::config::POD_NAME_ENV;
use mesh_kit::propagation::{
    COHORT_HEADER, ENVIRONMENT_HEADER, ENVIRONMENTS, FORWARDED_HEADERS, USER_GROUP_HEADER,
    USER_ID_HEADER,
};

const NAMESPACE: &str = "mlmesh";

/// Every typed document of the set.
#[derive(Default, Clone)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    secrets: Vec<Secret>,
    services: Vec<Service>,
    deployments: Vec<Deployment>,
    jobs: Vec<Job>,
    gateways: Vec<Gateway>,
    virtual_services: Vec<(String, VirtualService)>,
    destination_rules: Vec<DestinationRule>,
    peer_authentications: Vec<PeerAuthentication>,
    authorization_policies: Vec<AuthorizationPolicy>,
    request_authentications: Vec<RequestAuthentication>,
    telemetries: Vec<Telemetry>,
    envoy_filters: Vec<EnvoyFilter>,
    service_entries: Vec<ServiceEntry>,
    sidecars: Vec<Sidecar>,
    /// Gateway API Gateways (ingress and waypoints), with their file.
    k8s_gateways: Vec<(String, ApiGateway)>,
    http_routes: Vec<(String, HttpRoute)>,
    grpc_routes: Vec<(String, GrpcRoute)>,
    analysis_templates: Vec<progressive::AnalysisTemplate>,
    rollouts: Vec<progressive::Rollout>,
    canaries: Vec<progressive::FlaggerCanary>,
    /// JSON patches (k8s/progressive/candidate-*.yaml), by file.
    patches: Vec<(String, json_patch::Patch)>,
}

impl Manifests {
    /// The Services by name.
    fn services_by_name(&self) -> BTreeMap<String, &Service> {
        self.services
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect()
    }
}

/// Istio's own gateways, which exist once Istio is installed (k8s/kind's
/// demo profile): routes may send to them though no manifest here makes them.
const ISTIO_GATEWAY_HOSTS: [&str; 1] = ["istio-egressgateway.istio-system.svc.cluster.local"];

/// The progressive-delivery controllers that call the verdict service, by
/// the service accounts their own installs create (k8s/progressive/).
const CONTROLLERS: [&str; 2] = [
    "cluster.local/ns/argo-rollouts/sa/argo-rollouts",
    "cluster.local/ns/istio-system/sa/flagger",
];

/// `T` from `v`, with every field `T` does not know reported (a typo must not pass).
fn typed<T: DeserializeOwned>(v: Value, origin: &str, problems: &mut Vec<String>) -> Option<T> {
    let mut unknown = Vec::new();
    let result: Result<T, _> = serde_ignored::deserialize(v, |path| unknown.push(path.to_string()));
    // apiVersion and kind were matched before choosing `T`; the Istio types
    // (kube-derive) leave them to the caller, which is this function.
    for path in unknown
        .into_iter()
        .filter(|p| p != "apiVersion" && p != "kind")
    {
        problems.push(format!("{origin}: unknown field {path}"));
    }
    match result {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!("{origin}: {e}"));
            None
        }
    }
}

/// Parses `(origin, yaml text)` pairs into typed manifests.
fn parse(files: &[(String, String)], problems: &mut Vec<String>) -> Manifests {
    let mut m = Manifests::default();
    for (path, text) in files {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let origin = format!("{path}#{i}");
            let v = match <Value as serde::Deserialize>::deserialize(doc) {
                Ok(Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{origin}: not YAML: {e}"));
                    continue;
                }
            };
            // A list is a JSON patch for `kubectl patch --type json`.
            if v.is_sequence() && path.starts_with(PROGRESSIVE) {
                match serde_json::to_value(&v).map(serde_json::from_value::<json_patch::Patch>) {
                    Ok(Ok(p)) => m.patches.push((path.clone(), p)),
                    Ok(Err(e)) | Err(e) => {
                        problems.push(format!("{origin}: not a JSON patch: {e}"))
                    }
                }
                continue;
            }
            let api = v["apiVersion"].as_str().unwrap_or_default().to_owned();
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            let origin = format!("{origin} ({kind})");
            fields::check(&origin, &v, problems);
            match (api.as_str(), kind.as_str()) {
                ("v1", "Namespace") => m.namespaces.extend(typed(v, &origin, problems)),
                ("v1", "ServiceAccount") => m.service_accounts.extend(typed(v, &origin, problems)),
                ("v1", "Secret") => m.secrets.extend(typed(v, &origin, problems)),
                ("argoproj.io/v1alpha1", "AnalysisTemplate") => {
                    m.analysis_templates.extend(typed(v, &origin, problems))
                }
                ("argoproj.io/v1alpha1", "Rollout") => {
                    m.rollouts.extend(typed(v, &origin, problems))
                }
                ("flagger.app/v1beta1", "Canary") => m.canaries.extend(typed(v, &origin, problems)),
                ("gateway.networking.k8s.io/v1", "Gateway") => m
                    .k8s_gateways
                    .extend(typed(v, &origin, problems).map(|g| (path.clone(), g))),
                ("gateway.networking.k8s.io/v1", "HTTPRoute") => m
                    .http_routes
                    .extend(typed(v, &origin, problems).map(|r| (path.clone(), r))),
                ("gateway.networking.k8s.io/v1", "GRPCRoute") => m
                    .grpc_routes
                    .extend(typed(v, &origin, problems).map(|r| (path.clone(), r))),
                ("v1", "Service") => m.services.extend(typed(v, &origin, problems)),
                ("apps/v1", "Deployment") => m.deployments.extend(typed(v, &origin, problems)),
                ("batch/v1", "Job") => m.jobs.extend(typed(v, &origin, problems)),
                ("networking.istio.io/v1", "Gateway") => {
                    m.gateways.extend(typed(v, &origin, problems))
                }
                ("networking.istio.io/v1", "VirtualService") => m
                    .virtual_services
                    .extend(typed(v, &origin, problems).map(|vs| (path.clone(), vs))),
                ("networking.istio.io/v1", "DestinationRule") => {
                    m.destination_rules.extend(typed(v, &origin, problems))
                }
                ("security.istio.io/v1", "PeerAuthentication") => {
                    m.peer_authentications.extend(typed(v, &origin, problems))
                }
                ("security.istio.io/v1", "AuthorizationPolicy") => {
                    m.authorization_policies.extend(typed(v, &origin, problems))
                }
                ("security.istio.io/v1", "RequestAuthentication") => m
                    .request_authentications
                    .extend(typed(v, &origin, problems)),
                ("telemetry.istio.io/v1", "Telemetry") => {
                    m.telemetries.extend(typed(v, &origin, problems))
                }
                ("networking.istio.io/v1", "ServiceEntry") => {
                    m.service_entries.extend(typed(v, &origin, problems))
                }
                ("networking.istio.io/v1", "Sidecar") => {
                    m.sidecars.extend(typed(v, &origin, problems))
                }
                ("networking.istio.io/v1alpha3", "EnvoyFilter") => {
                    m.envoy_filters.extend(typed(v, &origin, problems))
                }
                _ => problems.push(format!("{origin}: unexpected {api} {kind}")),
            }
        }
    }
    m
}

fn yaml_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

fn relative(p: &Path) -> String {
    p.strip_prefix(common::repo())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// What a sidecar-mode user may apply: k8s/base (kustomize resources),
/// istio/** but istio/ambient/, in both routing APIs, and k8s/progressive/
/// (Argo's routing, which replaces istio/'s, is in `all_files` only).
fn shipped_files() -> Vec<(String, String)> {
    let mut files = all_files();
    files.retain(|(p, _)| !ARGO_ROUTING.contains(&p.as_str()));
    files
}

/// Argo Rollouts' VirtualService and DestinationRule: same names as
/// istio/'s, so they replace them; checked in the Argo set only.
const ARGO_ROUTING: [&str; 2] = [
    "k8s/progressive/argo-rollouts/virtual-service.yaml",
    "k8s/progressive/argo-rollouts/destination-rule.yaml",
];

const ROLLOUT: &str = "k8s/progressive/argo-rollouts/rollout.yaml";
const FLAGGER_TARGET: &str = "k8s/progressive/flagger/deployment.yaml";
const FLAGGER_CANARY: &str = "k8s/progressive/flagger/canary.yaml";

/// Every file of the sidecar-mode sets.
fn all_files() -> Vec<(String, String)> {
    let mut paths = Vec::new();
    yaml_under(&common::repo().join("istio"), &mut paths);
    yaml_under(&common::repo().join(PROGRESSIVE), &mut paths);
    paths.retain(|p| !relative(p).starts_with(AMBIENT_ONLY));
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(common::repo().join("k8s/base/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    for r in kustomization["resources"].as_sequence().unwrap() {
        paths.push(common::repo().join("k8s/base").join(r.as_str().unwrap()));
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| (relative(&p), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

/// The controllers' resources (Argo Rollouts, Flagger), for either mode.
const PROGRESSIVE: &str = "k8s/progressive/";
/// Files only an ambient-mode user applies.
const AMBIENT_ONLY: &str = "istio/ambient/";
const AMBIENT_OVERLAY: &str = "k8s/overlays/ambient";
/// What istio/README.md has an ambient-mode user apply on top of the
/// overlay: the Gateway API forms and what works unchanged in ambient.
const AMBIENT_APPLIED: [&str; 6] = [
    // The controllers' canaries route with the Istio API (sidecar mode);
    // the verdict's AnalysisTemplate serves any Argo Rollouts router.
    "k8s/progressive/argo-rollouts/analysis-template.yaml",
    "istio/gateway-api/",
    AMBIENT_ONLY,
    "istio/telemetry/",
    "istio/security/peer-authentication.yaml",
    "istio/resilience/destination-rule.yaml",
];

/// The ambient set, each file read through `read` (relative paths).
fn ambient_files(
    read: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut files = kustomize::render(AMBIENT_OVERLAY, read, problems);
    let mut paths = Vec::new();
    yaml_under(&common::repo().join("istio"), &mut paths);
    yaml_under(&common::repo().join(PROGRESSIVE), &mut paths);
    paths.sort();
    for p in paths {
        let rel = relative(&p);
        if AMBIENT_APPLIED.iter().any(|a| rel.starts_with(a)) {
            let text = read(&rel);
            files.push((rel, text));
        }
    }
    files
}

/// A DestinationRule subset: its name and pod labels.
type Subset = (String, BTreeMap<String, String>);

/// A deliberate break: the file, how to break it, what must be reported.
type Break = (&'static str, Box<dyn Fn(&str) -> String>, &'static str);

fn short_host(host: &str) -> &str {
    host.strip_suffix(&format!(".{NAMESPACE}.svc.cluster.local"))
        .unwrap_or(host)
}

fn pod_spec(t: &PodTemplateSpec) -> &PodSpec {
    t.spec.as_ref().expect("pod template has a spec")
}

fn labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// An AuthorizationPolicy's workload selector; empty when it has none
/// (namespace-wide, or attached by targetRefs instead).
fn policy_selector(ap: &AuthorizationPolicy) -> BTreeMap<String, String> {
    ap.spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default()
}

/// Workloads: (name, pod template, is it long-running).
fn workloads(m: &Manifests) -> Vec<(String, &PodTemplateSpec, bool)> {
    let name = |md: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        md.name.clone().unwrap_or_default()
    };
    m.deployments
        .iter()
        .map(|d| (name(&d.metadata), &d.spec.as_ref().unwrap().template, true))
        .chain(
            m.jobs
                .iter()
                .map(|j| (name(&j.metadata), &j.spec.as_ref().unwrap().template, false)),
        )
        .collect()
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// The host:port a URL names.
fn url_host(url: &str) -> Option<(String, u16)> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.split_once(':')?;
    Some((short_host(host).to_owned(), port.parse().ok()?))
}

/// Container-level checks: restricted security context, probes, resources,
/// named ports, pinned images, and args/env the binary really has.
fn check_container(
    origin: &str,
    pod: &PodSpec,
    c: &Container,
    long_running: bool,
    problems: &mut Vec<String>,
) {
    let image = c.image.clone().unwrap_or_default();
    match image.rsplit_once(':') {
        Some((_, tag)) if tag != "latest" && !tag.contains('/') => {}
        _ => problems.push(format!("{origin}: image {image:?} is not pinned to a tag")),
    }
    let psc = pod.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    if !(sc.run_as_non_root == Some(true) || psc.run_as_non_root == Some(true)) {
        problems.push(format!("{origin}: runAsNonRoot is not set"));
    }
    if sc.allow_privilege_escalation != Some(false) {
        problems.push(format!("{origin}: allowPrivilegeEscalation must be false"));
    }
    if sc.read_only_root_filesystem != Some(true) {
        problems.push(format!("{origin}: readOnlyRootFilesystem must be true"));
    }
    let drops = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    if !drops.iter().any(|d| d == "ALL") {
        problems.push(format!("{origin}: capabilities must drop ALL"));
    }
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or(psc.seccomp_profile.as_ref())
        .map(|s| s.type_.as_str());
    if seccomp != Some("RuntimeDefault") {
        problems.push(format!("{origin}: seccompProfile must be RuntimeDefault"));
    }
    let uid = sc.run_as_user.or(psc.run_as_user);
    if matches!(uid, Some(0) | Some(1337)) {
        problems.push(format!(
            "{origin}: runs as UID {uid:?} (root or Istio's proxy)"
        ));
    }
    let res = c.resources.clone().unwrap_or_default();
    for (what, set) in [("requests", &res.requests), ("limits", &res.limits)] {
        let set = set.clone().unwrap_or_default();
        if !(set.contains_key("cpu") && set.contains_key("memory")) {
            problems.push(format!("{origin}: resources.{what} needs cpu and memory"));
        }
    }
    if long_running {
        if c.readiness_probe.is_none() || c.liveness_probe.is_none() {
            problems.push(format!("{origin}: needs readiness and liveness probes"));
        }
        for p in c.ports.clone().unwrap_or_default() {
            if p.name.is_none() {
                problems.push(format!("{origin}: port {} has no name", p.container_port));
            }
        }
    }
    if image.starts_with("mlmesh:") {
        let args = c.args.clone().unwrap_or_default();
        let sub: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .take_while(|a| !a.starts_with("--"))
            .collect();
        let help = common::help(&sub);
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap();
            if !help.contains(name) {
                problems.push(format!(
                    "{origin}: `mlmesh {}` has no flag {name}",
                    sub.join(" ")
                ));
            }
        }
        let known = common::documented_env(&sub);
        for e in c.env.clone().unwrap_or_default() {
            if !known.contains(&e.name) && !common::RUNTIME_ENV.contains(&e.name.as_str()) {
                problems.push(format!(
                    "{origin}: `mlmesh {}` reads no env {}",
                    sub.join(" "),
                    e.name
                ));
            }
        }
    }
}

/// A header match the frontend can satisfy: a header it sends upstream
/// with a value it really sends.
fn known_header_value(header: &str, exact: &str) -> bool {
    let cohort_values = [Cohort::Candidate.as_str(), Cohort::Baseline.as_str()];
    match header {
        h if h == COHORT_HEADER => cohort_values.contains(&exact),
        h if h == USER_GROUP_HEADER => exact == BETA_GROUP,
        h if h == USER_ID_HEADER => !exact.is_empty(),
        h if h == ENVIRONMENT_HEADER => ENVIRONMENTS.contains(&exact),
        _ => false,
    }
}

/// Cross-checks of the sidecar-mode set; every problem is a sentence naming where.
fn check(m: &Manifests) -> Vec<String> {
    let mut problems = Vec::new();
    let services = m.services_by_name();
    let sas: BTreeSet<String> = m
        .service_accounts
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let ns_ok = m.namespaces.iter().any(|n| {
        n.metadata.name.as_deref() == Some(NAMESPACE)
            && n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("istio-injection"))
                .map(String::as_str)
                == Some("enabled")
    });
    if !ns_ok {
        problems.push(format!(
            "namespace {NAMESPACE} must exist with istio-injection: enabled"
        ));
    }
    // A key committed here is a key every reader of the repository has
    // (issue 19): k8s/kind/up.sh creates the Secret from random bytes.
    for sec in &m.secrets {
        let filled = sec.data.as_ref().is_some_and(|d| !d.is_empty())
            || sec.string_data.as_ref().is_some_and(|d| !d.is_empty());
        if filled {
            problems.push(format!(
                "Secret {} commits its value to the repository: create it at deploy time (k8s/kind/up.sh)",
                sec.metadata.name.clone().unwrap_or_default()
            ));
        }
    }
    check_services(m, &mut problems);

    let mut image_tags = BTreeSet::new();
    for (name, template, long_running) in workloads(m) {
        let pod = pod_spec(template);
        let sa = pod.service_account_name.clone().unwrap_or_default();
        if !sas.contains(&sa) {
            problems.push(format!("{name}: serviceAccountName {sa:?} does not exist"));
        }
        let annotations = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        let proxy = annotations
            .get("proxy.istio.io/config")
            .cloned()
            .unwrap_or_default();
        if !proxy.contains("holdApplicationUntilProxyStarts: true") {
            problems.push(format!(
                "{name}: proxy.istio.io/config lacks holdApplicationUntilProxyStarts"
            ));
        }
        for c in &pod.containers {
            let origin = format!("{name}/{}", c.name);
            check_container(&origin, pod, c, long_running, &mut problems);
            if let Some(tag) = c.image.as_deref().and_then(|i| i.strip_prefix("mlmesh:")) {
                image_tags.insert(tag.to_owned());
            }
            if long_running && c.image.as_deref().is_some_and(|i| i.starts_with("mlmesh:")) {
                // Envoy must drain exactly as long as the app keeps serving.
                let drain = env_value(c, "DRAIN_DELAY").unwrap_or_else(|| "5s".into());
                if !proxy.contains(&format!("terminationDrainDuration: {drain}")) {
                    problems.push(format!(
                        "{origin}: terminationDrainDuration must match DRAIN_DELAY={drain}"
                    ));
                }
                if annotations.get("prometheus.io/scrape").map(String::as_str) != Some("true") {
                    problems.push(format!("{origin}: no prometheus.io/scrape annotation"));
                }
                let pod_name = c
                    .env
                    .iter()
                    .flatten()
                    .find(|e| e.name == POD_NAME_ENV)
                    .and_then(|e| e.value_from.as_ref())
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.as_str());
                if pod_name != Some("metadata.name") {
                    problems.push(format!(
                        "{origin}: {POD_NAME_ENV} must come from the downward API (fieldRef metadata.name), so answers name their pod"
                    ));
                }
                let otlp = env_value(c, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
                if !otlp.contains("jaeger-collector.istio-system") {
                    problems.push(format!(
                        "{origin}: OTLP endpoint must be the Jaeger addon's collector"
                    ));
                }
                // Through the sidecar (100% tracing), every export POST would
                // be traced itself: Jaeger fills with one-span export traces.
                let excluded = annotations
                    .get("traffic.sidecar.istio.io/excludeOutboundPorts")
                    .cloned()
                    .unwrap_or_default();
                if let Some((_, port)) = url_host(&otlp)
                    && !excluded.split(',').any(|p| p.trim() == port.to_string())
                {
                    problems.push(format!(
                        "{origin}: OTLP port {port} is not in traffic.sidecar.istio.io/excludeOutboundPorts ({excluded:?})"
                    ));
                }
            }
        }
    }
    if image_tags.len() > 1 {
        problems.push(format!(
            "workloads disagree on the mlmesh image tag: {image_tags:?}"
        ));
    }

    // Istio: hosts, subsets, weights, mirrors, headers.
    let subsets: BTreeMap<String, Vec<Subset>> = m
        .destination_rules
        .iter()
        .map(|dr| {
            let subsets = dr
                .spec
                .subsets
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s.name, s.labels.unwrap_or_default()))
                .collect();
            (short_host(&dr.spec.host).to_owned(), subsets)
        })
        .collect();
    // Hosts outside k8s/base that routes may name: ServiceEntries' and
    // Istio's own gateways.
    let external: BTreeSet<String> = m
        .service_entries
        .iter()
        .flat_map(|se| se.spec.hosts.clone())
        .chain(ISTIO_GATEWAY_HOSTS.map(str::to_owned))
        .collect();
    for dr in &m.destination_rules {
        let host = short_host(&dr.spec.host);
        let Some(svc) = services.get(host) else {
            if !external.contains(host) {
                problems.push(format!(
                    "DestinationRule host {host} is not a Service or ServiceEntry host"
                ));
            }
            continue;
        };
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        // Outlier detection must never eject the last pod: Istio's default
        // minHealthPercent is 0 (no panic mode), so an all-ejected pool is
        // "no healthy upstream" until the ejection ends.
        if let Some(od) = dr
            .spec
            .traffic_policy
            .as_ref()
            .and_then(|t| t.outlier_detection.as_ref())
        {
            let replicas: i32 = m
                .deployments
                .iter()
                .filter(|d| {
                    d.spec
                        .as_ref()
                        .is_some_and(|s| selects(&selector, &labels(&s.template)))
                })
                .map(|d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
                .sum();
            let max = od.max_ejection_percent.unwrap_or(10);
            let min_health = od.min_health_percent.unwrap_or(0);
            // Envoy may eject one host whatever the percentage says.
            let ejectable = (i64::from(replicas) * i64::from(max) / 100).max(1);
            if max >= 100 || (ejectable >= i64::from(replicas) && min_health == 0) {
                problems.push(format!(
                    "DestinationRule {host}: outlier detection can eject all {replicas} pod(s) (maxEjectionPercent {max}, minHealthPercent {min_health})"
                ));
            }
        }
        for (name, sl) in subsets.get(host).into_iter().flatten() {
            let mut all = selector.clone();
            all.extend(sl.clone());
            if !workloads(m)
                .iter()
                .any(|(_, t, _)| selects(&all, &labels(t)))
            {
                problems.push(format!(
                    "DestinationRule {host} subset {name}: labels {sl:?} select no pod template"
                ));
            }
        }
    }
    // One host, one DestinationRule: Istio merges several for one host only
    // in part and in no documented order. The shipped variants of a host's
    // rule (istio/resilience, istio/consistent-hash) share one name, so
    // applying either replaces the other, and agree on everything but the
    // load balancer, so switching never drops the other's settings.
    let mut by_host: BTreeMap<String, Vec<&DestinationRule>> = BTreeMap::new();
    for dr in &m.destination_rules {
        by_host
            .entry(short_host(&dr.spec.host).to_owned())
            .or_default()
            .push(dr);
    }
    let without_load_balancer = |dr: &DestinationRule| {
        let mut spec = serde_json::to_value(&dr.spec).unwrap();
        if let Some(tp) = spec
            .get_mut("trafficPolicy")
            .and_then(serde_json::Value::as_object_mut)
        {
            tp.remove("loadBalancer");
        }
        spec
    };
    for (host, drs) in &by_host {
        let names: BTreeSet<String> = drs
            .iter()
            .map(|d| d.metadata.name.clone().unwrap_or_default())
            .collect();
        if names.len() > 1 {
            problems.push(format!(
                "DestinationRules {names:?} all configure {host}: give a host's variants one name, so applying one replaces the other"
            ));
        }
        let first = without_load_balancer(drs[0]);
        if drs[1..].iter().any(|dr| without_load_balancer(dr) != first) {
            problems.push(format!(
                "DestinationRule {host}: its variants differ in more than loadBalancer, so applying one drops the other's settings"
            ));
        }
    }
    // Consistent hashing must hash on what the callers really send: the
    // frontend's callers name the user in the query (page, curl, load tool),
    // the frontend names it in a header on every upstream call.
    for dr in &m.destination_rules {
        let host = short_host(&dr.spec.host);
        let Some(hash) = dr
            .spec
            .traffic_policy
            .as_ref()
            .and_then(|t| t.load_balancer.as_ref())
            .and_then(|l| l.consistent_hash.as_ref())
        else {
            continue;
        };
        if host == "frontend" {
            if hash.http_query_parameter_name.as_deref() != Some(USER_ID_PARAM) {
                problems.push(format!(
                    "DestinationRule {host}: consistent hash must be on ?{USER_ID_PARAM}=, which the page, curl and the load tool send"
                ));
            }
        } else {
            match hash.http_header_name.as_deref() {
                Some(h) if FORWARDED_HEADERS.contains(&h.to_ascii_lowercase().as_str()) => {}
                other => problems.push(format!(
                    "DestinationRule {host}: consistent hash on header {other:?}, which the frontend never sends"
                )),
            }
        }
    }
    let gateways: BTreeSet<String> = m
        .gateways
        .iter()
        .filter_map(|g| g.metadata.name.clone())
        .collect();
    for (file, vs) in &m.virtual_services {
        let origin = format!(
            "{file}: VirtualService {}",
            vs.metadata.name.clone().unwrap_or_default()
        );
        for g in vs.spec.gateways.clone().unwrap_or_default() {
            // `mesh` is Istio's name for every sidecar, not a Gateway resource.
            if g != "mesh" && !gateways.contains(&g) {
                problems.push(format!("{origin}: gateway {g} does not exist"));
            }
        }
        for (i, route) in vs.spec.http.clone().unwrap_or_default().iter().enumerate() {
            let origin = format!("{origin} http[{i}]");
            let dests = route.route.clone().unwrap_or_default();
            let mut targets: Vec<(String, Option<String>)> = dests
                .iter()
                .map(|d| (d.destination.host.clone(), d.destination.subset.clone()))
                .collect();
            if let Some(mirror) = &route.mirror {
                targets.push((mirror.host.clone(), mirror.subset.clone()));
            }
            for mirror in route.mirrors.clone().unwrap_or_default() {
                targets.push((
                    mirror.destination.host.clone(),
                    mirror.destination.subset.clone(),
                ));
            }
            if route.mirror.is_some() && route.mirrors.is_some() {
                problems.push(format!("{origin}: uses both mirror and mirrors"));
            }
            for (host, subset) in targets {
                let host = short_host(&host).to_owned();
                if !services.contains_key(&host) && !external.contains(&host) {
                    problems.push(format!(
                        "{origin}: destination {host} is not a Service or ServiceEntry host"
                    ));
                }
                if let Some(subset) = subset {
                    let known = subsets
                        .get(&host)
                        .is_some_and(|s| s.iter().any(|(n, _)| *n == subset));
                    if !known {
                        problems.push(format!(
                            "{origin}: subset {subset} of {host} is in no DestinationRule"
                        ));
                    }
                }
            }
            let weights: Vec<i32> = dests.iter().filter_map(|d| d.weight).collect();
            if (dests.len() > 1 || !weights.is_empty()) && weights.iter().sum::<i32>() != 100 {
                problems.push(format!("{origin}: weights {weights:?} do not sum to 100"));
            }
            for mt in route.r#match.clone().unwrap_or_default() {
                for (header, value) in mt.headers.clone().unwrap_or_default() {
                    let exact = value.exact.clone().unwrap_or_default();
                    if !known_header_value(&header, &exact) {
                        problems.push(format!(
                            "{origin}: matches header {header}={exact:?}, which the frontend never sends"
                        ));
                    }
                    // Blue is v1's environment and green v2's, whichever is live.
                    let version = match (header == ENVIRONMENT_HEADER, exact.as_str()) {
                        (true, "blue") => Some("v1"),
                        (true, "green") => Some("v2"),
                        _ => None,
                    };
                    if let Some(version) = version
                        && dests
                            .iter()
                            .any(|d| d.destination.subset.as_deref() != Some(version))
                    {
                        problems.push(format!(
                            "{origin}: {header}: {exact} must route to subset {version} only"
                        ));
                    }
                }
            }
        }
    }

    // EnvoyFilters: select a workload, patch a vhost of a port its Service
    // really has, and key rate limits on headers the frontend really sends.
    // (Those attached to a Gateway API gateway by targetRefs: gateway_api.rs.)
    for ef in m
        .envoy_filters
        .iter()
        .filter(|ef| ef.spec.target_refs.is_none())
    {
        let name = ef.metadata.name.clone().unwrap_or_default();
        let sel = ef
            .spec
            .workload_selector
            .as_ref()
            .and_then(|w| w.labels.clone())
            .unwrap_or_default();
        if sel.is_empty()
            || !workloads(m)
                .iter()
                .any(|(_, t, _)| selects(&sel, &labels(t)))
        {
            problems.push(format!(
                "EnvoyFilter {name}: workloadSelector {sel:?} selects no pod template"
            ));
        }
        let ports: BTreeSet<i32> = m
            .services
            .iter()
            .filter_map(|s| s.spec.as_ref())
            .filter(|s| s.selector.as_ref().is_some_and(|ss| selects(ss, &sel)))
            .flat_map(|s| s.ports.clone().unwrap_or_default())
            .map(|p| p.port)
            .collect();
        for patch in ef.spec.config_patches.clone().unwrap_or_default() {
            let vhost = patch
                .r#match
                .as_ref()
                .and_then(|m| m.route_configuration.as_ref())
                .and_then(|r| r.vhost.as_ref())
                .and_then(|v| v.name.clone());
            if let Some(vhost) = vhost {
                let port = vhost.rsplit('|').next().and_then(|p| p.parse::<i32>().ok());
                if !port.is_some_and(|p| ports.contains(&p)) {
                    problems.push(format!("EnvoyFilter {name}: vhost {vhost} is no port of the selected Service ({ports:?})"));
                }
            }
            let value = serde_json::to_value(patch.patch.and_then(|p| p.value).unwrap_or_default())
                .unwrap();
            let mut headers = Vec::new();
            collect_key(&value, "header_name", &mut headers);
            for h in headers {
                if h != USER_ID_HEADER && h != USER_GROUP_HEADER && h != COHORT_HEADER {
                    problems.push(format!("EnvoyFilter {name}: keys on header {h}, which the frontend never receives or sends"));
                }
            }
        }
    }

    // Authorization: principals exist, and every call the app makes is allowed.
    let principal = |sa: &str| format!("cluster.local/ns/{NAMESPACE}/sa/{sa}");
    // Only callers that have a sidecar have a principal: the Prometheus
    // addon has none (it scrapes port 15020, outside authorization).
    let known_external: Vec<String> =
        ["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account".to_owned()]
            .into_iter()
            .chain(
                m.k8s_gateways
                    .iter()
                    .map(|(_, g)| gateway_api::principal(g)),
            )
            .chain(CONTROLLERS.map(str::to_owned))
            .collect();
    let mut allowed: Vec<(BTreeMap<String, String>, BTreeSet<String>)> = Vec::new();
    for ap in &m.authorization_policies {
        let name = ap.metadata.name.clone().unwrap_or_default();
        let selector = policy_selector(ap);
        // A namespace-wide rule with HTTP fields also lands on Redis (TCP),
        // where Istio drops the HTTP-only conditions and the rule means
        // something else than it says.
        let http_fields = ap.spec.rules.iter().flatten().any(|r| {
            r.to.iter().flatten().any(|t| {
                t.operation
                    .as_ref()
                    .is_some_and(|o| o.methods.is_some() || o.paths.is_some())
            })
        });
        if selector.is_empty() && ap.spec.target_refs.is_none() && http_fields {
            problems.push(format!(
                "AuthorizationPolicy {name}: HTTP methods/paths without a selector also apply to TCP workloads (redis)"
            ));
        }
        let mut principals = BTreeSet::new();
        for rule in ap.spec.rules.clone().unwrap_or_default() {
            for from in rule.from.unwrap_or_default() {
                for p in from.source.and_then(|s| s.principals).unwrap_or_default() {
                    let local = p.strip_prefix(&format!("cluster.local/ns/{NAMESPACE}/sa/"));
                    let exists = match local {
                        Some(sa) => sas.contains(sa),
                        None => known_external.contains(&p),
                    };
                    if !exists {
                        problems.push(format!(
                            "AuthorizationPolicy {name}: principal {p} is no service account"
                        ));
                    }
                    principals.insert(p);
                }
            }
        }
        // Only ALLOW rules allow (a DENY rule naming a caller is the opposite).
        if matches!(
            ap.spec.action,
            None | Some(AuthorizationPolicyAction::Allow)
        ) {
            allowed.push((selector, principals));
        }
    }
    if !m.authorization_policies.is_empty() {
        // Calls: every URL in a workload's env that names a Service.
        for (name, template, _) in workloads(m) {
            let pod = pod_spec(template);
            let caller = principal(pod.service_account_name.as_deref().unwrap_or_default());
            for c in &pod.containers {
                for e in c.env.clone().unwrap_or_default() {
                    let Some((host, _)) = e.value.as_deref().and_then(url_host) else {
                        continue;
                    };
                    let Some(svc) = services.get(&host) else {
                        continue;
                    };
                    let selector = svc
                        .spec
                        .as_ref()
                        .and_then(|s| s.selector.clone())
                        .unwrap_or_default();
                    // Every pod behind the Service must let the caller in
                    // (a pod no policy selects is refused by allow-nothing).
                    let pods: Vec<BTreeMap<String, String>> = workloads(m)
                        .iter()
                        .map(|(_, t, _)| labels(t))
                        .filter(|l| !selector.is_empty() && selects(&selector, l))
                        .collect();
                    for pod in &pods {
                        let ok = allowed.iter().any(|(sel, ps)| {
                            !sel.is_empty() && selects(sel, pod) && ps.contains(&caller)
                        });
                        if !ok {
                            problems.push(format!(
                                "{name} calls {host} ({}), but no AuthorizationPolicy on its pods {pod:?} allows {caller}",
                                e.name
                            ));
                        }
                    }
                }
            }
        }
    }
    check_model_calls_allowed(m, &mut problems);
    check_egress(m, &mut problems);
    auth::check_auth(m, &mut problems);
    gateway_api::check(m, &mut problems);
    progressive::check(m, &mut problems);
    problems
}

/// Port-name prefixes Istio selects a protocol by (`<protocol>[-<suffix>]`).
const ISTIO_PROTOCOL_PREFIXES: [&str; 8] = [
    "http", "http2", "https", "grpc", "tcp", "tls", "mongo", "redis",
];

/// The protocol Istio gives a Service port: its appProtocol, or else its
/// name's prefix (Flagger's discovered ports are named so).
fn istio_protocol(p: &k8s_openapi::api::core::v1::ServicePort) -> Option<&str> {
    p.app_protocol.as_deref().or_else(|| {
        let prefix = p.name.as_deref()?.split('-').next()?;
        ISTIO_PROTOCOL_PREFIXES.contains(&prefix).then_some(prefix)
    })
}

/// What the frontend asks model-inference, over REST and over gRPC
/// (`--model-protocol`): method and path as Istio's authorization sees them.
fn frontend_model_calls() -> Vec<(&'static str, String)> {
    vec![
        ("GET", "/v2/models/propensity".to_owned()),
        ("POST", "/v2/models/propensity/infer".to_owned()),
        ("POST", format!("/{}/ModelConfig", oip::GRPC_SERVICE)),
        ("POST", format!("/{}/ModelInfer", oip::GRPC_SERVICE)),
    ]
}

/// Whether one of `rule`'s sources names `principal`.
fn rule_names(
    rule: &istio_api_rs::security::v1::authorization_policy::AuthorizationPolicyRules,
    principal: &str,
) -> bool {
    rule.from.iter().flatten().any(|f| {
        f.source
            .as_ref()
            .and_then(|s| s.principals.as_ref())
            .is_some_and(|ps| ps.iter().any(|p| p == principal))
    })
}

/// Istio's path match: exact, `prefix*`, `*suffix` or `*`.
fn path_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        path.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        path.ends_with(suffix)
    } else {
        pattern == path
    }
}

/// Every ALLOW policy that lets the frontend into model-inference (by pod
/// selector or, at a waypoint, by Service) lets in each of its calls, REST
/// and gRPC: a path list written for REST alone would deny MODEL_PROTOCOL=grpc.
fn check_model_calls_allowed(m: &Manifests, problems: &mut Vec<String>) {
    let frontend = format!("cluster.local/ns/{NAMESPACE}/sa/frontend");
    let model_pod = BTreeMap::from([("app".to_owned(), "model-inference".to_owned())]);
    for ap in &m.authorization_policies {
        if !matches!(
            ap.spec.action,
            None | Some(AuthorizationPolicyAction::Allow)
        ) {
            continue;
        }
        let name = ap.metadata.name.clone().unwrap_or_default();
        let sel = policy_selector(ap);
        let by_selector = !sel.is_empty() && selects(&sel, &model_pod);
        let by_service = gateway_api::target_refs(ap.spec.target_refs.as_ref())
            .unwrap_or_default()
            .iter()
            .any(|(_, kind, n)| kind == "Service" && n == "model-inference");
        if !by_selector && !by_service {
            continue;
        }
        for rule in ap.spec.rules.iter().flatten() {
            let names_frontend = rule_names(rule, &frontend);
            if !names_frontend {
                continue;
            }
            let ops: Vec<_> = rule
                .to
                .iter()
                .flatten()
                .filter_map(|t| t.operation.as_ref())
                .collect();
            if ops.is_empty() {
                continue; // no `to`: everything
            }
            for (method, path) in frontend_model_calls() {
                let allowed = ops.iter().any(|o| {
                    o.methods
                        .as_ref()
                        .is_none_or(|ms| ms.iter().any(|x| x == method))
                        && o.paths
                            .as_ref()
                            .is_none_or(|ps| ps.iter().any(|p| path_matches(p, &path)))
                });
                if !allowed {
                    problems.push(format!(
                        "AuthorizationPolicy {name}: denies the frontend's {method} {path} (it calls model-inference over REST or gRPC)"
                    ));
                }
            }
        }
    }
}

/// Service-level checks both modes share: named ports with a protocol, and
/// a selector that selects something.
fn check_services(m: &Manifests, problems: &mut Vec<String>) {
    for s in m.services.iter() {
        let name = s.metadata.name.clone().unwrap_or_default();
        let ports = s
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        for p in &ports {
            if p.name.is_none() || istio_protocol(p).is_none() {
                problems.push(format!(
                    "Service {name}: port {} needs a name and appProtocol",
                    p.port
                ));
            }
        }
        let selector = s
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        // A Service for a Gateway's pods selects what Istio deploys.
        let for_gateway = selector
            .get(gateway_api::GATEWAY_NAME_LABEL)
            .is_some_and(|g| {
                m.k8s_gateways
                    .iter()
                    .any(|(_, gw)| gateway_api::name_of(&gw.metadata) == *g)
            });
        if !for_gateway
            && !workloads(m)
                .iter()
                .any(|(_, t, _)| selects(&selector, &labels(t)))
        {
            problems.push(format!(
                "Service {name}: selector {selector:?} selects no pod template"
            ));
        }
        // A named targetPort must be a container port of every pod it selects.
        for p in &ports {
            let Some(IntOrString::String(target)) = &p.target_port else {
                continue;
            };
            for (workload, t, _) in workloads(m) {
                if selector.is_empty() || !selects(&selector, &labels(t)) {
                    continue;
                }
                let has = pod_spec(t).containers.iter().any(|c| {
                    c.ports
                        .iter()
                        .flatten()
                        .any(|cp| cp.name.as_deref() == Some(target.as_str()))
                });
                if !has {
                    problems.push(format!(
                        "Service {name}: port {} targets {target:?}, which {workload}'s containers do not name",
                        p.port
                    ));
                }
            }
        }
        // model-inference speaks gRPC too (MODEL_PROTOCOL=grpc): every
        // Service in front of it says so, or Envoy treats 9000 as TCP.
        if selector.get("app").map(String::as_str) == Some("model-inference")
            && !ports
                .iter()
                .any(|p| p.name.as_deref() == Some("grpc") && istio_protocol(p) == Some("grpc"))
        {
            problems.push(format!(
                "Service {name}: model-inference serves gRPC; the Service needs a port named grpc with appProtocol grpc"
            ));
        }
    }
}

/// Cross-checks of the ambient-mode set.
fn check_ambient(m: &Manifests) -> Vec<String> {
    let mut problems = Vec::new();
    check_services(m, &mut problems);
    for (name, template, long_running) in workloads(m) {
        let pod = pod_spec(template);
        for c in &pod.containers {
            check_container(
                &format!("{name}/{}", c.name),
                pod,
                c,
                long_running,
                &mut problems,
            );
        }
    }
    gateway_api::check(m, &mut problems);
    ambient::check(m, &mut problems);
    auth::check_auth(m, &mut problems);
    progressive::check(m, &mut problems);
    problems
}

/// Egress (istio/egress/): declared hosts mean something only when the
/// namespace refuses undeclared ones, every declared host leaves through the
/// egress gateway, and only model-inference may use it.
fn check_egress(m: &Manifests, problems: &mut Vec<String>) {
    if m.service_entries.is_empty() {
        return;
    }
    let registry_only = m.sidecars.iter().any(|s| {
        s.metadata.namespace.as_deref() == Some(NAMESPACE)
            && s.spec.workload_selector.is_none()
            && s.spec
                .outbound_traffic_policy
                .as_ref()
                .and_then(|p| p.mode.as_ref())
                .is_some_and(|mode| matches!(mode, SidecarOutboundTrafficPolicyMode::RegistryOnly))
    });
    if !registry_only {
        problems.push(format!(
            "ServiceEntries are declared but no namespace-wide Sidecar in {NAMESPACE} sets outboundTrafficPolicy REGISTRY_ONLY: every host is reachable anyway"
        ));
    }
    // The service accounts of the pods that run `mlmesh model-inference`.
    let model_sas: BTreeSet<String> = workloads(m)
        .iter()
        .filter(|(_, t, _)| {
            pod_spec(t).containers.iter().any(|c| {
                c.args
                    .as_ref()
                    .and_then(|a| a.first())
                    .is_some_and(|a| a == "model-inference")
            })
        })
        .filter_map(|(_, t, _)| pod_spec(t).service_account_name.clone())
        .collect();
    let egress_selector = BTreeMap::from([("istio".to_owned(), "egressgateway".to_owned())]);
    for se in &m.service_entries {
        for host in &se.spec.hosts {
            // From the sidecars, the host must be routed to the egress gateway.
            let via_gateway = m.virtual_services.iter().any(|(_, vs)| {
                vs.spec.hosts.iter().flatten().any(|h| h == host)
                    && vs.spec.http.iter().flatten().any(|r| {
                        let from_mesh = r
                            .r#match
                            .iter()
                            .flatten()
                            .any(|mt| mt.gateways.iter().flatten().any(|g| g == "mesh"));
                        from_mesh
                            && r.route
                                .iter()
                                .flatten()
                                .any(|d| ISTIO_GATEWAY_HOSTS.contains(&d.destination.host.as_str()))
                    })
            });
            if !via_gateway {
                problems.push(format!(
                    "ServiceEntry host {host}: no VirtualService routes the sidecars' calls to it through the egress gateway"
                ));
            }
            let policies: Vec<_> = m
                .authorization_policies
                .iter()
                .filter(|ap| {
                    ap.spec
                        .selector
                        .as_ref()
                        .and_then(|s| s.match_labels.as_ref())
                        == Some(&egress_selector)
                })
                .collect();
            let mut allows_host = false;
            for ap in &policies {
                for rule in ap.spec.rules.iter().flatten() {
                    let hosts: Vec<String> = rule
                        .to
                        .iter()
                        .flatten()
                        .filter_map(|t| t.operation.as_ref())
                        .flat_map(|o| o.hosts.clone().unwrap_or_default())
                        .collect();
                    if !hosts.iter().any(|h| h == host) {
                        continue;
                    }
                    allows_host = true;
                    for p in rule
                        .from
                        .iter()
                        .flatten()
                        .filter_map(|f| f.source.as_ref())
                        .flat_map(|s| s.principals.clone().unwrap_or_default())
                    {
                        let sa = p.strip_prefix(&format!("cluster.local/ns/{NAMESPACE}/sa/"));
                        if !sa.is_some_and(|sa| model_sas.contains(sa)) {
                            problems.push(format!(
                                "the egress gateway's AuthorizationPolicy lets {p} reach {host}, which is not model-inference ({model_sas:?})"
                            ));
                        }
                    }
                }
            }
            if !allows_host {
                problems.push(format!(
                    "ServiceEntry host {host}: no AuthorizationPolicy on the egress gateway (istio: egressgateway) lets model-inference reach it"
                ));
            }
        }
    }
}

/// Every string value under `key`, at any depth.
fn collect_key(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == key
                    && let Some(s) = x.as_str()
                {
                    out.push(s.to_owned());
                }
                collect_key(x, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_key(x, key, out)),
        _ => {}
    }
}

fn shipped() -> Manifests {
    let mut problems = Vec::new();
    let m = parse(&shipped_files(), &mut problems);
    assert!(problems.is_empty(), "parsing:\n{}", problems.join("\n"));
    m
}

#[test]
fn the_shipped_manifests_parse_strictly_and_cross_check() {
    let m = shipped();
    assert_eq!(
        m.deployments.len(),
        7,
        "k8s/base's six and Flagger's target"
    );
    assert!(m.virtual_services.len() >= 7);
    // One GRPCRoute per experiment that routes model-inference.
    assert_eq!(
        m.grpc_routes.len(),
        7,
        "the gRPC twins of istio/gateway-api/"
    );
    assert_eq!(
        (m.rollouts.len(), m.canaries.len(), m.patches.len()),
        (1, 1, 2)
    );
    let problems = check_all(&all_files());
    assert!(problems.is_empty(), "problems:\n{}", problems.join("\n"));
    let mut problems = Vec::new();
    let routing = parse(
        &all_files()
            .into_iter()
            .filter(|(p, _)| ARGO_ROUTING.contains(&p.as_str()))
            .collect::<Vec<_>>(),
        &mut problems,
    );
    let sets = progressive::sets(&m, &routing, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let names: Vec<&str> = sets.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["argo-rollouts", "flagger"]);
    for (name, set) in &sets {
        // Two model-inference pod sets, v1 and v2, and k8s/base's per-version
        // Deployments gone.
        let versions: Vec<String> = workloads(set)
            .iter()
            .filter(|(_, t, _)| labels(t).get("app").map(String::as_str) == Some("model-inference"))
            .filter_map(|(_, t, _)| labels(t).get("version").cloned())
            .collect();
        assert_eq!(versions.len(), 2, "{name}: {versions:?}");
        assert!(
            versions.contains(&"v1".into()) && versions.contains(&"v2".into()),
            "{name}"
        );
    }

    // The kind cluster, Istio install and scripts agree with each other.
    let cluster = std::fs::read_to_string(common::repo().join("k8s/kind/cluster.yaml")).unwrap();
    let operator =
        std::fs::read_to_string(common::repo().join("k8s/kind/istio-operator.yaml")).unwrap();
    assert!(cluster.contains("containerPort: 30080") && cluster.contains("hostPort: 8080"));
    let up_sh = std::fs::read_to_string(common::repo().join("k8s/kind/up.sh")).unwrap();
    assert!(
        up_sh.contains("s/hostPort: 8080/hostPort: $port/"),
        "up.sh rewrites cluster.yaml's host port to MLMESH_PORT"
    );
    assert!(operator.contains("nodePort: 30080"));
    let provider = m.telemetries[0].spec.tracing.clone().unwrap()[0]
        .providers
        .clone()
        .unwrap()[0]
        .name
        .clone();
    assert!(
        operator.contains(&format!("- name: {provider}")),
        "Telemetry provider {provider} is defined"
    );
    let up = std::fs::read_to_string(common::repo().join("k8s/kind/up.sh")).unwrap();
    let kustomization =
        std::fs::read_to_string(common::repo().join("k8s/base/kustomization.yaml")).unwrap();
    let tag = m.deployments[0]
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap();
    assert!(
        up.contains(&format!("image=\"{tag}\"")),
        "up.sh builds {tag}"
    );
    assert!(kustomization.contains(&format!("newTag: {}", tag.split(':').nth(1).unwrap())));

    // Every Secret a pod reads is one up.sh creates (none is committed),
    // before the workloads are applied, without the value on a command line.
    let mut secret_refs = Vec::new();
    for d in &m.deployments {
        let v = serde_json::to_value(d).unwrap();
        let mut refs = Vec::new();
        collect_secret_refs(&v, &mut refs);
        secret_refs.extend(refs);
    }
    assert!(
        !secret_refs.is_empty(),
        "the frontend reads its decision key from a Secret"
    );
    let apply_base = up.find("kubectl apply -k \"$kustomization\"").unwrap();
    for name in secret_refs {
        let create = up
            .find(&format!("create secret generic {name} --from-file="))
            .unwrap_or_else(|| panic!("up.sh does not create Secret {name} from a file"));
        assert!(
            create < apply_base,
            "Secret {name} is created after the workloads"
        );
    }
    assert!(
        !up.contains("--from-literal"),
        "a key on kubectl's command line is visible in ps"
    );

    // Both routing APIs ship every experiment.
    assert_eq!(m.k8s_gateways.len(), 1, "the ingress Gateway");
    for (file, _) in &m.virtual_services {
        let Some(dir) = file
            .strip_prefix("istio/")
            .and_then(|f| f.rsplit_once('/'))
            .map(|(d, _)| d)
        else {
            continue;
        };
        let model_routes = m.virtual_services.iter().any(|(f, vs)| {
            f == file
                && vs
                    .spec
                    .hosts
                    .iter()
                    .flatten()
                    .any(|h| short_host(h) == "model-inference")
        });
        if model_routes {
            assert!(
                m.http_routes
                    .iter()
                    .any(|(f, _)| f.starts_with(&format!("istio/gateway-api/{dir}/"))),
                "experiment {dir} has no Gateway API twin in istio/gateway-api/{dir}/"
            );
        }
    }
    // The three Istio installs share the mesh settings; the Gateway API
    // version up.sh installs is the one the field list was made from.
    let mesh_config = |file: &str| {
        let t = std::fs::read_to_string(common::repo().join("k8s/kind").join(file)).unwrap();
        let v: Value = serde_yaml_ng::from_str(&t).unwrap();
        v["spec"]["meshConfig"].clone()
    };
    let operators = [
        "istio-operator.yaml",
        "istio-operator-gateway-api.yaml",
        "istio-operator-ambient.yaml",
    ];
    for f in &operators[1..] {
        assert_eq!(
            mesh_config(f),
            mesh_config(operators[0]),
            "{f}'s meshConfig"
        );
        assert!(up.contains(&format!("$here/{f}")), "up.sh installs {f}");
    }
    let pinned = up
        .lines()
        .find_map(|l| l.strip_prefix("gateway_api_version=\""))
        .and_then(|l| l.split('"').next())
        .expect("up.sh pins the Gateway API release");
    let fields_header = include_str!("manifests/crd-fields.txt")
        .lines()
        .take(3)
        .collect::<String>();
    assert!(
        fields_header.contains(&format!("Gateway API {pinned}")),
        "{fields_header}"
    );
    assert!(
        cluster.contains("image: kindest/node:v1."),
        "the kind node image is pinned"
    );
}

#[test]
fn the_ambient_overlay_renders_and_cross_checks() {
    let mut problems = Vec::new();
    let files = ambient_files(&kustomize::from_disk(&common::repo()), &mut problems);
    let m = parse(&files, &mut problems);
    assert!(
        problems.is_empty(),
        "rendering and parsing:\n{}",
        problems.join("\n")
    );
    assert_eq!(m.deployments.len(), 6);
    assert_eq!(m.jobs.len(), 1);
    assert_eq!(
        m.k8s_gateways.len(),
        2,
        "the ingress Gateway and the waypoint"
    );
    assert!(m.authorization_policies.len() >= 5);
    let problems = check_ambient(&m);
    assert!(problems.is_empty(), "problems:\n{}", problems.join("\n"));
}

/// Like `problems_after`, for the ambient set (the overlay rendered here).
fn ambient_problems_after(file: &str, edit: impl Fn(&str) -> String) -> Vec<String> {
    let repo = common::repo();
    let disk = kustomize::from_disk(&repo);
    let edited = std::cell::Cell::new(false);
    let read = |rel: &str| {
        let t = disk(rel);
        if rel != file {
            return t;
        }
        let e = edit(&t);
        assert_ne!(e, t, "edit of {file} changed nothing");
        edited.set(true);
        e
    };
    let mut problems = Vec::new();
    let files = ambient_files(&read, &mut problems);
    assert!(edited.get(), "{file} is not part of the ambient set");
    let m = parse(&files, &mut problems);
    problems.extend(check_ambient(&m));
    problems
}

/// The names of the Secrets under every `secretKeyRef`.
fn collect_secret_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(name) = m
                .get("secretKeyRef")
                .and_then(|r| r.get("name"))
                .and_then(|n| n.as_str())
            {
                out.push(name.to_owned());
            }
            m.values().for_each(|x| collect_secret_refs(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_secret_refs(x, out)),
        _ => {}
    }
}

/// The problems of every sidecar-mode set `files` make: the union of what a
/// user may apply, and each progressive-delivery controller's set while it
/// runs a canary of v2 (`progressive::sets`), its problems marked.
fn check_all(files: &[(String, String)]) -> Vec<String> {
    let (routing, union): (Vec<_>, Vec<_>) = files
        .iter()
        .cloned()
        .partition(|(p, _)| ARGO_ROUTING.contains(&p.as_str()));
    let mut problems = Vec::new();
    let m = parse(&union, &mut problems);
    let r = parse(&routing, &mut problems);
    problems.extend(check(&m));
    progressive::check_shipped(&m, &mut problems);
    for (name, set) in progressive::sets(&m, &r, &mut problems) {
        problems.extend(check(&set).into_iter().map(|p| format!("[{name}] {p}")));
    }
    problems
}

/// Applies `edit` to one shipped file and returns the problems found.
fn problems_after(file: &str, edit: impl Fn(&str) -> String) -> Vec<String> {
    let files: Vec<(String, String)> = all_files()
        .into_iter()
        .map(|(p, t)| {
            if p == file {
                let e = edit(&t);
                assert_ne!(e, t, "edit of {file} changed nothing");
                (p, e)
            } else {
                (p, t)
            }
        })
        .collect();
    check_all(&files)
}

#[test]
fn deliberately_broken_manifests_are_caught() {
    let cases: Vec<Break> = vec![
        (
            "k8s/base/deployments.yaml",
            Box::new(|t| {
                format!(
                    "{t}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: frontend-decision-key\nstringData:\n  key: mlmesh-lab-demo-key-change-me\n"
                )
            }),
            "commits its value",
        ),
        (
            "istio/resilience/destination-rule.yaml",
            Box::new(|t| t.replace("maxEjectionPercent: 50", "maxEjectionPercent: 100")),
            "can eject all",
        ),
        (
            "k8s/base/deployments.yaml",
            Box::new(|t| {
                t.replacen(
                    "excludeOutboundPorts: \"4318\"",
                    "excludeOutboundPorts: \"15020\"",
                    1,
                )
            }),
            "not in traffic.sidecar.istio.io/excludeOutboundPorts",
        ),
        (
            "istio/security/authorization.yaml",
            Box::new(|t| {
                format!(
                    "{t}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: prometheus-scrape\n  namespace: mlmesh\nspec:\n  action: ALLOW\n  rules:\n    - from:\n        - source:\n            principals: [cluster.local/ns/istio-system/sa/prometheus]\n      to:\n        - operation:\n            methods: [GET]\n            paths: [/metrics]\n"
                )
            }),
            "without a selector also apply to TCP",
        ),
        (
            "istio/security/authorization.yaml",
            Box::new(|t| {
                format!(
                    "{t}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: prometheus-scrape\n  namespace: mlmesh\nspec:\n  selector:\n    matchLabels:\n      app: frontend\n  action: ALLOW\n  rules:\n    - from:\n        - source:\n            principals: [cluster.local/ns/istio-system/sa/prometheus]\n"
                )
            }),
            "is no service account",
        ),
        (
            "istio/canary/virtual-service.yaml",
            Box::new(|t| t.replace("weight: 10", "wieght: 10")),
            "unknown field",
        ),
        (
            "istio/canary/virtual-service.yaml",
            Box::new(|t| t.replace("weight: 10", "weight: 20")),
            "do not sum to 100",
        ),
        (
            "istio/sticky/virtual-service.yaml",
            Box::new(|t| t.replace("x-mlmesh-cohort", "x-cohort")),
            "never sends",
        ),
        (
            "istio/sticky/virtual-service.yaml",
            Box::new(|t| t.replace("exact: candidate", "exact: canary")),
            "never sends",
        ),
        (
            "istio/promote/virtual-service.yaml",
            Box::new(|t| t.replace("subset: v2", "subset: v3")),
            "in no DestinationRule",
        ),
        (
            "istio/blue-green/blue/virtual-service.yaml",
            Box::new(|t| t.replace("exact: green", "exact: gren")),
            "never sends",
        ),
        (
            // Testers asking for green must not be handed blue.
            "istio/blue-green/blue/virtual-service.yaml",
            Box::new(|t| t.replacen("subset: v2", "subset: v1", 1)),
            "x-mlmesh-env: green must route to subset v2 only",
        ),
        (
            "istio/baseline/virtual-service.yaml",
            Box::new(|t| {
                t.replace(
                    "host: model-inference.mlmesh",
                    "host: model-inferense.mlmesh",
                )
            }),
            "not a Service",
        ),
        (
            "istio/destination-rules.yaml",
            Box::new(|t| t.replace("version: v2", "version: v02")),
            "select no pod template",
        ),
        (
            "istio/shadow/virtual-service.yaml",
            Box::new(|t| {
                t.replace("      mirrors:", "      mirror:\n        host: model-inference.mlmesh.svc.cluster.local\n        subset: v2\n      mirrors:")
            }),
            "both mirror and mirrors",
        ),
        (
            "istio/security/authorization.yaml",
            Box::new(|t| {
                t.replacen(
                    "cluster.local/ns/mlmesh/sa/frontend",
                    "cluster.local/ns/mlmesh/sa/front-end",
                    1,
                )
            }),
            "no service account",
        ),
        (
            "istio/security/authorization.yaml",
            Box::new(|t| t.replace("              - cluster.local/ns/mlmesh/sa/seed\n", "")),
            "allows cluster.local/ns/mlmesh/sa/seed",
        ),
        (
            "k8s/base/deployments.yaml",
            Box::new(|t| t.replacen("image: mlmesh:0.1.0", "image: mlmesh:latest", 1)),
            "not pinned",
        ),
        (
            "k8s/base/deployments.yaml",
            Box::new(|t| {
                t.replacen(
                    "readOnlyRootFilesystem: true",
                    "readOnlyRootFilesystem: false",
                    1,
                )
            }),
            "readOnlyRootFilesystem",
        ),
        (
            "k8s/base/deployments.yaml",
            Box::new(|t| t.replacen("          readinessProbe:", "          readinessProbes:", 1)),
            "unknown field",
        ),
        (
            "k8s/base/deployments.yaml",
            Box::new(|t| t.replacen("- name: CANARY_PERCENT", "- name: CANARY_PERCENTAGE", 1)),
            "reads no env CANARY_PERCENTAGE",
        ),
        (
            "k8s/base/deployments.yaml",
            Box::new(|t| {
                t.replacen(
                    "terminationDrainDuration: 5s",
                    "terminationDrainDuration: 20s",
                    1,
                )
            }),
            "terminationDrainDuration must match",
        ),
        (
            "k8s/base/seed-job.yaml",
            Box::new(|t| t.replace("--quit-istio-proxy", "--quit-sidecar")),
            "has no flag --quit-sidecar",
        ),
        (
            "k8s/base/services.yaml",
            // Neither appProtocol nor a name Istio reads a protocol from.
            Box::new(|t| {
                t.replacen("    - name: http\n", "    - name: web\n", 1)
                    .replacen("      appProtocol: http\n", "", 1)
            }),
            "needs a name and appProtocol",
        ),
        (
            "k8s/base/deployments.yaml",
            Box::new(|t| t.replacen("fieldPath: metadata.name", "fieldPath: metadata.uid", 1)),
            "must come from the downward API",
        ),
        (
            "istio/consistent-hash/feature-store.yaml",
            Box::new(|t| t.replace("  name: feature-store\n", "  name: feature-store-hash\n")),
            "give a host's variants one name",
        ),
        (
            // The hashing variant must keep the resilience settings.
            "istio/consistent-hash/feature-store.yaml",
            Box::new(|t| t.replace("consecutive5xxErrors: 5", "consecutive5xxErrors: 50")),
            "differ in more than loadBalancer",
        ),
        (
            "istio/consistent-hash/feature-store.yaml",
            Box::new(|t| t.replace("httpHeaderName: x-user-id", "httpHeaderName: x-user")),
            "which the frontend never sends",
        ),
        (
            "istio/egress/sidecar.yaml",
            Box::new(|t| t.replace("mode: REGISTRY_ONLY", "mode: ALLOW_ANY")),
            "every host is reachable anyway",
        ),
        (
            "istio/egress/egress-gateway.yaml",
            Box::new(|t| {
                t.replacen(
                    "host: istio-egressgateway.istio-system.svc.cluster.local\n            subset",
                    "host: raw.githubusercontent.com\n            subset",
                    1,
                )
            }),
            "through the egress gateway",
        ),
        (
            "istio/egress/egress-gateway.yaml",
            Box::new(|t| t.replace("sa/model-inference-v2", "sa/frontend")),
            "which is not model-inference",
        ),
        (
            "istio/egress/service-entry.yaml",
            Box::new(|t| t.replace("- raw.githubusercontent.com", "- raw.githubusercontent.co")),
            "is not a Service or ServiceEntry host",
        ),
        (
            "istio/consistent-hash/frontend.yaml",
            Box::new(|t| {
                t.replace(
                    "httpQueryParameterName: user_id",
                    "httpQueryParameterName: user",
                )
            }),
            "consistent hash must be on ?user_id=",
        ),
        (
            "istio/auth/request-authentication.yaml",
            Box::new(|t| t.replace("\"e\":\"AQAB\"", "\"e\":\"AQAC\"")),
            "does not verify a token `mlmesh token` mints",
        ),
        (
            "istio/auth/request-authentication.yaml",
            Box::new(|t| t.replace("- issuer: mlmesh-demo", "- issuer: mlmesh-dem0")),
            "is not the one `mlmesh token` signs as",
        ),
        (
            "istio/auth/request-authentication.yaml",
            Box::new(|t| t.replace("header: x-mlmesh-auth-group", "header: x-mlmesh-group")),
            "which the frontend never reads",
        ),
        (
            "istio/auth/request-authentication.yaml",
            Box::new(|t| t.replacen("istio: ingressgateway", "app: frontend", 1)),
            "must select the ingress gateway",
        ),
        (
            "istio/auth/authorization-policy.yaml",
            Box::new(|t| t.replace("paths: [\"/feedback\"]", "paths: [\"/feedbacks\"]")),
            "refuses POST /feedback without a token",
        ),
        (
            "istio/auth/authorization-policy.yaml",
            Box::new(|t| t.replace("action: DENY", "action: ALLOW")),
            "refuses POST /feedback without a token",
        ),
        (
            "istio/auth/authorization-policy.yaml",
            Box::new(|t| {
                t.replace(
                    "request.headers[x-mlmesh-auth-group]",
                    "request.headers[x-mlmesh-auth-grp]",
                )
            }),
            "refuses a client's own x-mlmesh-auth-group",
        ),
        // Progressive delivery.
        (
            "k8s/progressive/argo-rollouts/analysis-template.yaml",
            Box::new(|t| t.replace("&status=ok", "")),
            "needs status=ok",
        ),
        (
            "k8s/progressive/argo-rollouts/analysis-template.yaml",
            Box::new(|t| t.replace("http://verdict.mlmesh", "http://verdikt.mlmesh")),
            "is not the verdict Service",
        ),
        (
            "k8s/progressive/argo-rollouts/analysis-template.yaml",
            Box::new(|t| t.replace("      value: v2", "      value: v3")),
            "candidate v3 is not a version the model's pods run",
        ),
        (
            "k8s/progressive/argo-rollouts/analysis-template.yaml",
            Box::new(|t| t.replace("result.verdict == \"rollback\" ||", "")),
            "on a `rollback` it is inconclusive",
        ),
        (
            "k8s/progressive/argo-rollouts/analysis-template.yaml",
            Box::new(|t| t.replace("timeoutSeconds: 25", "timeoutSeconds: 10")),
            "is not above the verdict service's worst case",
        ),
        (
            "k8s/progressive/argo-rollouts/analysis-template.yaml",
            Box::new(|t| t.replace("consecutiveErrorLimit", "consecutiveErrorLimt")),
            "is not a field of AnalysisTemplate in",
        ),
        // Argo Rollouts' Rollout and routing (checked in its own set).
        (
            ROLLOUT,
            Box::new(|t| t.replace("              - primary\n", "              - main\n")),
            "VirtualService model-inference has no http route main",
        ),
        (
            ROLLOUT,
            Box::new(|t| t.replace("canarySubsetName: canary", "canarySubsetName: preview")),
            "DestinationRule model-inference: has no subset preview",
        ),
        (
            ROLLOUT,
            Box::new(|t| t.replace("- setWeight: 50", "- setWeight: 5")),
            "setWeights [10, 25, 5, 100] must rise to 100",
        ),
        (
            ROLLOUT,
            Box::new(|t| {
                t.replacen(
                    "        - pause: {duration: 2m}\n",
                    "        - pause: {}\n",
                    1,
                )
            }),
            "step 0 (setWeight) needs a timed pause",
        ),
        (
            ROLLOUT,
            Box::new(|t| t.replace("propensity-v1.onnx", "propensity-v2.onnx")),
            "its pod template differs from k8s/base's model-inference-v1 at /spec/containers/0/env/0/value",
        ),
        (
            ROLLOUT,
            Box::new(|t| t.replace("            value: v2\n", "            value: v3\n")),
            "analysis arg candidate Some(\"v3\") is not the canary pods' version",
        ),
        (
            ROLLOUT,
            Box::new(|t| {
                t.replace(
                    "templateName: mlmesh-verdict",
                    "templateName: mlmesh-verdikt",
                )
            }),
            "AnalysisTemplate mlmesh-verdikt does not exist",
        ),
        (
            ROLLOUT,
            Box::new(|t| {
                t.replace(
                    "    matchLabels:\n      app: model-inference\n",
                    "    matchLabels:\n      app: model-inference\n      version: v1\n",
                )
            }),
            "does not select the canary pods",
        ),
        (
            ROLLOUT,
            Box::new(|t| t.replace("startingStep: 1", "startingStp: 1")),
            "is not a field of Rollout in",
        ),
        (
            ARGO_ROUTING[0],
            Box::new(|t| t.replace("subset: canary", "subset: preview")),
            "DestinationRule subset canary not found in route",
        ),
        (
            ARGO_ROUTING[1],
            Box::new(|t| format!("{t}    - name: v1\n      labels:\n        version: v1\n")),
            "Argo Rollouts deletes subset v1",
        ),
        // The candidates both controllers are given.
        (
            progressive::CANDIDATE,
            Box::new(|t| {
                t.replace(
                    "value: /models/propensity-v2.onnx",
                    "value: /models/propensity-v1.onnx",
                )
            }),
            "the patched v1 template differs from k8s/base's model-inference-v2 at /spec/containers/0/env/0/value",
        ),
        (
            progressive::CANDIDATE,
            Box::new(|t| t.replace("  value: MODEL_VERSION\n", "  value: MODEL_NAME\n")),
            "does not apply to",
        ),
        (
            progressive::FAILING_CANDIDATE,
            Box::new(|t| t.replace("value: \"0.5\"", "value: \"0\"")),
            "to make the candidate fail",
        ),
        (
            progressive::FAILING_CANDIDATE,
            Box::new(|t| {
                t.replace(
                    "value: /models/propensity-v2.onnx",
                    "value: /models/propensity-v1.onnx",
                )
            }),
            "must be k8s/progressive/candidate-v2.yaml plus one operation",
        ),
        (
            progressive::CANDIDATE,
            Box::new(|t| t.replacen("  value: v2\n", "  value: v3\n", 1)),
            "pod label version Some(\"v3\") is not its MODEL_VERSION Some(\"v2\")",
        ),
        // Flagger's Canary and target (checked in its own set too).
        (
            FLAGGER_TARGET,
            Box::new(|t| {
                t.replace("  selector:\n    matchLabels:\n      app.kubernetes.io/name: model-inference\n", "  selector:\n    matchLabels:\n      app: model-inference\n")
            }),
            "[flagger] frontend calls model-inference (MODEL_URL), but no AuthorizationPolicy on its pods",
        ),
        (
            FLAGGER_TARGET,
            Box::new(|t| t.replace("cpu: 200m", "cpu: 100m")),
            "Deployment model-inference's pod template differs from k8s/base's model-inference-v1 at /spec/containers/0/resources/requests/cpu",
        ),
        (
            FLAGGER_CANARY,
            Box::new(|t| {
                t.replace("    appProtocol: http\n", "")
                    .replace("portName: http", "portName: web")
            }),
            "[flagger] Service model-inference: port 8080 needs a name and appProtocol",
        ),
        (
            FLAGGER_CANARY,
            Box::new(|t| t.replace("&window=10m", "&window=10m&status=ok")),
            "it would never roll back",
        ),
        (
            FLAGGER_CANARY,
            Box::new(|t| t.replace("candidate=v2", "candidate=v1")),
            "candidate Some(\"v1\") is not the canary pods' version",
        ),
        (
            FLAGGER_CANARY,
            Box::new(|t| t.replace("timeout: 25s", "timeout: 15s")),
            "is not above the verdict service's worst case",
        ),
        (
            FLAGGER_CANARY,
            Box::new(|t| t.replace("port: 8080", "port: 80")),
            "service model-inference:80 is not a port of the Service the frontend calls",
        ),
        (
            FLAGGER_CANARY,
            Box::new(|t| t.replace("stepWeights: [10, 25, 50]", "stepWeights: [10, 50, 25]")),
            "must rise within 1..100",
        ),
        (
            FLAGGER_CANARY,
            Box::new(|t| t.replace("type: rollout", "type: rolout")),
            "type must be `rollout`",
        ),
        // The Gateway API forms.
        (
            "istio/gateway-api/auth/request-authentication.yaml",
            Box::new(|t| t.replace("name: mlmesh-gateway", "name: mlmesh-gw")),
            "must select the ingress gateway",
        ),
        (
            "istio/gateway-api/auth/authorization-policy.yaml",
            Box::new(|t| t.replace("name: mlmesh-gateway", "name: mlmesh-gw")),
            "(Gateway istio-ingress/mlmesh-gateway) refuses POST /feedback without a token",
        ),
        (
            "istio/gateway-api/canary/http-route.yaml",
            Box::new(|t| t.replace("weight: 10", "wieght: 10")),
            "is not a field of HTTPRoute in Istio 1.31",
        ),
        // gRPC to model-inference (MODEL_PROTOCOL=grpc) is routed, named
        // and allowed like REST.
        (
            "istio/gateway-api/canary/grpc-route.yaml",
            Box::new(|t| t.replace("weight: 10", "weight: 20")),
            "is not the gRPC twin of istio/gateway-api/canary/http-route.yaml",
        ),
        (
            "istio/gateway-api/sticky/grpc-route.yaml",
            Box::new(|_| String::new()),
            "istio/gateway-api/sticky/ has no GRPCRoute for it",
        ),
        (
            "istio/gateway-api/shadow/grpc-route.yaml",
            Box::new(|t| t.replacen("port: 9000", "port: 8080", 1)),
            "port 8080 is not its gRPC port",
        ),
        (
            "istio/gateway-api/promote/grpc-route.yaml",
            Box::new(|t| t.replace("name: model-inference-v2", "name: model-inference-v3")),
            "backendRef model-inference-v3 is not a Service",
        ),
        (
            "k8s/base/services.yaml",
            Box::new(|t| t.replace("appProtocol: grpc", "appProtocol: tcp")),
            "needs a port named grpc with appProtocol grpc",
        ),
        (
            "k8s/base/deployments.yaml",
            Box::new(|t| t.replacen("- name: grpc\n", "- name: grpc-api\n", 1)),
            "targets \"grpc\", which model-inference-v1's containers do not name",
        ),
        (
            "istio/security/authorization.yaml",
            Box::new(|t| {
                t.replace(
                    "/inference.GRPCInferenceService/*",
                    "/inference.GRPCInferenceService/ModelInfer",
                )
            }),
            "denies the frontend's POST /inference.GRPCInferenceService/ModelConfig",
        ),
        (
            "istio/canary/virtual-service.yaml",
            Box::new(|t| t.replace("weight: 10", "wieght: 10")),
            "is not a field of VirtualService in Istio 1.31",
        ),
        (
            "istio/gateway-api/canary/http-route.yaml",
            Box::new(|t| {
                t.replace("weight: 90", "weight: 0")
                    .replace("weight: 10", "weight: 0")
            }),
            "must be non-negative and not all zero",
        ),
        (
            "istio/gateway-api/sticky/http-route.yaml",
            Box::new(|t| t.replace("value: candidate", "value: canary")),
            "which the frontend never sends",
        ),
        (
            "istio/gateway-api/sticky/http-route.yaml",
            Box::new(|t| t.replace("name: x-user-group", "name: x-group")),
            "which the frontend never sends",
        ),
        (
            "istio/gateway-api/sticky/http-route.yaml",
            Box::new(|t| {
                t.replacen(
                    "  name: model-inference\n",
                    "  name: model-inference-sticky\n",
                    1,
                )
            }),
            "give them one name",
        ),
        (
            "istio/gateway-api/shadow/http-route.yaml",
            Box::new(|t| t.replacen("name: model-inference-v2", "name: model-inference-v1", 1)),
            "its own backend",
        ),
        (
            "istio/gateway-api/promote/http-route.yaml",
            Box::new(|t| t.replace("name: model-inference-v2", "name: model-inference-v3")),
            "backendRef model-inference-v3 is not a Service",
        ),
        (
            "istio/gateway-api/baseline/http-route.yaml",
            Box::new(|t| t.replace("          port: 8080", "          port: 9090")),
            "has no port 9090",
        ),
        (
            // Routing to the Service of both versions makes the weights lie.
            "istio/gateway-api/canary/http-route.yaml",
            Box::new(|t| t.replace("name: model-inference-v1", "name: model-inference")),
            "must be one version",
        ),
        (
            "istio/gateway-api/blue-green/blue/http-route.yaml",
            Box::new(|t| t.replacen("name: model-inference-v2", "name: model-inference-v1", 1)),
            "green must route to v2's Service only",
        ),
        (
            "k8s/base/services.yaml",
            Box::new(|t| {
                t.replace(
                    "  selector:\n    app: model-inference\n    version: v1\n",
                    "  selector:\n    app: model-inference\n",
                )
            }),
            "Service model-inference-v1 selects the pods of versions",
        ),
        (
            "istio/gateway-api/gateway.yaml",
            Box::new(|t| t.replace("nodePort: 30080", "nodePort: 30081")),
            "kind's localhost mapping",
        ),
        (
            "istio/gateway-api/gateway.yaml",
            Box::new(|t| t.replace("      targetPort: 80\n", "      targetPort: 8080\n")),
            "kind's localhost mapping",
        ),
        (
            "istio/gateway-api/gateway.yaml",
            Box::new(|t| {
                t.replace(
                    "kubernetes.io/metadata.name: mlmesh",
                    "kubernetes.io/metadata.name: default",
                )
            }),
            "does not admit routes from namespace mlmesh",
        ),
        (
            "istio/gateway-api/gateway.yaml",
            Box::new(|t| t.replace("value: /feedback", "value: /feedbacks")),
            "the Istio API's gateway route",
        ),
        (
            "istio/gateway-api/gateway.yaml",
            Box::new(|t| t.replace("sectionName: http", "sectionName: https")),
            "has no listener",
        ),
        (
            "istio/gateway-api/ratelimit/envoy-filter.yaml",
            Box::new(|t| t.replace("max_tokens: 10\n", "max_tokens: 20\n")),
            "rate-limit differently",
        ),
        (
            "istio/gateway-api/ratelimit/envoy-filter.yaml",
            Box::new(|t| t.replace("portNumber: 80", "portNumber: 8080")),
            "on which Gateway mlmesh-gateway does not listen",
        ),
        (
            "istio/gateway-api/ratelimit/envoy-filter.yaml",
            Box::new(|t| t.replace("name: mlmesh-gateway", "name: mlmesh-gw")),
            "is no Gateway API Gateway in istio-ingress",
        ),
    ];
    for (file, edit, expect) in cases {
        let problems = problems_after(file, edit);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "breaking {file} should report {expect:?}; got {problems:#?}"
        );
    }
}

#[test]
fn deliberately_broken_ambient_manifests_are_caught() {
    const OVERLAY: &str = "k8s/overlays/ambient/kustomization.yaml";
    const SECURITY: &str = "istio/ambient/security/authorization.yaml";
    let cases: Vec<Break> = vec![
        (
            SECURITY,
            Box::new(|t| t.replace("ports: [\"8080\", \"9000\"]", "ports: [\"8080\"]")),
            "not on port 9000, which the Service serves",
        ),
        (
            OVERLAY,
            Box::new(|t| {
                t.replace(
                    "      - op: remove\n        path: /metadata/labels/istio-injection\n",
                    "",
                )
            }),
            "still asks for sidecar injection",
        ),
        (
            OVERLAY,
            Box::new(|t| {
                t.replace(
                    "      - op: remove\n        path: /spec/template/metadata/annotations/traffic.sidecar.istio.io~1excludeOutboundPorts\n",
                    "",
                )
            }),
            "sidecar-only annotation traffic.sidecar.istio.io/excludeOutboundPorts",
        ),
        (
            OVERLAY,
            Box::new(|t| {
                t.replace(
                    "value: [\"feature-store\", \"seed\"]",
                    "value: [\"feature-store\", \"seed\", \"--quit-istio-proxy\"]",
                )
            }),
            "no sidecar to quit",
        ),
        (
            OVERLAY,
            Box::new(|t| t.replace("name: feature-store|model-inference", "name: feature-store")),
            "HTTPRoute model-inference: in ambient mode only a waypoint applies it, and Service model-inference uses none",
        ),
        (
            OVERLAY,
            Box::new(|t| {
                t.replace(
                    "name: feature-store|model-inference",
                    "name: model-inference",
                )
            }),
            "DestinationRule feature-store: in ambient mode only a waypoint applies it",
        ),
        (
            OVERLAY,
            Box::new(|t| {
                t.replace(
                    "      - op: add\n        path: /metadata/labels/istio.io~1ingress-use-waypoint\n        value: \"true\"\n",
                    "",
                )
            }),
            "label it istio.io/ingress-use-waypoint",
        ),
        (
            OVERLAY,
            Box::new(|t| t.replace("      name: redis\n", "      name: rediss\n")),
            "matches no resource",
        ),
        (
            OVERLAY,
            Box::new(|t| {
                t.replace(
                    "path: /spec/template/metadata/annotations/proxy.istio.io~1config",
                    "path: /spec/template/metadata/annotations/proxy.istio.io~1conf",
                )
            }),
            "does not apply to Deployment",
        ),
        (
            "k8s/overlays/ambient/waypoint.yaml",
            Box::new(|t| t.replace("protocol: HBONE", "protocol: HTTP")),
            "a waypoint listens for HBONE on 15008",
        ),
        (
            "k8s/overlays/ambient/waypoint.yaml",
            Box::new(|t| t.replace("  name: waypoint\n", "  name: mlmesh-waypoint\n")),
            "but no waypoint Gateway waypoint exists",
        ),
        (
            SECURITY,
            Box::new(|t| {
                t.replacen(
                    "              - cluster.local/ns/mlmesh/sa/waypoint\n",
                    "",
                    1,
                )
            }),
            "through a waypoint the pod sees the waypoint",
        ),
        (
            SECURITY,
            Box::new(|t| {
                t.replace(
                    "  targetRefs:\n    - group: \"\"\n      kind: Service\n      name: frontend\n",
                    "  selector:\n    matchLabels:\n      app: frontend\n",
                )
            }),
            "which ztunnel enforces and cannot see",
        ),
        (
            SECURITY,
            Box::new(|t| {
                t.replacen(
                    "              - cluster.local/ns/istio-system/sa/prometheus\n",
                    "",
                    1,
                )
            }),
            "no policy on its pods allows cluster.local/ns/istio-system/sa/prometheus",
        ),
        (
            SECURITY,
            Box::new(|t| t.replace("sa/mlmesh-gateway-istio", "sa/mlmesh-gateway")),
            "is no service account here",
        ),
        (
            SECURITY,
            Box::new(|t| t.replace("              - cluster.local/ns/mlmesh/sa/seed\n", "")),
            "seed (REDIS_URL) calls redis, but no AuthorizationPolicy on its pods allows cluster.local/ns/mlmesh/sa/seed",
        ),
    ];
    for (file, edit, expect) in cases {
        let problems = ambient_problems_after(file, edit);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "breaking {file} should report {expect:?}; got {problems:#?}"
        );
    }
}

/// Every repository path the cluster READMEs have a user apply, render or
/// patch with exists: a renamed file must not leave a dead command behind.
#[test]
fn the_cluster_readmes_name_only_real_files() {
    let mut named = 0;
    for readme in ["istio/README.md", "k8s/progressive/README.md"] {
        let text = std::fs::read_to_string(common::repo().join(readme)).unwrap();
        let words: Vec<&str> = text
            .split_whitespace()
            .map(|w| w.trim_matches(|c: char| "`'\"(),;:.".contains(c)))
            .collect();
        for pair in words.windows(2) {
            let [flag, path] = pair else { unreachable!() };
            let local = ["k8s/", "istio/", "docker/", "experiments/"]
                .iter()
                .any(|d| path.starts_with(d));
            if ["-f", "-k", "--patch-file", "--filename"].contains(flag) && local {
                named += 1;
                assert!(
                    common::repo().join(path).exists(),
                    "{readme}: `{flag} {path}` names no file of the repository"
                );
            }
        }
    }
    assert!(
        named >= 20,
        "only {named} paths found: is the parsing broken?"
    );
}
