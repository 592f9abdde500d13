//! Calls to the feature store and model-inference: one client span per call
//! (so each callee's server span is its child), forwarded experiment headers,
//! a deadline on every call, and failures classified for metrics and answers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::{Instrument, field};

use mesh_kit::propagation::{DEADLINE_HEADER, Forwarded, MODEL_VERSION_HEADER, SERVED_BY_HEADER};

use crate::cohort::Cohort;
use crate::config::{FrontendArgs, RoutingMode};
use crate::metrics::FrontendMetrics;

pub const FEATURE_STORE: &str = "feature-store";
pub const MODEL: &str = "model-inference";
pub const SHADOW: &str = "model-inference-shadow";

/// The model output the frontend reads: the purchase probability.
const PROBABILITY: &str = "probability";

/// Mirrored calls in flight at once; beyond this, mirroring is skipped so a
/// slow shadow can never hold memory or sockets the live path needs.
const MAX_SHADOW_IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{upstream} did not answer within {after:?}")]
    Timeout {
        upstream: &'static str,
        after: Duration,
    },
    #[error("{upstream} is unreachable: {detail}")]
    Connect {
        upstream: &'static str,
        detail: String,
    },
    #[error("{upstream} answered {status}: {detail}")]
    Status {
        upstream: &'static str,
        status: u16,
        detail: String,
        /// The callee's `x-model-version`, if it sent one: errors are
        /// attributed to the version that produced them.
        model_version: Option<String>,
    },
    #[error("{upstream} answered something unusable: {detail}")]
    Invalid {
        upstream: &'static str,
        detail: String,
    },
}

impl UpstreamError {
    /// What the end user is told in a degraded answer's `reason`: short,
    /// stable, and free of internal URLs and raw errors (those stay in the
    /// logs, the spans and the `kind` label of the metrics), e.g.
    /// `feature store unavailable`, `model v2 timed out`.
    pub fn public_reason(&self, model_version: Option<&str>) -> String {
        let (upstream, what) = match self {
            Self::Timeout { upstream, .. } => (*upstream, "timed out"),
            Self::Connect { upstream, .. } => (*upstream, "unavailable"),
            Self::Status { upstream, .. } => (*upstream, "failed"),
            Self::Invalid { upstream, .. } => (*upstream, "answered something unusable"),
        };
        match (upstream, model_version) {
            (FEATURE_STORE, _) => format!("feature store {what}"),
            (_, Some(v)) if !v.is_empty() && v.len() <= 32 => format!("model {v} {what}"),
            _ => format!("model {what}"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } => "connect",
            Self::Status { .. } => "status",
            Self::Invalid { .. } => "invalid",
        }
    }
}

/// One upstream answer, status already accepted by the caller's predicate.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// A user's feature values by name, as the feature store returned them.
#[derive(Debug, Deserialize)]
pub struct Features {
    features: HashMap<String, Option<f64>>,
    /// The feature-store replica that answered (its `x-mlmesh-served-by`).
    #[serde(skip)]
    pub served_by: Option<String>,
}

/// How a model wants its input: tensor name and feature order, read from the
/// model's own OIP metadata so the order is never kept by hand in two places.
#[derive(Debug)]
struct Layout {
    input_name: String,
    feature_names: Vec<String>,
    /// `feature_names` as the metadata gave them, sent back with every infer
    /// call so a model with another order refuses (409) instead of mis-scoring.
    parameters: oip::Parameters,
}

/// A scored user.
#[derive(Debug, Clone)]
pub struct Scored {
    pub probability: f64,
    pub model_version: String,
    /// The model-inference replica that answered (its `x-mlmesh-served-by`).
    pub served_by: Option<String>,
}

/// A failed scoring call, with the version that failed when it is known.
#[derive(Debug, Clone)]
pub struct ScoreFailure {
    pub error: UpstreamError,
    pub model_version: Option<String>,
}

struct ModelTarget {
    infer_url: String,
    metadata_url: String,
    /// In `direct` mode the version this URL serves even when it cannot say so.
    known_version: Option<&'static str>,
    /// Read from the model's metadata on first use, and again after the
    /// model refuses it (a new model version rolled out under this target).
    layout: Mutex<Option<Arc<Layout>>>,
}

impl ModelTarget {
    fn cached(&self) -> Option<Arc<Layout>> {
        self.layout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops `stale` unless another request already replaced it.
    fn forget(&self, stale: &Arc<Layout>) {
        let mut slot = self.layout.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|l| Arc::ptr_eq(l, stale)) {
            *slot = None;
        }
    }

    fn new(base: &str, model: &str, known_version: Option<&'static str>) -> Self {
        let base = base.trim_end_matches('/');
        Self {
            infer_url: format!("{base}/v2/models/{model}/infer"),
            metadata_url: format!("{base}/v2/models/{model}"),
            known_version,
            layout: Mutex::new(None),
        }
    }
}

struct Shadow {
    infer_url: String,
    host: HeaderValue,
    percent: u8,
    slots: Arc<Semaphore>,
}

pub struct Upstreams {
    http: reqwest::Client,
    timeout: Duration,
    features_base: String,
    /// Baseline then candidate. In `mesh` mode both use the one model URL;
    /// each keeps its own layout because the mesh may send them to different
    /// versions.
    targets: [ModelTarget; 2],
    shadow: Option<Shadow>,
    metrics: FrontendMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("--shadow-url {0:?} is not an absolute http URL")]
    ShadowUrl(String),
    #[error("--routing direct needs --model-v1-url and --model-v2-url")]
    MissingModelUrl,
    #[error("decision key file {path}: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    EventLog(#[from] events::EventLogError),
}

impl Upstreams {
    pub fn new(args: &FrontendArgs, metrics: FrontendMetrics) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .connect_timeout(args.upstream_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        let name = &args.model_name;
        let targets = match args.routing {
            RoutingMode::Mesh => [
                ModelTarget::new(&args.model_url, name, None),
                ModelTarget::new(&args.model_url, name, None),
            ],
            RoutingMode::Direct => {
                let (Some(v1), Some(v2)) = (&args.model_v1_url, &args.model_v2_url) else {
                    return Err(ConfigError::MissingModelUrl);
                };
                [
                    ModelTarget::new(v1, name, Some("v1")),
                    ModelTarget::new(v2, name, Some("v2")),
                ]
            }
        };
        // An empty SHADOW_URL (compose's `${SHADOW_URL:-}`) means no shadow.
        let shadow_url = args.shadow_url.clone().filter(|u| !u.trim().is_empty());
        let shadow = match (&shadow_url, args.routing) {
            (Some(url), RoutingMode::Direct) => Some(Shadow {
                infer_url: ModelTarget::new(url, name, None).infer_url,
                host: shadow_host(url).ok_or_else(|| ConfigError::ShadowUrl(url.clone()))?,
                percent: args.shadow_percent,
                slots: Arc::new(Semaphore::new(MAX_SHADOW_IN_FLIGHT)),
            }),
            (Some(_), RoutingMode::Mesh) => {
                tracing::warn!(
                    "--shadow-url is ignored in mesh mode: mirror with a VirtualService instead"
                );
                None
            }
            (None, _) => None,
        };
        Ok(Self {
            http,
            timeout: args.upstream_timeout,
            features_base: args.feature_store_url.trim_end_matches('/').to_owned(),
            targets,
            shadow,
            metrics,
        })
    }

    /// The per-call budget: the configured timeout, cut short by the caller's deadline.
    pub fn budget_deadline(&self, inbound: Option<Instant>) -> Instant {
        let own = Instant::now() + self.timeout;
        inbound.map_or(own, |d| d.min(own))
    }

    /// The user's features; `None` when the feature store does not know the user.
    pub async fn features(
        &self,
        user_id: &str,
        fwd: &Forwarded,
        deadline: Instant,
    ) -> Result<Option<Features>, UpstreamError> {
        let url = format!("{}/v1/features/{user_id}", self.features_base);
        let accept = |s: StatusCode| s == StatusCode::OK || s == StatusCode::NOT_FOUND;
        let answer = self
            .call(FEATURE_STORE, Method::GET, url, fwd, None, deadline, accept)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let mut features: Features =
            serde_json::from_slice(&answer.body).map_err(|e| invalid(FEATURE_STORE, e))?;
        features.served_by = served_by(&answer.headers);
        Ok(Some(features))
    }

    /// Scores the user with the cohort's model (and mirrors the call when shadowing).
    pub async fn score(
        &self,
        cohort: Cohort,
        features: &Features,
        fwd: &Forwarded,
        deadline: Instant,
        request_id: &str,
    ) -> Result<Scored, ScoreFailure> {
        let started = Instant::now();
        let result = self
            .score_once(cohort, features, fwd, deadline, request_id)
            .await;
        // Per version, failures included: the latency guardrail compares
        // what each version cost a decision.
        let version = match &result {
            Ok(s) => Some(s.model_version.as_str()),
            Err(f) => f.model_version.as_deref(),
        };
        self.metrics.model_call(
            version.unwrap_or(crate::metrics::UNKNOWN_VERSION),
            started.elapsed().as_secs_f64(),
        );
        result
    }

    async fn score_once(
        &self,
        cohort: Cohort,
        features: &Features,
        fwd: &Forwarded,
        deadline: Instant,
        request_id: &str,
    ) -> Result<Scored, ScoreFailure> {
        let target = &self.targets[usize::from(cohort == Cohort::Candidate)];
        let fail = |error, version: Option<String>| ScoreFailure {
            error,
            model_version: version.or_else(|| target.known_version.map(str::to_owned)),
        };
        let layout = self
            .layout_of(target, fwd, deadline)
            .await
            .map_err(|e| fail(e, None))?;
        let answer = match self
            .infer(target, &layout, features, fwd, deadline, request_id)
            .await
        {
            // The model's feature order is no longer the one cached: re-read
            // it and try once more, rather than scoring shuffled columns.
            Err(UpstreamError::Status {
                status: 409, detail, ..
            }) => {
                tracing::info!(url = %target.metadata_url, %detail, "model refused the cached feature order; re-reading its metadata");
                target.forget(&layout);
                let layout = self
                    .layout_of(target, fwd, deadline)
                    .await
                    .map_err(|e| fail(e, None))?;
                self.infer(target, &layout, features, fwd, deadline, request_id)
                    .await
            }
            other => other,
        }
        .map_err(|e| {
            let version = match &e {
                UpstreamError::Status { model_version, .. } => model_version.clone(),
                _ => None,
            };
            fail(e, version)
        })?;
        let version = answered_version(&answer.headers);
        let probability = probability_of(&answer.body).map_err(|e| fail(e, version.clone()))?;
        let model_version = version
            .or_else(|| target.known_version.map(str::to_owned))
            .unwrap_or_else(|| crate::metrics::UNKNOWN_VERSION.to_owned());
        Ok(Scored {
            probability,
            model_version,
            served_by: served_by(&answer.headers),
        })
    }

    /// One OIP infer call for `features` laid out as `layout` says.
    async fn infer(
        &self,
        target: &ModelTarget,
        layout: &Layout,
        features: &Features,
        fwd: &Forwarded,
        deadline: Instant,
        request_id: &str,
    ) -> Result<Answer, UpstreamError> {
        let mut data = Vec::with_capacity(layout.feature_names.len());
        for name in &layout.feature_names {
            match features.features.get(name) {
                Some(Some(v)) => data.push(*v as f32),
                _ => {
                    let detail = format!("no value for feature '{name}', which the model needs");
                    return Err(invalid(FEATURE_STORE, detail));
                }
            }
        }
        let request = oip::InferRequest {
            id: Some(Cow::Borrowed(request_id)),
            parameters: Some(layout.parameters.clone()),
            inputs: vec![oip::InputTensor {
                name: Cow::Borrowed(&layout.input_name),
                shape: vec![1, data.len() as i64],
                datatype: Cow::Borrowed(oip::FP32),
                parameters: None,
                data: Some(oip::FlatF32(data)),
            }],
            outputs: Some(vec![oip::RequestedOutput {
                name: Cow::Borrowed(PROBABILITY),
                parameters: None,
            }]),
        };
        let body = Bytes::from(serde_json::to_vec(&request).expect("infer body serializes"));
        self.mirror(&body, fwd);
        self.call(
            MODEL,
            Method::POST,
            target.infer_url.clone(),
            fwd,
            Some(body),
            deadline,
            |s| s.is_success(),
        )
        .await
    }

    /// The target's cached layout, read from its metadata when there is none.
    async fn layout_of(
        &self,
        target: &ModelTarget,
        fwd: &Forwarded,
        deadline: Instant,
    ) -> Result<Arc<Layout>, UpstreamError> {
        if let Some(layout) = target.cached() {
            return Ok(layout);
        }
        // Concurrent first requests may each read it; the answers are equal.
        let layout = self.layout(target, fwd, deadline).await?;
        *target.layout.lock().unwrap_or_else(|e| e.into_inner()) = Some(layout.clone());
        Ok(layout)
    }

    async fn layout(
        &self,
        target: &ModelTarget,
        fwd: &Forwarded,
        deadline: Instant,
    ) -> Result<Arc<Layout>, UpstreamError> {
        let answer = self
            .call(
                MODEL,
                Method::GET,
                target.metadata_url.clone(),
                fwd,
                None,
                deadline,
                |s| s.is_success(),
            )
            .await?;
        let meta: oip::ModelMetadata =
            serde_json::from_slice(&answer.body).map_err(|e| invalid(MODEL, e))?;
        let input_name = meta
            .inputs
            .into_iter()
            .next()
            .ok_or_else(|| invalid(MODEL, "model metadata lists no inputs"))?
            .name
            .into_owned();
        let joined = meta
            .parameters
            .as_ref()
            .and_then(|p| p.get(oip::FEATURE_NAMES))
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid(MODEL, "model metadata lacks parameters.feature_names"))?;
        let feature_names: Vec<String> = joined.split(',').map(str::to_owned).collect();
        let mut parameters = oip::Parameters::new();
        parameters.insert(oip::FEATURE_NAMES.into(), joined.into());
        tracing::info!(url = %target.metadata_url, input = %input_name, features = feature_names.len(), "model layout read from OIP metadata");
        Ok(Arc::new(Layout {
            input_name,
            feature_names,
            parameters,
        }))
    }

    /// Fire-and-forget copy of a live inference call, as Envoy's mirroring
    /// does: same body and headers, Host suffixed `-shadow`, answer discarded.
    fn mirror(&self, body: &Bytes, fwd: &Forwarded) {
        let Some(shadow) = &self.shadow else { return };
        if fastrand::u32(0..100) >= u32::from(shadow.percent) {
            return;
        }
        let Ok(permit) = Arc::clone(&shadow.slots).try_acquire_owned() else {
            self.metrics.shadow("dropped");
            return;
        };
        let span = client_span(SHADOW, &Method::POST, &shadow.infer_url);
        let mut headers = span.in_scope(|| fwd.outbound_headers());
        headers.insert(header::HOST, shadow.host.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let request = self
            .http
            .post(&shadow.infer_url)
            .headers(headers)
            .timeout(self.timeout)
            .body(body.clone());
        let metrics = self.metrics.clone();
        let timeout = self.timeout;
        tokio::spawn(
            async move {
                let started = Instant::now();
                // One classification of failures for live and mirrored calls.
                let error = match request.send().await {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => {
                        tracing::Span::current()
                            .record("http.response.status_code", r.status().as_u16());
                        Some("status")
                    }
                    Err(e) => Some(transport_error(SHADOW, timeout, e).kind()),
                };
                metrics.upstream_call(SHADOW, started.elapsed().as_secs_f64(), error);
                metrics.shadow(if error.is_some() { "failed" } else { "sent" });
                drop(permit);
            }
            .instrument(span),
        );
    }

    /// One traced, timed, deadline-bounded call. Statuses `accept` rejects
    /// become [`UpstreamError::Status`] carrying the callee's error message.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        upstream: &'static str,
        method: Method,
        url: String,
        fwd: &Forwarded,
        body: Option<Bytes>,
        deadline: Instant,
        accept: impl Fn(StatusCode) -> bool,
    ) -> Result<Answer, UpstreamError> {
        let span = client_span(upstream, &method, &url);
        let started = Instant::now();
        let result = async {
            let budget = deadline.saturating_duration_since(started);
            if budget.is_zero() {
                return Err(UpstreamError::Timeout {
                    upstream,
                    after: Duration::ZERO,
                });
            }
            let mut headers = fwd.outbound_headers();
            headers.insert(
                DEADLINE_HEADER,
                HeaderValue::from(budget.as_millis() as u64),
            );
            let mut req = self
                .http
                .request(method, &url)
                .headers(headers)
                .timeout(budget);
            if let Some(body) = body {
                req = req
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body);
            }
            let transport = |e: reqwest::Error| transport_error(upstream, budget, e);
            let res = req.send().await.map_err(transport)?;
            let status = res.status();
            tracing::Span::current().record("http.response.status_code", status.as_u16());
            let headers = res.headers().clone();
            let body = res.bytes().await.map_err(transport)?;
            if !accept(status) {
                return Err(UpstreamError::Status {
                    upstream,
                    status: status.as_u16(),
                    detail: error_message(&body),
                    model_version: answered_version(&headers),
                });
            }
            Ok(Answer {
                status,
                headers,
                body,
            })
        }
        .instrument(span.clone())
        .await;
        let error = result.as_ref().err().map(UpstreamError::kind);
        if let Some(kind) = error {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", kind);
        }
        self.metrics
            .upstream_call(upstream, started.elapsed().as_secs_f64(), error);
        result
    }
}

fn client_span(upstream: &'static str, method: &Method, url: &str) -> tracing::Span {
    tracing::info_span!(
        "upstream",
        otel.name = format!("{method} {upstream}"),
        otel.kind = "client",
        otel.status_code = field::Empty,
        peer.service = upstream,
        http.request.method = %method,
        url.full = url,
        http.response.status_code = field::Empty,
        error.type = field::Empty,
    )
}

fn transport_error(upstream: &'static str, budget: Duration, e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout {
            upstream,
            after: budget,
        }
    } else {
        // reqwest's Display hides the cause ("error sending request"); the
        // source chain says what actually happened (refused, reset, ...).
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        UpstreamError::Connect { upstream, detail }
    }
}

fn invalid(upstream: &'static str, detail: impl ToString) -> UpstreamError {
    UpstreamError::Invalid {
        upstream,
        detail: detail.to_string(),
    }
}

/// The callee's `{"error": ...}` message, or a short excerpt of whatever it sent.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body).map_or_else(
        |_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        |b| b.error,
    )
}

fn answered_version(headers: &HeaderMap) -> Option<String> {
    headers
        .get(MODEL_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn served_by(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SERVED_BY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn probability_of(body: &[u8]) -> Result<f64, UpstreamError> {
    let res: oip::InferResponse = serde_json::from_slice(body).map_err(|e| invalid(MODEL, e))?;
    let p = res
        .output(PROBABILITY)
        .and_then(|d| d.first().copied())
        .map(f64::from)
        .ok_or_else(|| invalid(MODEL, "no 'probability' output in the answer"))?;
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(invalid(MODEL, format!("probability {p} is outside [0, 1]")))
    }
}

/// Envoy's mirror Host: `-shadow` appended to the host name, before any port.
fn shadow_host(url: &str) -> Option<HeaderValue> {
    let url = reqwest::Url::parse(url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let host = url.host_str()?;
    let value = match url.port() {
        Some(port) => format!("{host}-shadow:{port}"),
        None => format!("{host}-shadow"),
    };
    HeaderValue::from_str(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_suffixes_the_name_not_the_port() {
        assert_eq!(
            shadow_host("http://model-inference-v2:8080").unwrap(),
            "model-inference-v2-shadow:8080"
        );
        assert_eq!(shadow_host("http://v2.local/").unwrap(), "v2.local-shadow");
        assert!(shadow_host("not a url").is_none());
        assert!(shadow_host("ftp://x").is_none());
    }

    #[test]
    fn probability_must_be_a_probability() {
        let answer = |name: &str, data: &str| {
            format!(
                r#"{{"model_name":"m","outputs":[{{"name":"{name}","datatype":"FP32","shape":[1,1],"data":{data}}}]}}"#
            )
        };
        assert_eq!(
            probability_of(answer("probability", "[0.25]").as_bytes()).unwrap(),
            0.25
        );
        for bad in [
            answer("probability", "[1.5]"),
            answer("logit", "[0.1]"),
            answer("probability", "[]"),
            answer("probability", "[1e39]"),
            "not json".to_owned(),
        ] {
            let bad = bad.as_bytes();
            assert_eq!(probability_of(bad).unwrap_err().kind(), "invalid");
        }
    }

    #[test]
    fn error_messages_come_from_json_or_an_excerpt() {
        assert_eq!(error_message(br#"{"error":"boom"}"#), "boom");
        assert_eq!(error_message(b"plain"), "plain");
    }
}
