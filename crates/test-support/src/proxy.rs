//! A recording reverse proxy: sits between a service and its upstream and
//! keeps the headers of every request that passed, so tests can check what
//! actually went over the wire (trace headers, request ids, cohort headers).
//! It can also mirror like Envoy: a copy of each request, same headers and
//! body, Host suffixed `-shadow`, sent to another upstream and its answer
//! thrown away.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::serve::{Served, serve};

/// One request as the upstream was asked it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
}

#[derive(Clone)]
struct Ctx {
    upstream: String,
    mirror: Option<String>,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

pub struct Recorder {
    pub served: Served,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    /// Proxies everything to `upstream` (a base URL such as `http://127.0.0.1:1234`).
    pub async fn start(upstream: &str) -> Self {
        Self::start_mirroring(upstream, None).await
    }

    /// Proxies to `upstream` and, as Envoy's request mirroring does, sends a
    /// copy of each request to `mirror` with the Host suffixed `-shadow`.
    pub async fn mirroring(upstream: &str, mirror: &str) -> Self {
        Self::start_mirroring(upstream, Some(mirror)).await
    }

    async fn start_mirroring(upstream: &str, mirror: Option<&str>) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ctx = Ctx {
            mirror: mirror.map(|m| m.trim_end_matches('/').to_owned()),
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            seen: Arc::clone(&seen),
        };
        let app = axum::Router::new().fallback(forward).with_state(ctx);
        Self {
            served: serve(app).await,
            seen,
        }
    }

    pub fn base(&self) -> String {
        self.served.base()
    }

    /// Everything recorded so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn forward(State(ctx): State<Ctx>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    ctx.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts.headers.clone(),
    });
    let body = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut headers = parts.headers;
    let host = headers.remove(axum::http::header::HOST);
    if let Some(mirror) = &ctx.mirror {
        // Envoy's mirror Host: `-shadow` after the name, before the port.
        let shadow_host =
            host.as_ref()
                .and_then(|h| h.to_str().ok())
                .map(|h| match h.rsplit_once(':') {
                    Some((name, port)) => format!("{name}-shadow:{port}"),
                    None => format!("{h}-shadow"),
                });
        let mut copy = ctx
            .client
            .request(parts.method.clone(), format!("{mirror}{path}"))
            .headers(headers.clone())
            .body(body.clone());
        if let Some(h) = shadow_host {
            copy = copy.header(axum::http::header::HOST, h);
        }
        tokio::spawn(async move {
            let _ = copy.send().await;
        });
    }
    let res = ctx
        .client
        .request(parts.method, format!("{}{path}", ctx.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    match res {
        Ok(r) => {
            let status = r.status();
            let headers = r.headers().clone();
            let bytes: Bytes = r.bytes().await.unwrap_or_default();
            let mut out = (status, bytes).into_response();
            *out.headers_mut() = headers;
            out
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
