//! Serving a router on an ephemeral loopback port for the length of a test.

use std::net::SocketAddr;

use axum::Router;
use tokio::sync::oneshot;

/// A running server; stops (gracefully) when dropped or [`Served::stop`]ped.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `app` on `127.0.0.1:0`.
pub async fn serve(app: Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, app)
}

/// Serves `app` on an already bound listener (e.g. to come back on the same port).
pub fn serve_on(listener: tokio::net::TcpListener, app: Router) -> Served {
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Served {
        addr,
        stop: Some(stop),
    }
}
