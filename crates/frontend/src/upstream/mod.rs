//! Calls to the feature store and model-inference: one client span per call
//! (so each callee's server span is its child), forwarded experiment headers,
//! a deadline on every call, and failures classified for metrics and answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use bytes::Bytes;
use tracing::Instrument;

use mesh_kit::propagation::{DEADLINE_HEADER, Forwarded, MODEL_VERSION_HEADER, SERVED_BY_HEADER};

use crate::cohort::Cohort;
use crate::config::{FrontendArgs, RoutingMode};
use crate::metrics::FrontendMetrics;

mod coalesce;
mod error;
mod features;
mod grpc;
mod http;
mod learnt;
mod model;
mod shadow;
mod store;

use error::error_message;
pub use error::{ConfigError, UpstreamError};
use grpc::{grpc_error, grpc_request, grpc_span, grpc_url_of};
use http::{
    Endpoint, client_span, content_headers, exchange, features_base, features_batch_url,
    http_request,
};

pub use features::Features;
use features::KnownOrder;
use model::{GrpcClient, Layout, ModelTarget, Outbound, Wire};
use shadow::Shadow;
use store::Batching;

pub const FEATURE_STORE: &str = "feature-store";
pub const MODEL: &str = "model-inference";
pub const SHADOW: &str = "model-inference-shadow";

/// One upstream answer, status already accepted by the caller's predicate.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
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

pub struct Upstreams {
    timeout: Duration,
    /// `<feature store>/v1/features/`, checked once; a user's URI is it and
    /// their id (percent-encoded).
    features_base: Endpoint,
    /// `<feature store>/v1/features:batch`.
    features_batch_url: Endpoint,
    /// The feature store's column order, once an answer has said it.
    store_order: KnownOrder,
    /// Concurrent decisions' feature reads share one call (`store.rs`).
    batching: Option<Batching>,
    /// Baseline then candidate. In `mesh` mode both use the one model URL;
    /// each keeps its own layout because the mesh may send them to different
    /// versions.
    targets: [ModelTarget; 2],
    shadow: Option<Shadow>,
    metrics: FrontendMetrics,
}

impl Upstreams {
    pub fn new(args: &FrontendArgs, metrics: FrontendMetrics) -> Result<Self, ConfigError> {
        let target = |rest: &str, grpc: Option<&String>, known| {
            new_target(args, rest, grpc.map(String::as_str), known)
        };
        let targets = match args.routing {
            RoutingMode::Mesh => [
                target(&args.model_url, args.model_grpc_url.as_ref(), None)?,
                target(&args.model_url, args.model_grpc_url.as_ref(), None)?,
            ],
            RoutingMode::Direct => {
                let (Some(v1), Some(v2)) = (&args.model_v1_url, &args.model_v2_url) else {
                    return Err(ConfigError::MissingModelUrl);
                };
                [
                    target(v1, args.model_v1_grpc_url.as_ref(), Some("v1"))?,
                    target(v2, args.model_v2_grpc_url.as_ref(), Some("v2"))?,
                ]
            }
        };
        let shadow = Shadow::configure(args, |url, grpc| target(url, grpc, None))?;
        let features_base = features_base(&args.feature_store_url)?;
        Ok(Self {
            timeout: args.upstream_timeout,
            features_batch_url: features_batch_url(&features_base, &args.feature_store_url)?,
            features_base,
            store_order: KnownOrder::default(),
            batching: args.batches_feature_reads().then(Batching::default),
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
                tracing::info!(target = %target.describe(), %detail, "model refused the cached feature order; re-reading its layout");
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
        let probability = answer.probability.map_err(|e| fail(e, version.clone()))?;
        let model_version = version
            .or_else(|| target.known_version.map(str::to_owned))
            .unwrap_or_else(|| crate::metrics::UNKNOWN_VERSION.to_owned());
        Ok(Scored {
            probability,
            model_version,
            served_by: served_by(&answer.headers),
        })
    }

    /// One infer call for `features` laid out as `layout` says, in the
    /// target's protocol.
    async fn infer(
        &self,
        target: &ModelTarget,
        layout: &Layout,
        features: &Features,
        fwd: &Forwarded,
        deadline: Instant,
        request_id: &str,
    ) -> Result<Inferred, UpstreamError> {
        let values = features.values_in(layout)?;
        let request = model::outbound(&target.wire, &target.model, layout, values, request_id);
        self.mirror(&request, fwd);
        match (&target.wire, request) {
            (Wire::Http { infer_url, .. }, Outbound::Http { body, json_len }) => {
                let answer = self
                    .call(
                        MODEL,
                        Method::POST,
                        infer_url,
                        fwd,
                        Some((body, json_len)),
                        deadline,
                        |s| s.is_success(),
                    )
                    .await?;
                let length = answer.headers.get(oip::HEADER_LENGTH);
                Ok(Inferred {
                    probability: model::probability_of_http(&answer.body, length),
                    headers: answer.headers,
                })
            }
            (Wire::Grpc { client, url }, Outbound::Grpc(message)) => {
                let (headers, res) = self
                    .call_grpc(MODEL, "ModelInfer", url, client, fwd, deadline, message, {
                        |mut c: GrpcClient, r| async move { c.model_infer(r).await }
                    })
                    .await?;
                Ok(Inferred {
                    probability: model::probability_of_grpc(&res),
                    headers,
                })
            }
            _ => unreachable!("a target's requests are built for its own wire"),
        }
    }

    /// The target's cached layout, read from the model when there is none.
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
        let layout = Arc::new(match &target.wire {
            Wire::Http { metadata_url, .. } => {
                let answer = self
                    .call(MODEL, Method::GET, metadata_url, fwd, None, deadline, |s| {
                        s.is_success()
                    })
                    .await?;
                Layout::from_metadata(&answer.body)?
            }
            Wire::Grpc { client, url } => {
                let message = oip::grpc::ModelConfigRequest {
                    name: target.model.clone(),
                    version: String::new(),
                };
                let (_, res) = self
                    .call_grpc(MODEL, "ModelConfig", url, client, fwd, deadline, message, {
                        |mut c: GrpcClient, r| async move { c.model_config(r).await }
                    })
                    .await?;
                Layout::from_config(res.config)?
            }
        });
        tracing::info!(target = %target.describe(), input = %layout.input_name, features = layout.width(), "model layout read from the model");
        target.remember(layout.clone());
        Ok(layout)
    }

    /// One traced, timed, deadline-bounded call. Statuses `accept` rejects
    /// become [`UpstreamError::Status`] carrying the callee's error message.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        upstream: &'static str,
        method: Method,
        url: &Endpoint,
        fwd: &Forwarded,
        body: Option<(Bytes, Option<HeaderValue>)>,
        deadline: Instant,
        accept: impl Fn(StatusCode) -> bool,
    ) -> Result<Answer, UpstreamError> {
        let span = client_span(upstream, &method, url.as_str());
        let started = Instant::now();
        let result = async {
            let (budget, mut headers) = outbound(upstream, fwd, deadline, started)?;
            let body = match body {
                Some((body, json_len)) => {
                    content_headers(&mut headers, json_len);
                    body
                }
                None => Bytes::new(),
            };
            let request = http_request(method, url, headers, body);
            let (status, headers, body) = exchange(url, upstream, request, budget).await?;
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
        self.finish(upstream, &span, started, result)
    }

    /// [`Self::call`] for one unary gRPC method: the same span shape,
    /// forwarded headers (as metadata), deadline (as `grpc-timeout` too)
    /// and failure classes; the answer's headers and message.
    #[allow(clippy::too_many_arguments)]
    async fn call_grpc<T, R, F>(
        &self,
        upstream: &'static str,
        method: &'static str,
        url: &str,
        client: &GrpcClient,
        fwd: &Forwarded,
        deadline: Instant,
        message: T,
        send: impl FnOnce(GrpcClient, tonic::Request<T>) -> F,
    ) -> Result<(HeaderMap, R), UpstreamError>
    where
        F: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let span = grpc_span(upstream, method, url);
        let started = Instant::now();
        let result = async {
            let (budget, headers) = outbound(upstream, fwd, deadline, started)?;
            let mut request = grpc_request(message, headers);
            request.set_timeout(budget);
            let timeout = UpstreamError::Timeout {
                upstream,
                after: budget,
            };
            let res = tokio::time::timeout(budget, send(client.clone(), request))
                .await
                .map_err(|_| timeout)?;
            let code = match &res {
                Ok(_) => tonic::Code::Ok,
                Err(status) => status.code(),
            };
            tracing::Span::current().record("rpc.grpc.status_code", code as i32);
            let (metadata, message, _) = res
                .map_err(|status| grpc_error(upstream, status))?
                .into_parts();
            Ok((metadata.into_headers(), message))
        }
        .instrument(span.clone())
        .await;
        self.finish(upstream, &span, started, result)
    }

    /// Records a finished call's outcome on its span and in the metrics.
    fn finish<T>(
        &self,
        upstream: &'static str,
        span: &tracing::Span,
        started: Instant,
        result: Result<T, UpstreamError>,
    ) -> Result<T, UpstreamError> {
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

/// A call's budget (what is left until `deadline`, a timeout if nothing)
/// and its headers: the forwarded ones, the current span's trace context,
/// and the budget for the callee to honour.
fn outbound(
    upstream: &'static str,
    fwd: &Forwarded,
    deadline: Instant,
    started: Instant,
) -> Result<(Duration, HeaderMap), UpstreamError> {
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
    Ok((budget, headers))
}

/// One model target in the protocol `args` chose: REST at `rest`, or gRPC at
/// `grpc` (default: `rest`'s host on model-inference's gRPC port).
fn new_target(
    args: &FrontendArgs,
    rest: &str,
    grpc: Option<&str>,
    known: Option<&'static str>,
) -> Result<ModelTarget, ConfigError> {
    let model = &args.model_name;
    match args.model_protocol {
        oip::Protocol::HttpJson | oip::Protocol::HttpBinary => {
            let binary = args.model_protocol == oip::Protocol::HttpBinary;
            ModelTarget::http(rest, model, binary, known)
                .ok_or_else(|| ConfigError::Url("the model URL", rest.to_owned()))
        }
        oip::Protocol::Grpc => {
            let url = match grpc.filter(|u| !u.trim().is_empty()) {
                Some(url) => url.to_owned(),
                None => grpc_url_of(rest).ok_or_else(|| ConfigError::GrpcUrl(rest.to_owned()))?,
            };
            ModelTarget::grpc(&url, model, args.upstream_timeout, known)
                .map_err(|_| ConfigError::GrpcUrl(url))
        }
    }
}

/// A decoded REST or gRPC infer answer: the callee's headers (version,
/// replica) and the probability, or why it is unusable.
struct Inferred {
    headers: HeaderMap,
    probability: Result<f64, UpstreamError>,
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
