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
mod flat;
mod grpc_wire;
mod rest;
mod stats;

pub use binary::{FramingError, encode_binary, split_body};
pub use flat::FlatF32;
pub use grpc_wire::{infer_request_from_grpc, infer_response_to_grpc};
pub use rest::{
    InferRequest, InferResponse, InputTensor, ModelMetadata, OutputTensor, Parameters,
    RequestedOutput, ServerMetadata, TensorMetadata,
};
pub use stats::{
    BatchStatistics, Duration, InferStatistics, InferenceStatistics, ModelConfig, ModelStatistics,
    ModelTensorConfig,
};

/// The one datatype mlmesh's models take and return.
pub const FP32: &str = "FP32";

/// Request and metadata parameter naming the input's columns in order,
/// comma-separated (OIP parameters are scalars).
pub const FEATURE_NAMES: &str = "feature_names";

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
