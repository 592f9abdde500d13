//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`,
//! plus Triton's ModelConfig and ModelStatistics) and the standard
//! `grpc.health.v1` service, on their own port. Requests go through the
//! same admission, validation, batcher, metrics (`protocol="grpc"`) and
//! event log as REST; the server span, trace context and fault knobs come
//! from the HTTP/2 layers they are served behind (see mesh-kit's
//! `Service::grpc_router`).

use std::time::{Duration, Instant};

use axum::extract::Request as HttpRequest;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response as HttpResponse;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_types::{ErrorDetails, StatusExt};

use mesh_kit::ApiError;
use oip::grpc::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use oip::grpc::{self as pb};

use crate::metrics::{Protocol, Traffic};
use crate::service::{AppState, ModelPath, outcome_of, server_metadata_value};
use crate::validate;

/// The inference service as an axum router: the gRPC port's business
/// routes (tracing, faults), for mesh-kit's `Service::grpc_router`.
pub fn routes(state: AppState) -> axum::Router {
    let max = state.max_body_bytes();
    let inference = GrpcInferenceServiceServer::new(Grpc(state))
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX);
    tonic::service::Routes::new(inference)
        .into_axum_router()
        .layer(middleware::from_fn(authority_as_host))
}

/// `grpc.health.v1.Health`: the gRPC port's probes, kept out of tracing and
/// the fault knobs as the REST probes are.
pub fn probes(state: AppState) -> axum::Router {
    axum::Router::new().route_service(
        "/grpc.health.v1.Health/{*method}",
        HealthServer::new(GrpcHealth(state)),
    )
}

/// HTTP/2 carries the host in `:authority`, not a `Host` header; copy it so
/// a mirrored call (Envoy suffixes `-shadow`) is told apart as over REST.
async fn authority_as_host(mut req: HttpRequest, next: Next) -> HttpResponse {
    if !req.headers().contains_key(header::HOST)
        && let Some(value) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, value);
    }
    next.run(req).await
}

/// One status for every error the REST side would answer with a 4xx/5xx.
fn status_of(e: ApiError) -> Status {
    let code = oip::grpc_code_of(e.status.as_u16());
    if code == Code::ResourceExhausted {
        // RESOURCE_EXHAUSTED with google.rpc.RetryInfo: a client that reads
        // it backs off; the mesh does not retry it by default.
        let wait = Duration::from_secs(e.retry_after.unwrap_or(1).into());
        return Status::with_error_details(
            code,
            e.message,
            ErrorDetails::with_retry_info(Some(wait)),
        );
    }
    Status::new(code, e.message)
}

fn model_path(name: String, version: String) -> ModelPath {
    ModelPath {
        name,
        version: (!version.is_empty()).then_some(version),
    }
}

struct Grpc(AppState);

impl Grpc {
    /// NOT_FOUND unless the call names this model (and, if given, this version).
    fn check_model(&self, name: String, version: String) -> Result<(), Status> {
        self.0
            .check_model(&model_path(name, version))
            .map_err(status_of)
    }

    async fn infer(
        &self,
        headers: &HeaderMap,
        traffic: Traffic,
        req: pb::ModelInferRequest,
    ) -> Result<pb::ModelInferResponse, ApiError> {
        let s = &self.0;
        s.check_model(&model_path(
            req.model_name.clone(),
            req.model_version.clone(),
        ))?;
        let place = s.admit().await?;
        let (req, raw) =
            oip::infer_request_from_grpc(req).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let v = validate::validate(req, None, s.spec(), s.max_rows())?;
        let (res, _) = s.score(place, v, headers, traffic).await?;
        Ok(oip::infer_response_to_grpc(res, raw))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.0.health().is_ready();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        self.check_model(r.name, r.version)?;
        let ready = self.0.health().is_ready();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(server_metadata_value().into()))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        self.check_model(r.name, r.version)?;
        Ok(Response::new(self.0.model_metadata().into()))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let started = Instant::now();
        let headers = req.metadata().clone().into_headers();
        let traffic = Traffic::of(&headers);
        let result = self.infer(&headers, traffic, req.into_inner()).await;
        let status = match &result {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status,
        };
        let metrics = self.0.metrics();
        metrics.request(traffic, Protocol::Grpc, outcome_of(status));
        metrics
            .stats
            .request(status.is_success(), started.elapsed());
        if let Err(e) = &result {
            tracing::Span::current().record("otel.status_code", "ERROR");
            tracing::debug!(error = %e, "gRPC inference refused");
        }
        result.map(Response::new).map_err(status_of)
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = req.into_inner();
        self.check_model(r.name, r.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(self.0.model_config().into()),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = req.into_inner();
        // An empty name asks for every model: this one.
        if !r.name.is_empty() {
            self.check_model(r.name, r.version)?;
        }
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: vec![self.0.statistics().into()],
        }))
    }
}

/// `grpc.health.v1.Health/Check` from the service's readiness, which turns
/// off first on SIGTERM: Kubernetes' gRPC probes and Envoy's gRPC health
/// checks see NOT_SERVING while the mesh drains. Watch is not offered
/// (UNIMPLEMENTED, which the protocol tells clients not to retry).
struct GrpcHealth(AppState);

/// The services a health check may name: the server as a whole ("") or
/// the inference service.
const HEALTH_SERVICES: [&str; 2] = ["", oip::GRPC_SERVICE];

#[tonic::async_trait]
impl Health for GrpcHealth {
    type WatchStream = tonic::codegen::BoxStream<HealthCheckResponse>;

    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = req.into_inner().service;
        if !HEALTH_SERVICES.contains(&service.as_str()) {
            return Err(Status::not_found(format!("unknown service '{service}'")));
        }
        let status = if self.0.health().is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("use Check; Watch is not offered"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rest_error_maps_to_a_grpc_code() {
        for (rest, code) in [
            (StatusCode::BAD_REQUEST, Code::InvalidArgument),
            (StatusCode::PAYLOAD_TOO_LARGE, Code::InvalidArgument),
            (StatusCode::NOT_FOUND, Code::NotFound),
            (StatusCode::CONFLICT, Code::FailedPrecondition),
            (StatusCode::TOO_MANY_REQUESTS, Code::ResourceExhausted),
            (StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded),
            (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
            (StatusCode::INTERNAL_SERVER_ERROR, Code::Internal),
        ] {
            let s = status_of(ApiError::new(rest, "x"));
            assert_eq!(s.code(), code, "{rest}");
        }
        let full = status_of(ApiError::overloaded("full", 2));
        let retry = full.get_error_details().retry_info().unwrap().retry_delay;
        assert_eq!(retry, Some(Duration::from_secs(2)));
    }
}
