//! The binary tensor data extension (as Triton and KServe define it): a body
//! is a JSON part of `Inference-Header-Content-Length` bytes followed by the
//! raw little-endian data of every tensor whose `parameters.binary_data_size`
//! says so, in tensor order. Every length here comes from the client, so
//! every one is checked against the body before a byte is read.

use serde::Serialize;
use serde_json::Value;

use crate::{BINARY_DATA_SIZE, FP32, FlatF32, HEADER_LENGTH, Parameters};

/// A body whose framing does not add up; always the client's fault (400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FramingError {
    #[error("{HEADER_LENGTH} must be a whole number of bytes, got {0:?}")]
    HeaderLength(String),
    #[error("{HEADER_LENGTH} is {header} but the body has only {body} bytes")]
    HeaderPastBody { header: u64, body: usize },
    #[error(
        "input '{name}': parameters.{BINARY_DATA_SIZE} must be a whole number of bytes, got {got}"
    )]
    Size { name: String, got: String },
    #[error(
        "input '{name}' has parameters.{BINARY_DATA_SIZE} but the request has no {HEADER_LENGTH} header saying where its JSON ends"
    )]
    NoHeader { name: String },
    #[error(
        "input '{name}' has both \"data\" (contents) and binary data (parameters.{BINARY_DATA_SIZE} or raw_input_contents); send one"
    )]
    Both { name: String },
    #[error("input '{name}' has neither \"data\" nor parameters.{BINARY_DATA_SIZE}")]
    NoData { name: String },
    #[error("input '{name}' is {datatype} in binary; this server takes {FP32} only")]
    Datatype { name: String, datatype: String },
    #[error(
        "input '{name}': {size} bytes of binary data is not a whole number of {FP32} values (4 bytes each)"
    )]
    Partial { name: String, size: u64 },
    #[error(
        "input '{name}' claims {size} bytes of binary data but only {left} are left in the body"
    )]
    PastEnd {
        name: String,
        size: u64,
        left: usize,
    },
    #[error(
        "input '{name}': binary value {index} is {value}; tensor data must be finite {FP32} numbers"
    )]
    NonFinite {
        name: String,
        index: usize,
        value: f32,
    },
    #[error("{0} bytes after the last binary tensor belong to no input")]
    Trailing(usize),
    #[error("{raw} raw_input_contents for {inputs} inputs; send one per input, in input order")]
    RawCount { inputs: usize, raw: usize },
    #[error(
        "input '{name}' carries {field}; {FP32} tensors use fp32_contents (or raw_input_contents)"
    )]
    ContentsField { name: String, field: &'static str },
    #[error("parameters.{key} of {of} must be true or false, got {got}")]
    NotABool {
        of: String,
        key: &'static str,
        got: String,
    },
}

/// Splits a body by its `Inference-Header-Content-Length` value: the JSON
/// part, and the binary part if the header was there (`None` if not).
pub fn split_body<'b>(
    body: &'b [u8],
    header_length: Option<&[u8]>,
) -> Result<(&'b [u8], Option<&'b [u8]>), FramingError> {
    let Some(raw) = header_length else {
        return Ok((body, None));
    };
    let text = std::str::from_utf8(raw).unwrap_or_default().trim();
    // Digits only: no sign, no "+12", no "1e3"; u64 so an overflow is an error.
    let len = (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| FramingError::HeaderLength(String::from_utf8_lossy(raw).into_owned()))?;
    match usize::try_from(len) {
        Ok(n) if n <= body.len() => Ok((&body[..n], Some(&body[n..]))),
        _ => Err(FramingError::HeaderPastBody {
            header: len,
            body: body.len(),
        }),
    }
}

/// One tensor of a request or answer, as the framing sees it.
pub(crate) struct Slot<'t> {
    pub name: &'t str,
    pub datatype: &'t str,
    pub params: Option<&'t Parameters>,
    pub data: &'t mut Option<FlatF32>,
}

/// Fills every tensor that claims binary data from `binary`, in order, then
/// checks that no byte is left over.
pub(crate) fn fill_all<'t>(
    tensors: impl IntoIterator<Item = Slot<'t>>,
    binary: Option<&[u8]>,
) -> Result<(), FramingError> {
    let mut rest = binary;
    for t in tensors {
        fill(t, &mut rest)?;
    }
    finish(rest)
}

/// Moves one tensor's binary data out of `rest` into `data`, if its
/// parameters say it has some; checks that it has data one way or the other.
fn fill(slot: Slot<'_>, rest: &mut Option<&[u8]>) -> Result<(), FramingError> {
    let Slot {
        name,
        datatype,
        params,
        data,
    } = slot;
    let named = || name.to_owned();
    let Some(size) = params.and_then(|p| p.get(BINARY_DATA_SIZE)) else {
        return match data {
            Some(_) => Ok(()),
            None => Err(FramingError::NoData { name: named() }),
        };
    };
    let size = match size {
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
    .ok_or_else(|| FramingError::Size {
        name: named(),
        got: size.to_string(),
    })?;
    if data.is_some() {
        return Err(FramingError::Both { name: named() });
    }
    let Some(left) = rest.as_mut() else {
        return Err(FramingError::NoHeader { name: named() });
    };
    if datatype != FP32 {
        return Err(FramingError::Datatype {
            name: named(),
            datatype: datatype.to_owned(),
        });
    }
    if !size.is_multiple_of(4) {
        return Err(FramingError::Partial {
            name: named(),
            size,
        });
    }
    let n = match usize::try_from(size) {
        Ok(n) if n <= left.len() => n,
        _ => {
            return Err(FramingError::PastEnd {
                name: named(),
                size,
                left: left.len(),
            });
        }
    };
    let (mine, after) = left.split_at(n);
    *left = after;
    let values = FlatF32::from_le_bytes(mine).map_err(|e| FramingError::NonFinite {
        name: named(),
        index: e.index,
        value: e.value,
    })?;
    *data = Some(values);
    Ok(())
}

/// After the last tensor: nothing may be left over.
fn finish(rest: Option<&[u8]>) -> Result<(), FramingError> {
    match rest {
        Some(r) if !r.is_empty() => Err(FramingError::Trailing(r.len())),
        _ => Ok(()),
    }
}

/// A body with a binary part, request or answer: `header` as JSON, then each
/// chunk's values as little-endian FP32, in order. Returns the body and the
/// JSON part's length (the `Inference-Header-Content-Length` to send with it).
pub fn encode_binary<'c, T: Serialize>(
    header: &T,
    chunks: impl IntoIterator<Item = &'c [f32]>,
) -> serde_json::Result<(Vec<u8>, usize)> {
    let mut body = serde_json::to_vec(header)?;
    let json_len = body.len();
    for chunk in chunks {
        body.reserve(chunk.len() * 4);
        for v in chunk {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok((body, json_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InferRequest;

    fn le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn framed(json: &str, binary: &[u8]) -> (Vec<u8>, String) {
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(binary);
        (body, json.len().to_string())
    }

    fn parse(body: &[u8], header: Option<&str>) -> Result<Vec<Vec<f32>>, String> {
        let (json, binary) =
            split_body(body, header.map(str::as_bytes)).map_err(|e| e.to_string())?;
        let mut req: InferRequest = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        req.take_binary(binary).map_err(|e| e.to_string())?;
        Ok(req.inputs.into_iter().map(|t| t.data.unwrap().0).collect())
    }

    #[test]
    fn mixed_json_and_binary_inputs_fill_in_order() {
        let json = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"FP32","data":[7]},{"name":"c","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let (body, h) = framed(json, &le(&[1.0, 2.0, 3.0]));
        assert_eq!(
            parse(&body, Some(&h)).unwrap(),
            vec![vec![1.0, 2.0], vec![7.0], vec![3.0]]
        );
    }

    #[test]
    fn lying_lengths_are_errors_not_over_reads() {
        let one = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":SIZE}}]}"#;
        let cases: Vec<(String, Vec<u8>, Option<String>, &str)> = vec![
            (
                one.replace("SIZE", "8"),
                le(&[1.0]),
                None,
                "only 4 are left",
            ),
            (one.replace("SIZE", "-4"), le(&[1.0]), None, "whole number"),
            (one.replace("SIZE", "4.5"), le(&[1.0]), None, "whole number"),
            (
                one.replace("SIZE", "\"4\""),
                le(&[1.0]),
                None,
                "whole number",
            ),
            (
                one.replace("SIZE", "3"),
                le(&[1.0]),
                None,
                "not a whole number of FP32",
            ),
            (
                one.replace("SIZE", "18446744073709551612"),
                le(&[1.0]),
                None,
                "only 4 are left",
            ),
            (
                one.replace("SIZE", "4"),
                le(&[1.0, 2.0]),
                None,
                "4 bytes after the last",
            ),
            (one.replace("SIZE", "4"), le(&[f32::NAN]), None, "finite"),
            (
                one.replace("SIZE", "4"),
                le(&[f32::INFINITY]),
                None,
                "finite",
            ),
        ];
        for (json, bin, header, want) in cases {
            let (body, h) = framed(&json, &bin);
            let err = parse(&body, Some(header.as_deref().unwrap_or(&h))).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        let json = one.replace("SIZE", "4");
        let (body, _) = framed(&json, &le(&[1.0]));
        for (header, want) in [
            ("abc", "whole number"),
            ("-5", "whole number"),
            ("+5", "whole number"),
            ("99999999999999999999999", "whole number"),
            ("100000", "only"),
            ("", "whole number"),
        ] {
            let err = parse(&body, Some(header)).unwrap_err();
            assert!(err.contains(want), "header {header:?}: {err}");
        }
        let err = parse(json.as_bytes(), None).unwrap_err();
        assert!(err.contains("no inference-header-content-length"), "{err}");
    }

    #[test]
    fn a_response_encodes_json_then_bytes() {
        let (body, n) = encode_binary(
            &serde_json::json!({"a": 1}),
            [&[1.0f32, 2.0][..], &[3.0][..]],
        )
        .unwrap();
        assert_eq!(&body[..n], br#"{"a":1}"#);
        assert_eq!(&body[n..], le(&[1.0, 2.0, 3.0]).as_slice());
    }
}
