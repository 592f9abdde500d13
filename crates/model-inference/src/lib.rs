//! Serves one ONNX model, run by tract, over the Open Inference Protocol
//! (KServe V2 REST and gRPC), coalescing concurrent requests into micro-batches on a
//! bounded pool of inference threads.
//!
//! The same binary is deployed as v1 and v2 with different model files; the
//! version is stamped on every response (`x-model-version`) and every metric.

pub mod batcher;
pub mod config;
mod deadline;
pub mod engine;
pub mod fetch;
pub mod grpc;
pub mod metrics;
pub mod service;
pub mod stats;
pub mod validate;

pub use config::ModelArgs;
pub use service::{AppState, DEADLINE_HEADER, MODEL_VERSION_HEADER, app, build, probes, router};
