//! The Kubernetes Gateway API forms (istio/gateway-api/, the ambient
//! overlay's waypoint), cross-checked as Istio and Kiali would: every
//! parentRef and backendRef names a Gateway or a Service and port that
//! exists, a route may attach where it points, weights mean something, the
//! header matches are the frontend's own constants, a mirror is a second
//! backend, and each per-version Service holds one version's pods.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::gateways::{Gateway, GatewayListenersAllowedRoutesNamespacesFrom as From};
use gateway_api::httproutes::HttpRouteRulesMatchesPathType as PathType;
use istio_api_rs::networking::v1alpha3::envoy_filter::EnvoyFilter;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Manifests, NAMESPACE, known_header_value, labels, selects, workloads};

/// Istio's class for gateways it deploys, and for waypoints.
pub const GATEWAY_CLASS: &str = "istio";
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// Where kind's port mapping lands (k8s/kind/cluster.yaml).
const KIND_NODE_PORT: i32 = 30080;
/// The label Istio puts on the pods it deploys for a Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

pub fn name_of(
    md: &k8s_openapi_for_gateway_api::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    md.name.clone().unwrap_or_default()
}

pub fn namespace_of(
    md: &k8s_openapi_for_gateway_api::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    md.namespace.clone().unwrap_or_else(|| NAMESPACE.to_owned())
}

/// The service account Istio gives the Deployment it makes for `g`:
/// `<name>-istio` for a gateway, the Gateway's own name for a waypoint.
pub fn principal(g: &Gateway) -> String {
    let (ns, name) = (namespace_of(&g.metadata), name_of(&g.metadata));
    if g.spec.gateway_class_name == WAYPOINT_CLASS {
        format!("cluster.local/ns/{ns}/sa/{name}")
    } else {
        format!(
            "cluster.local/ns/{ns}/sa/{name}-{}",
            g.spec.gateway_class_name
        )
    }
}

/// The Gateway API Gateway `ns/name`, if the set has it.
pub fn find<'m>(m: &'m Manifests, ns: &str, name: &str) -> Option<&'m Gateway> {
    m.k8s_gateways
        .iter()
        .map(|(_, g)| g)
        .find(|g| name_of(&g.metadata) == name && namespace_of(&g.metadata) == ns)
}

/// A policy's `targetRefs` as (group, kind, name), whichever Istio kind's
/// generated type holds them (each kind has its own).
pub fn target_refs<T: serde::Serialize>(
    refs: Option<&Vec<T>>,
) -> Option<Vec<(String, String, String)>> {
    let refs = serde_json::to_value(refs?).ok()?;
    let field = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_owned();
    Some(
        refs.as_array()?
            .iter()
            .map(|r| (field(r, "group"), field(r, "kind"), field(r, "name")))
            .collect(),
    )
}

/// The `version` label of every pod template `svc` selects.
fn versions(m: &Manifests, svc: &Service) -> BTreeSet<String> {
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    workloads(m)
        .iter()
        .filter(|(_, t, _)| selects(&selector, &labels(t)))
        .filter_map(|(_, t, _)| labels(t).get("version").cloned())
        .collect()
}

pub fn service_ports(svc: &Service) -> Vec<i32> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .iter()
        .map(|p| p.port)
        .collect()
}

/// A Service backend: it exists in the route's namespace, with that port.
fn check_service_ref(
    origin: &str,
    what: &str,
    services: &BTreeMap<String, &Service>,
    (kind, name, port): (Option<&str>, &str, Option<i32>),
    problems: &mut Vec<String>,
) {
    if kind.is_some_and(|k| k != "Service") {
        problems.push(format!(
            "{origin}: {what} {name} is a {kind:?}, not a Service"
        ));
        return;
    }
    let Some(svc) = services.get(name) else {
        problems.push(format!("{origin}: {what} {name} is not a Service"));
        return;
    };
    match port {
        None => problems.push(format!(
            "{origin}: {what} {name} names no port (a Service backend needs one)"
        )),
        Some(p) if !service_ports(svc).contains(&p) => problems.push(format!(
            "{origin}: {what} {name} has no port {p} (it has {:?})",
            service_ports(svc)
        )),
        Some(_) => {}
    }
}

/// Labels of a namespace the set creates, with the one Kubernetes adds.
fn namespace_labels(m: &Manifests, ns: &str) -> Option<BTreeMap<String, String>> {
    let mut l = m
        .namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(ns))?
        .metadata
        .labels
        .clone()
        .unwrap_or_default();
    l.insert("kubernetes.io/metadata.name".into(), ns.into());
    Some(l)
}

pub fn check(m: &Manifests, problems: &mut Vec<String>) {
    let services = m.services_by_name();
    for (file, g) in &m.k8s_gateways {
        check_gateway(m, file, g, problems);
    }
    let mut route_names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, r) in &m.http_routes {
        let route_ns = namespace_of(&r.metadata);
        let origin = format!("{file}: HTTPRoute {}", name_of(&r.metadata));
        for p in r.spec.parent_refs.iter().flatten() {
            let kind = p.kind.as_deref().unwrap_or("Gateway");
            if kind == "Service" {
                if p.group.as_deref() != Some("") {
                    problems.push(format!(
                        "{origin}: a Service parentRef needs group \"\" (the default is the Gateway API's group)"
                    ));
                }
                check_service_ref(
                    &origin,
                    "parentRef",
                    &services,
                    (Some(kind), &p.name, p.port),
                    problems,
                );
                route_names
                    .entry(p.name.clone())
                    .or_default()
                    .insert(name_of(&r.metadata));
                continue;
            }
            let gw_ns = p.namespace.clone().unwrap_or_else(|| route_ns.clone());
            let Some(g) = find(m, &gw_ns, &p.name) else {
                problems.push(format!(
                    "{origin}: parentRef Gateway {gw_ns}/{} does not exist",
                    p.name
                ));
                continue;
            };
            let listeners: Vec<_> = g
                .spec
                .listeners
                .iter()
                .filter(|l| p.section_name.as_ref().is_none_or(|s| *s == l.name))
                .collect();
            if listeners.is_empty() {
                problems.push(format!(
                    "{origin}: Gateway {gw_ns}/{} has no listener {:?}",
                    p.name, p.section_name
                ));
            }
            for l in listeners {
                let ns = l
                    .allowed_routes
                    .as_ref()
                    .and_then(|a| a.namespaces.as_ref());
                let admitted = match ns.and_then(|n| n.from.as_ref()) {
                    None | Some(From::Same) => route_ns == gw_ns,
                    Some(From::All) => true,
                    Some(From::Selector) => {
                        let want = ns
                            .and_then(|n| n.selector.as_ref())
                            .and_then(|s| s.match_labels.clone())
                            .unwrap_or_default();
                        namespace_labels(m, &route_ns)
                            .or_else(|| {
                                (route_ns == NAMESPACE).then(|| {
                                    BTreeMap::from([(
                                        "kubernetes.io/metadata.name".into(),
                                        route_ns.clone(),
                                    )])
                                })
                            })
                            .is_some_and(|have| selects(&want, &have))
                    }
                };
                if !admitted {
                    problems.push(format!(
                        "{origin}: listener {} of Gateway {gw_ns}/{} does not admit routes from namespace {route_ns}",
                        l.name, p.name
                    ));
                }
            }
        }
        for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
            check_rule(
                m,
                &services,
                &format!("{origin} rules[{i}]"),
                &RuleView::of(rule),
                problems,
            );
        }
    }
    check_one_name("HTTPRoutes", route_names, problems);
    // A per-version Service holds exactly its version's pods.
    for (name, svc) in &services {
        if let Some((_, v)) = name
            .rsplit_once("-v")
            .filter(|(_, v)| v.parse::<u32>().is_ok())
        {
            let want = BTreeSet::from([format!("v{v}")]);
            let have = versions(m, svc);
            if have != want {
                problems.push(format!(
                    "Service {name} selects the pods of versions {have:?}, not just {want:?}"
                ));
            }
        }
    }
    check_grpc_routes(m, &services, problems);
    check_same_way_in(m, problems);
    check_gateway_envoy_filters(m, problems);
}

/// Each experiment's route for a Service has one name, so applying the
/// next replaces the last instead of stacking two routes on one parent.
fn check_one_name(
    kind: &str,
    route_names: BTreeMap<String, BTreeSet<String>>,
    problems: &mut Vec<String>,
) {
    for (parent, names) in route_names {
        if names.len() > 1 {
            problems.push(format!(
                "{kind} {names:?} all have parent {parent}: give them one name, so applying one experiment replaces the last"
            ));
        }
    }
}

/// A Service reference of a route rule: `kind`, name, port, weight.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct RuleRef {
    kind: Option<String>,
    name: String,
    port: Option<i32>,
    weight: Option<i32>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleMirror {
    backend_ref: RuleRef,
    percent: Option<i32>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RuleFilter {
    request_mirror: Option<RuleMirror>,
}

#[derive(serde::Deserialize)]
struct RuleHeader {
    name: String,
    value: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct RuleMatch {
    headers: Vec<RuleHeader>,
}

/// One rule of an HTTPRoute or a GRPCRoute, as the checks read it: the two
/// kinds spell backends, mirrors and header matches alike, so one set of
/// checks serves both.
#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RuleView {
    backend_refs: Vec<RuleRef>,
    filters: Vec<RuleFilter>,
    matches: Vec<RuleMatch>,
}

impl RuleView {
    fn of(rule: &impl serde::Serialize) -> Self {
        serde_json::from_value(serde_json::to_value(rule).expect("a route rule serializes"))
            .expect("route rules share these fields' shapes")
    }
}

/// A rule's references resolve; each backend is one version (or its
/// weight means nothing); weights mean something; a mirror is a second
/// backend; header matches are the frontend's own; blue and green go to
/// their versions.
fn check_rule(
    m: &Manifests,
    services: &BTreeMap<String, &Service>,
    origin: &str,
    rule: &RuleView,
    problems: &mut Vec<String>,
) {
    let backends = &rule.backend_refs;
    for b in backends {
        check_service_ref(
            origin,
            "backendRef",
            services,
            (b.kind.as_deref(), &b.name, b.port),
            problems,
        );
        if let Some(svc) = services.get(&b.name) {
            let v = versions(m, svc);
            if v.len() != 1 {
                problems.push(format!(
                    "{origin}: backend {} holds the pods of versions {v:?}: a route backend must be one version, or its weight means nothing",
                    b.name
                ));
            }
        }
    }
    let weights: Vec<i32> = backends.iter().map(|b| b.weight.unwrap_or(1)).collect();
    if weights.iter().any(|w| *w < 0) || (!weights.is_empty() && weights.iter().all(|w| *w == 0)) {
        problems.push(format!(
            "{origin}: weights {weights:?} must be non-negative and not all zero"
        ));
    }
    for mirror in rule
        .filters
        .iter()
        .filter_map(|f| f.request_mirror.as_ref())
    {
        let target = &mirror.backend_ref;
        check_service_ref(
            origin,
            "mirror",
            services,
            (target.kind.as_deref(), &target.name, target.port),
            problems,
        );
        if backends.iter().any(|b| b.name == target.name) {
            problems.push(format!(
                "{origin}: mirrors to {}, its own backend: every request would hit it twice",
                target.name
            ));
        }
        if mirror.percent.is_some_and(|p| !(0..=100).contains(&p)) {
            problems.push(format!(
                "{origin}: mirror percent {:?} is not 0..100",
                mirror.percent
            ));
        }
    }
    for h in rule.matches.iter().flat_map(|mt| &mt.headers) {
        let header = h.name.to_ascii_lowercase();
        if !known_header_value(&header, &h.value) {
            problems.push(format!(
                "{origin}: matches header {header}={:?}, which the frontend never sends",
                h.value
            ));
        }
        // Blue is v1's environment and green v2's, whichever is live.
        let version = match (
            header == mesh_kit::propagation::ENVIRONMENT_HEADER,
            h.value.as_str(),
        ) {
            (true, "blue") => Some("v1"),
            (true, "green") => Some("v2"),
            _ => None,
        };
        if let Some(version) = version {
            let wrong = backends.iter().any(|b| {
                services
                    .get(&b.name)
                    .is_none_or(|svc| versions(m, svc) != BTreeSet::from([version.to_owned()]))
            });
            if wrong {
                problems.push(format!(
                    "{origin}: {header}: {} must route to {version}'s Service only",
                    h.value
                ));
            }
        }
    }
}

/// The Service's port Istio treats as `protocol`: by its appProtocol, or
/// else by its name's prefix (as Flagger's discovered ports are named).
fn port_for(svc: &Service, protocol: &str) -> Option<i32> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .find(|p| super::istio_protocol(p) == Some(protocol))
        .map(|p| p.port)
}

/// `rules` (JSON) with every `port` moved from a Service's HTTP port to its
/// gRPC port: what the GRPCRoute twin of an HTTPRoute must say.
fn on_grpc_ports(v: &mut serde_json::Value, services: &BTreeMap<String, &Service>) {
    match v {
        serde_json::Value::Object(o) => {
            let grpc = o
                .get("name")
                .and_then(|n| n.as_str())
                .and_then(|n| services.get(n))
                .and_then(|svc| Some((port_for(svc, "http")?, port_for(svc, "grpc")?)));
            if let (Some((http, grpc)), Some(port)) = (grpc, o.get_mut("port"))
                && port.as_i64() == Some(http.into())
            {
                *port = grpc.into();
            }
            for x in o.values_mut() {
                on_grpc_ports(x, services);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| on_grpc_ports(x, services)),
        _ => {}
    }
}

/// GRPCRoutes: every reference resolves as an HTTPRoute's must, and every
/// HTTPRoute on a Service that also serves gRPC has, in the same directory
/// (one `kubectl apply -f <dir>/`), a GRPCRoute on its gRPC port with the
/// same rules: otherwise a frontend on MODEL_PROTOCOL=grpc would bypass the
/// experiment.
fn check_grpc_routes(
    m: &Manifests,
    services: &BTreeMap<String, &Service>,
    problems: &mut Vec<String>,
) {
    let mut route_names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, r) in &m.grpc_routes {
        let origin = format!("{file}: GRPCRoute {}", name_of(&r.metadata));
        for p in r.spec.parent_refs.iter().flatten() {
            let kind = p.kind.as_deref().unwrap_or("Gateway");
            if kind != "Service" || p.group.as_deref() != Some("") {
                problems.push(format!(
                    "{origin}: parentRef {} must be a Service (group \"\"): mlmesh's gRPC is mesh-internal",
                    p.name
                ));
                continue;
            }
            check_service_ref(
                &origin,
                "parentRef",
                services,
                (Some(kind), &p.name, p.port),
                problems,
            );
            if let (Some(svc), Some(port)) = (services.get(&p.name), p.port)
                && port_for(svc, "grpc") != Some(port)
            {
                problems.push(format!(
                    "{origin}: parentRef {} port {port} is not its gRPC port",
                    p.name
                ));
            }
            route_names
                .entry(p.name.clone())
                .or_default()
                .insert(name_of(&r.metadata));
        }
        for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
            check_rule(
                m,
                services,
                &format!("{origin} rules[{i}]"),
                &RuleView::of(rule),
                problems,
            );
        }
    }
    check_one_name("GRPCRoutes", route_names, problems);
    // The twins.
    let dir = |f: &str| {
        f.rsplit_once('/')
            .map_or(String::new(), |(d, _)| d.to_owned())
    };
    for (file, r) in &m.http_routes {
        for p in r.spec.parent_refs.iter().flatten() {
            let Some(svc) = services
                .get(&p.name)
                .filter(|_| p.kind.as_deref() == Some("Service"))
            else {
                continue;
            };
            let Some(grpc_port) = port_for(svc, "grpc") else {
                continue;
            };
            let origin = format!(
                "{file}: HTTPRoute {} on Service {}",
                name_of(&r.metadata),
                p.name
            );
            let twin = m.grpc_routes.iter().find(|(f, g)| {
                dir(f) == dir(file)
                    && g.spec
                        .parent_refs
                        .iter()
                        .flatten()
                        .any(|gp| gp.name == p.name && gp.port == Some(grpc_port))
            });
            let Some((twin_file, twin)) = twin else {
                problems.push(format!(
                    "{origin}: {} also serves gRPC (port {grpc_port}) and {}/ has no GRPCRoute for it: gRPC calls would bypass this experiment",
                    p.name,
                    dir(file)
                ));
                continue;
            };
            let mut want = serde_json::to_value(&r.spec.rules).unwrap();
            on_grpc_ports(&mut want, services);
            let have = serde_json::to_value(&twin.spec.rules).unwrap();
            if want != have {
                problems.push(format!(
                    "{twin_file}: GRPCRoute {} is not the gRPC twin of {file}: its rules should be\n{want}\nbut are\n{have}",
                    name_of(&twin.metadata)
                ));
            }
        }
    }
}

fn check_gateway(m: &Manifests, file: &str, g: &Gateway, problems: &mut Vec<String>) {
    let ns = namespace_of(&g.metadata);
    let origin = format!("{file}: Gateway {ns}/{}", name_of(&g.metadata));
    if ns != NAMESPACE && namespace_labels(m, &ns).is_none() {
        problems.push(format!(
            "{origin}: namespace {ns} is created by no manifest"
        ));
    }
    match g.spec.gateway_class_name.as_str() {
        GATEWAY_CLASS => {
            // Under kind, a NodePort Service beside the Gateway must send
            // the port cluster.yaml maps to localhost to an HTTP listener.
            let http_ports: Vec<i32> = g
                .spec
                .listeners
                .iter()
                .filter(|l| l.protocol == "HTTP")
                .map(|l| l.port)
                .collect();
            let want = BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), name_of(&g.metadata))]);
            let mapped = m.services.iter().any(|svc| {
                let Some(spec) = svc.spec.as_ref() else {
                    return false;
                };
                svc.metadata.namespace.as_deref() == Some(ns.as_str())
                    && spec.type_.as_deref() == Some("NodePort")
                    && spec.selector.as_ref() == Some(&want)
                    && spec.ports.iter().flatten().any(|p| {
                        p.node_port == Some(KIND_NODE_PORT)
                            && matches!(&p.target_port, Some(IntOrString::Int(t)) if http_ports.contains(t))
                    })
            });
            if !mapped {
                problems.push(format!(
                    "{origin}: no NodePort Service in {ns} sends node port {KIND_NODE_PORT} (kind's localhost mapping) to an HTTP listener of its pods ({GATEWAY_NAME_LABEL})"
                ));
            }
        }
        WAYPOINT_CLASS => {
            let hbone = g
                .spec
                .listeners
                .iter()
                .any(|l| l.protocol == "HBONE" && l.port == 15008);
            if !hbone {
                problems.push(format!("{origin}: a waypoint listens for HBONE on 15008"));
            }
            let serves = g
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("istio.io/waypoint-for"))
                .map(String::as_str);
            if !matches!(serves, Some("service") | Some("all")) {
                problems.push(format!(
                    "{origin}: istio.io/waypoint-for must be service (or all): the policies and routes here are for Services"
                ));
            }
        }
        other => problems.push(format!(
            "{origin}: gatewayClassName {other} is not Istio's ({GATEWAY_CLASS} or {WAYPOINT_CLASS})"
        )),
    }
}

/// The Gateway API's way in serves what the Istio API's does.
fn check_same_way_in(m: &Manifests, problems: &mut Vec<String>) {
    // The Istio API's way in: the route bound to the ingress Gateway that
    // sends to the frontend.
    let Some((_, vs)) = m.virtual_services.iter().find(|(_, vs)| {
        vs.spec.gateways.iter().flatten().any(|g| g != "mesh")
            && vs.spec.http.iter().flatten().any(|h| {
                h.route
                    .iter()
                    .flatten()
                    .any(|d| super::short_host(&d.destination.host) == "frontend")
            })
    }) else {
        return;
    };
    let istio: BTreeSet<(String, String)> = vs
        .spec
        .http
        .iter()
        .flatten()
        .flat_map(|h| h.r#match.clone().unwrap_or_default())
        .filter_map(|mt| mt.uri)
        .filter_map(|u| match (u.exact, u.prefix) {
            (Some(e), _) => Some(("Exact".to_owned(), e)),
            (_, Some(p)) => Some(("PathPrefix".to_owned(), p)),
            _ => None,
        })
        .collect();
    for (file, r) in &m.http_routes {
        let from_gateway = r
            .spec
            .parent_refs
            .iter()
            .flatten()
            .any(|p| p.kind.as_deref().unwrap_or("Gateway") == "Gateway");
        if !from_gateway {
            continue;
        }
        let paths: BTreeSet<(String, String)> = r
            .spec
            .rules
            .iter()
            .flatten()
            .flat_map(|rule| rule.matches.clone().unwrap_or_default())
            .filter_map(|mt| mt.path)
            .map(|p| {
                let kind = match p.r#type {
                    Some(PathType::Exact) => "Exact",
                    Some(PathType::RegularExpression) => "RegularExpression",
                    _ => "PathPrefix",
                };
                (kind.to_owned(), p.value.unwrap_or_else(|| "/".into()))
            })
            .collect();
        if paths != istio {
            problems.push(format!(
                "{file}: HTTPRoute {} serves {paths:?} from the gateway, the Istio API's gateway route {istio:?}",
                name_of(&r.metadata)
            ));
        }
    }
}

/// EnvoyFilters attached to a Gateway API gateway (targetRefs): the Gateway
/// exists beside them, a route patch names a port it listens on, and a rate
/// limit there is the same per-user bucket as the sidecar's twin.
fn check_gateway_envoy_filters(m: &Manifests, problems: &mut Vec<String>) {
    for ef in &m.envoy_filters {
        let name = ef.metadata.name.clone().unwrap_or_default();
        let ns = ef
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| NAMESPACE.into());
        for t in ef.spec.target_refs.iter().flatten() {
            let g = find(m, &ns, &t.name);
            let Some(g) = g.filter(|_| {
                t.kind == "Gateway" && t.group.as_deref() == Some("gateway.networking.k8s.io")
            }) else {
                problems.push(format!(
                    "EnvoyFilter {name}: targetRef {} {} is no Gateway API Gateway in {ns}",
                    t.kind, t.name
                ));
                continue;
            };
            let ports: BTreeSet<i64> = g.spec.listeners.iter().map(|l| i64::from(l.port)).collect();
            for patch in ef.spec.config_patches.iter().flatten() {
                let port = patch
                    .r#match
                    .as_ref()
                    .and_then(|mt| mt.route_configuration.as_ref())
                    .and_then(|r| r.port_number);
                if let Some(port) = port
                    && !ports.contains(&port)
                {
                    problems.push(format!(
                        "EnvoyFilter {name}: routes of port {port}, on which Gateway {} does not listen ({ports:?})",
                        t.name
                    ));
                }
            }
        }
    }
    // The gateway's per-user limit and the frontend sidecar's are one policy
    // in two places: the same buckets, or the lab's two modes disagree.
    let buckets = |ef: &EnvoyFilter| {
        ef.spec
            .config_patches
            .iter()
            .flatten()
            .filter_map(|p| p.patch.as_ref()?.value.as_ref())
            .filter_map(|v| serde_json::to_value(v).ok())
            .find_map(|v| {
                let mut c = v
                    .pointer("/typed_per_filter_config/envoy.filters.http.local_ratelimit/value")?
                    .clone();
                c.as_object_mut()?.remove("stat_prefix");
                Some(c)
            })
    };
    let limits: Vec<(String, serde_json::Value)> = m
        .envoy_filters
        .iter()
        .filter_map(|ef| Some((ef.metadata.name.clone().unwrap_or_default(), buckets(ef)?)))
        .collect();
    for pair in limits.windows(2) {
        if pair[0].1 != pair[1].1 {
            problems.push(format!(
                "EnvoyFilters {} and {} rate-limit differently: one policy, two modes, the same buckets",
                pair[0].0, pair[1].0
            ));
        }
    }
}
