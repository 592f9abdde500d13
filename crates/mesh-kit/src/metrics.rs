//! Prometheus metrics with the official `prometheus-client`: RED metrics per
//! route for every service, and the `/metrics` endpoint in OpenMetrics text so
//! latency histograms can carry trace-id exemplars.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::{TraceContextExt, TraceId};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Every mlmesh metric name starts with this.
pub const PREFIX: &str = "mlmesh";
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Names of the metrics an experiment is decided on, as the services register
/// them (without [`PREFIX`] and the `_total` suffix): one definition for the
/// services that count and for `mlmesh analyze`, which reads them back.
pub mod names {
    /// Counter `{model_version, cohort, decision, degraded}`: one per answered decision.
    pub const FRONTEND_DECISIONS: &str = "frontend_decisions";
    /// Counter `{model_version, cohort, outcome}`: one per decision's feedback.
    pub const FRONTEND_OUTCOMES: &str = "frontend_outcomes";
    /// Counter `{model_version, cohort, outcome}`: a user's first feedback on
    /// a version's offers (the per-user basis of the acceptance rate).
    pub const FRONTEND_USER_OUTCOMES: &str = "frontend_user_outcomes";
    /// Counter `{cohort, assignment}`: a user's first exposure (the randomization unit).
    pub const FRONTEND_USERS: &str = "frontend_users";
    /// Gauge: the configured canary percentage.
    pub const FRONTEND_CANARY_PERCENT: &str = "frontend_canary_percent";
    /// Histogram `{model_version}`: the model call as the frontend saw it.
    pub const FRONTEND_MODEL_LATENCY: &str = "frontend_model_request_duration_seconds";
    /// Histogram `{model, version, traffic}`: each row's predicted probability.
    pub const PREDICTION_SCORE: &str = "prediction_score";

    /// The name a metric is exposed under, e.g. `exposed(FRONTEND_USERS, "_total")`.
    pub fn exposed(name: &str, suffix: &str) -> String {
        format!("{}_{name}{suffix}", super::PREFIX)
    }
}

/// Latency buckets from 100µs to 10s: in-process inference sits at the low
/// end, a faulted or timed-out upstream at the high end.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    /// One of a fixed set (see [`HttpMetrics::track`]): no copy per request.
    pub method: &'static str,
    pub status: u16,
}

/// Links a latency observation to its trace in Jaeger.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: TraceIdLabel,
}

/// A trace id kept as its 16 bytes and written in hex only when `/metrics`
/// is scraped: every request records an exemplar, few are ever read.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct TraceIdLabel(pub TraceId);

impl EncodeLabelValue for TraceIdLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        // W3C's form: 32 lowercase hex digits, as Jaeger and Tempo search for it.
        write!(encoder, "{}", self.0)
    }
}

type DurationFamily = Family<RouteLabels, HistogramWithExemplars<TraceExemplar>>;

/// RED metrics: `mlmesh_http_requests_total` and
/// `mlmesh_http_request_duration_seconds`, by route template, method, status.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RouteLabels, Counter>,
    duration: DurationFamily,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::default();
        let duration = DurationFamily::new_with_constructor(|| {
            HistogramWithExemplars::new(LATENCY_BUCKETS.iter().copied())
        });
        registry.register(
            "http_requests",
            "HTTP requests served, by route template",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency inside the service, by route template",
            duration.clone(),
        );
        Self { requests, duration }
    }

    /// Middleware recording one request. Runs inside the request span so the
    /// exemplar can name the span's trace.
    pub async fn track(State(metrics): State<Self>, req: Request, next: Next) -> Response {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str)
            .to_owned();
        // Bounded: a client can send any token as a method, and each one
        // would otherwise become a new time series.
        let method = match *req.method() {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        let start = Instant::now();
        let res = next.run(req).await;
        let labels = RouteLabels {
            route,
            method,
            status: res.status().as_u16(),
        };
        metrics.requests.get_or_create(&labels).inc();
        metrics.duration.get_or_create(&labels).observe(
            start.elapsed().as_secs_f64(),
            current_trace_exemplar(),
            None,
        );
        res
    }
}

/// The sampled trace of the current span, if any, as an exemplar label set.
pub fn current_trace_exemplar() -> Option<TraceExemplar> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| TraceExemplar {
        trace_id: TraceIdLabel(sc.trace_id()),
    })
}

/// `GET /metrics`.
pub async fn serve_metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        return crate::ApiError::internal(format!("encoding metrics: {e}")).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}
