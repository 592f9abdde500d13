//! The tract engine: loads one ONNX model with a symbolic batch dimension,
//! optimizes it, and runs it through per-worker sessions.
//!
//! Besides the symbolic plan, it compiles one plan per concrete batch size up
//! to the service's max batch: with fixed shapes tract skips per-run shape
//! resolution and picks tighter kernels (measured 1.6-1.9x faster on these
//! models, see BENCHMARKS.md), and 64 plans compile in under 100 ms.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::model::typed::{TypedRunnableModel, TypedSimpleState};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("model {path} is not supported: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
    /// Not the engine's own, but part of loading the service.
    #[error(transparent)]
    EventLog(#[from] events::EventLogError),
}

/// What the model looks like from outside: the OIP metadata and the feature order.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub input_name: String,
    pub n_features: usize,
    /// Output names in model order, each shaped `[batch, width]`.
    pub outputs: Vec<(String, usize)>,
    /// Feature names in input order, from the ONNX `feature_names` metadata
    /// property (comma-separated), when the model carries one.
    pub feature_names: Vec<String>,
    /// The same names comma-separated, as the metadata and a caller's
    /// `parameters.feature_names` carry them: every frontend call's check is
    /// one comparison with this.
    pub feature_order: String,
    /// `feature_order`'s digest, [`oip::FEATURE_FINGERPRINT`]: what a caller
    /// may state instead of the names.
    pub feature_fingerprint: String,
}

impl ModelSpec {
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|(n, _)| n == name)
    }
}

/// The digest of a feature order, named as the feature store names its
/// schema ([`mesh_kit::fingerprint`]). Empty for no names.
fn fingerprint(names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    mesh_kit::fingerprint::feature_order(names)
}

/// Above this batch size requests run on the symbolic plan, so a huge
/// `--max-batch-size` cannot make startup compile thousands of plans.
pub const MAX_CONCRETE_BATCH: usize = 256;

pub struct Engine {
    symbolic: Arc<TypedRunnableModel>,
    /// `concrete[r - 1]` runs exactly `r` rows.
    concrete: Vec<Arc<TypedRunnableModel>>,
    spec: ModelSpec,
}

impl Engine {
    /// Loads with the symbolic plan only.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        Self::load_with_batches(path, 0)
    }

    /// Loads and also compiles concrete plans for batch sizes `1..=max_rows`
    /// (capped at [`MAX_CONCRETE_BATCH`]).
    pub fn load_with_batches(path: &Path, max_rows: usize) -> Result<Self, EngineError> {
        let load_err = |e: TractError| EngineError::Load {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        };
        let unsupported = |reason: String| EngineError::Unsupported {
            path: path.to_owned(),
            reason,
        };
        if !path.is_file() {
            return Err(EngineError::Load {
                path: path.to_owned(),
                reason: "no such file".into(),
            });
        }
        let proto = tract_onnx::onnx().model_for_path(path).map_err(load_err)?;
        let feature_names = proto
            .properties
            .get("onnx.metadata_props.feature_names")
            .and_then(|t| {
                t.try_as_plain_ram()
                    .ok()?
                    .to_scalar::<String>()
                    .ok()
                    .cloned()
            })
            .map(|s| s.split(',').map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default();
        // into_optimized is what makes tract fast (30-50x over the decluttered graph).
        let model = proto.clone().into_optimized().map_err(load_err)?;

        let inputs = model.input_outlets().map_err(load_err)?;
        if inputs.len() != 1 {
            return Err(unsupported(format!(
                "expected one input, found {}",
                inputs.len()
            )));
        }
        let in_fact = model.outlet_fact(inputs[0]).map_err(load_err)?;
        if in_fact.datum_type != f32::datum_type() || in_fact.rank() != 2 {
            return Err(unsupported(format!(
                "input must be FP32 [batch, features], found {in_fact:?}"
            )));
        }
        let n_features = in_fact.shape[1]
            .as_i64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| unsupported("the feature dimension must be a fixed size".into()))?;
        let input_name = model
            .outlet_label(inputs[0])
            .unwrap_or(&model.node(inputs[0].node).name)
            .to_owned();

        let mut outputs = Vec::new();
        for outlet in model.output_outlets().map_err(load_err)? {
            let fact = model.outlet_fact(*outlet).map_err(load_err)?;
            let width = (fact.rank() == 2 && fact.datum_type == f32::datum_type())
                .then(|| fact.shape[1].as_i64())
                .flatten()
                .and_then(|w| usize::try_from(w).ok())
                .ok_or_else(|| {
                    unsupported(format!(
                        "outputs must be FP32 [batch, k] with fixed k, found {fact:?}"
                    ))
                })?;
            let name = model
                .outlet_label(*outlet)
                .unwrap_or(&model.node(outlet.node).name)
                .to_owned();
            outputs.push((name, width));
        }
        if !feature_names.is_empty() && feature_names.len() != n_features {
            return Err(unsupported(format!(
                "feature_names metadata lists {} names but the input has {n_features} features",
                feature_names.len()
            )));
        }
        let symbolic = model.into_runnable().map_err(load_err)?;
        let concrete = (1..=max_rows.min(MAX_CONCRETE_BATCH))
            .map(|rows| {
                proto
                    .clone()
                    .with_input_fact(0, f32::fact([rows, n_features]).into())?
                    .into_optimized()?
                    .into_runnable()
            })
            .collect::<TractResult<Vec<_>>>()
            .map_err(load_err)?;
        Ok(Self {
            symbolic,
            concrete,
            spec: ModelSpec {
                input_name,
                n_features,
                outputs,
                feature_fingerprint: fingerprint(&feature_names),
                feature_order: feature_names.join(","),
                feature_names,
            },
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// A session owns its scratch state; keep one per worker thread rather
    /// than paying the plan's setup on every call.
    pub fn session(&self) -> Result<Session, EngineError> {
        let state = |plan| TypedSimpleState::new(plan).map_err(run_err);
        Ok(Session {
            symbolic: state(&self.symbolic)?,
            concrete: self.concrete.iter().map(state).collect::<Result<_, _>>()?,
            spec: self.spec.clone(),
        })
    }
}

pub struct Session {
    symbolic: TypedSimpleState,
    /// `concrete[r - 1]` runs exactly `r` rows.
    concrete: Vec<TypedSimpleState>,
    spec: ModelSpec,
}

impl Session {
    /// Runs `rows` rows laid out row-major in `input`; returns each output
    /// flattened row-major, in model output order.
    pub fn run(&mut self, input: &[f32], rows: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let tensor = Tensor::from_shape(&[rows, self.spec.n_features], input).map_err(run_err)?;
        self.run_tensor(tensor, rows)
    }

    /// Like [`Self::run`], taking the buffer instead of copying it.
    pub fn run_owned(
        &mut self,
        input: Vec<f32>,
        rows: usize,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let tensor = tract_ndarray::Array2::from_shape_vec((rows, self.spec.n_features), input)
            .map_err(|e| EngineError::Run(format!("input of {rows} rows: {e}")))?
            .into_tensor();
        self.run_tensor(tensor, rows)
    }

    fn run_tensor(&mut self, tensor: Tensor, rows: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let state = match rows.checked_sub(1).and_then(|i| self.concrete.get_mut(i)) {
            Some(state) => state,
            None => &mut self.symbolic,
        };
        let results = state.run(tvec!(tensor.into())).map_err(run_err)?;
        results
            .iter()
            .map(|t| {
                Ok(t.to_plain_array_view::<f32>()
                    .map_err(run_err)?
                    .iter()
                    .copied()
                    .collect())
            })
            .collect()
    }
}

fn run_err(e: TractError) -> EngineError {
    EngineError::Run(format!("{e:#}"))
}
