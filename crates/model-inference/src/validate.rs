//! Checks an Open Inference Protocol request (the wire types are the `oip`
//! crate's) against the loaded model. Only FP32 tensors are served: both
//! mlmesh models take `[batch, features]` FP32.

use axum::http::StatusCode;
use mesh_kit::ApiError;
use oip::{FEATURE_FINGERPRINT, FEATURE_NAMES, FP32, InferRequest};
use serde_json::Value;

use crate::engine::ModelSpec;

/// A request checked against the model and ready to queue.
#[derive(Debug)]
pub struct Validated {
    pub id: Option<String>,
    pub rows: usize,
    pub input: Vec<f32>,
    /// Indices into the model outputs to return, in response order, each
    /// with whether it is answered in binary.
    pub outputs: Vec<(usize, bool)>,
}

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
    // Every frontend call carries this: one comparison with the joined
    // names (names hold no commas: the metadata is split on them), and a
    // split into a list only to say where a mismatch is.
    if names == spec.feature_order {
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

/// A caller that sends `parameters.feature_fingerprint` (the metadata's)
/// states the column order by its digest: the same check as
/// [`check_feature_order`] for 16 bytes instead of the names.
fn check_feature_fingerprint(stated: &Value, spec: &ModelSpec) -> Result<(), ApiError> {
    let Some(stated) = stated.as_str() else {
        return Err(ApiError::bad_request(format!(
            "parameters.{FEATURE_FINGERPRINT} must be a string, as in the model metadata"
        )));
    };
    if spec.feature_names.is_empty() || stated == spec.feature_fingerprint {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "the request's feature fingerprint ({stated:.32}) is not this model's ({}): \
             its feature order differs; re-read the model metadata",
            spec.feature_fingerprint
        ),
    ))
}

/// Checks a parsed request against the model; every failure is a 4xx that
/// says what to change. `binary` is the body after the JSON part when the
/// request came with an `Inference-Header-Content-Length` (`None` if not).
pub fn validate(
    mut req: InferRequest<'_>,
    binary: Option<&[u8]>,
    spec: &ModelSpec,
    max_rows: usize,
) -> Result<Validated, ApiError> {
    let bad = |e: oip::FramingError| ApiError::bad_request(e.to_string());
    req.take_binary(binary).map_err(bad)?;
    let binary_default = req.binary_data_output().map_err(bad)?;
    let InferRequest {
        id,
        inputs,
        outputs,
        parameters,
    } = req;
    if let Some(parameters) = &parameters {
        if let Some(names) = parameters.get(FEATURE_NAMES) {
            check_feature_order(names, spec)?;
        }
        if let Some(stated) = parameters.get(FEATURE_FINGERPRINT) {
            check_feature_fingerprint(stated, spec)?;
        }
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
    // take_binary has given every input its data, or refused the request.
    let data = tensor.data.map(|d| d.0).unwrap_or_default();
    let expected = rows * spec.n_features;
    if data.len() != expected {
        return Err(ApiError::bad_request(format!(
            "input '{}' has shape {:?} ({expected} values) but {} data values",
            tensor.name,
            tensor.shape,
            data.len()
        )));
    }

    let outputs = match outputs {
        None => (0..spec.outputs.len())
            .map(|ix| (ix, binary_default))
            .collect(),
        Some(requested) => {
            let mut picked: Vec<(usize, bool)> = Vec::with_capacity(requested.len());
            for o in requested {
                let ix = spec.output_index(&o.name).ok_or_else(|| {
                    let known: Vec<&str> = spec.outputs.iter().map(|(n, _)| n.as_str()).collect();
                    ApiError::bad_request(format!(
                        "unknown output '{}'; the model has {known:?}",
                        o.name
                    ))
                })?;
                if picked.iter().any(|(p, _)| *p == ix) {
                    return Err(ApiError::bad_request(format!(
                        "output '{}' is requested more than once",
                        o.name
                    )));
                }
                let binary = o.binary_data().map_err(bad)?.unwrap_or(binary_default);
                picked.push((ix, binary));
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
        id: id.map(|c| c.into_owned()),
        rows,
        input: data,
        outputs,
    })
}
