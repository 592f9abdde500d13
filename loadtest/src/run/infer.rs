//! `--target infer`: the requests encoded once per user before the clock
//! starts (OIP REST JSON or binary tensors, or gRPC messages), and the
//! model's input name read from its metadata, as a client should.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mesh_kit::client::Connections;

use super::RunError;
use super::call::GrpcClient;
use crate::config::Protocol;
use crate::users::User;

/// Most feature values the encoded infer requests hold together (16 MiB as
/// FP32; a few times that as JSON text).
pub(super) const MAX_PREBUILT_VALUES: usize = 4 << 20;

/// User `first`'s infer request: their features and the next `rows - 1`
/// users' (wrapping), one FP32 row each.
pub(super) fn fp32_request<'u>(
    users: &'u [User],
    first: usize,
    rows: usize,
    input_name: &'u str,
) -> oip::Fp32Request<'u> {
    let width = users[first].features.len();
    let mut values = Vec::with_capacity(rows * width);
    for k in 0..rows {
        values.extend_from_slice(&users[(first + k) % users.len()].features);
    }
    oip::Fp32Request {
        id: &users[first].id,
        input: input_name,
        shape: vec![rows as i64, width as i64],
        values,
        parameters: oip::Parameters::new(),
        outputs: &[],
    }
}

/// `connections` gRPC clients, each its own HTTP/2 connection carrying
/// many streams, and the model's input name from its gRPC metadata.
pub(super) async fn grpc_clients(
    base: &str,
    model: &str,
    connections: usize,
) -> Result<(Vec<GrpcClient>, String), RunError> {
    let fail = |detail: String| RunError::Metadata {
        url: base.to_owned(),
        detail,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(base.to_owned())
        .map_err(|e| fail(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let channel = endpoint.connect().await.map_err(|e| fail(e.to_string()))?;
        clients.push(GrpcClient::new(channel).max_decoding_message_size(16 << 20));
    }
    let meta = clients[0]
        .clone()
        .model_metadata(oip::grpc::ModelMetadataRequest {
            name: model.to_owned(),
            version: String::new(),
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .into_inner();
    let input = meta
        .inputs
        .into_iter()
        .next()
        .ok_or_else(|| fail("the model lists no inputs".into()))?
        .name;
    Ok((clients, input))
}

/// One user's infer request, encoded once before the clock starts.
pub(super) struct InferBody {
    pub(super) bytes: Bytes,
    /// `Inference-Header-Content-Length` when the features travel in binary.
    pub(super) json_len: Option<http::HeaderValue>,
}

pub(super) fn oip_body(request: oip::Fp32Request<'_>, protocol: Protocol) -> InferBody {
    let (bytes, json_len) = request.rest(protocol == Protocol::HttpBinary);
    InferBody {
        bytes: Bytes::from(bytes),
        json_len: json_len.map(http::HeaderValue::from),
    }
}

/// The model's input name, from its OIP metadata, as a client should.
pub(super) async fn input_name(
    conns: &Connections,
    base: &str,
    model: &str,
) -> Result<String, RunError> {
    let path = format!("/v2/models/{model}");
    let fail = |detail: String| RunError::Metadata {
        url: format!("{base}{path}"),
        detail,
    };
    let req = Request::get(conns.uri(&path).map_err(|e| fail(e.to_string()))?)
        .body(Full::default())
        .map_err(|e| fail(e.to_string()))?;
    let res = tokio::time::timeout(Duration::from_secs(10), conns.send(req))
        .await
        .map_err(|_| fail("no answer within 10 s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let status = res.status();
    let body = res.into_body();
    if !status.is_success() {
        return Err(fail(format!("status {status}")));
    }
    let meta: oip::ModelMetadata =
        serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))?;
    meta.inputs
        .into_iter()
        .next()
        .map(|i| i.name.into_owned())
        .ok_or_else(|| fail("the model lists no inputs".into()))
}
