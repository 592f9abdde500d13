//! The Open Inference Protocol (KServe V2 / Triton) on the wire: the REST
//! JSON messages, the binary tensor data extension's framing, Triton's
//! statistics and model configuration shapes, and the gRPC service
//! ([`grpc`], generated from `proto/grpc_inference.proto`). One definition, used by
//! model-inference (server), the frontend (client) and the load tool, so the
//! three can never disagree on a field, a parameter or a header name.
//!
//! Only what mlmesh serves is typed tightly: FP32 tensors. Other datatypes
//! parse (so the server can say what it takes) but carry no data here.

/// `inference.GRPCInferenceService`: messages, client and server trait.
#[allow(clippy::all, clippy::pedantic)]
pub mod grpc {
    tonic::include_proto!("inference");
}

mod binary;
mod client;
mod flat;
mod grpc_wire;
mod rest;
mod stats;

pub use binary::{FramingError, encode_binary, split_body};
pub use client::Fp32Request;
pub use flat::FlatF32;
pub use grpc_wire::{
    grpc_code_of, http_status_of, infer_request_from_grpc, infer_response_to_grpc, output_of_grpc,
};
pub use rest::{
    InferRequest, InferResponse, InputTensor, ModelMetadata, OutputTensor, Parameters,
    RequestedOutput, ServerMetadata, TensorMetadata,
};
pub use stats::{
    BatchStatistics, Duration, InferStatistics, InferenceStatistics, ModelConfig, ModelParameter,
    ModelStatistics, ModelTensorConfig,
};

/// The gRPC service's full name, as paths and span names carry it.
pub const GRPC_SERVICE: &str = "inference.GRPCInferenceService";

/// The one datatype mlmesh's models take and return.
pub const FP32: &str = "FP32";

/// Request and metadata parameter naming the input's columns in order,
/// comma-separated (OIP parameters are scalars).
pub const FEATURE_NAMES: &str = "feature_names";

/// Request and metadata parameter: a digest of the model's
/// [`FEATURE_NAMES`] value (16 hex digits), given by the model's metadata
/// and configuration. A caller that states it instead of the names sends 16
/// bytes per call, not ~1 KB the model parses again; the model refuses
/// (409) a request whose digest is not its own, as it refuses another order.
pub const FEATURE_FINGERPRINT: &str = "feature_fingerprint";

/// The binary tensor data extension's header: the length of the JSON part
/// of a body (request or response) whose tensors follow it as raw bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Tensor parameter: this tensor's data is this many raw bytes after the JSON.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";

/// Requested-output parameter: answer this output in binary (`true`) or JSON.
pub const BINARY_DATA: &str = "binary_data";

/// Request parameter: answer every output not otherwise asked for in binary.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// The content type of a body with a binary part, as Triton sends it.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Extensions the server metadata advertises, under Triton's names.
pub const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "statistics", "model_configuration"];

/// How a client sends its tensors to model-inference: the one list the
/// frontend's `--model-protocol` and the load tool's `--protocol` offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Protocol {
    /// REST with JSON tensors (`POST /v2/models/{name}/infer`).
    HttpJson,
    /// REST with the binary tensor data extension: raw little-endian FP32
    /// after the JSON header, outputs asked for in binary, as Triton's
    /// clients send by default.
    HttpBinary,
    /// gRPC (`inference.GRPCInferenceService/ModelInfer`, raw tensors), on
    /// the model's gRPC port.
    Grpc,
}

impl Protocol {
    /// The name as given on the command line (`http-json`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpJson => "http-json",
            Self::HttpBinary => "http-binary",
            Self::Grpc => "grpc",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
