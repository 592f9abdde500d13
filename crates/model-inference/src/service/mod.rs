//! HTTP routes of the Open Inference Protocol over one loaded model.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mesh_kit::Json;
use mesh_kit::extract::Path;
use serde::Deserialize;
use serde_json::json;

use events::{Event, EventLog, Prediction};
use mesh_kit::propagation::{REQUEST_ID_HEADER, trace_id_of};
use mesh_kit::{ApiError, Health, ServerArgs, Service};

use crate::batcher::{Admission, BatchConfig, Batcher, InferError, ScoreFault};
use crate::config::ModelArgs;
use crate::deadline::deadline_of;
use crate::engine::{Engine, EngineError, ModelSpec};
use crate::metrics::{InferenceMetrics, Outcome, Protocol, Traffic};
use crate::validate::{self, Validated};
use oip::{FP32, FlatF32, InferRequest, InferResponse, OutputTensor};

mod metadata;

pub use mesh_kit::propagation::{DEADLINE_HEADER, MODEL_VERSION_HEADER};
pub(crate) use metadata::server_metadata_value;
use metadata::{
    all_stats, model_config, model_metadata, model_ready, model_stats, ready_response,
    server_metadata,
};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    spec: ModelSpec,
    // Shared with every event the log writes.
    name: Arc<str>,
    version: Arc<str>,
    max_rows: usize,
    max_body_bytes: usize,
    admission_wait: Duration,
    batcher: Batcher,
    metrics: InferenceMetrics,
    health: Health,
    events: EventLog,
}

impl AppState {
    /// Loads, optimizes and warms the model and starts the workers; the
    /// service turns ready only after this succeeds.
    pub fn load(args: &ModelArgs, svc: &mut Service) -> Result<Self, EngineError> {
        let events = EventLog::start(&args.events, svc.registry_mut())?;
        let engine = Arc::new(Engine::load_with_batches(
            &args.model_path,
            args.max_batch_size as usize,
        )?);
        let metrics = InferenceMetrics::register(
            svc.registry_mut(),
            &args.model_name,
            &args.model_version,
            args.max_batch_size as usize,
        );
        // A model run here costs a few µs against ~30 µs of HTTP and JSON work
        // per request, so by default inference gets half the CPUs.
        let workers = args.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            |w| w as usize,
        );
        let cfg = BatchConfig {
            max_batch_rows: args.max_batch_size as usize,
            max_delay: args.max_queue_delay,
            queue_capacity: args.queue_capacity as usize,
            workers,
        };
        let fault = ScoreFault {
            shift: args.fault_score_shift,
            noise: args.fault_score_noise,
        };
        if fault.is_active() {
            tracing::warn!(?fault, "score degradation fault is ON");
        }
        let batcher = Batcher::start(Arc::clone(&engine), cfg, fault, metrics.clone())?;
        tracing::info!(
            model = %args.model_path.display(), name = %args.model_name, version = %args.model_version,
            features = engine.spec().n_features, workers, max_batch = cfg.max_batch_rows,
            "model loaded and warmed"
        );
        let health = svc.health();
        health.set_ready(true);
        Ok(Self(Arc::new(Inner {
            spec: engine.spec().clone(),
            name: args.model_name.as_str().into(),
            version: args.model_version.as_str().into(),
            max_rows: cfg.max_batch_rows,
            max_body_bytes: args.max_body_bytes,
            admission_wait: args.admission_wait,
            batcher,
            metrics,
            health,
            events,
        })))
    }

    /// 404 unless the path names this model (and, if given, this version).
    pub(crate) fn check_model(&self, p: &ModelPath) -> Result<(), ApiError> {
        if *p.name != *self.0.name {
            return Err(ApiError::not_found(format!(
                "model '{}' not found; this server has '{}'",
                p.name, self.0.name
            )));
        }
        match &p.version {
            Some(v) if **v != *self.0.version => Err(ApiError::not_found(format!(
                "version '{v}' of model '{}' not found; this server has '{}'",
                p.name, self.0.version
            ))),
            _ => Ok(()),
        }
    }

    async fn infer(
        &self,
        p: &ModelPath,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
        traffic: Traffic,
    ) -> Result<Response, ApiError> {
        self.check_model(p)?;
        let place = self.admit().await?;
        let body = body?;
        // With the binary extension the header says where the JSON ends and
        // declares the framing itself; without it the body must be JSON.
        let framing = headers.get(oip::HEADER_LENGTH).map(HeaderValue::as_bytes);
        if framing.is_none() {
            mesh_kit::error::require_json(headers)?;
        }
        let (json, binary) =
            oip::split_body(&body, framing).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let req: InferRequest = serde_json::from_slice(json)
            .map_err(|e| ApiError::bad_request(format!("invalid inference request: {e}")))?;
        let v = validate::validate(req, binary, &self.0.spec, self.0.max_rows)?;
        let (mut res, binary) = self.score(place, v, headers, traffic).await?;
        if !binary.iter().any(|b| *b) {
            return Ok(Json(res).into_response());
        }
        let chunks: Vec<FlatF32> = res
            .outputs
            .iter_mut()
            .zip(&binary)
            .filter(|(_, binary)| **binary)
            .filter_map(|(o, _)| o.into_binary())
            .collect();
        let (body, json_len) = oip::encode_binary(&res, chunks.iter().map(|c| c.0.as_slice()))
            .map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))?;
        Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(oip::OCTET_STREAM),
                ),
                (
                    HeaderName::from_static(oip::HEADER_LENGTH),
                    HeaderValue::from(json_len),
                ),
            ],
            body,
        )
            .into_response())
    }

    /// The scoring every protocol shares once a request is admitted and
    /// validated: queue and batch, score metrics, the event log. Returns
    /// the answer with every requested output's data, and which of them
    /// were asked for in binary.
    pub(crate) async fn score(
        &self,
        place: Admission,
        v: Validated,
        headers: &HeaderMap,
        traffic: Traffic,
    ) -> Result<(InferResponse<'_>, Vec<bool>), ApiError> {
        // Hashed before the rows move to the batcher; only with the log on.
        let hashes: Vec<String> = if self.0.events.is_enabled() {
            v.input
                .chunks(self.0.spec.n_features.max(1))
                .map(events::input_hash)
                .collect()
        } else {
            Vec::new()
        };
        let mut columns = self
            .0
            .batcher
            .infer(place, v.input, v.rows, deadline_of(headers))
            .await
            .map_err(|e| match e {
                InferError::QueueFull => queue_full(),
                InferError::DeadlineExceeded => {
                    ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
                }
                InferError::Stopped => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
                InferError::Engine(msg) => ApiError::internal(msg),
            })?;
        if let Some(ix) = self.0.spec.output_index("probability") {
            self.0.metrics.scores(traffic, columns[ix].iter().copied());
            if !hashes.is_empty() {
                self.log_predictions(headers, v.id.as_deref(), traffic, &columns[ix], hashes);
            }
        }
        let outputs = v
            .outputs
            .iter()
            .map(|&(ix, _)| {
                let (name, width) = &self.0.spec.outputs[ix];
                OutputTensor {
                    name: Cow::Borrowed(name),
                    datatype: Cow::Borrowed(FP32),
                    shape: vec![v.rows as i64, *width as i64],
                    parameters: None,
                    data: Some(FlatF32(std::mem::take(&mut columns[ix]))),
                }
            })
            .collect();
        let res = InferResponse {
            model_name: Cow::Borrowed(&self.0.name),
            model_version: Some(Cow::Borrowed(&self.0.version)),
            id: v.id.map(Cow::Owned),
            parameters: None,
            outputs,
        };
        Ok((res, v.outputs.iter().map(|&(_, b)| b).collect()))
    }

    /// One `prediction` event per row: the request id joins a live call
    /// with its mirrored copy (Envoy and the frontend's mirror keep the
    /// header), the input hash proves they scored the same row.
    fn log_predictions(
        &self,
        headers: &HeaderMap,
        body_id: Option<&str>,
        traffic: Traffic,
        scores: &[f32],
        hashes: Vec<String>,
    ) {
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|h| h.to_str().ok())
            .or(body_id)
            .unwrap_or_default()
            .to_owned();
        let trace_id = trace_id_of(headers);
        let time_ms = mesh_kit::clock::unix_now_ms();
        let width = scores.len() / hashes.len().max(1);
        for (row, input_hash) in hashes.into_iter().enumerate() {
            // The positive class: the last column of the row.
            let Some(&score) = scores.get(row * width + width.saturating_sub(1)) else {
                break;
            };
            self.0.events.log(Event::Prediction(Prediction {
                request_id: request_id.clone(),
                trace_id: trace_id.clone(),
                row: row as u32,
                model: Arc::clone(&self.0.name),
                version: Arc::clone(&self.0.version),
                traffic: traffic.as_str(),
                score,
                input_hash,
                time_ms,
            }));
        }
    }

    /// A place in the queue, waited for at most `--admission-wait`, before the
    /// body is parsed: past the wait the request is shed with 429 having cost
    /// little more than reading it. The body was read first on purpose: a
    /// client sending its body slowly ties up its own connection, not a place.
    pub(crate) async fn admit(&self) -> Result<Admission, ApiError> {
        self.0
            .batcher
            .admit(self.0.admission_wait)
            .await
            .ok_or_else(queue_full)
    }

    /// This model's statistics extension figures, now.
    pub(crate) fn statistics(&self) -> oip::ModelStatistics {
        self.0.metrics.stats.snapshot(&self.0.name, &self.0.version)
    }

    pub(crate) fn metrics(&self) -> &InferenceMetrics {
        &self.0.metrics
    }

    pub(crate) fn health(&self) -> &Health {
        &self.0.health
    }

    pub(crate) fn max_body_bytes(&self) -> usize {
        self.0.max_body_bytes
    }

    pub(crate) fn max_rows(&self) -> usize {
        self.0.max_rows
    }

    pub(crate) fn spec(&self) -> &ModelSpec {
        &self.0.spec
    }

    /// The `x-model-version` header for [`Service::with_response_header`].
    pub fn version_header(&self) -> (HeaderName, HeaderValue) {
        let value = HeaderValue::from_str(&self.0.version)
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        (HeaderName::from_static(MODEL_VERSION_HEADER), value)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ModelPath {
    pub name: String,
    pub version: Option<String>,
}

pub(crate) fn outcome_of(status: StatusCode) -> Outcome {
    match status {
        StatusCode::TOO_MANY_REQUESTS => Outcome::Rejected,
        StatusCode::GATEWAY_TIMEOUT => Outcome::Expired,
        s if s.is_client_error() => Outcome::Invalid,
        s if s.is_success() => Outcome::Ok,
        _ => Outcome::Error,
    }
}

/// The 429 for a queue that stayed full for the admission wait.
pub(crate) fn queue_full() -> ApiError {
    ApiError::overloaded("inference queue is full; retry shortly", 1)
}

async fn infer(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let traffic = Traffic::of(&headers);
    let res = s
        .infer(&p, &headers, body, traffic)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    s.0.metrics
        .request(traffic, Protocol::Http, outcome_of(res.status()));
    s.0.metrics
        .stats
        .request(res.status().is_success(), started.elapsed());
    res
}

/// Business routes: metadata and inference.
pub fn router(state: AppState) -> Router {
    let max_body = state.0.max_body_bytes;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(model_stats),
        )
        .route("/v2/models/{name}/config", get(model_config))
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// OIP health endpoints: probes, so no tracing, RED metrics or faults.
pub fn probes(state: AppState) -> Router {
    let live = || async { Json(json!({ "live": true })) };
    Router::new()
        .route("/v2/health/live", get(live))
        .route(
            "/v2/health/ready",
            get(|State(s): State<AppState>| async move { ready_response(&s.0.health) }),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .with_state(state)
}

/// Everything the binary and the tests need: the assembled service and its routes.
pub fn build(model: &ModelArgs, server: ServerArgs) -> Result<(Service, AppState), EngineError> {
    let mut svc = Service::new("model-inference", server);
    let state = AppState::load(model, &mut svc)?;
    let (name, value) = state.version_header();
    Ok((svc.with_response_header(name, value), state))
}

/// The complete app, for `oneshot` tests and embedding.
pub fn app(model: &ModelArgs, server: ServerArgs) -> Result<(axum::Router, AppState), EngineError> {
    let (svc, state) = build(model, server)?;
    Ok((
        svc.router(router(state.clone()), probes(state.clone())),
        state,
    ))
}
