//! The one error shape every service answers with: a status and `{"error": "..."}`.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::Json;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (with 429 and 503).
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
    /// Overload answer. 429 rather than 503: Envoy retries 503s and ejects the
    /// host from the load-balancing pool, which turns a burst into an outage.
    pub fn overloaded(message: impl Into<String>, retry_after_secs: u32) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(Body {
                error: &self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

// axum's own rejections answer text/plain; these keep their status but speak JSON.
macro_rules! from_rejection {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(r: $t) -> Self {
                Self::new(r.status(), r.body_text())
            }
        }
    )*};
}
from_rejection!(JsonRejection, BytesRejection, QueryRejection);

/// Client text quoted back in an error message, at most 80 characters.
pub fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Longest accepted entity (user) id.
pub const MAX_ENTITY_ID_LEN: usize = 64;

/// Entity ids become Redis keys, URL path segments and header values, so they
/// are held to a small alphabet everywhere (feature store and frontend alike).
pub fn check_entity_id(id: &str) -> Result<(), ApiError> {
    if is_entity_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid id '{}': use 1 to {MAX_ENTITY_ID_LEN} letters, digits, '-', '_' or '.'",
            clip(id)
        )))
    }
}

/// Whether `id` is a valid entity id (see [`check_entity_id`]).
pub fn is_entity_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ENTITY_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses a JSON request body: a content type other than JSON is a 415 (absent
/// is accepted), a body past the limit a 413, malformed or mistyped JSON a 400
/// whose message starts with `what`.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    require_json(headers)?;
    let body = body?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

/// A content type other than JSON (`application/json` or `application/*+json`)
/// is a 415; none at all is accepted, as curl without `-H` sends none.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime != crate::json::APPLICATION_JSON
        && !(mime.starts_with("application/") && mime.ends_with("+json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content-type must be application/json, got '{mime}' (with curl, add -H 'content-type: application/json')"
            ),
        ));
    }
    Ok(())
}

/// Router fallback: unknown paths get a JSON 404 too.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// Method fallback: a known path with the wrong method gets a JSON 405.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn overload_is_429_with_retry_after_and_a_json_body() {
        let res = ApiError::overloaded("queue full", 1).into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"error": "queue full"})
        );
    }
}
