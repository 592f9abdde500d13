//! One request of a run: building it from the plan (built once, before the
//! clock starts), sending it over HTTP/1 or gRPC, reading what the report
//! counts from its answer, and the customer's feedback on an offer.

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::Full;
use mesh_kit::client::Connections;
use mesh_kit::json::APPLICATION_JSON;
use mesh_kit::propagation::{MODEL_VERSION_HEADER, USER_GROUP_HEADER, USER_ID_HEADER};
use serde::Deserialize;

use frontend::cohort::BETA_GROUP;

use super::SHARDS;
use super::infer::InferBody;
use crate::config::Target;
use crate::stats::{Observation, Shard, new_histogram};
use crate::users::User;

pub(super) type GrpcClient =
    oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

pub(super) struct Plan {
    pub(super) target: Target,
    pub(super) conns: Connections,
    pub(super) users: Vec<User>,
    /// `--target infer`: each user's OIP request body, built once.
    pub(super) bodies: Vec<InferBody>,
    /// `--protocol grpc`: `--grpc-connections` HTTP/2 connections, requests
    /// spread over them as streams, and each user's request message, built once.
    pub(super) grpc: Vec<GrpcClient>,
    pub(super) grpc_requests: Vec<oip::grpc::ModelInferRequest>,
    /// `--target frontend`: each user's `/predict` URI and `x-user-id`
    /// value, built once (a URI parse per request was a tenth of the tool).
    pub(super) predict: Vec<(Uri, HeaderValue)>,
    pub(super) infer_uri: Uri,
    /// `--target get`: the base URL's path and query.
    pub(super) get_uri: Uri,
    /// `--header`s, on every request.
    pub(super) headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `--demo-tokens`: each user's `Authorization` value (else empty).
    pub(super) tokens: Vec<http::HeaderValue>,
    pub(super) per_user: u64,
    pub(super) timeout: Duration,
    pub(super) feedback: bool,
    pub(super) limit: Option<u64>,
    pub(super) until: Option<Instant>,
    pub(super) next: AtomicU64,
    pub(super) done: AtomicU64,
    pub(super) errors: AtomicU64,
    /// Open loop with `--overflow drop`: requests never sent.
    pub(super) overflow: AtomicU64,
    pub(super) stop: AtomicBool,
    pub(super) shards: Vec<Mutex<Shard>>,
}

/// The parts of a frontend answer the report needs, borrowed from it.
#[derive(Deserialize)]
struct Decision<'a> {
    #[serde(default)]
    degraded: bool,
    #[serde(default, borrow)]
    decision: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    decision_id: Option<Cow<'a, str>>,
}

/// What one request did, as the report counts it.
struct Call {
    status: Status,
    /// The `x-model-version` that answered.
    version: Option<HeaderValue>,
    /// Counted as an error: no answer, not a success, or degraded.
    error: bool,
    degraded: bool,
    /// An offer's decision id, for `--feedback`.
    offer: Option<String>,
}

/// An HTTP status, a gRPC code's name, or why there was no answer.
enum Status {
    Http(StatusCode),
    Other(Cow<'static, str>),
}

// === impl Call ===

impl Call {
    /// No answer at all (a timeout, a transport or gRPC error).
    fn failed(status: impl Into<Cow<'static, str>>) -> Self {
        Call {
            status: Status::Other(status.into()),
            version: None,
            error: true,
            degraded: false,
            offer: None,
        }
    }

    fn version(&self) -> Option<&str> {
        self.version.as_ref().and_then(|v| v.to_str().ok())
    }
}

impl Status {
    fn as_str(&self) -> &str {
        match self {
            Status::Http(code) => code.as_str(),
            Status::Other(s) => s,
        }
    }
}

impl Plan {
    /// The next request index, or `None` when the run is over.
    pub(super) fn claim(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        if self.until.is_some_and(|t| Instant::now() >= t) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Some(n) if i >= n => None,
            _ => Some(i),
        }
    }

    fn request(&self, user: usize) -> Request<Full<Bytes>> {
        let u = &self.users[user];
        let builder = match self.target {
            Target::Frontend => {
                // The id in the header too, as a mesh client would: Envoy can
                // only key routing and rate limits on headers, not the query.
                let (uri, id) = &self.predict[user];
                let mut b = Request::get(uri.clone()).header(USER_ID_HEADER, id.clone());
                if u.beta {
                    b = b.header(USER_GROUP_HEADER, BETA_GROUP);
                }
                b.body(Full::default())
            }
            Target::Infer => {
                let body = &self.bodies[user % self.bodies.len()];
                let b = Request::post(self.infer_uri.clone());
                match &body.json_len {
                    None => b.header(header::CONTENT_TYPE, APPLICATION_JSON),
                    Some(len) => b
                        .header(header::CONTENT_TYPE, oip::OCTET_STREAM)
                        .header(oip::HEADER_LENGTH, len.clone()),
                }
                .body(Full::new(body.bytes.clone()))
            }
            Target::Get => Request::get(self.get_uri.clone()).body(Full::default()),
        };
        let mut req = builder.expect("request parts were validated up front");
        self.sign_in(user, &mut req);
        for (name, value) in &self.headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        req
    }

    /// Adds the user's demo token, with `--demo-tokens`.
    fn sign_in<B>(&self, user: usize, req: &mut Request<B>) {
        if let Some(t) = self.tokens.get(user) {
            req.headers_mut().insert(header::AUTHORIZATION, t.clone());
        }
    }

    /// Sends request `i` (counting latency from `scheduled`) and records it.
    pub(super) async fn execute(&self, i: u64, scheduled: Instant) {
        let user = ((i / self.per_user) % self.users.len() as u64) as usize;
        let call = if self.grpc.is_empty() {
            self.http_call(user).await
        } else {
            self.grpc_call(i, user).await
        };
        let latency = scheduled.elapsed();
        let shard = &self.shards[(i as usize) % SHARDS];
        self.done.fetch_add(1, Ordering::Relaxed);
        if call.error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let uses_users = self.target != Target::Get;
        shard.lock().unwrap().record(&Observation {
            user: uses_users.then_some(user),
            version: call.version(),
            status: call.status.as_str(),
            latency,
            error: call.error,
            degraded: call.degraded,
        });
        if let (true, Some(decision_id), Some(v)) = (self.feedback, &call.offer, call.version()) {
            self.send_feedback(user, decision_id, v, shard).await;
        }
    }

    /// One HTTP request: its status, the version that answered, whether it
    /// failed, whether the decision was degraded, and the offer's id.
    async fn http_call(&self, user: usize) -> Call {
        let result = tokio::time::timeout(self.timeout, self.conns.send(self.request(user))).await;
        match result {
            Err(_) => Call::failed("timeout"),
            Ok(Err(_)) => Call::failed("transport"),
            Ok(Ok(res)) => {
                let (mut parts, body) = res.into_parts();
                let ok = parts.status.is_success();
                let (degraded, offer) = match self.target {
                    Target::Frontend if ok => match serde_json::from_slice::<Decision>(&body) {
                        Ok(d) => {
                            let offer = (d.decision.as_deref() == Some("offer"))
                                .then_some(d.decision_id)
                                .flatten()
                                .map(Cow::into_owned);
                            (d.degraded, offer)
                        }
                        Err(_) => (true, None),
                    },
                    _ => (false, None),
                };
                Call {
                    status: Status::Http(parts.status),
                    version: parts.headers.remove(MODEL_VERSION_HEADER),
                    error: !ok || degraded,
                    degraded,
                    offer,
                }
            }
        }
    }

    /// One gRPC ModelInfer, as a stream on request `i`'s connection; the
    /// status is the gRPC code's name.
    async fn grpc_call(&self, i: u64, user: usize) -> Call {
        let mut client = self.grpc[(i as usize) % self.grpc.len()].clone();
        let message = &self.grpc_requests[user % self.grpc_requests.len()];
        let mut req = tonic::Request::new(message.clone());
        for (name, value) in &self.headers {
            if let Ok(key) = tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes())
                && let Ok(v) = tonic::metadata::MetadataValue::try_from(value.as_bytes())
            {
                req.metadata_mut().insert(key, v);
            }
        }
        match tokio::time::timeout(self.timeout, client.model_infer(req)).await {
            Err(_) => Call::failed("timeout"),
            Ok(Err(status)) => Call::failed(format!("{:?}", status.code())),
            Ok(Ok(res)) => Call {
                status: Status::Other(Cow::Borrowed("Ok")),
                version: res
                    .metadata()
                    .get(MODEL_VERSION_HEADER)
                    .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()),
                error: false,
                degraded: false,
                offer: None,
            },
        }
    }

    /// The simulated customer answers the offer with the dataset's true label.
    async fn send_feedback(
        &self,
        user: usize,
        decision_id: &str,
        version: &str,
        shard: &Mutex<Shard>,
    ) {
        let accepted = self.users[user].purchased;
        let body = serde_json::json!({
            "decision_id": decision_id,
            "outcome": if accepted { "accepted" } else { "declined" },
        });
        // The user in the query too, as the page sends it: a gateway hashing
        // on user_id routes the feedback to the replica that decided.
        let id = self.users[user].id.as_str();
        let Ok(uri) = self.conns.uri(&format!("/feedback?user_id={id}")) else {
            shard.lock().unwrap().feedback_errors += 1;
            return;
        };
        let mut req = Request::post(uri)
            .header(header::CONTENT_TYPE, APPLICATION_JSON)
            .header(USER_ID_HEADER, id)
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid feedback request");
        self.sign_in(user, &mut req);
        let ok = matches!(
            tokio::time::timeout(self.timeout, self.conns.send(req)).await,
            Ok(Ok(res)) if res.status().is_success()
        );
        let mut s = shard.lock().unwrap();
        if ok {
            s.outcome(version, accepted);
        } else {
            s.feedback_errors += 1;
        }
    }

    pub(super) fn merged(&self) -> Shard {
        let mut all = Shard::default();
        for s in &self.shards {
            all.merge(&s.lock().unwrap());
        }
        all
    }

    pub(super) fn p99_so_far_ms(&self) -> f64 {
        let mut h = new_histogram();
        for s in &self.shards {
            for v in s.lock().unwrap().versions.values() {
                let _ = h.add(&v.latency_us);
            }
        }
        h.value_at_quantile(0.99) as f64 / 1000.0
    }
}
