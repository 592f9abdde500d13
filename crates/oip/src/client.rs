//! The client side of an infer call: one FP32 input as a REST body (JSON or
//! binary tensors) or a gRPC message (raw contents), built one way for the
//! frontend and the load tool.

use std::borrow::Cow;

use serde_json::Value;

use crate::grpc::infer_parameter::ParameterChoice;
use crate::grpc::{self, InferParameter};
use crate::{
    BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, FP32, FlatF32, InferRequest, InputTensor, Parameters,
    RequestedOutput, encode_binary,
};

/// An infer request with one FP32 input.
pub struct Fp32Request<'a> {
    pub id: &'a str,
    pub input: &'a str,
    pub shape: Vec<i64>,
    /// Row-major, `shape`'s product of them.
    pub values: Vec<f32>,
    /// Request parameters (e.g. `feature_names`); none are sent when empty.
    pub parameters: Parameters,
    /// The outputs to answer with; every output when empty.
    pub outputs: &'a [&'a str],
}

impl Fp32Request<'_> {
    /// The REST body and, with `binary` (the binary tensor data extension:
    /// the values raw after the JSON, outputs asked for in binary), the
    /// length of its JSON part for `Inference-Header-Content-Length`.
    pub fn rest(self, binary: bool) -> (Vec<u8>, Option<usize>) {
        let mut parameters = self.parameters;
        let mut input = InputTensor {
            name: Cow::Borrowed(self.input),
            shape: self.shape,
            datatype: Cow::Borrowed(FP32),
            parameters: None,
            data: Some(FlatF32(self.values)),
        };
        let mut raw = Vec::new();
        if binary {
            raw = input.data.take().map(|d| d.0).unwrap_or_default();
            let mut p = Parameters::new();
            p.insert(BINARY_DATA_SIZE.into(), (raw.len() * 4).into());
            input.parameters = Some(p);
            parameters.insert(BINARY_DATA_OUTPUT.into(), true.into());
        }
        let request = InferRequest {
            id: Some(Cow::Borrowed(self.id)),
            parameters: (!parameters.is_empty()).then_some(parameters),
            inputs: vec![input],
            outputs: (!self.outputs.is_empty()).then(|| {
                self.outputs
                    .iter()
                    .map(|name| RequestedOutput {
                        name: Cow::Borrowed(name),
                        parameters: None,
                    })
                    .collect()
            }),
        };
        let (body, json_len) =
            encode_binary(&request, [raw.as_slice()]).expect("an infer request serializes");
        (body, binary.then_some(json_len))
    }

    /// The gRPC message for `model`, the values as raw contents (what
    /// Triton's clients send).
    pub fn grpc(self, model: &str) -> grpc::ModelInferRequest {
        grpc::ModelInferRequest {
            model_name: model.to_owned(),
            id: self.id.to_owned(),
            parameters: self
                .parameters
                .into_iter()
                .filter_map(|(k, v)| Some((k, parameter(v)?)))
                .collect(),
            inputs: vec![grpc::model_infer_request::InferInputTensor {
                name: self.input.to_owned(),
                datatype: FP32.to_owned(),
                shape: self.shape,
                ..Default::default()
            }],
            outputs: self
                .outputs
                .iter()
                .map(
                    |name| grpc::model_infer_request::InferRequestedOutputTensor {
                        name: (*name).to_owned(),
                        ..Default::default()
                    },
                )
                .collect(),
            raw_input_contents: vec![self.values.iter().flat_map(|v| v.to_le_bytes()).collect()],
            ..Default::default()
        }
    }
}

/// A REST parameter as gRPC's; `None` for what gRPC parameters cannot hold
/// (null, arrays, objects).
fn parameter(v: Value) -> Option<InferParameter> {
    let choice = match v {
        Value::Bool(b) => ParameterChoice::BoolParam(b),
        Value::String(s) => ParameterChoice::StringParam(s),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ParameterChoice::Int64Param(i),
            (None, Some(u), _) => ParameterChoice::Uint64Param(u),
            (None, None, Some(f)) => ParameterChoice::DoubleParam(f),
            _ => return None,
        },
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    };
    Some(InferParameter {
        parameter_choice: Some(choice),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FEATURE_NAMES, infer_request_from_grpc, split_body};

    fn request() -> Fp32Request<'static> {
        let mut parameters = Parameters::new();
        parameters.insert(FEATURE_NAMES.into(), "a,b".into());
        Fp32Request {
            id: "r1",
            input: "features",
            shape: vec![1, 2],
            values: vec![1.5, -2.0],
            parameters,
            outputs: &["probability"],
        }
    }

    #[test]
    fn json_binary_and_grpc_carry_the_same_request() {
        let (body, len) = request().rest(false);
        assert!(len.is_none());
        let json: InferRequest = serde_json::from_slice(&body).unwrap();

        let (body, len) = request().rest(true);
        let len = len.unwrap().to_string();
        let (head, raw) = split_body(&body, Some(len.as_bytes())).unwrap();
        let mut binary: InferRequest = serde_json::from_slice(head).unwrap();
        binary.take_binary(raw).unwrap();
        assert!(binary.binary_data_output().unwrap());

        let (grpc, was_raw) = infer_request_from_grpc(request().grpc("m")).unwrap();
        assert!(was_raw);
        for other in [&binary, &grpc] {
            assert_eq!(other.id, json.id);
            assert_eq!(other.inputs[0].name, json.inputs[0].name);
            assert_eq!(other.inputs[0].shape, json.inputs[0].shape);
            assert_eq!(other.inputs[0].data.as_ref().unwrap().0, vec![1.5, -2.0]);
            assert_eq!(other.parameters.as_ref().unwrap()[FEATURE_NAMES], "a,b");
            assert_eq!(other.outputs.as_ref().unwrap()[0].name, "probability");
        }
    }

    #[test]
    fn nothing_optional_is_sent_when_empty() {
        let bare = Fp32Request {
            parameters: Parameters::new(),
            outputs: &[],
            ..request()
        };
        let (body, _) = bare.rest(false);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v.get("parameters").is_none() && v.get("outputs").is_none(),
            "{v}"
        );
    }
}
