//! Ambient mode (k8s/overlays/ambient rendered, with the files istio/README.md
//! has an ambient user apply): the namespace is in the ambient data plane
//! with no sidecar setting left, every L7 thing (an HTTPRoute on a Service, a
//! DestinationRule, a policy on methods or paths) has a waypoint to run on,
//! ztunnel's policies say only what ztunnel can check, and every call the app
//! makes is allowed both where its L7 rule runs and at the pod, where the
//! caller is the waypoint.

use std::collections::{BTreeMap, BTreeSet};

use istio_api_rs::security::v1::authorization_policy::{
    AuthorizationPolicy, AuthorizationPolicyAction,
};
use k8s_openapi::api::core::v1::Service;

use super::gateway_api::{self, WAYPOINT_CLASS, name_of, namespace_of};
use super::{
    Manifests, NAMESPACE, labels, pod_spec, policy_selector, selects, short_host, url_host,
    workloads,
};

const USE_WAYPOINT: &str = "istio.io/use-waypoint";
const INGRESS_USE_WAYPOINT: &str = "istio.io/ingress-use-waypoint";
/// The Istio addon's Prometheus, once up.sh --ambient enrols it.
const PROMETHEUS: &str = "cluster.local/ns/istio-system/sa/prometheus";
/// Pod annotations that only mean something to a sidecar.
const SIDECAR_ONLY: [&str; 3] = [
    "proxy.istio.io/",
    "sidecar.istio.io/",
    "traffic.sidecar.istio.io/",
];

fn selector(svc: &Service) -> BTreeMap<String, String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

fn l7(ap: &AuthorizationPolicy) -> bool {
    ap.spec.rules.iter().flatten().any(|r| {
        r.to.iter().flatten().any(|t| {
            t.operation.as_ref().is_some_and(|o| {
                o.methods.is_some()
                    || o.paths.is_some()
                    || o.hosts.is_some()
                    || o.not_paths.is_some()
            })
        }) || r.from.iter().flatten().any(|f| {
            f.source.as_ref().is_some_and(|s| {
                s.request_principals.is_some() || s.not_request_principals.is_some()
            })
        }) || r.when.is_some()
    })
}

fn allows(ap: &AuthorizationPolicy, principal: &str) -> bool {
    matches!(
        ap.spec.action,
        None | Some(AuthorizationPolicyAction::Allow)
    ) && ap.spec.rules.iter().flatten().any(|r| {
        r.from.iter().flatten().any(|f| {
            f.source
                .as_ref()
                .and_then(|s| s.principals.as_ref())
                .is_some_and(|ps| ps.iter().any(|p| p == principal))
        })
    })
}

pub fn check(m: &Manifests, problems: &mut Vec<String>) {
    let ns_labels = m
        .namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(NAMESPACE))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    if ns_labels.get("istio.io/dataplane-mode").map(String::as_str) != Some("ambient") {
        problems.push(format!(
            "namespace {NAMESPACE} must be labelled istio.io/dataplane-mode: ambient"
        ));
    }
    if ns_labels.contains_key("istio-injection") {
        problems.push(format!(
            "namespace {NAMESPACE} still asks for sidecar injection (istio-injection): a pod would get both a sidecar and ztunnel"
        ));
    }
    for (name, t, _) in workloads(m) {
        for a in t
            .metadata
            .as_ref()
            .and_then(|md| md.annotations.clone())
            .unwrap_or_default()
            .keys()
        {
            if SIDECAR_ONLY.iter().any(|p| a.starts_with(p)) {
                problems.push(format!(
                    "{name}: sidecar-only annotation {a} left in ambient mode"
                ));
            }
        }
        for c in &pod_spec(t).containers {
            if c.args.iter().flatten().any(|a| a == "--quit-istio-proxy") {
                problems.push(format!(
                    "{name}/{}: --quit-istio-proxy, but in ambient mode there is no sidecar to quit",
                    c.name
                ));
            }
        }
    }

    // Which Services run through which waypoint.
    let waypoints: BTreeMap<String, String> = m
        .k8s_gateways
        .iter()
        .filter(|(_, g)| g.spec.gateway_class_name == WAYPOINT_CLASS)
        .map(|(_, g)| (name_of(&g.metadata), gateway_api::principal(g)))
        .collect();
    let services = m.services_by_name();
    let mut waypoint_of: BTreeMap<String, String> = BTreeMap::new();
    for (name, svc) in &services {
        let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
        let Some(w) = svc_labels.get(USE_WAYPOINT).or(ns_labels.get(USE_WAYPOINT)) else {
            continue;
        };
        if w == "none" {
            continue;
        }
        if !waypoints.contains_key(w) {
            problems.push(format!(
                "Service {name}: {USE_WAYPOINT}: {w}, but no waypoint Gateway {w} exists"
            ));
            continue;
        }
        waypoint_of.insert(name.clone(), w.clone());
    }
    let needs_waypoint = |what: String, svc: &str, problems: &mut Vec<String>| {
        if !waypoint_of.contains_key(svc) {
            problems.push(format!(
                "{what}: in ambient mode only a waypoint applies it, and Service {svc} uses none ({USE_WAYPOINT})"
            ));
        }
    };
    // Mesh routes (a Service parent), HTTP and gRPC alike.
    let service_parents = m
        .http_routes
        .iter()
        .flat_map(|(f, r)| {
            let parents = r.spec.parent_refs.iter().flatten();
            parents.map(move |p| (f, "HTTPRoute", &r.metadata, p.kind.as_deref(), &p.name))
        })
        .chain(m.grpc_routes.iter().flat_map(|(f, r)| {
            let parents = r.spec.parent_refs.iter().flatten();
            parents.map(move |p| (f, "GRPCRoute", &r.metadata, p.kind.as_deref(), &p.name))
        }));
    for (file, kind, md, parent_kind, parent) in service_parents {
        if parent_kind == Some("Service") {
            needs_waypoint(format!("{file}: {kind} {}", name_of(md)), parent, problems);
        }
    }
    for dr in &m.destination_rules {
        let host = short_host(&dr.spec.host);
        if services.contains_key(host) {
            needs_waypoint(format!("DestinationRule {host}"), host, problems);
        }
    }

    // Authorization: where each policy runs.
    let mut l4: Vec<&AuthorizationPolicy> = Vec::new();
    let mut on_service: BTreeMap<String, Vec<&AuthorizationPolicy>> = BTreeMap::new();
    for ap in &m.authorization_policies {
        let name = ap.metadata.name.clone().unwrap_or_default();
        match (&ap.spec.selector, &ap.spec.target_refs) {
            (_, Some(targets)) => {
                for t in targets {
                    if t.kind == "Service" {
                        needs_waypoint(format!("AuthorizationPolicy {name}"), &t.name, problems);
                        on_service.entry(t.name.clone()).or_default().push(ap);
                    } else if !(t.kind == "Gateway"
                        && m.k8s_gateways
                            .iter()
                            .any(|(_, g)| name_of(&g.metadata) == t.name))
                    {
                        problems.push(format!(
                            "AuthorizationPolicy {name}: targetRef {} {} is neither a Service nor a Gateway",
                            t.kind, t.name
                        ));
                    }
                }
            }
            _ => {
                if l7(ap) {
                    problems.push(format!(
                        "AuthorizationPolicy {name}: methods, paths or request principals in a workload (selector) policy, which ztunnel enforces and cannot see: attach it to the Service (targetRefs), where the waypoint runs it"
                    ));
                }
                l4.push(ap);
            }
        }
    }
    if m.authorization_policies.is_empty() {
        return;
    }
    let known: BTreeSet<String> = m
        .service_accounts
        .iter()
        .filter_map(|s| s.metadata.name.as_ref())
        .map(|sa| format!("cluster.local/ns/{NAMESPACE}/sa/{sa}"))
        .chain(
            m.k8s_gateways
                .iter()
                .map(|(_, g)| gateway_api::principal(g)),
        )
        .chain([PROMETHEUS.to_owned()])
        .chain(super::CONTROLLERS.map(str::to_owned))
        .collect();
    for ap in &m.authorization_policies {
        for p in ap
            .spec
            .rules
            .iter()
            .flatten()
            .flat_map(|r| r.from.iter().flatten())
            .filter_map(|f| f.source.as_ref()?.principals.as_ref())
            .flatten()
        {
            if !known.contains(p) {
                problems.push(format!(
                    "AuthorizationPolicy {}: principal {p} is no service account here",
                    ap.metadata.name.clone().unwrap_or_default()
                ));
            }
        }
    }
    // Whether the pod (L4) policy `ap` applies to `svc`'s pods.
    let on_pods_of = |ap: &AuthorizationPolicy, svc: &Service| {
        let sel = policy_selector(ap);
        !sel.is_empty() && selects(&sel, &selector(svc))
    };
    // The pod's own (L4) policies allow `principal`.
    let pod_allows = |svc: &Service, principal: &str| {
        l4.iter()
            .any(|ap| on_pods_of(ap, svc) && allows(ap, principal))
    };
    // The waypoint forwards to every port of a Service it serves (REST and
    // gRPC): a pod policy that lets the waypoint in on some ports only
    // would drop the calls to the others.
    for (svc_name, w) in &waypoint_of {
        let (Some(svc), Some(principal)) = (services.get(svc_name), waypoints.get(w)) else {
            continue;
        };
        let svc_ports: Vec<String> = gateway_api::service_ports(svc)
            .iter()
            .map(i32::to_string)
            .collect();
        for ap in l4.iter().filter(|ap| on_pods_of(ap, svc)) {
            for rule in ap.spec.rules.iter().flatten() {
                let names = super::rule_names(rule, principal);
                let ops: Vec<_> = rule
                    .to
                    .iter()
                    .flatten()
                    .filter_map(|t| t.operation.as_ref())
                    .collect();
                if !names || ops.is_empty() || ops.iter().any(|o| o.ports.is_none()) {
                    continue;
                }
                for port in &svc_ports {
                    if !ops
                        .iter()
                        .flat_map(|o| o.ports.iter().flatten())
                        .any(|p| p == port)
                    {
                        problems.push(format!(
                            "AuthorizationPolicy {}: lets the waypoint into {svc_name}'s pods, but not on port {port}, which the Service serves",
                            ap.metadata.name.clone().unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    let mut calls: Vec<(String, String, String)> = Vec::new(); // (who, caller principal, service)
    for (name, t, _) in workloads(m) {
        let pod = pod_spec(t);
        let caller = format!(
            "cluster.local/ns/{NAMESPACE}/sa/{}",
            pod.service_account_name.as_deref().unwrap_or_default()
        );
        for c in &pod.containers {
            for e in c.env.iter().flatten() {
                if let Some((host, _)) = e.value.as_deref().and_then(url_host)
                    && services.contains_key(&host)
                {
                    calls.push((format!("{name} ({})", e.name), caller.clone(), host));
                }
            }
        }
    }
    // The ingress gateway calls the backends of the routes attached to it.
    for (_, r) in &m.http_routes {
        for p in r.spec.parent_refs.iter().flatten() {
            if p.kind.as_deref().unwrap_or("Gateway") != "Gateway" {
                continue;
            }
            let gw_ns = p
                .namespace
                .clone()
                .unwrap_or_else(|| namespace_of(&r.metadata));
            let Some(g) = gateway_api::find(m, &gw_ns, &p.name) else {
                continue;
            };
            for b in r
                .spec
                .rules
                .iter()
                .flatten()
                .flat_map(|rule| rule.backend_refs.iter().flatten())
            {
                let svc_labels = services
                    .get(&b.name)
                    .and_then(|s| s.metadata.labels.clone())
                    .unwrap_or_default();
                if waypoint_of.contains_key(&b.name)
                    && svc_labels.get(INGRESS_USE_WAYPOINT).map(String::as_str) != Some("true")
                {
                    problems.push(format!(
                        "Service {}: the ingress gateway sends straight to its pods, past its waypoint and the L7 rules there: label it {INGRESS_USE_WAYPOINT}: \"true\"",
                        b.name
                    ));
                }
                calls.push((
                    format!("ingress gateway {gw_ns}/{}", p.name),
                    gateway_api::principal(g),
                    b.name.clone(),
                ));
            }
        }
    }
    for (who, caller, host) in calls {
        let svc = services[&host];
        match waypoint_of.get(&host) {
            Some(w) => {
                let l7_ok = on_service
                    .get(&host)
                    .is_some_and(|aps| aps.iter().any(|ap| allows(ap, &caller)));
                if !l7_ok {
                    problems.push(format!(
                        "{who} calls {host}, but no AuthorizationPolicy on Service {host} (its waypoint) allows {caller}"
                    ));
                }
                if !pod_allows(svc, &waypoints[w]) {
                    problems.push(format!(
                        "{who} calls {host} through waypoint {w}, but {host}'s pods do not allow {}: through a waypoint the pod sees the waypoint, not the caller",
                        waypoints[w]
                    ));
                }
            }
            None => {
                if !pod_allows(svc, &caller) {
                    problems.push(format!(
                        "{who} calls {host}, but no AuthorizationPolicy on its pods allows {caller}"
                    ));
                }
            }
        }
    }
    // Prometheus scrapes every annotated pod itself (no sidecar port 15020).
    for (name, t, _) in workloads(m) {
        let annotations = t
            .metadata
            .as_ref()
            .and_then(|md| md.annotations.clone())
            .unwrap_or_default();
        if annotations.get("prometheus.io/scrape").map(String::as_str) != Some("true") {
            continue;
        }
        let covered: Vec<_> = l4
            .iter()
            .filter(|ap| {
                let sel = policy_selector(ap);
                sel.is_empty() || selects(&sel, &labels(t))
            })
            .collect();
        if !covered.is_empty() && !covered.iter().any(|ap| allows(ap, PROMETHEUS)) {
            problems.push(format!(
                "{name}: Prometheus scrapes it (prometheus.io/scrape), but no policy on its pods allows {PROMETHEUS}"
            ));
        }
    }
}
