//! An HTTP/1 client for one upstream: keep-alive connections to its
//! `http://host:port`, each carrying one request at a time and kept for the
//! next once its answer has been read to the end.
//!
//! Why not hyper-util's pooled client: for a single host it still hashes the
//! pool key (SipHash over scheme and authority, three times per request) and
//! moves large futures on every request. Replacing it took the load tool from
//! ~43k to ~33k instructions per request (BENCHMARKS.md, "Load generator"),
//! and the frontend's upstream calls are the same shape: a handful of known
//! hosts, a whole small answer per request.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("an answer over {limit} bytes")]
    TooLarge { limit: usize },
}

/// An answer read to its end.
pub type Answer = Response<Bytes>;

/// How long a connection may wait unused before it is closed rather than
/// reused: under the 60 s after which mlmesh's servers (`--header-read-timeout`)
/// close an idle connection, so this side lets go first and a request never
/// meets a connection the server is closing at that moment.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Keep-alive connections to one `http://host:port`.
pub struct Connections {
    host: String,
    port: u16,
    /// The `Host` header of every request that does not set its own.
    authority: HeaderValue,
    /// The base URL's path, without a trailing `/`: what [`Connections::uri`]
    /// puts before each request's path.
    prefix: String,
    /// Idle connections, the most recently used last, each with the time it
    /// became idle.
    idle: Mutex<VecDeque<(SendRequest<Full<Bytes>>, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
    max_answer_bytes: usize,
}

// === impl Connections ===

impl Connections {
    /// Connections to `base`'s host: up to 1,024 kept idle for
    /// [`DEFAULT_IDLE_TIMEOUT`], answers of any size. `None` unless `base` is
    /// an absolute `http://` URL without credentials (under a mesh the
    /// sidecar adds the TLS).
    pub fn new(base: &Uri) -> Option<Self> {
        if base.scheme_str() != Some("http") {
            return None;
        }
        let authority = base.authority()?;
        // No credentials in a URL whose authority goes in a Host header.
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return None;
        }
        Some(Self {
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: HeaderValue::from_str(authority.as_str()).ok()?,
            prefix: base.path().trim_end_matches('/').to_owned(),
            idle: Mutex::new(VecDeque::new()),
            max_idle: 1024,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_answer_bytes: usize::MAX,
        })
    }

    /// Keeps at most `n` connections idle between requests.
    pub fn max_idle(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    /// Closes a connection idle for longer than `d` instead of reusing it.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Refuses (and closes the connection of) an answer body over `n` bytes.
    pub fn max_answer_bytes(mut self, n: usize) -> Self {
        self.max_answer_bytes = n;
        self
    }

    /// The origin-form URI of `path_and_query` (which starts with `/`) under
    /// the base URL's path.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Ok(format!("{}{path_and_query}", self.prefix).parse()?)
    }

    /// Sends `req` (its URI in origin form, see [`Connections::uri`]) on an
    /// idle connection or a new one, and reads the whole answer. A request
    /// that an idle connection could not take (the server closed it in the
    /// meantime) goes once more on a new connection, as nothing was sent.
    pub async fn send(&self, mut req: Request<Full<Bytes>>) -> Result<Answer, ClientError> {
        if let header::Entry::Vacant(host) = req.headers_mut().entry(header::HOST) {
            host.insert(self.authority.clone());
        }
        let req = match self.checkout() {
            Some(mut conn) => match conn.try_send_request(req).await {
                Ok(res) => return self.read(conn, res).await,
                Err(mut e) => e.take_message().ok_or_else(|| e.into_error())?,
            },
            None => req,
        };
        let mut conn = self.connect().await?;
        let res = conn.send_request(req).await?;
        self.read(conn, res).await
    }

    /// The number of connections kept idle now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Reads `res` to its end, then keeps `conn` for the next request once
    /// it is ready again, unless the server said `Connection: close` or
    /// went away.
    async fn read(
        &self,
        mut conn: SendRequest<Full<Bytes>>,
        res: Response<Incoming>,
    ) -> Result<Answer, ClientError> {
        let (parts, body) = res.into_parts();
        let body = Limited::new(body, self.max_answer_bytes)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => ClientError::Http(*e),
                // Limited's only other error: the connection is dropped
                // with the rest of the body unread.
                Err(e) => {
                    debug_assert!(e.is::<LengthLimitError>());
                    ClientError::TooLarge {
                        limit: self.max_answer_bytes,
                    }
                }
            })?
            .to_bytes();
        if conn.ready().await.is_ok() {
            self.checkin(conn);
        }
        Ok(Response::from_parts(parts, body))
    }

    fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop_back() {
            if since.elapsed() > self.idle_timeout {
                // Every connection before it has been idle longer still.
                idle.clear();
                return None;
            }
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: SendRequest<Full<Bytes>>) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest goes once it has waited too long, so a burst's extra
        // connections do not stay open for ever after it.
        if idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) > self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back((conn, now));
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let connect_err = |source| ClientError::Connect {
            authority: format!("{}:{}", self.host, self.port),
            source,
        };
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        // The connection's I/O runs on its own task until either side closes it.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_without_credentials_are_targets() {
        for bad in [
            "https://example.com",
            "http://user:pw@example.com/",
            "/relative",
        ] {
            assert!(Connections::new(&bad.parse().unwrap()).is_none(), "{bad}");
        }
        let c = Connections::new(&"http://gateway.local:8080/lab/".parse().unwrap()).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("gateway.local", 8080));
        assert_eq!(c.authority, "gateway.local:8080");
        assert_eq!(
            c.uri("/predict?user_id=7").unwrap(),
            "/lab/predict?user_id=7"
        );
        let v6 = Connections::new(&"http://[::1]".parse().unwrap()).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 80));
        assert_eq!(v6.uri("/").unwrap(), "/");
    }
}
