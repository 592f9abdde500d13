//! Accepting and serving connections: HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge, as Envoy speaks to an app whose port is declared `http2` or
//! `grpc`), bounded in number and in time, and drained without dropping a
//! keep-alive client.
//!
//! `axum::serve` has none of the bounds: without hyper's timer a client that
//! sends half a header (slowloris) or nothing at all holds its connection
//! forever, and enough of them exhaust the file descriptors so that real
//! requests time out. Here:
//! - `--header-read-timeout` closes a connection that has not sent a whole
//!   request head within that time, whether it is new, idle between
//!   keep-alive requests, or trickling bytes;
//! - `--max-connections` caps open connections; past it a new connection is
//!   closed at once (counted), never left hanging in the accept queue;
//! - the soft `RLIMIT_NOFILE` is raised to the hard limit at startup (as Go
//!   does), so the cap, not a default of 1,024, is what binds;
//! - while draining, every HTTP/1 answer carries `Connection: close`, so
//!   keep-alive clients reconnect (to another replica) after their current
//!   request instead of finding their idle connection closed under them; at
//!   the listener's close HTTP/2 connections get a GOAWAY.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Version, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

use crate::config::ServerArgs;
use crate::health::Health;

/// File descriptors kept free of client connections: upstream and Redis
/// sockets, the model file, the OTLP exporter.
const FD_RESERVE: u64 = 256;

/// How a service serves: its connection bounds and its shutdown timing.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl From<&ServerArgs> for ServeOptions {
    fn from(a: &ServerArgs) -> Self {
        Self {
            drain_delay: a.drain_delay,
            shutdown_timeout: a.shutdown_timeout,
            header_read_timeout: a.header_read_timeout,
            max_connections: a.max_connections,
        }
    }
}

/// Raises the soft open-files limit to the hard one and returns the number
/// of client connections the process can then hold (`wanted` at most).
pub fn connection_capacity(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::debug!(error = %e, "cannot raise RLIMIT_NOFILE");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => return wanted,
    };
    let room = usize::try_from(soft.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            max_connections = wanted,
            open_files_limit = soft,
            "the open-files limit allows only {room} connections; raise it (ulimit -n) to serve --max-connections"
        );
    }
    wanted.min(room).max(1)
}

/// Serves `app` on `listener` until `signal` resolves, then drains: readiness
/// off at once, serving on (with `Connection: close`) for the drain delay,
/// then the listener closes and open requests get the shutdown timeout.
pub async fn serve_on(
    listener: TcpListener,
    app: Router,
    health: Health,
    opts: ServeOptions,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let draining = health.clone();
    // Around the router, not through `Router::layer`: no box per route and
    // no clone of the routes' boxes per request, only the router's `Arc`.
    let app = ServiceBuilder::new()
        .map_request(|req: http::Request<Incoming>| req.map(Body::new))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let draining = draining.clone();
            close_when_draining(draining, req, next)
        }))
        .service(app);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        // Request heads past 64 KiB get a 431 (hyper's default buffer is ~400 KB).
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);

    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let rejected = RejectLog::default();
    let graceful = GracefulShutdown::new();

    let drain = async move {
        signal.await;
        health.begin_drain();
        tracing::info!(drain_delay = ?opts.drain_delay, "shutdown requested: readiness off, still serving (Connection: close) while the mesh drains");
        tokio::time::sleep(opts.drain_delay).await;
    };
    tokio::pin!(drain);
    loop {
        let (tcp, _peer) = tokio::select! {
            () = &mut drain => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: the connection stays queued; back
                    // off instead of spinning on the same error.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Closed at once: a client told "no" can go elsewhere; one left
            // in the accept queue just times out.
            rejected.note(opts.max_connections);
            drop(tcp);
            continue;
        };
        // Nagle + delayed ACKs would add ~40ms to small keep-alive responses.
        let _ = tcp.set_nodelay(true);
        let builder = builder.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let first_byte_within = opts.header_read_timeout;
        tokio::spawn(async move {
            // The protocol sniffing (HTTP/1 or the HTTP/2 preface) waits for
            // the first bytes before hyper's own timer runs: a client that
            // connects and says nothing is closed here.
            let mut byte = [0u8; 1];
            match tokio::time::timeout(first_byte_within, tcp.peek(&mut byte)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = watcher.watch(conn).await {
                // Timeouts, resets, malformed requests: the client's doing.
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("listener closed; waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(opts.shutdown_timeout) => {
            tracing::warn!(timeout = ?opts.shutdown_timeout, "in-flight requests outlived the shutdown timeout; exiting anyway");
        }
    }
    Ok(())
}

/// During the drain every HTTP/1 answer closes its connection, so the client
/// opens its next one elsewhere (HTTP/2 has no such header: GOAWAY at close).
async fn close_when_draining(health: Health, req: Request, next: Next) -> Response {
    let http1 = req.version() <= Version::HTTP_11;
    let mut res = next.run(req).await;
    if http1 && health.is_draining() {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// Warns about refused connections at most once a second, with the count.
#[derive(Default)]
struct RejectLog {
    count: AtomicU64,
    last: std::sync::Mutex<Option<Instant>>,
}

impl RejectLog {
    fn note(&self, cap: usize) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(
                max_connections = cap,
                refused_total = n,
                "connection limit reached; closing new connections"
            );
        }
    }
}
