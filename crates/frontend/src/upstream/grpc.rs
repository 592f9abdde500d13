//! The gRPC side of a model call: its URL, request metadata, span and the
//! failure classes REST uses.

use axum::http::HeaderMap;
use tracing::field;

use super::answered_version;
use super::error::{UpstreamError, with_causes};
use super::http::absolute;
use crate::config::DEFAULT_GRPC_PORT;

/// `rest`'s scheme and host on model-inference's default gRPC port.
pub(super) fn grpc_url_of(rest: &str) -> Option<String> {
    let host = absolute(rest)?.host()?.to_owned();
    Some(format!("http://{host}:{DEFAULT_GRPC_PORT}"))
}

/// A gRPC request carrying `headers` as its metadata.
pub(super) fn grpc_request<T>(message: T, headers: HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
    request
}

/// A gRPC failure as the REST path classifies it: a status the model sent
/// is read as the HTTP status REST would have answered (so FAILED_PRECONDITION
/// re-reads the layout as 409 does); one raised on this side (connect,
/// reset) is a connection failure.
pub(super) fn grpc_error(upstream: &'static str, status: tonic::Status) -> UpstreamError {
    if let Some(source) = std::error::Error::source(&status) {
        let detail = with_causes(status.message().to_owned(), Some(source));
        return UpstreamError::Connect { upstream, detail };
    }
    UpstreamError::Status {
        upstream,
        status: oip::http_status_of(status.code()),
        detail: status.message().to_owned(),
        model_version: answered_version(&status.metadata().clone().into_headers()),
    }
}

/// A gRPC client span, named and attributed as OpenTelemetry's RPC
/// conventions say (`package.Service/Method`, `rpc.*`).
pub(super) fn grpc_span(upstream: &'static str, method: &'static str, url: &str) -> tracing::Span {
    tracing::info_span!(
        "upstream",
        otel.name = format!("{}/{method}", oip::GRPC_SERVICE),
        otel.kind = "client",
        otel.status_code = field::Empty,
        peer.service = upstream,
        rpc.system = "grpc",
        rpc.service = oip::GRPC_SERVICE,
        rpc.method = method,
        url.full = url,
        rpc.grpc.status_code = field::Empty,
        error.type = field::Empty,
    )
}
