//! The REST (JSON) messages of the protocol, for both directions: the server
//! deserializes requests and serializes answers; clients do the opposite
//! with the same types. Strings borrow from the body where they can.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::binary::{self, FramingError};
use crate::{BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, FlatF32};

/// OIP `parameters`: free-form scalars by name.
pub type Parameters = Map<String, Value>;

/// `POST /v2/models/{name}[/versions/{v}]/infer`, the JSON part.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    #[serde(borrow)]
    pub inputs: Vec<InputTensor<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput<'a>>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTensor<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    pub shape: Vec<i64>,
    #[serde(borrow)]
    pub datatype: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Absent when the tensor travels in binary (`parameters.binary_data_size`)
    /// until [`InferRequest::take_binary`] fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<FlatF32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

/// The answer to an infer request, the JSON part.
#[derive(Debug, Serialize, Deserialize)]
pub struct InferResponse<'a> {
    #[serde(borrow)]
    pub model_name: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    #[serde(borrow)]
    pub outputs: Vec<OutputTensor<'a>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OutputTensor<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub datatype: Cow<'a, str>,
    pub shape: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Absent when the output travels in binary, as for inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<FlatF32>,
}

/// `GET /v2/models/{name}[/versions/{v}]`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelMetadata<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// KServe's server sends `null` for a model without versions: read as none.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub versions: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    pub platform: Cow<'a, str>,
    #[serde(borrow)]
    pub inputs: Vec<TensorMetadata<'a>>,
    #[serde(borrow)]
    pub outputs: Vec<TensorMetadata<'a>>,
    /// mlmesh's models carry `feature_names` here (see [`crate::FEATURE_NAMES`]),
    /// so clients never keep their own copy of the column order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

/// An optional array that some servers send as `null` (the spec says omit it).
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TensorMetadata<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub datatype: Cow<'a, str>,
    pub shape: Vec<i64>,
}

/// `GET /v2`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerMetadata<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    #[serde(default, borrow)]
    pub extensions: Vec<Cow<'a, str>>,
}

// === impl InferRequest ===

impl<'a> InferRequest<'a> {
    /// Fills in every binary input from `binary`, the bytes after the JSON
    /// part, in input order. `None` when the request had no
    /// `Inference-Header-Content-Length`: then no input may claim binary data.
    /// Every size is checked against what is left; bytes nobody claims are
    /// an error too (a client and server that disagree on the layout must
    /// not score shifted data).
    pub fn take_binary(&mut self, binary: Option<&[u8]>) -> Result<(), FramingError> {
        let tensors = self.inputs.iter_mut().map(|t| binary::Slot {
            name: &t.name,
            datatype: &t.datatype,
            params: t.parameters.as_ref(),
            data: &mut t.data,
        });
        binary::fill_all(tensors, binary)
    }

    /// The named request parameter as a bool, if given (`binary_data_output`).
    pub fn binary_data_output(&self) -> Result<bool, FramingError> {
        flag(self.parameters.as_ref(), BINARY_DATA_OUTPUT, "the request")
            .map(|b| b.unwrap_or(false))
    }
}

impl RequestedOutput<'_> {
    /// Whether this output is asked for in binary, `None` if it does not say.
    pub fn binary_data(&self) -> Result<Option<bool>, FramingError> {
        flag(self.parameters.as_ref(), BINARY_DATA, &self.name)
    }
}

fn flag(
    params: Option<&Parameters>,
    key: &'static str,
    of: &str,
) -> Result<Option<bool>, FramingError> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(FramingError::NotABool {
            of: of.to_owned(),
            key,
            got: other.to_string(),
        }),
    }
}

// === impl InferResponse ===

impl InferResponse<'_> {
    /// The client side of [`InferRequest::take_binary`]: fills in the
    /// outputs the server sent in binary.
    pub fn take_binary(&mut self, binary: Option<&[u8]>) -> Result<(), FramingError> {
        let tensors = self.outputs.iter_mut().map(|t| binary::Slot {
            name: &t.name,
            datatype: &t.datatype,
            params: t.parameters.as_ref(),
            data: &mut t.data,
        });
        binary::fill_all(tensors, binary)
    }

    /// The named output's data, if the answer has it.
    pub fn output(&self, name: &str) -> Option<&[f32]> {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.data.as_ref())
            .map(|d| d.0.as_slice())
    }
}

impl OutputTensor<'_> {
    /// Marks this output as sent in binary: no JSON `data`, its byte count
    /// in `parameters.binary_data_size`. Returns the data to append.
    pub fn into_binary(&mut self) -> Option<FlatF32> {
        let data = self.data.take()?;
        self.parameters
            .get_or_insert_with(Map::new)
            .insert(BINARY_DATA_SIZE.into(), Value::from(data.0.len() * 4));
        Some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_metadata_answers_parse() {
        // KServe's Python server (0.16) and MLServer (1.7), verbatim.
        for body in [
            r#"{"name":"propensity","versions":null,"platform":"","inputs":[{"name":"features","datatype":"FP32","shape":[-1,85]}],"outputs":[{"name":"probability","datatype":"FP32","shape":[-1,1]}]}"#,
            r#"{"name":"propensity","versions":[],"platform":"","inputs":[{"name":"features","datatype":"FP32","shape":[-1,85]}],"outputs":[{"name":"probability","datatype":"FP32","shape":[-1,1]}],"parameters":{}}"#,
        ] {
            let m: ModelMetadata = serde_json::from_str(body).unwrap();
            assert!(m.versions.is_empty());
            assert_eq!(m.inputs[0].name, "features");
            assert_eq!(m.inputs[0].shape, [-1, 85]);
        }
        let m: ModelMetadata = serde_json::from_str(
            r#"{"name":"m","versions":["1","2"],"platform":"onnx","inputs":[],"outputs":[]}"#,
        )
        .unwrap();
        assert_eq!(m.versions, ["1", "2"]);
    }

    #[test]
    fn a_request_round_trips_and_borrows_its_strings() {
        let body = r#"{"id":"r1","parameters":{"feature_names":"a,b"},"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32","data":[[1,2]]}],"outputs":[{"name":"probability","parameters":{"binary_data":true}}]}"#;
        let req: InferRequest = serde_json::from_str(body).unwrap();
        assert!(matches!(req.inputs[0].name, Cow::Borrowed("features")));
        assert_eq!(req.inputs[0].data.as_ref().unwrap().0, [1.0, 2.0]);
        assert_eq!(
            req.outputs.as_ref().unwrap()[0].binary_data().unwrap(),
            Some(true)
        );
        assert!(!req.binary_data_output().unwrap());
        let text = serde_json::to_string(&req).unwrap();
        let again: InferRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(again.inputs[0].data, req.inputs[0].data);
        assert_eq!(again.id.as_deref(), Some("r1"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let body =
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"dtype":"f"}]}"#;
        assert!(serde_json::from_str::<InferRequest>(body).is_err());
    }

    #[test]
    fn an_output_sent_in_binary_carries_its_size() {
        let mut out = OutputTensor {
            name: "p".into(),
            datatype: "FP32".into(),
            shape: vec![2, 1],
            parameters: None,
            data: Some(FlatF32(vec![0.5, 0.25])),
        };
        let data = out.into_binary().unwrap();
        assert_eq!(data.0, [0.5, 0.25]);
        assert!(out.data.is_none());
        assert_eq!(out.parameters.unwrap()[BINARY_DATA_SIZE], 8);
    }
}
