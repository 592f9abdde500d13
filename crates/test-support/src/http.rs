//! Driving a router with `oneshot`, expecting JSON back.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

/// Sends one request; panics (naming the request) if the answer is not JSON.
pub async fn call(
    app: &Router,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    send(app, req.body(body.into()).unwrap()).await
}

/// Sends a request built by the test (custom headers, cookies, ...); panics
/// if the answer is not JSON.
pub async fn send(app: &Router, req: Request<Body>) -> Answer {
    let (method, path) = (req.method().clone(), req.uri().clone());
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{method} {path} answered {status} with non-JSON body {bytes:?}: {e}")
    });
    Answer {
        status,
        headers,
        json,
    }
}

pub async fn get(app: &Router, path: &str) -> Answer {
    call(app, "GET", path, None, Body::empty()).await
}

pub async fn post_json(app: &Router, path: &str, body: &Value) -> Answer {
    call(
        app,
        "POST",
        path,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

pub async fn put_json(app: &Router, path: &str, body: &Value) -> Answer {
    call(app, "PUT", path, Some("application/json"), body.to_string()).await
}

/// A GET's status, headers and raw body (a body that is not JSON).
pub async fn get_bytes(app: &Router, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    raw(app, Request::get(path).body(Body::empty()).unwrap()).await
}

/// A JSON POST's status, headers and raw body (an answer that is not JSON).
pub async fn post_json_bytes(
    app: &Router,
    path: &str,
    body: &Value,
) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    raw(app, req).await
}

async fn raw(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = app.clone().oneshot(req).await.unwrap().into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// The raw text of a GET (e.g. `/metrics`).
pub async fn get_text(app: &Router, path: &str) -> String {
    let (_, _, body) = get_bytes(app, path).await;
    String::from_utf8(body.to_vec()).unwrap()
}

/// GET over the network, the body as text (e.g. another process's `/metrics`).
pub async fn fetch_text(url: &str) -> String {
    let res = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    res.text().await.unwrap()
}

/// GET over the network, the body as JSON (panics naming the URL otherwise).
pub async fn fetch_json(url: &str) -> Value {
    let text = fetch_text(url).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}
