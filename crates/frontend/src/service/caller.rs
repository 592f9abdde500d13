//! Who is asking and how: the beta group (query, header, cookie or the
//! gateway's verified token) and the caller's deadline.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

use mesh_kit::ApiError;
use mesh_kit::error::is_entity_id;
use mesh_kit::propagation::{
    AUTH_GROUP_HEADER, AUTH_USER_HEADER, DEADLINE_HEADER, USER_GROUP_HEADER,
};

use crate::cohort::BETA_GROUP;

/// The browser's equivalent of `x-user-group: beta`: set by `?group=beta`
/// (or the header), cleared by `?group=none`, so the choice survives reloads.
pub const GROUP_COOKIE: &str = "mlmesh_group";

/// How the request asked about the beta group, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GroupChoice {
    /// `?group=beta` or `x-user-group: beta`: join, and remember it.
    Join,
    /// `?group=<anything else>`: leave, and forget it.
    Leave,
    /// Nothing said; the cookie (if any) decides.
    Unspecified,
    /// The user is authenticated: their token's group claim decides, and
    /// what the request says (query, header, cookie) is ignored.
    Token { beta: bool },
}

/// The customer the ingress gateway authenticated (`istio/auth/`): the
/// headers it writes from a verified JWT's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Authenticated {
    pub user: String,
    pub group: Option<String>,
}

impl Authenticated {
    pub fn group_choice(&self) -> GroupChoice {
        GroupChoice::Token {
            beta: self
                .group
                .as_deref()
                .is_some_and(|g| g.eq_ignore_ascii_case(BETA_GROUP)),
        }
    }
}

/// The authenticated customer, if the gateway says there is one.
pub(super) fn authenticated(headers: &HeaderMap) -> Result<Option<Authenticated>, ApiError> {
    let one = |name: &str| -> Result<Option<String>, ApiError> {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        // Envoy adds a claim header to whatever copy a client sent rather
        // than replacing it; two values (or a list in one) mean someone sent
        // their own, and guessing which is the gateway's would be forgeable.
        if values.next().is_some() {
            return Err(ApiError::bad_request(format!(
                "{name} appears more than once: only the ingress gateway may set it"
            )));
        }
        match first.to_str() {
            Ok(v) if is_entity_id(v) => Ok(Some(v.to_owned())),
            _ => Err(ApiError::bad_request(format!(
                "{name} is not a single id: only the ingress gateway may set it"
            ))),
        }
    };
    match (one(AUTH_USER_HEADER)?, one(AUTH_GROUP_HEADER)?) {
        (Some(user), group) => Ok(Some(Authenticated { user, group })),
        (None, Some(_)) => Err(ApiError::bad_request(format!(
            "{AUTH_GROUP_HEADER} without {AUTH_USER_HEADER}: only the ingress gateway may set them"
        ))),
        (None, None) => Ok(None),
    }
}

pub(super) fn group_choice(query: Option<&str>, headers: &HeaderMap) -> GroupChoice {
    match query {
        Some(g) if g.eq_ignore_ascii_case(BETA_GROUP) => GroupChoice::Join,
        Some(_) => GroupChoice::Leave,
        None if header_is_beta(headers) => GroupChoice::Join,
        None => GroupChoice::Unspecified,
    }
}

fn header_is_beta(headers: &HeaderMap) -> bool {
    headers
        .get(USER_GROUP_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(BETA_GROUP))
}

pub(super) fn cookie_is_beta(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == GROUP_COOKIE && v == BETA_GROUP)
}

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The caller's remaining time, when Envoy (or a client) says how much is left.
pub(super) fn inbound_deadline(headers: &HeaderMap, started: Instant) -> Option<Instant> {
    header_str(headers, DEADLINE_HEADER)
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|ms| started + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn group_precedence_is_query_then_header_then_cookie() {
        let beta_header = headers(&[("x-user-group", "Beta")]);
        assert_eq!(
            group_choice(Some("beta"), &HeaderMap::new()),
            GroupChoice::Join
        );
        assert_eq!(group_choice(Some("none"), &beta_header), GroupChoice::Leave);
        assert_eq!(group_choice(None, &beta_header), GroupChoice::Join);
        assert_eq!(
            group_choice(None, &HeaderMap::new()),
            GroupChoice::Unspecified
        );
    }

    #[test]
    fn beta_cookie_is_found_among_others() {
        assert!(cookie_is_beta(&headers(&[(
            "cookie",
            "a=1; mlmesh_group=beta; b=2"
        )])));
        assert!(cookie_is_beta(&headers(&[
            ("cookie", "a=1"),
            ("cookie", "mlmesh_group=beta")
        ])));
        assert!(!cookie_is_beta(&headers(&[(
            "cookie",
            "mlmesh_group=alpha"
        )])));
        assert!(!cookie_is_beta(&headers(&[(
            "cookie",
            "xmlmesh_group=beta"
        )])));
    }
}
