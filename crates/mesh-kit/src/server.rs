//! Bootstrap and graceful shutdown.
//!
//! Shutdown order matters under a mesh: on SIGTERM readiness fails first, then
//! the service keeps serving for the drain delay while Kubernetes and Envoy take
//! it out of rotation, then the listener closes and in-flight requests get up
//! to the shutdown timeout to finish (the connection handling is in
//! [`crate::conn`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware;
use axum::response::Response;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower::util::MapResponseLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::{Level, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::ServerArgs;
pub use crate::conn::{ServeOptions, connection_capacity, serve_on};
use crate::error;
use crate::health::Health;
use crate::metrics::{self, HttpMetrics};
use crate::propagation::{REQUEST_ID_HEADER, SERVED_BY_HEADER, extract_context};

/// One service being assembled: its flags, health, and metrics registry.
pub struct Service {
    name: &'static str,
    args: ServerArgs,
    health: Health,
    registry: Registry,
    response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Service {
    pub fn new(name: &'static str, args: ServerArgs) -> Self {
        // parse_pod_name admits only header-safe bytes; a name set in code
        // (tests) that is not is left out rather than panicking.
        let response_headers = args
            .pod_name
            .as_deref()
            .and_then(|pod| HeaderValue::from_str(pod).ok())
            .map(|pod| (HeaderName::from_static(SERVED_BY_HEADER), pod))
            .into_iter()
            .collect();
        Self {
            name,
            args,
            health: Health::new(),
            registry: Registry::with_prefix(metrics::PREFIX),
            response_headers,
        }
    }

    /// This replica's name (`--pod-name`), when it has one.
    pub fn pod_name(&self) -> Option<&str> {
        self.args.pod_name.as_deref()
    }

    /// The service flips this to ready once it can serve.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Where the service registers its own metrics before [`Self::router`].
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// A header stamped on every response, errors and probes included
    /// (e.g. `x-model-version`).
    pub fn with_response_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.response_headers.push((name, value));
        self
    }

    /// The complete app. `business` routes get tracing, RED metrics and fault
    /// knobs; `probes` (the service's own health endpoints) and the built-in
    /// `/healthz`, `/readyz`, `/metrics` get none of them, so probes and
    /// scrapes neither fail under injected faults nor flood traces.
    pub fn router(mut self, business: Router, probes: Router) -> Router {
        let http_metrics = HttpMetrics::register(&mut self.registry);
        let registry = Arc::new(self.registry);

        // Set before the layers, so a 405 is counted like any answer.
        let business = business.method_not_allowed_fallback(error::method_not_allowed);
        let faults = self.args.faults.clone();
        let faults = faults.is_active().then(|| {
            tracing::warn!(?faults, "fault injection is ON");
            middleware::from_fn(move |req, next| faults.clone().apply(req, next))
        });
        // Unknown paths count too (route "unmatched"): a scan or a client
        // calling the wrong URL shows up in the RED metrics.
        let unmatched =
            Router::new()
                .fallback(error::not_found)
                .layer(middleware::from_fn_with_state(
                    http_metrics.clone(),
                    HttpMetrics::track,
                ));
        // One `layer` call for the whole stack: each `Router::layer` boxes
        // every route once more, and a request clones its route's boxes
        // level by level (quadratic in the levels: 34 boxed clones and 44
        // allocations per request with one layer per call).
        let business = business.layer(
            ServiceBuilder::new()
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(make_span)
                        .on_response(record_response)
                        // 5xx are already in the span and the RED metrics; handlers log
                        // real failures themselves, so this stays out of the way of fault labs.
                        .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
                )
                .layer(middleware::from_fn_with_state(
                    http_metrics,
                    HttpMetrics::track,
                ))
                .option_layer(faults),
        );

        let health = self.health.clone();
        let ready = self.health.clone();
        let ops = Router::new()
            .route("/healthz", get(move || async move { health.live().await }))
            .route("/readyz", get(move || async move { ready.ready().await }))
            .route("/metrics", get(metrics::serve_metrics).with_state(registry));

        let app = business
            .merge(ops)
            .merge(probes)
            .merge(unmatched)
            // The ops and probe routes' 405s: JSON too, not counted.
            .method_not_allowed_fallback(error::method_not_allowed);
        // Every answer is what its Content-Type says: no browser sniffs a
        // JSON error that quotes client input into HTML.
        let nosniff = (
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        stamp(app, &self.response_headers, Some(nosniff))
    }

    /// A gRPC app (tonic's routes as axum routers). `business` gets what the
    /// REST business routes get: the server span parented on the caller's
    /// W3C/B3 context (gRPC metadata is HTTP/2 headers) and the fault knobs
    /// (an injected error is a gRPC `UNAVAILABLE`); `probes` (gRPC health)
    /// get neither. Both get request ids and the response headers as initial
    /// metadata. RED figures are the service's own metrics: the HTTP status
    /// of a gRPC call is 200 whatever happened.
    pub fn grpc_router(&self, business: Router, probes: Router) -> Router {
        let faults = self.args.faults.clone();
        let faults = faults
            .is_active()
            .then(|| middleware::from_fn(move |req, next| faults.clone().apply(req, next)));
        let app = business
            .layer(
                ServiceBuilder::new()
                    .layer(
                        TraceLayer::new_for_http()
                            .make_span_with(make_grpc_span)
                            .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
                    )
                    .option_layer(faults),
            )
            .merge(probes);
        stamp(app, &self.response_headers, None)
    }

    /// Binds `--listen` and serves until SIGTERM/SIGINT, then drains.
    pub async fn serve(self, business: Router, probes: Router) -> std::io::Result<()> {
        self.serve_with_grpc(business, probes, None).await
    }

    /// [`Self::serve`], with a gRPC app beside the HTTP one when `grpc`
    /// names its address, business routes and probes (as
    /// [`Self::grpc_router`] takes them): one readiness and one drain for
    /// both listeners (gRPC clients get GOAWAY as the listener closes).
    pub async fn serve_with_grpc(
        self,
        business: Router,
        probes: Router,
        grpc: Option<(std::net::SocketAddr, Router, Router)>,
    ) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.args.listen).await?;
        tracing::info!(service = self.name, addr = %listener.local_addr()?, "listening");
        let grpc = match grpc {
            Some((addr, grpc_business, grpc_probes)) => {
                let l = TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("gRPC listener on {addr}: {e}"))
                })?;
                tracing::info!(service = self.name, addr = %l.local_addr()?, "gRPC listening");
                Some((l, self.grpc_router(grpc_business, grpc_probes)))
            }
            None => None,
        };
        let health = self.health.clone();
        let mut opts = ServeOptions::from(&self.args);
        opts.max_connections = connection_capacity(opts.max_connections);
        tracing::info!(
            max_connections = opts.max_connections,
            header_read_timeout = ?opts.header_read_timeout,
            "connection limits"
        );
        let app = self.router(business, probes);
        let Some((grpc_listener, grpc_app)) = grpc else {
            return serve_on(listener, app, health, opts, shutdown_signal()).await;
        };
        // One signal for both listeners.
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let (http, grpc) = tokio::join!(
            serve_on(listener, app, health.clone(), opts, signal(rx.clone())),
            serve_on(grpc_listener, grpc_app, health, opts, signal(rx)),
        );
        http.and(grpc)
    }
}

/// The layers every answer of a listener gets: the fixed response headers
/// (and `if_absent`, unless the handler set it), and outermost the request
/// id, so it exists before the span records it and is echoed on every
/// answer. One `layer` call, so one more box per route, whatever the number
/// of headers.
fn stamp(
    app: Router,
    headers: &[(HeaderName, HeaderValue)],
    if_absent: Option<(HeaderName, HeaderValue)>,
) -> Router {
    let headers: Arc<[(HeaderName, HeaderValue)]> = headers.into();
    let set_headers = MapResponseLayer::new(move |mut res: Response| {
        let map = res.headers_mut();
        for (name, value) in headers.iter() {
            map.insert(name.clone(), value.clone());
        }
        if let Some((name, value)) = &if_absent
            && !map.contains_key(name)
        {
            map.insert(name.clone(), value.clone());
        }
        res
    });
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    app.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .map_response(never_indexed_request_id)
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(set_headers),
    )
}

/// The echoed request id, unique to one answer on a connection, goes out as
/// an HTTP/2 literal never put in the HPACK table. h2 indexes every header:
/// each answer then added one more `x-request-id` entry, and the encoder
/// compared the next id with every one of them before adding it too (the
/// lone model over gRPC: 9.1 → 6.8k HPACK instructions per answer), for
/// entries no later answer can use. HTTP/1 ignores the mark; `Debug` prints
/// such a value as `Sensitive`.
fn never_indexed_request_id(mut res: Response) -> Response {
    if let Some(id) = res.headers_mut().get_mut(REQUEST_ID_HEADER) {
        id.set_sensitive(true);
    }
    res
}

/// Resolves on SIGTERM (Kubernetes, docker stop) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The server span: named by route template (low cardinality), parented on
/// whatever W3C or B3 context the caller sent.
fn make_span(req: &Request) -> Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = field::Empty,
        request_id = request_id_of(req),
    );
    parented(span, req)
}

fn request_id_of(req: &Request) -> &str {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// `span` as a child of the caller's W3C or B3 context, if it sent one.
fn parented(span: Span, req: &Request) -> Span {
    if let Err(e) = span.set_parent(extract_context(req.headers())) {
        tracing::debug!(error = ?e, "span parent not set");
    }
    span
}

/// A gRPC server span as OpenTelemetry's RPC conventions name it
/// (`package.Service/Method`, `rpc.*` attributes), parented like
/// [`make_span`]. Handlers mark failures (the HTTP status says nothing).
fn make_grpc_span(req: &Request) -> Span {
    let path = req.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "request",
        otel.name = path,
        otel.kind = "server",
        otel.status_code = field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        request_id = request_id_of(req),
    );
    parented(span, req)
}

fn record_response(res: &Response, _latency: Duration, span: &Span) {
    span.record("http.response.status_code", res.status().as_u16());
    if res.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}
