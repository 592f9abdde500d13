//! End users at the ingress gateway (istio/auth/): the RequestAuthentication
//! verifies exactly the tokens `mlmesh token` mints and copies their claims
//! to the headers the frontend reads, and DENY rules make a token necessary
//! where it matters.

use std::collections::BTreeMap;
use std::time::Duration;

use istio_api_rs::security::v1::authorization_policy::{
    AuthorizationPolicyAction, AuthorizationPolicyRules,
};
use mesh_kit::propagation::{AUTH_GROUP_HEADER, AUTH_USER_HEADER};

use super::Manifests;
use super::gateway_api::{GATEWAY_CLASS, target_refs};

/// Where Istio's classic ingress gateway runs, and its pods' label.
const GATEWAY_NAMESPACE: &str = "istio-system";

fn ingress_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())])
}

/// The ingress gateway a policy applies at, by name: Istio's classic one
/// (selected by label in istio-system) or a Gateway API Gateway of class
/// istio (by targetRefs, beside it); None for anywhere else.
fn ingress_of(
    m: &Manifests,
    ns: Option<&String>,
    labels: Option<&BTreeMap<String, String>>,
    targets: Option<Vec<(String, String, String)>>,
) -> Option<String> {
    let ns = ns.cloned().unwrap_or_else(|| super::NAMESPACE.to_owned());
    match targets {
        None => (ns == GATEWAY_NAMESPACE && labels == Some(&ingress_selector()))
            .then(|| format!("istio: ingressgateway in {GATEWAY_NAMESPACE}")),
        Some(t) => {
            let [(group, kind, name)] = t.as_slice() else {
                return None;
            };
            let exists = super::gateway_api::find(m, &ns, name)
                .is_some_and(|g| g.spec.gateway_class_name == GATEWAY_CLASS);
            (exists && group == "gateway.networking.k8s.io" && kind == "Gateway")
                .then(|| format!("Gateway {ns}/{name}"))
        }
    }
}

/// The claim → header copies the frontend relies on.
fn expected_claims() -> [(&'static str, &'static str); 2] {
    [
        (identity::USER_CLAIM, AUTH_USER_HEADER),
        (identity::GROUP_CLAIM, AUTH_GROUP_HEADER),
    ]
}

/// A rule that matches requests without a verified token.
fn anonymous(rule: &AuthorizationPolicyRules) -> bool {
    rule.from.iter().flatten().any(|f| {
        f.source
            .as_ref()
            .is_some_and(|s| s.not_request_principals.iter().flatten().any(|p| p == "*"))
    })
}

pub fn check_auth(m: &Manifests, problems: &mut Vec<String>) {
    if m.request_authentications.is_empty() {
        return;
    }
    let demo = identity::Minter::demo();
    let token = demo
        .mint(
            "42",
            Some(frontend::cohort::BETA_GROUP),
            Duration::from_secs(300),
            mesh_kit::clock::unix_now(),
        )
        .expect("the demo key mints");
    let mut gateways = Vec::new();
    for ra in &m.request_authentications {
        let name = ra.metadata.name.clone().unwrap_or_default();
        let labels = ra
            .spec
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref());
        let targets = target_refs(ra.spec.target_refs.as_ref());
        match ingress_of(m, ra.metadata.namespace.as_ref(), labels, targets) {
            Some(g) => gateways.push(g),
            None => problems.push(format!(
                "RequestAuthentication {name}: must select the ingress gateway (istio: ingressgateway in {GATEWAY_NAMESPACE}, or target a Gateway of class {GATEWAY_CLASS} beside it), where end users' requests come in"
            )),
        }
        for rule in ra.spec.jwt_rules.iter().flatten() {
            let issuer = rule.issuer.clone().unwrap_or_default();
            if issuer != demo.issuer() {
                problems.push(format!(
                    "RequestAuthentication {name}: issuer {issuer:?} is not the one `mlmesh token` signs as ({:?})",
                    demo.issuer()
                ));
            }
            if !rule
                .audiences
                .iter()
                .flatten()
                .any(|a| a == identity::AUDIENCE)
            {
                problems.push(format!(
                    "RequestAuthentication {name}: audiences must include {:?}, the aud of every minted token",
                    identity::AUDIENCE
                ));
            }
            match rule.jwks.as_deref() {
                Some(jwks) => {
                    if let Err(e) = identity::verify(&token, jwks, &issuer) {
                        problems.push(format!(
                            "RequestAuthentication {name}: its jwks does not verify a token `mlmesh token` mints: {e}"
                        ));
                    }
                }
                None => problems.push(format!(
                    "RequestAuthentication {name}: the shipped rule carries the demo JWKS inline (jwks), so the lab needs no JWKS server"
                )),
            }
            let copies: Vec<(String, String)> = rule
                .output_claim_to_headers
                .iter()
                .flatten()
                .map(|c| (c.claim.clone(), c.header.to_ascii_lowercase()))
                .collect();
            for (claim, header) in &copies {
                if !expected_claims().contains(&(claim.as_str(), header.as_str())) {
                    problems.push(format!(
                        "RequestAuthentication {name}: copies claim {claim} to {header}, which the frontend never reads (it reads {:?})",
                        expected_claims()
                    ));
                }
            }
            for (claim, header) in expected_claims() {
                if !copies.iter().any(|(c, h)| c == claim && h == header) {
                    problems.push(format!(
                        "RequestAuthentication {name}: does not copy claim {claim} to {header}, which the frontend reads"
                    ));
                }
            }
        }
    }

    // Each gateway that verifies tokens must also require them.
    for gateway in gateways {
        let deny_rules: Vec<&AuthorizationPolicyRules> = m
            .authorization_policies
            .iter()
            .filter(|ap| {
                let targets = target_refs(ap.spec.target_refs.as_ref());
                let labels = ap
                    .spec
                    .selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref());
                matches!(ap.spec.action, Some(AuthorizationPolicyAction::Deny))
                    && ingress_of(m, ap.metadata.namespace.as_ref(), labels, targets).as_ref()
                        == Some(&gateway)
            })
            .flat_map(|ap| ap.spec.rules.iter().flatten())
            .collect();
        check_deny_rules(&gateway, &deny_rules, problems);
    }
}

fn check_deny_rules(
    gateway: &str,
    deny_rules: &[&AuthorizationPolicyRules],
    problems: &mut Vec<String>,
) {
    let feedback_needs_token = deny_rules.iter().any(|r| {
        anonymous(r)
            && r.when.is_none()
            && r.to.iter().flatten().any(|t| {
                t.operation.as_ref().is_some_and(|o| {
                    o.methods
                        .as_ref()
                        .is_none_or(|ms| ms.iter().any(|m| m == "POST"))
                        && o.paths.iter().flatten().any(|p| p == "/feedback")
                })
            })
    });
    if !feedback_needs_token {
        problems.push(format!(
            "no DENY AuthorizationPolicy on the ingress gateway ({gateway}) refuses POST /feedback without a token (from notRequestPrincipals: [\"*\"])"
        ));
    }
    for (_, header) in expected_claims() {
        let refused = deny_rules.iter().any(|r| {
            anonymous(r)
                && r.to.is_none()
                && r.when.iter().flatten().any(|w| {
                    w.key == format!("request.headers[{header}]")
                        && w.values.iter().flatten().any(|v| v == "*")
                })
        });
        if !refused {
            problems.push(format!(
                "nothing at the ingress gateway ({gateway}) refuses a client's own {header} without a token: anyone could claim to be any user"
            ));
        }
    }
}
