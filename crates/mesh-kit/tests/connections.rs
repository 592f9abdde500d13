//! Connection abuse and shutdown against the real listener (`serve_on` on a
//! loopback socket): slowloris and idle connections, the connection cap,
//! HTTP/2 prior knowledge, and a drain that no keep-alive client notices.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_kit::server::{ServeOptions, connection_capacity, serve_on};
use mesh_kit::{ServerArgs, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(opts: ServeOptions) -> Server {
    mesh_kit::telemetry::init_for_tests();
    let svc = Service::new("test", ServerArgs::for_tests());
    let health = svc.health();
    health.set_ready(true);
    let app = svc.router(
        Router::new().route(
            "/work",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                "done"
            }),
        ),
        Router::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(serve_on(listener, app, health, opts, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        done,
    }
}

fn opts() -> ServeOptions {
    ServeOptions {
        drain_delay: Duration::from_millis(300),
        shutdown_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(1),
        max_connections: 10_000,
    }
}

/// One real request on a new connection: status and body.
async fn get_work(addr: SocketAddr) -> Result<(u16, String), String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.write_all(b"GET /work HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .map_err(|_| "no answer within 5s".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    Ok((status, text))
}

/// Whether the server has closed `tcp` (EOF or reset) within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_connections_neither_starve_real_requests_nor_stay_open() {
    // The test holds both ends of every connection: two descriptors each.
    let room = connection_capacity(usize::MAX);
    let (slow, idle) = (500, 5_000.min(room.saturating_sub(1_200) / 2 - 500));
    println!("open-files room {room}: {slow} slowloris + {idle} idle connections");
    assert!(idle >= 1_000, "the open-files limit allows only {room}");
    let server = start(opts()).await;

    let mut held = Vec::new();
    for i in 0..slow + idle {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        if i < slow {
            // Half a request head; the rest never comes.
            tcp.write_all(b"GET /work HTTP/1.1\r\nhost: t\r\nx-a: ")
                .await
                .unwrap();
        } else if i < slow + 100 {
            // One keep-alive request answered, then silence.
            tcp.write_all(b"GET /work HTTP/1.1\r\nhost: t\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        }
        held.push(tcp);
    }
    let opened = Instant::now();
    // Real requests are answered while all of them are held.
    for _ in 0..20 {
        let (status, body) = get_work(server.addr).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let served_in = opened.elapsed();
    // The header-read timeout (1 s) then closes every one of them, the
    // trickling and the silent alike.
    let mut still_open = 0;
    for tcp in &mut held {
        let left = Duration::from_secs(4).saturating_sub(opened.elapsed());
        if !closed_within(tcp, left.max(Duration::from_millis(1))).await {
            still_open += 1;
        }
    }
    println!(
        "20 real requests served in {served_in:.1?} beside {} held connections; {still_open} still open after 4s",
        held.len()
    );
    assert_eq!(
        still_open, 0,
        "connections outlived the header-read timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_a_connection_is_closed_at_once_not_left_hanging() {
    let server = start(ServeOptions {
        max_connections: 20,
        header_read_timeout: Duration::from_secs(30),
        ..opts()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "the 21st connection hangs"
    );
    println!("21st connection closed after {:.1?}", started.elapsed());
    // A freed slot is used again.
    held.truncate(10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = get_work(server.addr).await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served() {
    // Envoy speaks h2c to an app port declared `http2` or `grpc`.
    let server = start(opts()).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    for _ in 0..3 {
        let res = client
            .get(format!("http://{}/work", server.addr).parse().unwrap())
            .await
            .unwrap();
        assert_eq!(res.version(), hyper::Version::HTTP_2);
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_hyper_rejects_before_routing_get_a_status_not_a_hang() {
    let server = start(opts()).await;
    // A request head past the 64 KiB buffer: 431, before any handler runs.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let big = format!(
        "GET /work HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
}

/// A keep-alive client on one connection, sending until the server says
/// `Connection: close` (it would then reconnect, to another replica under
/// a mesh). Returns (answered, told to close).
async fn keep_alive_client(addr: SocketAddr, failures: Arc<AtomicUsize>) -> (usize, bool) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut answered = 0;
    loop {
        let req = hyper::Request::get("/work")
            .header("host", "t")
            .body(Empty::<Bytes>::new())
            .unwrap();
        match send.send_request(req).await {
            Ok(res) => {
                let close = res
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                let ok = res.status() == 200;
                let _ = res.into_body().collect().await;
                if ok {
                    answered += 1;
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                if close {
                    return (answered, true);
                }
            }
            Err(e) => {
                eprintln!("keep-alive request failed: {e:?}");
                failures.fetch_add(1, Ordering::Relaxed);
                return (answered, false);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_tells_every_keep_alive_client_to_move_and_fails_none() {
    let mut server = start(opts()).await;
    let failures = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| tokio::spawn(keep_alive_client(server.addr, failures.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = server.stop.take().unwrap().send(());
    let mut told = 0;
    let mut answered = 0;
    for c in clients {
        let (n, close) = c.await.unwrap();
        answered += n;
        told += usize::from(close);
    }
    let failed = failures.load(Ordering::Relaxed);
    println!(
        "drain: {answered} answered on 16 keep-alive connections, {told} told to close, {failed} failed"
    );
    assert_eq!(failed, 0, "keep-alive requests failed during the drain");
    assert_eq!(told, 16, "every keep-alive client was told to close");
    server.done.await.unwrap().unwrap();
}
