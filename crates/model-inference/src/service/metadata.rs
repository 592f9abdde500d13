//! What the server and its model say about themselves: server and model
//! metadata, Triton's model configuration, the statistics extension and
//! per-model readiness.

use std::borrow::Cow;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mesh_kit::Json;
use mesh_kit::extract::Path;
use serde_json::{Value, json};

use mesh_kit::{ApiError, Health};
use oip::{FP32, ModelConfig, ModelMetadata, ModelTensorConfig, ServerMetadata, TensorMetadata};

use super::{AppState, ModelPath};

/// What the metadata and configuration say runs the model.
const PLATFORM: &str = "tract_onnx";

// === impl AppState ===

impl AppState {
    pub(crate) fn model_metadata(&self) -> ModelMetadata<'_> {
        let spec = &self.0.spec;
        let parameters = (!spec.feature_names.is_empty()).then(|| {
            let mut p = oip::Parameters::new();
            p.insert(
                oip::FEATURE_NAMES.into(),
                Value::String(spec.feature_order.clone()),
            );
            p.insert(
                oip::FEATURE_FINGERPRINT.into(),
                Value::String(spec.feature_fingerprint.clone()),
            );
            p
        });
        fn tensor(name: &str, width: usize) -> TensorMetadata<'_> {
            TensorMetadata {
                name: Cow::Borrowed(name),
                datatype: Cow::Borrowed(FP32),
                shape: vec![-1, width as i64],
            }
        }
        ModelMetadata {
            name: Cow::Borrowed(&self.0.name),
            versions: vec![Cow::Borrowed(&self.0.version)],
            platform: Cow::Borrowed(PLATFORM),
            inputs: vec![tensor(&spec.input_name, spec.n_features)],
            outputs: spec
                .outputs
                .iter()
                .map(|(name, width)| tensor(name, *width))
                .collect(),
            parameters,
        }
    }

    /// Triton's model configuration: the batch dimension is `max_batch_size`,
    /// not part of `dims`.
    pub(crate) fn model_config(&self) -> ModelConfig {
        let spec = &self.0.spec;
        let tensor = |name: &str, width: usize| ModelTensorConfig {
            name: name.to_owned(),
            data_type: "TYPE_FP32".to_owned(),
            dims: vec![width as i64],
        };
        ModelConfig {
            name: self.0.name.to_string(),
            platform: PLATFORM.to_owned(),
            backend: "tract".to_owned(),
            max_batch_size: self.0.max_rows as u64,
            input: vec![tensor(&spec.input_name, spec.n_features)],
            output: spec
                .outputs
                .iter()
                .map(|(name, width)| tensor(name, *width))
                .collect(),
            // The column order, for gRPC clients: gRPC's model metadata has
            // no parameters, Triton's configuration does.
            parameters: (!spec.feature_names.is_empty())
                .then(|| {
                    let param = |name: &str, value: &str| {
                        let value = oip::ModelParameter {
                            string_value: value.to_owned(),
                        };
                        (name.to_owned(), value)
                    };
                    [
                        param(oip::FEATURE_NAMES, &spec.feature_order),
                        param(oip::FEATURE_FINGERPRINT, &spec.feature_fingerprint),
                    ]
                })
                .into_iter()
                .flatten()
                .collect(),
        }
    }
}

pub(super) async fn model_metadata(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    s.check_model(&p)?;
    Ok(Json(s.model_metadata()).into_response())
}

/// The server metadata, the same over REST and gRPC.
pub(crate) fn server_metadata_value() -> ServerMetadata<'static> {
    ServerMetadata {
        name: Cow::Borrowed("mlmesh-model-inference"),
        version: Cow::Borrowed(env!("CARGO_PKG_VERSION")),
        extensions: oip::EXTENSIONS.into_iter().map(Cow::Borrowed).collect(),
    }
}

pub(super) async fn server_metadata() -> Json<ServerMetadata<'static>> {
    Json(server_metadata_value())
}

pub(super) async fn model_config(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Json<ModelConfig>, ApiError> {
    s.check_model(&p)?;
    Ok(Json(s.model_config()))
}

/// `/v2/models/stats`: every model's statistics, which is this one's.
pub(super) async fn all_stats(State(s): State<AppState>) -> Json<oip::InferStatistics> {
    Json(oip::InferStatistics {
        model_stats: vec![s.statistics()],
    })
}

pub(super) async fn model_stats(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Json<oip::InferStatistics>, ApiError> {
    s.check_model(&p)?;
    Ok(all_stats(State(s)).await)
}

pub(super) async fn model_ready(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    s.check_model(&p)?;
    Ok(ready_response(&s.0.health))
}

pub(super) fn ready_response(health: &Health) -> Response {
    let ready = health.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}
