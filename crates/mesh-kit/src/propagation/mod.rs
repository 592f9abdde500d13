//! Trace-context and header propagation across hops.
//!
//! Istio's sidecars speak W3C `traceparent` (opentelemetry provider) or B3
//! (zipkin provider), so we extract either and inject both. When a request
//! carries both, W3C wins: it is the standard, and it is what the sidecar
//! rewrites under Istio's default OpenTelemetry provider.
//!
//! The Rust SDK ignores `OTEL_PROPAGATORS`, so the propagator is built here in
//! code and used directly (not through the global, which is a no-op until
//! someone sets it).

mod trace;

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use trace::{extract_context, inject_context, new_propagator, propagator, trace_id_of};

/// Correlates the hops of one request in Envoy's access logs and ours.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The simulated customer; frontends set it, the mesh may route on it.
pub const USER_ID_HEADER: &str = "x-user-id";
/// Istio course labs force a user into the candidate with `x-user-group: beta`.
pub const USER_GROUP_HEADER: &str = "x-user-group";
/// The experiment cohort chosen by the frontend; VirtualServices route on it.
pub const COHORT_HEADER: &str = "x-mlmesh-cohort";
/// Blue/green: a tester reaches the idle environment on purpose with
/// `x-mlmesh-env: green` (or `blue` after the switch); every hop forwards it
/// so the mesh can route on it wherever the versions split.
pub const ENVIRONMENT_HEADER: &str = "x-mlmesh-env";
/// The values [`ENVIRONMENT_HEADER`] takes: blue is v1's environment, green v2's.
pub const ENVIRONMENTS: [&str; 2] = ["blue", "green"];

/// The authenticated customer: the ingress gateway writes it from a verified
/// JWT's subject claim (`istio/auth/`), and nothing else may send it (the
/// gateway refuses it on a request without a token). When present, it is the
/// user, whatever the request names.
pub const AUTH_USER_HEADER: &str = "x-mlmesh-auth-user";
/// The authenticated customer's group, from the same token's `group` claim:
/// `beta` puts them in the candidate with no header a client could forge.
pub const AUTH_GROUP_HEADER: &str = "x-mlmesh-auth-group";

/// Stamped on every model-inference response so callers (the frontend,
/// loadtests, `curl -i`) see which version answered.
pub const MODEL_VERSION_HEADER: &str = "x-model-version";
/// Names the replica that answered (its pod name, from `--pod-name` /
/// `POD_NAME`), so a `curl` loop shows where each request went, e.g. that
/// consistent hashing keeps a customer on one pod.
pub const SERVED_BY_HEADER: &str = "x-mlmesh-served-by";
/// The feature store's schema fingerprint, on an answer whose body cannot
/// say it (`GET /v1/features/{id}?format=binary`).
pub const FEATURE_FINGERPRINT_HEADER: &str = "x-mlmesh-feature-fingerprint";
/// Envoy's remaining route timeout for this request, in milliseconds; callers
/// set it so a callee can drop work nobody is waiting for any more.
pub const DEADLINE_HEADER: &str = "x-envoy-expected-rq-timeout-ms";

/// Headers copied verbatim from every inbound request to every outbound call.
/// Trace headers are not listed: they are re-injected for the new child span.
pub const FORWARDED_HEADERS: &[&str] = &[
    REQUEST_ID_HEADER,
    USER_ID_HEADER,
    USER_GROUP_HEADER,
    COHORT_HEADER,
    ENVIRONMENT_HEADER,
];

/// [`FORWARDED_HEADERS`] parsed once, at compile time: a name given as a
/// `&str` is parsed again on every lookup, and every request of every
/// service copies these (`the_forwarded_names_are_the_forwarded_headers`).
static FORWARDED_NAMES: [HeaderName; 5] = [
    HeaderName::from_static(REQUEST_ID_HEADER),
    HeaderName::from_static(USER_ID_HEADER),
    HeaderName::from_static(USER_GROUP_HEADER),
    HeaderName::from_static(COHORT_HEADER),
    HeaderName::from_static(ENVIRONMENT_HEADER),
];

/// `name` as a header name: the parsed one when it is forwarded.
fn header_name(name: &'static str) -> HeaderName {
    FORWARDED_NAMES
        .iter()
        .find(|n| n.as_str() == name)
        .cloned()
        .unwrap_or_else(|| HeaderName::from_static(name))
}

/// The inbound headers that must travel on to every outbound call.
#[derive(Debug, Clone, Default)]
pub struct Forwarded(HeaderMap);

impl Forwarded {
    pub fn from_headers(inbound: &HeaderMap) -> Self {
        let mut kept = HeaderMap::new();
        for name in &FORWARDED_NAMES {
            for value in inbound.get_all(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        Self(kept)
    }

    /// Sets (replacing) a header for every outbound call, e.g. the cohort the
    /// frontend chose or a user id that arrived in the query string.
    pub fn insert(&mut self, name: &'static str, value: axum::http::HeaderValue) {
        self.0.insert(header_name(name), value);
    }

    /// Stops a header from travelling on (e.g. a group the caller left).
    pub fn remove(&mut self, name: &'static str) {
        self.0.remove(header_name(name));
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.0
    }

    /// Headers for an outbound call made inside the current tracing span
    /// (normally the caller's client span): forwarded headers plus the span's
    /// trace context, so the callee's server span becomes its child.
    pub fn outbound_headers(&self) -> HeaderMap {
        let mut headers = self.0.clone();
        inject_context(&tracing::Span::current().context(), &mut headers);
        headers
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Forwarded {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_headers(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_forwarded_names_are_the_forwarded_headers() {
        let parsed: Vec<&str> = FORWARDED_NAMES.iter().map(HeaderName::as_str).collect();
        assert_eq!(parsed, FORWARDED_HEADERS);
        assert_eq!(header_name(COHORT_HEADER), COHORT_HEADER);
        assert_eq!(header_name("x-not-forwarded"), "x-not-forwarded");
    }

    #[test]
    fn forwards_exactly_the_listed_headers() {
        let inbound = headers(&[
            ("x-request-id", "req-1"),
            ("x-user-id", "42"),
            ("x-user-group", "beta"),
            ("x-mlmesh-cohort", "candidate"),
            ("x-mlmesh-env", "green"),
            ("authorization", "Bearer secret"),
            ("x-b3-traceid", TRACE),
        ]);
        let fwd = Forwarded::from_headers(&inbound);
        assert_eq!(fwd.headers().len(), 5);
        for name in FORWARDED_HEADERS {
            assert_eq!(fwd.headers()[*name], inbound[*name]);
        }
        assert!(fwd.headers().get("authorization").is_none());
    }
}
