//! Triton's statistics extension (`GET /v2/models[/{name}[/versions/{v}]]/stats`)
//! and model configuration extension (`GET /v2/models/{name}/config`), in
//! the JSON shape Triton's clients read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A count and the cumulative time it took, in nanoseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duration {
    pub count: u64,
    pub ns: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InferStatistics {
    pub model_stats: Vec<ModelStatistics>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ModelStatistics {
    pub name: String,
    pub version: String,
    /// Unix time of the last inference, in milliseconds; 0 if none yet.
    pub last_inference: u64,
    /// Rows inferred (a batch of 8 rows counts 8), successful requests only.
    pub inference_count: u64,
    /// Model runs (one per micro-batch).
    pub execution_count: u64,
    pub inference_stats: InferenceStatistics,
    /// Per batch size actually run: how often, and the compute it cost.
    pub batch_stats: Vec<BatchStatistics>,
}

/// Per request, as Triton counts them: `success` and `fail` are whole
/// request times; `queue` is the wait for a model run; `compute_*` are the
/// request's share of the run it was in.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InferenceStatistics {
    pub success: Duration,
    pub fail: Duration,
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
    pub cache_hit: Duration,
    pub cache_miss: Duration,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BatchStatistics {
    pub batch_size: u64,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

/// Triton's model configuration, the part that describes a served model.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    pub backend: String,
    pub max_batch_size: u64,
    pub input: Vec<ModelTensorConfig>,
    pub output: Vec<ModelTensorConfig>,
    /// Triton's free-form model parameters; mlmesh's `feature_names` (the
    /// input's column order) is here, so a gRPC client that cannot read the
    /// REST metadata's `parameters` finds it in the configuration.
    #[serde(default)]
    pub parameters: BTreeMap<String, ModelParameter>,
}

/// One of [`ModelConfig::parameters`], in Triton's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelParameter {
    pub string_value: String,
}

/// A tensor of [`ModelConfig`]: `dims` exclude the batch dimension.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelTensorConfig {
    pub name: String,
    /// `TYPE_FP32` and the like.
    pub data_type: String,
    pub dims: Vec<i64>,
}
