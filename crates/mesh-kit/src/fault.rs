//! Fault knobs in the spirit of Istio's teaching apps (Bookinfo's ratings
//! errors, httpbin's delays): off by default, set by env, applied to business
//! routes only so probes and scrapes keep working while a lab breaks things.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;

use crate::config::parse_fraction;
use crate::error::ApiError;

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A gRPC error as a trailers-only answer (HTTP 200, the status in the
/// headers), which every gRPC client reads; UNAVAILABLE (14), the code a
/// struggling server gives and the one Envoy's gRPC retry policies name.
fn grpc_unavailable(message: &'static str) -> Response {
    let mut res = Response::new(axum::body::Body::empty());
    let h = res.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("14"));
    h.insert("grpc-message", HeaderValue::from_static(message));
    res
}

/// Response header naming the fault that shaped a response, so a lab can tell
/// an injected failure from a real one.
pub const FAULT_HEADER: &str = "x-mlmesh-fault";

#[derive(Debug, Clone, Default, Args)]
pub struct FaultArgs {
    /// Fraction of business requests answered 500 with a JSON error (0 to 1).
    #[arg(long, env = "FAULT_ERROR_RATE", default_value = "0", value_parser = parse_fraction)]
    pub fault_error_rate: f64,

    /// The status of those answers [default: 500]. 503 is the one Envoy's
    /// retry policies and outlier detection act on (`retryOn: 503`), so a
    /// lab can watch a sidecar retry what a 500 would not.
    #[arg(long, env = "FAULT_ERROR_STATUS", value_parser = clap::value_parser!(u16).range(500..600))]
    pub fault_error_status: Option<u16>,

    /// Latency added to a delayed request, e.g. `250ms`, `2s`.
    #[arg(long, env = "FAULT_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub fault_delay: Duration,

    /// Fraction of business requests that get FAULT_DELAY added (0 to 1).
    /// Defaults to 1 when only FAULT_DELAY is set.
    #[arg(long, env = "FAULT_DELAY_RATE", value_parser = parse_fraction)]
    pub fault_delay_rate: Option<f64>,
}

impl FaultArgs {
    pub fn is_active(&self) -> bool {
        self.fault_error_rate > 0.0 || self.delay_rate() > 0.0
    }

    fn delay_rate(&self) -> f64 {
        if self.fault_delay.is_zero() {
            0.0
        } else {
            self.fault_delay_rate.unwrap_or(1.0)
        }
    }

    /// Middleware applying the knobs; the delay comes first so an injected
    /// error can also be a slow one, as with a real struggling upstream.
    pub async fn apply(self, req: Request, next: Next) -> Response {
        let mut injected = None;
        let delay_rate = self.delay_rate();
        if delay_rate > 0.0 && fastrand::f64() < delay_rate {
            tokio::time::sleep(self.fault_delay).await;
            injected = Some("delay");
        }
        let mut res = if self.fault_error_rate > 0.0 && fastrand::f64() < self.fault_error_rate {
            injected = Some("error");
            if is_grpc(&req) {
                grpc_unavailable("fault injected (FAULT_ERROR_RATE)")
            } else {
                let status = self
                    .fault_error_status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                ApiError::new(status, "fault injected (FAULT_ERROR_RATE)").into_response()
            }
        } else {
            next.run(req).await
        };
        if let Some(kind) = injected {
            res.headers_mut()
                .insert(FAULT_HEADER, HeaderValue::from_static(kind));
        }
        res
    }
}
