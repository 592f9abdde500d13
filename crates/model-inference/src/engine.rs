//! The tract engine: loads one ONNX model with a symbolic batch dimension,
//! optimizes it once, and runs it through per-worker sessions.

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
}

impl ModelSpec {
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|(n, _)| n == name)
    }
}

pub struct Engine {
    plan: Arc<TypedRunnableModel>,
    spec: ModelSpec,
}

impl Engine {
    pub fn load(path: &Path) -> Result<Self, EngineError> {
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
        let model = tract_onnx::onnx().model_for_path(path).map_err(load_err)?;
        let feature_names = model
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
        let model = model.into_optimized().map_err(load_err)?;

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
        let plan = model.into_runnable().map_err(load_err)?;
        Ok(Self {
            plan,
            spec: ModelSpec {
                input_name,
                n_features,
                outputs,
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
        let state =
            TypedSimpleState::new(&self.plan).map_err(|e| EngineError::Run(format!("{e:#}")))?;
        Ok(Session {
            state,
            spec: self.spec.clone(),
        })
    }
}

pub struct Session {
    state: TypedSimpleState,
    spec: ModelSpec,
}

impl Session {
    /// Runs `rows` rows laid out row-major in `input`; returns each output
    /// flattened row-major, in model output order.
    pub fn run(&mut self, input: &[f32], rows: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let run_err = |e: TractError| EngineError::Run(format!("{e:#}"));
        let tensor = Tensor::from_shape(&[rows, self.spec.n_features], input).map_err(run_err)?;
        let results = self.state.run(tvec!(tensor.into())).map_err(run_err)?;
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
