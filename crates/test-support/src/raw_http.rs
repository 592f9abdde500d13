//! A raw TCP server that speaks just enough HTTP/1.1 to see what a client
//! does: the connections it opens and each request head it sends, with no
//! HTTP library between them to hide a missing `Host` or an extra connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server saw: connections accepted, and each request's head.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub heads: Mutex<Vec<String>>,
}

impl Seen {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// How the server answers every request: `200` as model version `v1`.
#[derive(Clone, Copy, Debug)]
pub enum RawAnswer {
    /// The body `ok`, the connection kept.
    Ok,
    /// The body `ok`, then the connection closed without a word (as an idle
    /// timeout does).
    OkThenClose,
    /// A body of this many bytes, the connection kept.
    Body(usize),
}

/// Starts the server on a free loopback port; its `http://` URL, and what
/// it sees.
pub async fn raw_http_server(answer: RawAnswer) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::Relaxed);
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                    s.heads
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let body = match answer {
                        RawAnswer::Ok | RawAnswer::OkThenClose => b"ok".to_vec(),
                        RawAnswer::Body(n) => vec![b'x'; n],
                    };
                    let mut out = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-model-version: v1\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    out.extend_from_slice(&body);
                    let close = matches!(answer, RawAnswer::OkThenClose);
                    if sock.write_all(&out).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}
