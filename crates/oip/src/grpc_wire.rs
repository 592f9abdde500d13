//! Between the gRPC messages and the REST types: a gRPC infer request
//! becomes the same [`InferRequest`] a REST body parses into, so one
//! validation serves both protocols; answers, metadata, configuration and
//! statistics go the other way. Raw contents (`raw_input_contents`, what
//! Triton's clients send) are checked here as the binary extension's bytes
//! are: whole FP32 values, finite, one entry per input.

use serde_json::Value;

use crate::grpc::infer_parameter::ParameterChoice;
use crate::grpc::{self, InferParameter, InferTensorContents};
use crate::{
    FP32, FlatF32, FramingError, InferRequest, InferResponse, InputTensor, ModelConfig,
    ModelMetadata, ModelStatistics, Parameters, RequestedOutput, ServerMetadata,
};

/// A gRPC infer request as the REST types, and whether it sent raw contents
/// (then the answer goes back as raw contents too, as Triton does).
pub fn infer_request_from_grpc(
    req: grpc::ModelInferRequest,
) -> Result<(InferRequest<'static>, bool), FramingError> {
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(FramingError::RawCount {
            inputs: req.inputs.len(),
            raw: req.raw_input_contents.len(),
        });
    }
    let mut raw_contents = req.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for t in req.inputs {
        let data = match raw_contents.next() {
            Some(bytes) => from_raw(&t, &bytes)?,
            None => from_contents(&t)?,
        };
        inputs.push(InputTensor {
            name: t.name.into(),
            shape: t.shape,
            datatype: t.datatype.into(),
            parameters: parameters(t.parameters),
            data: Some(data),
        });
    }
    let outputs = (!req.outputs.is_empty()).then(|| {
        req.outputs
            .into_iter()
            .map(|o| RequestedOutput {
                name: o.name.into(),
                parameters: parameters(o.parameters),
            })
            .collect()
    });
    let request = InferRequest {
        id: (!req.id.is_empty()).then(|| req.id.into()),
        parameters: parameters(req.parameters),
        inputs,
        outputs,
    };
    Ok((request, raw))
}

fn from_raw(
    t: &grpc::model_infer_request::InferInputTensor,
    bytes: &[u8],
) -> Result<FlatF32, FramingError> {
    let name = || t.name.clone();
    if t.contents.as_ref().is_some_and(has_any) {
        return Err(FramingError::Both { name: name() });
    }
    if t.datatype != FP32 {
        return Err(FramingError::Datatype {
            name: name(),
            datatype: t.datatype.clone(),
        });
    }
    raw_values(&t.name, bytes)
}

/// Raw contents as FP32 values: whole values only, every one finite.
fn raw_values(name: &str, bytes: &[u8]) -> Result<FlatF32, FramingError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(FramingError::Partial {
            name: name.to_owned(),
            size: bytes.len() as u64,
        });
    }
    FlatF32::from_le_bytes(bytes).map_err(|e| FramingError::NonFinite {
        name: name.to_owned(),
        index: e.index,
        value: e.value,
    })
}

/// Typed contents: FP32 tensors use `fp32_contents`; any other field is a
/// mistake worth naming. Other datatypes pass empty, for validation to say
/// which datatype the model takes.
fn from_contents(t: &grpc::model_infer_request::InferInputTensor) -> Result<FlatF32, FramingError> {
    let Some(c) = &t.contents else {
        return Ok(FlatF32::default());
    };
    if t.datatype != FP32 {
        return Ok(FlatF32::default());
    }
    if let Some(field) = other_field(c) {
        return Err(FramingError::ContentsField {
            name: t.name.clone(),
            field,
        });
    }
    if let Some(index) = c.fp32_contents.iter().position(|v| !v.is_finite()) {
        return Err(FramingError::NonFinite {
            name: t.name.clone(),
            index,
            value: c.fp32_contents[index],
        });
    }
    Ok(FlatF32(c.fp32_contents.clone()))
}

fn other_field(c: &InferTensorContents) -> Option<&'static str> {
    [
        (!c.bool_contents.is_empty(), "bool_contents"),
        (!c.int_contents.is_empty(), "int_contents"),
        (!c.int64_contents.is_empty(), "int64_contents"),
        (!c.uint_contents.is_empty(), "uint_contents"),
        (!c.uint64_contents.is_empty(), "uint64_contents"),
        (!c.fp64_contents.is_empty(), "fp64_contents"),
        (!c.bytes_contents.is_empty(), "bytes_contents"),
    ]
    .into_iter()
    .find_map(|(set, name)| set.then_some(name))
}

fn has_any(c: &InferTensorContents) -> bool {
    !c.fp32_contents.is_empty() || other_field(c).is_some()
}

fn parameters(map: std::collections::HashMap<String, InferParameter>) -> Option<Parameters> {
    (!map.is_empty()).then(|| {
        map.into_iter()
            .map(|(k, v)| {
                let value = match v.parameter_choice {
                    Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
                    Some(ParameterChoice::Int64Param(i)) => Value::from(i),
                    Some(ParameterChoice::StringParam(s)) => Value::String(s),
                    Some(ParameterChoice::DoubleParam(d)) => Value::from(d),
                    Some(ParameterChoice::Uint64Param(u)) => Value::from(u),
                    None => Value::Null,
                };
                (k, value)
            })
            .collect()
    })
}

/// The gRPC answer for `res` (every output's data filled in): raw contents
/// when the request sent raw contents, typed `fp32_contents` otherwise.
pub fn infer_response_to_grpc(res: InferResponse<'_>, raw: bool) -> grpc::ModelInferResponse {
    let mut raw_output_contents = Vec::new();
    let outputs = res
        .outputs
        .into_iter()
        .map(|o| {
            let data = o.data.map(|d| d.0).unwrap_or_default();
            let contents = if raw {
                raw_output_contents.push(data.iter().flat_map(|v| v.to_le_bytes()).collect());
                None
            } else {
                Some(InferTensorContents {
                    fp32_contents: data,
                    ..Default::default()
                })
            };
            grpc::model_infer_response::InferOutputTensor {
                name: o.name.into_owned(),
                datatype: o.datatype.into_owned(),
                shape: o.shape,
                parameters: Default::default(),
                contents,
            }
        })
        .collect();
    grpc::ModelInferResponse {
        model_name: res.model_name.into_owned(),
        model_version: res
            .model_version
            .map(|v| v.into_owned())
            .unwrap_or_default(),
        id: res.id.map(|v| v.into_owned()).unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents,
    }
}

/// The client side of [`infer_response_to_grpc`]: the named output's
/// values, from raw contents or `fp32_contents`, checked as the server
/// checks what it reads (whole FP32 values, finite).
pub fn output_of_grpc(
    res: &grpc::ModelInferResponse,
    name: &str,
) -> Result<Option<FlatF32>, FramingError> {
    let Some(i) = res.outputs.iter().position(|o| o.name == name) else {
        return Ok(None);
    };
    let tensor = &res.outputs[i];
    if tensor.datatype != FP32 {
        return Err(FramingError::Datatype {
            name: tensor.name.clone(),
            datatype: tensor.datatype.clone(),
        });
    }
    if !res.raw_output_contents.is_empty() {
        let bytes = res
            .raw_output_contents
            .get(i)
            .ok_or(FramingError::RawCount {
                inputs: res.outputs.len(),
                raw: res.raw_output_contents.len(),
            })?;
        return raw_values(&tensor.name, bytes).map(Some);
    }
    Ok(tensor
        .contents
        .as_ref()
        .map(|c| FlatF32(c.fp32_contents.clone())))
}

/// One table for both directions: the gRPC code model-inference answers
/// where its REST port answers an HTTP status, and back (a client reading a
/// gRPC error as the status REST would have given). The first row of a code
/// is its way back.
const STATUS_CODES: [(u16, tonic::Code); 7] = [
    (400, tonic::Code::InvalidArgument),
    (413, tonic::Code::InvalidArgument),
    (404, tonic::Code::NotFound),
    (409, tonic::Code::FailedPrecondition),
    (429, tonic::Code::ResourceExhausted),
    (503, tonic::Code::Unavailable),
    (504, tonic::Code::DeadlineExceeded),
];

/// The gRPC code for an HTTP error status (`INTERNAL` for any other).
pub fn grpc_code_of(http: u16) -> tonic::Code {
    STATUS_CODES
        .iter()
        .find(|(s, _)| *s == http)
        .map_or(tonic::Code::Internal, |(_, c)| *c)
}

/// The HTTP status REST would have answered for a gRPC code (500 for any
/// code the table lacks).
pub fn http_status_of(code: tonic::Code) -> u16 {
    STATUS_CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or(500, |(s, _)| *s)
}

// === impl From<REST shapes> for gRPC messages ===

impl From<ServerMetadata<'_>> for grpc::ServerMetadataResponse {
    fn from(m: ServerMetadata<'_>) -> Self {
        Self {
            name: m.name.into_owned(),
            version: m.version.into_owned(),
            extensions: m.extensions.into_iter().map(|e| e.into_owned()).collect(),
        }
    }
}

impl From<ModelMetadata<'_>> for grpc::ModelMetadataResponse {
    fn from(m: ModelMetadata<'_>) -> Self {
        let tensors = |ts: Vec<crate::TensorMetadata<'_>>| {
            ts.into_iter()
                .map(|t| grpc::model_metadata_response::TensorMetadata {
                    name: t.name.into_owned(),
                    datatype: t.datatype.into_owned(),
                    shape: t.shape,
                })
                .collect()
        };
        Self {
            name: m.name.into_owned(),
            versions: m.versions.into_iter().map(|v| v.into_owned()).collect(),
            platform: m.platform.into_owned(),
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }
    }
}

impl From<ModelConfig> for grpc::ModelConfig {
    fn from(c: ModelConfig) -> Self {
        // mlmesh serves FP32 only; anything else would be TYPE_INVALID.
        let data_type = |t: &str| {
            grpc::DataType::from_str_name(t).unwrap_or(grpc::DataType::TypeInvalid) as i32
        };
        Self {
            name: c.name,
            platform: c.platform,
            backend: c.backend,
            max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
            input: c
                .input
                .into_iter()
                .map(|t| grpc::ModelInput {
                    data_type: data_type(&t.data_type),
                    name: t.name,
                    dims: t.dims,
                })
                .collect(),
            output: c
                .output
                .into_iter()
                .map(|t| grpc::ModelOutput {
                    data_type: data_type(&t.data_type),
                    name: t.name,
                    dims: t.dims,
                })
                .collect(),
            parameters: c
                .parameters
                .into_iter()
                .map(|(k, v)| {
                    let v = grpc::ModelParameter {
                        string_value: v.string_value,
                    };
                    (k, v)
                })
                .collect(),
        }
    }
}

fn duration(d: crate::Duration) -> Option<grpc::StatisticDuration> {
    Some(grpc::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

impl From<ModelStatistics> for grpc::ModelStatistics {
    fn from(s: ModelStatistics) -> Self {
        let i = s.inference_stats;
        Self {
            name: s.name,
            version: s.version,
            last_inference: s.last_inference,
            inference_count: s.inference_count,
            execution_count: s.execution_count,
            inference_stats: Some(grpc::InferStatistics {
                success: duration(i.success),
                fail: duration(i.fail),
                queue: duration(i.queue),
                compute_input: duration(i.compute_input),
                compute_infer: duration(i.compute_infer),
                compute_output: duration(i.compute_output),
                cache_hit: duration(i.cache_hit),
                cache_miss: duration(i.cache_miss),
            }),
            batch_stats: s
                .batch_stats
                .into_iter()
                .map(|b| grpc::InferBatchStatistics {
                    batch_size: b.batch_size,
                    compute_input: duration(b.compute_input),
                    compute_infer: duration(b.compute_infer),
                    compute_output: duration(b.compute_output),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_and_code_map_both_ways() {
        for (http, code) in super::STATUS_CODES {
            assert_eq!(super::grpc_code_of(http), code);
            // 413 shares INVALID_ARGUMENT with 400, which is its way back.
            let back = super::http_status_of(code);
            assert!(
                back == http || (http == 413 && back == 400),
                "{http} -> {code:?} -> {back}"
            );
        }
        assert_eq!(super::grpc_code_of(500), tonic::Code::Internal);
        assert_eq!(super::http_status_of(tonic::Code::Unknown), 500);
    }

    use super::*;
    use crate::grpc::model_infer_request::InferInputTensor;

    fn tensor(datatype: &str, contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape: vec![1, 2],
            parameters: Default::default(),
            contents,
        }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> grpc::ModelInferRequest {
        grpc::ModelInferRequest {
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    fn fp32(values: Vec<f32>) -> Option<InferTensorContents> {
        Some(InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        })
    }

    #[test]
    fn raw_and_typed_contents_become_the_same_request() {
        let raw = vec![
            [1.5f32, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ];
        let (a, was_raw) =
            infer_request_from_grpc(request(vec![tensor("FP32", None)], raw)).unwrap();
        assert!(was_raw);
        let (b, was_raw) =
            infer_request_from_grpc(request(vec![tensor("FP32", fp32(vec![1.5, -2.0]))], vec![]))
                .unwrap();
        assert!(!was_raw);
        assert_eq!(a.inputs[0].data, b.inputs[0].data);
        assert_eq!(a.inputs[0].data.as_ref().unwrap().0, [1.5, -2.0]);
    }

    #[test]
    fn mismatched_or_mistyped_contents_are_named() {
        let err = |r| infer_request_from_grpc(r).unwrap_err().to_string();
        let two = vec![vec![0u8; 8], vec![0u8; 8]];
        assert!(
            err(request(vec![tensor("FP32", None)], two))
                .contains("2 raw_input_contents for 1 inputs")
        );
        let both = request(vec![tensor("FP32", fp32(vec![1.0, 2.0]))], vec![vec![0; 8]]);
        assert!(err(both).contains("both"));
        let ints = Some(InferTensorContents {
            int64_contents: vec![1, 2],
            ..Default::default()
        });
        assert!(err(request(vec![tensor("FP32", ints)], vec![])).contains("int64_contents"));
        assert!(
            err(request(
                vec![tensor("FP32", fp32(vec![f32::NAN, 1.0]))],
                vec![]
            ))
            .contains("finite")
        );
        assert!(err(request(vec![tensor("INT64", None)], vec![vec![0; 8]])).contains("INT64"));
        assert!(
            err(request(vec![tensor("FP32", None)], vec![vec![0; 7]])).contains("whole number")
        );
    }

    #[test]
    fn answers_go_back_raw_or_typed() {
        let res = || InferResponse {
            model_name: "m".into(),
            model_version: Some("v1".into()),
            id: Some("r".into()),
            parameters: None,
            outputs: vec![crate::OutputTensor {
                name: "p".into(),
                datatype: FP32.into(),
                shape: vec![2, 1],
                parameters: None,
                data: Some(FlatF32(vec![0.25, 0.5])),
            }],
        };
        let raw = infer_response_to_grpc(res(), true);
        assert_eq!(
            raw.raw_output_contents,
            vec![
                [0.25f32, 0.5]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>()
            ]
        );
        assert!(raw.outputs[0].contents.is_none());
        let typed = infer_response_to_grpc(res(), false);
        assert!(typed.raw_output_contents.is_empty());
        assert_eq!(
            typed.outputs[0].contents.as_ref().unwrap().fp32_contents,
            [0.25, 0.5]
        );
        assert_eq!(
            (typed.id.as_str(), typed.model_version.as_str()),
            ("r", "v1")
        );
    }
}
