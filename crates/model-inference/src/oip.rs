//! Open Inference Protocol (KServe V2) REST types and request validation.
//! Only FP32 tensors are served: both mlmesh models take `[batch, features]` FP32.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use axum::http::StatusCode;
use mesh_kit::ApiError;

use crate::engine::ModelSpec;

pub const FP32: &str = "FP32";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub data: FlatF32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// Tensor `data`, flat or nested to any depth, flattened row-major while
/// parsing. Every element must be a number that is finite *as FP32*: serde
/// reads `1e39` as a finite f64 that becomes +inf in f32.
#[derive(Debug, Default)]
pub struct FlatF32(pub Vec<f32>);

impl<'de> Deserialize<'de> for FlatF32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        d.deserialize_seq(Nested {
            out: &mut out,
            depth: 0,
        })?;
        Ok(Self(out))
    }
}

/// Deep enough for any tensor rank a client would send; guards the stack.
const MAX_NESTING: usize = 16;

struct Nested<'a> {
    out: &'a mut Vec<f32>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Nested<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Nested<'_> {
    fn push<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        let f = v as f32;
        if f.is_finite() {
            self.out.push(f);
            Ok(())
        } else {
            Err(E::custom(format_args!(
                "tensor data must be finite FP32 numbers, got {v:e}"
            )))
        }
    }
}

impl<'de> Visitor<'de> for Nested<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers (flat or nested)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_NESTING {
            return Err(de::Error::custom("tensor data is nested too deeply"));
        }
        while seq
            .next_element_seed(Nested {
                out: &mut *self.out,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        if self.depth == 0 {
            return Err(E::custom("tensor data must be an array"));
        }
        self.push(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
}

/// A request checked against the model and ready to queue.
#[derive(Debug)]
pub struct Validated {
    pub id: Option<String>,
    pub rows: usize,
    pub input: Vec<f32>,
    /// Indices into the model outputs to return, in response order.
    pub outputs: Vec<usize>,
}

/// The request (and metadata) parameter naming the input's columns in order.
pub const FEATURE_NAMES: &str = "feature_names";

/// A caller that sends `parameters.feature_names` (comma-separated, as the
/// metadata gives them) states which column order it built its rows in. A
/// model rolled out with another order would otherwise score every row with
/// features in the wrong columns and still answer 200; this answers 409 so
/// the caller re-reads the metadata instead.
fn check_feature_order(names: &Value, spec: &ModelSpec) -> Result<(), ApiError> {
    let Some(names) = names.as_str() else {
        return Err(ApiError::bad_request(format!(
            "parameters.{FEATURE_NAMES} must be a comma-separated string, as in the model metadata"
        )));
    };
    if spec.feature_names.is_empty() {
        return Ok(()); // nothing declared to compare against
    }
    // Every frontend call carries this: compare without allocating, and
    // split into a list only to say where a mismatch is.
    if names
        .split(',')
        .eq(spec.feature_names.iter().map(String::as_str))
    {
        return Ok(());
    }
    let theirs: Vec<&str> = names.split(',').collect();
    let at = theirs
        .iter()
        .zip(&spec.feature_names)
        .position(|(a, b)| a != b)
        .unwrap_or(theirs.len().min(spec.feature_names.len()));
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "the request's feature order differs from this model's at column {at} ({} vs {}); \
             re-read the model metadata",
            theirs.get(at).map_or("end of list", |n| *n),
            spec.feature_names
                .get(at)
                .map_or("end of list", String::as_str),
        ),
    ))
}

/// Checks a parsed request against the model; every failure is a 4xx that
/// says what to change.
pub fn validate(
    req: InferRequest,
    spec: &ModelSpec,
    max_rows: usize,
) -> Result<Validated, ApiError> {
    let InferRequest {
        id,
        inputs,
        outputs,
        parameters,
    } = req;
    if let Some(names) = parameters.as_ref().and_then(|p| p.get(FEATURE_NAMES)) {
        check_feature_order(names, spec)?;
    }
    let mut input = None;
    for tensor in inputs {
        if tensor.name != spec.input_name {
            return Err(ApiError::bad_request(format!(
                "unexpected input '{}': the model has one input, '{}'",
                tensor.name, spec.input_name
            )));
        }
        if input.is_some() {
            return Err(ApiError::bad_request(format!(
                "input '{}' is given more than once",
                tensor.name
            )));
        }
        input = Some(tensor);
    }
    let tensor = input
        .ok_or_else(|| ApiError::bad_request(format!("missing input '{}'", spec.input_name)))?;
    if tensor.datatype != FP32 {
        return Err(ApiError::bad_request(format!(
            "input '{}' has datatype {}, the model takes {FP32}",
            tensor.name, tensor.datatype
        )));
    }
    let (rows, width) = match tensor.shape[..] {
        [rows, width] => (rows, width),
        _ => {
            return Err(ApiError::bad_request(format!(
                "input '{}' must have shape [batch, {}], got {:?}",
                tensor.name, spec.n_features, tensor.shape
            )));
        }
    };
    if width != spec.n_features as i64 {
        return Err(ApiError::bad_request(format!(
            "input '{}' must have {} features per row, got shape {:?}",
            tensor.name, spec.n_features, tensor.shape
        )));
    }
    if rows < 1 {
        return Err(ApiError::bad_request(format!(
            "input '{}' has an empty batch (shape {:?})",
            tensor.name, tensor.shape
        )));
    }
    let rows = usize::try_from(rows).unwrap_or(usize::MAX);
    if rows > max_rows {
        return Err(ApiError::payload_too_large(format!(
            "batch of {rows} rows exceeds the maximum of {max_rows}; split the request"
        )));
    }
    let expected = rows * spec.n_features;
    if tensor.data.0.len() != expected {
        return Err(ApiError::bad_request(format!(
            "input '{}' has shape {:?} ({expected} values) but {} data values",
            tensor.name,
            tensor.shape,
            tensor.data.0.len()
        )));
    }

    let outputs = match outputs {
        None => (0..spec.outputs.len()).collect(),
        Some(requested) => {
            let mut picked = Vec::with_capacity(requested.len());
            for o in requested {
                let ix = spec.output_index(&o.name).ok_or_else(|| {
                    let known: Vec<&str> = spec.outputs.iter().map(|(n, _)| n.as_str()).collect();
                    ApiError::bad_request(format!(
                        "unknown output '{}'; the model has {known:?}",
                        o.name
                    ))
                })?;
                if picked.contains(&ix) {
                    return Err(ApiError::bad_request(format!(
                        "output '{}' is requested more than once",
                        o.name
                    )));
                }
                picked.push(ix);
            }
            if picked.is_empty() {
                return Err(ApiError::bad_request(
                    "\"outputs\" is empty; omit it to get every output",
                ));
            }
            picked
        }
    };
    Ok(Validated {
        id,
        rows,
        input: tensor.data.0,
        outputs,
    })
}

#[derive(Debug, Serialize)]
pub struct InferResponse<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor<'a>>,
}

#[derive(Debug, Serialize)]
pub struct OutputTensor<'a> {
    pub name: &'a str,
    pub datatype: &'static str,
    pub shape: [usize; 2],
    pub data: Vec<f32>,
}

#[derive(Debug, Serialize)]
pub struct TensorMetadata<'a> {
    pub name: &'a str,
    pub datatype: &'static str,
    pub shape: [i64; 2],
}

#[derive(Debug, Serialize)]
pub struct ModelMetadata<'a> {
    pub name: &'a str,
    pub versions: [&'a str; 1],
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata<'a>>,
    pub outputs: Vec<TensorMetadata<'a>>,
    /// `feature_names`: the input's columns in order, comma-separated (OIP
    /// parameters are scalars), so clients never keep their own copy.
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: [&'static str; 0],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(data: &str) -> Result<Vec<f32>, String> {
        serde_json::from_str::<FlatF32>(data)
            .map(|f| f.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flattens_nested_data() {
        assert_eq!(parse("[1, 2.5, -3]").unwrap(), vec![1.0, 2.5, -3.0]);
        assert_eq!(parse("[[1, 2], [3, 4]]").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(parse("[[[1]], [[2]]]").unwrap(), vec![1.0, 2.0]);
        assert_eq!(parse("[]").unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn rejects_what_is_not_a_finite_fp32_number() {
        for bad in [
            "[1e39]", "[-1e39]", "[\"1\"]", "[true]", "[null]", "[{}]", "1", "\"abc\"", "[1e400]",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
        let msg = parse("[1, 1e39]").unwrap_err();
        assert!(msg.contains("finite FP32"), "{msg}");
    }

    #[test]
    fn rejects_absurd_nesting() {
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        assert!(parse(&deep).is_err());
    }
}
