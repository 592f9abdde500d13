//! Upstream HTTP/1.1: keep-alive connections per upstream host
//! ([`mesh_kit::client`]), URIs built once, one deadline around send and
//! read, answers read to a bound, a client span per call.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::Full;
use mesh_kit::client::{ClientError, Connections};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tracing::field;

use super::error::{ConfigError, UpstreamError, invalid, transport_error};
use super::{FEATURE_STORE, MODEL, SHADOW};

/// The largest answer body read from an upstream (a user's features or an
/// infer answer are a few KiB): a confused callee cannot fill the memory.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// What a user id is escaped with in the feature store's path: everything
/// but RFC 3986's unreserved characters (ids are checked to be those anyway).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The content type of an infer body, and its JSON part's length when
/// tensors follow in binary.
pub(super) fn content_headers(headers: &mut HeaderMap, json_len: Option<HeaderValue>) {
    let kind = match json_len {
        Some(len) => {
            headers.insert(oip::HEADER_LENGTH, len);
            oip::OCTET_STREAM
        }
        None => mesh_kit::json::APPLICATION_JSON,
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
}

/// `<feature store>/v1/features/`, checked once at startup.
pub(super) fn features_base(url: &str) -> Result<Endpoint, ConfigError> {
    let bad = || ConfigError::Url("--feature-store-url", url.to_owned());
    let base = absolute(url).ok_or_else(bad)?;
    if base.query().is_some() {
        return Err(bad());
    }
    let authority = base.authority().ok_or_else(bad)?;
    let path = base.path().trim_end_matches('/');
    Endpoint::parse(&format!("http://{authority}{path}/v1/features/")).ok_or_else(bad)
}

/// `<feature store>/v1/features:batch` beside [`features_base`]'s answer,
/// on the same connections (`url` is the flag, named in the error).
pub(super) fn features_batch_url(base: &Endpoint, url: &str) -> Result<Endpoint, ConfigError> {
    let bad = || ConfigError::Url("--feature-store-url", url.to_owned());
    let text = format!("{}:batch", base.text.trim_end_matches('/'));
    let path = format!("{}:batch", base.uri.path().trim_end_matches('/'));
    base.beside(text, &path).ok_or_else(bad)
}

/// What the frontend asks the feature store for: the values only. The
/// per-feature `statuses` would double the answer and are never read (a
/// value that is missing is `null` among the values).
const FEATURES_QUERY: &str = "?statuses=false";

/// The same, listed in the store's order instead of keyed by name, once
/// that order is known (`features.rs`), as raw doubles; a store older than
/// `format` lists them in JSON, and one older than `names` keys them.
const LISTED_FEATURES_QUERY: &str = "?statuses=false&names=false&format=binary";

/// A user's features URI: the base and their id as one path segment; the
/// values `listed` or keyed by name.
pub(super) fn features_url(
    base: &Endpoint,
    user_id: &str,
    listed: bool,
) -> Result<Endpoint, UpstreamError> {
    let query = if listed {
        LISTED_FEATURES_QUERY
    } else {
        FEATURES_QUERY
    };
    let id = utf8_percent_encode(user_id, PATH_SEGMENT);
    let text = format!("{}{id}{query}", base.text);
    let path = format!("{}{id}{query}", base.uri.path());
    base.beside(text, &path)
        .ok_or_else(|| invalid(FEATURE_STORE, format!("no URI for user id {user_id:?}")))
}

/// An absolute `http://` URL with a host (the client speaks plain HTTP:
/// under a mesh the sidecar adds the TLS).
pub(super) fn absolute(url: &str) -> Option<Uri> {
    let uri = Uri::try_from(url).ok()?;
    if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
        return None;
    }
    Some(uri)
}

/// An upstream URL parsed once: the origin-form `Uri` requests carry, the
/// connections to its host, and its whole text for spans and logs.
#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) uri: Uri,
    text: Box<str>,
    conns: Arc<Connections>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Endpoint").field(&self.text).finish()
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// `None` unless `url` is [`absolute`] and has no credentials. Each
    /// parsed URL gets its own connections; URLs built [`Endpoint::beside`]
    /// it share them.
    pub(super) fn parse(url: &str) -> Option<Self> {
        let uri = absolute(url)?;
        let conns = Connections::new(&uri)?.max_answer_bytes(MAX_ANSWER_BYTES);
        let origin = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .ok()?;
        Some(Self {
            text: uri.to_string().into(),
            uri: origin,
            conns: Arc::new(conns),
        })
    }

    /// Another URL on the same host and connections: its whole `text` and
    /// its origin-form `path`.
    fn beside(&self, text: String, path: &str) -> Option<Self> {
        Some(Self {
            uri: Uri::try_from(path).ok()?,
            text: text.into(),
            conns: Arc::clone(&self.conns),
        })
    }

    pub(super) fn as_str(&self) -> &str {
        &self.text
    }
}

pub(super) fn http_request(
    method: Method,
    url: &Endpoint,
    headers: HeaderMap,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = url.uri.clone();
    *request.headers_mut() = headers;
    request
}

/// Sends `request` to `url`'s host and reads the whole answer (at most
/// [`MAX_ANSWER_BYTES`]) within `budget`; records the status on the
/// current span.
pub(super) async fn exchange(
    url: &Endpoint,
    upstream: &'static str,
    request: Request<Full<Bytes>>,
    budget: Duration,
) -> Result<(StatusCode, HeaderMap, Bytes), UpstreamError> {
    let answer = match tokio::time::timeout(budget, url.conns.send(request)).await {
        Err(_) => {
            return Err(UpstreamError::Timeout {
                upstream,
                after: budget,
            });
        }
        Ok(Err(ClientError::TooLarge { limit })) => {
            return Err(invalid(upstream, format!("an answer over {limit} bytes")));
        }
        Ok(Err(e)) => return Err(transport_error(upstream, &e)),
        Ok(Ok(answer)) => answer,
    };
    let (parts, body) = answer.into_parts();
    tracing::Span::current().record("http.response.status_code", parts.status.as_u16());
    Ok((parts.status, parts.headers, body))
}

/// A client span's name, `METHOD upstream`, without a `format!` per call.
pub(super) fn span_name(upstream: &'static str, method: &Method) -> std::borrow::Cow<'static, str> {
    let name = match (upstream, method.as_str()) {
        (FEATURE_STORE, "GET") => "GET feature-store",
        (FEATURE_STORE, "POST") => "POST feature-store",
        (MODEL, "GET") => "GET model-inference",
        (MODEL, "POST") => "POST model-inference",
        (SHADOW, "POST") => "POST model-inference-shadow",
        _ => return format!("{method} {upstream}").into(),
    };
    name.into()
}

pub(super) fn client_span(upstream: &'static str, method: &Method, url: &str) -> tracing::Span {
    // Strings, not `%` (Display): the OpenTelemetry layer formats a
    // Display value through `fmt` on every span; a `&str` it only copies.
    let name = span_name(upstream, method);
    tracing::info_span!(
        "upstream",
        otel.name = name.as_ref(),
        otel.kind = "client",
        otel.status_code = field::Empty,
        peer.service = upstream,
        http.request.method = method.as_str(),
        url.full = url,
        http.response.status_code = field::Empty,
        error.type = field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_features_url_is_the_base_and_their_id() {
        for base in [
            "http://fs:8080",
            "http://fs:8080/",
            "http://10.0.0.1/prefix/",
        ] {
            for (listed, query) in [
                (false, "statuses=false"),
                (true, "statuses=false&names=false&format=binary"),
            ] {
                let url = features_url(&features_base(base).unwrap(), "42", listed).unwrap();
                let want = format!("{}/v1/features/42?{query}", base.trim_end_matches('/'));
                assert_eq!(url.as_str(), want);
                let path = base
                    .split_once("://")
                    .unwrap()
                    .1
                    .split_once('/')
                    .map_or("", |p| p.1);
                let path = path.trim_end_matches('/');
                let want_path = if path.is_empty() {
                    String::new()
                } else {
                    format!("/{path}")
                };
                assert_eq!(
                    url.uri.path(),
                    format!("{want_path}/v1/features/42"),
                    "origin form"
                );
                let batch = features_batch_url(&features_base(base).unwrap(), base).unwrap();
                assert_eq!(batch.uri.path(), format!("{want_path}/v1/features:batch"));
                assert!(batch.as_str().ends_with("/v1/features:batch"));
            }
        }
        // Ids are checked to be unreserved characters; anything else is escaped, not spliced.
        let base = features_base("http://fs").unwrap();
        let url = features_url(&base, "a/b?c d", false).unwrap();
        assert_eq!(url.uri.path(), "/v1/features/a%2Fb%3Fc%20d");
        // The id's `?` is escaped: the only query is the frontend's own.
        assert_eq!(url.uri.query(), Some("statuses=false"));
        for bad in [
            "fs:8080",
            "ftp://fs",
            "https://fs",
            "not a url",
            "",
            "http://fs/?a=b",
            "http://user:pw@fs:8080",
        ] {
            assert!(features_base(bad).is_err(), "{bad}");
        }
    }
}
