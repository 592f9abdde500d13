//! The tool's HTTP/1 client: keep-alive connections to its one target, each
//! carrying one request at a time, kept for the next request once its answer
//! has been read.
//!
//! Why not hyper-util's pooled client: for a single host it still hashes
//! the pool key (SipHash over scheme and authority, three times per request)
//! and moves large futures on every request: replacing it took the tool
//! from ~43k to ~33k instructions per request (BENCHMARKS.md), on the cores
//! the measured services share.

use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Idle keep-alive connections to one `http://host:port`.
pub struct Connections {
    host: String,
    port: u16,
    /// The `Host` header of every request that does not set its own.
    authority: HeaderValue,
    /// The base URL's path, without a trailing `/`: what [`Connections::uri`]
    /// puts before each request's path.
    prefix: String,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    max_idle: usize,
}

/// An answer read to its end.
pub type Answer = Response<Bytes>;

// === impl Connections ===

impl Connections {
    /// Connections to `base`'s host, keeping up to `max_idle` between
    /// requests. `None` unless `base` is an absolute `http://` URL.
    pub fn new(base: &Uri, max_idle: usize) -> Option<Self> {
        if base.scheme_str() != Some("http") {
            return None;
        }
        let authority = base.authority()?;
        // No credentials in a URL the tool would put in a Host header.
        if authority.as_str().contains('@') {
            return None;
        }
        Some(Self {
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: HeaderValue::from_str(authority.as_str()).ok()?,
            prefix: base.path().trim_end_matches('/').to_owned(),
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
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
    pub async fn send(&self, mut req: Request<Full<Bytes>>) -> Result<Answer, ConnError> {
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

    /// Reads `res` to its end, then keeps `conn` for the next request once
    /// it is ready again, unless the server said `Connection: close` or
    /// went away.
    async fn read(
        &self,
        mut conn: SendRequest<Full<Bytes>>,
        res: Response<Incoming>,
    ) -> Result<Answer, ConnError> {
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        if conn.ready().await.is_ok() {
            self.checkin(conn);
        }
        Ok(Response::from_parts(parts, body))
    }

    fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap();
        while let Some(conn) = idle.pop() {
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ConnError> {
        let connect_err = |source| ConnError::Connect {
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
            assert!(
                Connections::new(&bad.parse().unwrap(), 1).is_none(),
                "{bad}"
            );
        }
        let c = Connections::new(&"http://gateway.local:8080/lab/".parse().unwrap(), 1).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("gateway.local", 8080));
        assert_eq!(c.authority, "gateway.local:8080");
        assert_eq!(
            c.uri("/predict?user_id=7").unwrap(),
            "/lab/predict?user_id=7"
        );
        let v6 = Connections::new(&"http://[::1]".parse().unwrap(), 1).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 80));
        assert_eq!(v6.uri("/").unwrap(), "/");
    }
}
