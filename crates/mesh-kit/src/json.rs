//! JSON answers: the response half of `axum::Json`, written straight into a
//! `Vec`.
//!
//! axum's `Json` serializes through a `BytesMut` writer, whose bookkeeping
//! runs on every one of serde_json's small writes (each key, quote and
//! string piece): a single-row infer answer cost 7.0k instructions to
//! serialize that way against 3.9k into a `Vec`, about 2% of a request.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::ApiError;

/// The media type of every JSON body mlmesh sends.
pub const APPLICATION_JSON: &str = "application/json";

/// Room for a typical answer (an infer answer ~150 bytes, a decision ~600)
/// without regrowing; a larger one grows as a `Vec` does.
const INITIAL_CAPACITY: usize = 1024;

/// A `200` (or, in a tuple, any status) with `value` as its
/// `application/json` body. A value that cannot be serialized (a map with
/// non-string keys) is the service's bug: a 500 in the one JSON error shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(INITIAL_CAPACITY);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => serialized(body),
            Err(e) => ApiError::internal(format!("encoding the answer: {e}")).into_response(),
        }
    }
}

/// A `200` whose body is JSON serialized already (e.g. by a hand-written
/// renderer).
pub fn serialized(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(APPLICATION_JSON),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::to_bytes;
    use axum::http::StatusCode;

    use super::*;

    async fn body_of(res: Response) -> (StatusCode, Option<HeaderValue>, serde_json::Value) {
        let status = res.status();
        let ct = res.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, ct, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn answers_what_axums_json_answers() {
        let value = serde_json::json!({"a": [1.5, -2], "b": "quote \" and \u{e9}", "c": null});
        let (status, ct, body) = body_of(Json(&value).into_response()).await;
        let (axum_status, axum_ct, axum_body) = body_of(axum::Json(&value).into_response()).await;
        assert_eq!((status, &ct, &body), (axum_status, &axum_ct, &axum_body));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.unwrap(), "application/json");
        assert_eq!(body, value);
        // Past the initial capacity too.
        let big: Vec<String> = (0..500).map(|i| format!("item-{i}")).collect();
        let (_, _, body) = body_of(Json(&big).into_response()).await;
        assert_eq!(body, serde_json::json!(big));
    }

    #[tokio::test]
    async fn a_value_json_cannot_hold_is_a_json_500() {
        // serde_json refuses maps whose keys are not strings.
        let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let (status, ct, body) = body_of(Json(bad).into_response()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(ct.unwrap(), "application/json");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("encoding the answer"),
            "{body}"
        );
    }
}
