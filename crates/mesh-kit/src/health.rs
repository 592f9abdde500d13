//! Liveness and readiness. A service starts not ready, turns ready when it can
//! serve (model warmed, store reachable), and turns unready for good once
//! draining starts so the mesh stops sending it new work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Json;

#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// The service's own view of whether it can serve (e.g. its store is reachable).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// Irreversible: shutdown has begun.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst) && !self.is_draining()
    }

    pub(crate) async fn live(&self) -> Response {
        Json(json!({"status": "live"})).into_response()
    }

    pub(crate) async fn ready(&self) -> Response {
        if self.is_ready() {
            Json(json!({"status": "ready"})).into_response()
        } else {
            let status = if self.is_draining() {
                "draining"
            } else {
                "not ready"
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": status})),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_wins_over_ready() {
        let h = Health::new();
        assert!(!h.is_ready(), "services start not ready");
        h.set_ready(true);
        assert!(h.is_ready());
        h.begin_drain();
        assert!(!h.is_ready());
        h.set_ready(true);
        assert!(!h.is_ready(), "nothing undoes a drain");
    }
}
