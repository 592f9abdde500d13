//! The load loop: closed (N in flight) or open (a fixed start rate, latency
//! from each request's scheduled start), over keep-alive HTTP/1 connections.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::Full;
use serde::Deserialize;

use frontend::cohort::BETA_GROUP;
use mesh_kit::propagation::{MODEL_VERSION_HEADER, USER_GROUP_HEADER, USER_ID_HEADER};

use crate::config::{Config, Overflow, Protocol, Target};
use crate::stats::{Observation, Report, Shard, new_histogram};
use crate::users::User;
use mesh_kit::client::Connections;

const SHARDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("base URL {0:?} is not an absolute http:// URL")]
    BaseUrl(String),
    /// A worker panicked: its requests are missing from the figures, so the
    /// run is reported as failed rather than as a smaller, wrong result.
    #[error("{0} load worker(s) panicked: {1}; the figures would be incomplete")]
    WorkerPanicked(usize, String),
    #[error("minting a demo token: {0}")]
    Token(#[from] identity::IdentityError),
    #[error("user id {0:?} cannot go in a URL query or header as it is")]
    UserId(String),
    #[error("reading the model's metadata at {url}: {detail}")]
    Metadata { url: String, detail: String },
}

/// How long a simulated user's demo token lives: longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// One `Authorization: Bearer` value per user, minted on all cores (an
/// RSA signature each, a few milliseconds) before the clock starts.
fn demo_tokens(users: &[User]) -> Result<Vec<http::HeaderValue>, RunError> {
    let minter = identity::Minter::demo();
    let now = mesh_kit::clock::unix_now();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = users.len().div_ceil(threads).max(1);
    let minted: Vec<Result<Vec<http::HeaderValue>, identity::IdentityError>> =
        std::thread::scope(|s| {
            let handles: Vec<_> = users
                .chunks(chunk)
                .map(|part| {
                    let minter = &minter;
                    s.spawn(move || {
                        part.iter()
                            .map(|u| {
                                let group = u.beta.then_some(BETA_GROUP);
                                let token = minter.mint(&u.id, group, TOKEN_TTL, now)?;
                                Ok(http::HeaderValue::from_str(&format!("Bearer {token}"))
                                    .expect("a JWT is header-safe base64url"))
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("minting does not panic"))
                .collect()
        });
    let mut all = Vec::with_capacity(users.len());
    for part in minted {
        all.extend(part?);
    }
    Ok(all)
}

/// The panic message of a failed task, for the report.
fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

type GrpcClient =
    oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

struct Plan {
    target: Target,
    conns: Connections,
    users: Vec<User>,
    /// `--target infer`: each user's OIP request body, built once.
    bodies: Vec<InferBody>,
    /// `--protocol grpc`: `--grpc-connections` HTTP/2 connections, requests
    /// spread over them as streams, and each user's request message, built once.
    grpc: Vec<GrpcClient>,
    grpc_requests: Vec<oip::grpc::ModelInferRequest>,
    /// `--target frontend`: each user's `/predict` URI and `x-user-id`
    /// value, built once (a URI parse per request was a tenth of the tool).
    predict: Vec<(Uri, HeaderValue)>,
    infer_uri: Uri,
    /// `--target get`: the base URL's path and query.
    get_uri: Uri,
    /// `--header`s, on every request.
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `--demo-tokens`: each user's `Authorization` value (else empty).
    tokens: Vec<http::HeaderValue>,
    per_user: u64,
    timeout: Duration,
    feedback: bool,
    limit: Option<u64>,
    until: Option<Instant>,
    next: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    /// Open loop with `--overflow drop`: requests never sent.
    overflow: AtomicU64,
    stop: AtomicBool,
    shards: Vec<Mutex<Shard>>,
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
    fn claim(&self) -> Option<u64> {
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
                    None => b.header(header::CONTENT_TYPE, "application/json"),
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
    async fn execute(&self, i: u64, scheduled: Instant) {
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
            .header(header::CONTENT_TYPE, "application/json")
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

    fn merged(&self) -> Shard {
        let mut all = Shard::default();
        for s in &self.shards {
            all.merge(&s.lock().unwrap());
        }
        all
    }

    fn p99_so_far_ms(&self) -> f64 {
        let mut h = new_histogram();
        for s in &self.shards {
            for v in s.lock().unwrap().versions.values() {
                let _ = h.add(&v.latency_us);
            }
        }
        h.value_at_quantile(0.99) as f64 / 1000.0
    }
}

/// A call's status, answering version, failed, degraded, offer id.
/// Most feature values the encoded infer requests hold together (16 MiB as
/// FP32; a few times that as JSON text).
const MAX_PREBUILT_VALUES: usize = 4 << 20;

/// User `first`'s infer request: their features and the next `rows - 1`
/// users' (wrapping), one FP32 row each.
fn fp32_request<'u>(
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
async fn grpc_clients(
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
struct InferBody {
    bytes: Bytes,
    /// `Inference-Header-Content-Length` when the features travel in binary.
    json_len: Option<http::HeaderValue>,
}

fn oip_body(request: oip::Fp32Request<'_>, protocol: Protocol) -> InferBody {
    let (bytes, json_len) = request.rest(protocol == Protocol::HttpBinary);
    InferBody {
        bytes: Bytes::from(bytes),
        json_len: json_len.map(http::HeaderValue::from),
    }
}

/// The model's input name, from its OIP metadata, as a client should.
async fn input_name(conns: &Connections, base: &str, model: &str) -> Result<String, RunError> {
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

/// Runs the load described by `cfg` against `users` and reports what happened.
pub async fn run(cfg: &Config, users: Vec<User>) -> Result<Report, RunError> {
    let base = cfg.base_url.trim_end_matches('/').to_owned();
    let uri: Uri = base
        .parse()
        .map_err(|_| RunError::BaseUrl(cfg.base_url.clone()))?;
    // Open loop: up to --max-in-flight connections are busy at once, and all
    // of them must stay pooled. Fewer idle places (the closed loop's count)
    // close the excess on every lull and reopen it on the next burst: a new
    // TCP connection per request, paid by the server, not a fixed pool.
    let connections = match cfg.rate {
        Some(_) => cfg.max_in_flight,
        None => cfg.connections(),
    };
    let bad_base = || RunError::BaseUrl(cfg.base_url.clone());
    let conns = Connections::new(&uri)
        .ok_or_else(bad_base)?
        .max_idle(connections.max(64));
    let get_uri = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") => Uri::from_static("/"),
        Some(p) => p.parse().map_err(|_| bad_base())?,
    };
    let per_user = u64::from(cfg.requests_per_user);
    let limit = match (cfg.requests, cfg.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        // By default every user makes their requests once.
        (None, None) => Some(users.len() as u64 * per_user),
    };
    let (mut bodies, mut grpc, mut grpc_requests) = (Vec::new(), Vec::new(), Vec::new());
    let rows = cfg.rows as usize;
    // Requests are encoded before the clock starts, one per user; with many
    // rows each, only as many as MAX_PREBUILT_VALUES allows (users then
    // share them), so `--rows 4096` cannot hold gigabytes of bodies.
    let width = users.first().map_or(1, |u| u.features.len().max(1));
    let distinct = users.len().min(MAX_PREBUILT_VALUES / (rows * width)).max(1);
    match (cfg.target, cfg.protocol) {
        (Target::Infer, Protocol::Grpc) => {
            let (clients, input) =
                grpc_clients(&base, &cfg.model_name, cfg.grpc_connections as usize).await?;
            grpc = clients;
            grpc_requests = (0..distinct)
                .map(|u| fp32_request(&users, u, rows, &input).grpc(&cfg.model_name))
                .collect();
        }
        (Target::Infer, protocol) => {
            let input = input_name(&conns, &base, &cfg.model_name).await?;
            bodies = (0..distinct)
                .map(|u| oip_body(fp32_request(&users, u, rows, &input), protocol))
                .collect();
        }
        _ => {}
    }
    let tokens = if cfg.demo_tokens && cfg.target == Target::Frontend {
        demo_tokens(&users)?
    } else {
        Vec::new()
    };
    let plan = Arc::new(Plan {
        target: cfg.target,
        infer_uri: conns
            .uri(&format!("/v2/models/{}/infer", cfg.model_name))
            .map_err(|_| bad_base())?,
        get_uri,
        predict: if cfg.target == Target::Frontend {
            predict_requests(&conns, &users)?
        } else {
            Vec::new()
        },
        conns,
        headers: cfg.headers.clone(),
        tokens,
        bodies,
        grpc,
        grpc_requests,
        per_user,
        timeout: cfg.timeout,
        feedback: cfg.feedback && cfg.target == Target::Frontend,
        limit,
        until: cfg.duration.map(|d| Instant::now() + d),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        overflow: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        users,
    });
    let beta_users = plan.users.iter().filter(|u| u.beta).count();
    let progress = (!cfg.quiet).then(|| tokio::spawn(report_progress(Arc::clone(&plan), limit)));

    let started = Instant::now();
    let load = match cfg.rate {
        None => {
            let workers: Vec<_> = (0..connections)
                .map(|_| {
                    let plan = Arc::clone(&plan);
                    tokio::spawn(async move {
                        while let Some(i) = plan.claim() {
                            plan.execute(i, Instant::now()).await;
                        }
                    })
                })
                .collect();
            let mut panics = Vec::new();
            for w in workers {
                if let Err(e) = w.await {
                    panics.push(panic_text(e));
                }
            }
            if !panics.is_empty() {
                plan.stop.store(true, Ordering::Relaxed);
                return Err(RunError::WorkerPanicked(
                    panics.len(),
                    panics.swap_remove(0),
                ));
            }
            format!("closed ({connections} connections)")
        }
        Some(rate) => {
            if let Err((n, first)) = open_loop(&plan, rate, cfg.max_in_flight, cfg.overflow).await {
                plan.stop.store(true, Ordering::Relaxed);
                return Err(RunError::WorkerPanicked(n, first));
            }
            format!("open ({rate} req/s)")
        }
    };
    let elapsed = started.elapsed();
    plan.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let ids: Vec<String> = plan.users.iter().map(|u| u.id.clone()).collect();
    let target = format!("{:?}", cfg.target).to_lowercase();
    let mut report = Report::build(
        &base,
        &target,
        load,
        elapsed,
        &plan.merged(),
        &ids,
        beta_users,
    );
    report.overflow = plan.overflow.load(Ordering::Relaxed);
    Ok(report)
}

/// Each user's `/predict` URI and `x-user-id` value.
fn predict_requests(
    conns: &Connections,
    users: &[User],
) -> Result<Vec<(Uri, HeaderValue)>, RunError> {
    users
        .iter()
        .map(|u| {
            let bad = || RunError::UserId(u.id.clone());
            let uri = conns
                .uri(&format!("/predict?user_id={}", u.id))
                .map_err(|_| bad())?;
            Ok((uri, HeaderValue::from_str(&u.id).map_err(|_| bad())?))
        })
        .collect()
}

/// Starts request `i` at `start + i / rate`, whatever earlier requests are
/// doing. Errs with the number of panicked tasks and the first message.
/// At most `max_in_flight` at once; past it a request waits for a slot (the
/// wait shows up as latency) or is dropped and counted, as `overflow` says.
async fn open_loop(
    plan: &Arc<Plan>,
    rate: f64,
    max_in_flight: usize,
    overflow: Overflow,
) -> Result<(), (usize, String)> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut panics = Vec::new();
    while let Some(i) = plan.claim() {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let slot = match overflow {
            Overflow::Wait => Arc::clone(&slots).acquire_owned().await.ok(),
            Overflow::Drop => match Arc::clone(&slots).try_acquire_owned() {
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    plan.overflow.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                slot => slot.ok(),
            },
        };
        let Some(permit) = slot else {
            break;
        };
        let plan = Arc::clone(plan);
        tasks.spawn(async move {
            plan.execute(i, scheduled).await;
            drop(permit);
        });
        // Reap finished tasks so the set does not grow with the run.
        while let Some(done) = tasks.try_join_next() {
            note_panic(done, &mut panics);
        }
    }
    while let Some(done) = tasks.join_next().await {
        note_panic(done, &mut panics);
    }
    match panics.len() {
        0 => Ok(()),
        n => Err((n, panics.swap_remove(0))),
    }
}

fn note_panic(done: Result<(), tokio::task::JoinError>, panics: &mut Vec<String>) {
    if let Err(e) = done {
        panics.push(panic_text(e));
    }
}

/// A progress bar on a terminal; a plain line every 5 s otherwise (CI logs).
async fn report_progress(plan: Arc<Plan>, limit: Option<u64>) {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = match limit {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(every).await;
        let finished = plan.stop.load(Ordering::Relaxed);
        let done = plan.done.load(Ordering::Relaxed);
        let errors = plan.errors.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
        last = (Instant::now(), done);
        let line = format!(
            "{rate:.0} req/s, errors {errors}, p99 so far {:.2}ms",
            plan.p99_so_far_ms()
        );
        match &bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(line);
            }
            None if !finished => eprintln!(
                "[{:>5.1}s] {done} requests, {line}",
                started.elapsed().as_secs_f64()
            ),
            None => {}
        }
        if finished {
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            return;
        }
    }
}

#[cfg(test)]
mod panic_tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_message() {
        let mut panics = Vec::new();
        let failed = tokio::spawn(async { panic!("worker exploded at request 7") }).await;
        note_panic(failed, &mut panics);
        note_panic(tokio::spawn(async {}).await, &mut panics);
        assert_eq!(panics, vec!["worker exploded at request 7".to_owned()]);
        let owned = tokio::spawn(async { panic!("{}", String::from("formatted")) }).await;
        assert_eq!(panic_text(owned.unwrap_err()), "formatted");
        let e = RunError::WorkerPanicked(3, "boom".into()).to_string();
        assert!(e.contains("3 load worker(s) panicked: boom"), "{e}");
    }
}
