//! A minimal OTLP/HTTP trace collector that decodes every export it receives.

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as Export;
pub use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// Starts the collector on an ephemeral port; returns its base URL (for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) and the stream of decoded exports.
pub async fn collector() -> (String, UnboundedReceiver<ExportTraceServiceRequest>) {
    let (tx, rx) = unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                tx.send(ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf"))
                    .unwrap();
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rx)
}

/// Lowercase hex, as trace and span ids are written in headers.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
