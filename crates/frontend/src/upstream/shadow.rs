//! Shadow traffic in `direct` mode: a share of live inference calls copied
//! to a third model, as Envoy's mirroring does, answers discarded.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderValue, Method, header};
use tokio::sync::Semaphore;
use tracing::Instrument;

use mesh_kit::propagation::Forwarded;

use super::grpc::{grpc_error, grpc_request, grpc_span};
use super::http::{absolute, client_span, content_headers, exchange, http_request};
use super::model::{ModelTarget, Outbound, Wire};
use super::{ConfigError, SHADOW, Upstreams};
use crate::config::{FrontendArgs, RoutingMode};

/// Mirrored calls in flight at once; beyond this, mirroring is skipped so a
/// slow shadow can never hold memory or sockets the live path needs.
const MAX_SHADOW_IN_FLIGHT: usize = 64;

pub(super) struct Shadow {
    target: ModelTarget,
    host: HeaderValue,
    percent: u8,
    slots: Arc<Semaphore>,
}

impl Shadow {
    /// The shadow `args` asks for (`--shadow-url`, direct mode only), its
    /// target built by `target` in the live calls' protocol.
    pub(super) fn configure(
        args: &FrontendArgs,
        target: impl Fn(&str, Option<&String>) -> Result<ModelTarget, ConfigError>,
    ) -> Result<Option<Self>, ConfigError> {
        // An empty SHADOW_URL (compose's `${SHADOW_URL:-}`) means no shadow.
        let shadow_url = args.shadow_url.clone().filter(|u| !u.trim().is_empty());
        Ok(match (&shadow_url, args.routing) {
            (Some(url), RoutingMode::Direct) => {
                let target = target(url, args.shadow_grpc_url.as_ref())?;
                let host = shadow_host(target.describe())
                    .ok_or_else(|| ConfigError::ShadowUrl(url.clone()))?;
                Some(Shadow {
                    target,
                    host,
                    percent: args.shadow_percent,
                    slots: Arc::new(Semaphore::new(MAX_SHADOW_IN_FLIGHT)),
                })
            }
            (Some(_), RoutingMode::Mesh) => {
                tracing::warn!(
                    "--shadow-url is ignored in mesh mode: mirror with a VirtualService instead"
                );
                None
            }
            (None, _) => None,
        })
    }
}

impl Upstreams {
    /// Fire-and-forget copy of a live inference call, as Envoy's mirroring
    /// does: same request and headers, Host suffixed `-shadow`, answer
    /// discarded.
    pub(super) fn mirror(&self, request: &Outbound, fwd: &Forwarded) {
        let Some(shadow) = &self.shadow else { return };
        if fastrand::u32(0..100) >= u32::from(shadow.percent) {
            return;
        }
        let Ok(permit) = Arc::clone(&shadow.slots).try_acquire_owned() else {
            self.metrics.shadow("dropped");
            return;
        };
        let metrics = self.metrics.clone();
        let timeout = self.timeout;
        let send: std::pin::Pin<Box<dyn Future<Output = Option<&'static str>> + Send>> =
            match (&shadow.target.wire, request.clone()) {
                (Wire::Http { infer_url, .. }, Outbound::Http { body, json_len }) => {
                    let span = client_span(SHADOW, &Method::POST, infer_url.as_str());
                    let mut headers = span.in_scope(|| fwd.outbound_headers());
                    headers.insert(header::HOST, shadow.host.clone());
                    content_headers(&mut headers, json_len);
                    let request = http_request(Method::POST, infer_url, headers, body);
                    let url = infer_url.clone();
                    Box::pin(
                        async move {
                            // One classification of failures for live and mirrored calls.
                            match exchange(&url, SHADOW, request, timeout).await {
                                Ok((status, ..)) if status.is_success() => None,
                                Ok(_) => Some("status"),
                                Err(e) => Some(e.kind()),
                            }
                        }
                        .instrument(span),
                    )
                }
                (Wire::Grpc { client, url }, Outbound::Grpc(message)) => {
                    let span = grpc_span(SHADOW, "ModelInfer", url);
                    let mut headers = span.in_scope(|| fwd.outbound_headers());
                    headers.insert(header::HOST, shadow.host.clone());
                    let mut request = grpc_request(message, headers);
                    request.set_timeout(timeout);
                    let mut client = client.clone();
                    Box::pin(
                        async move {
                            match tokio::time::timeout(timeout, client.model_infer(request)).await {
                                Err(_) => Some("timeout"),
                                Ok(Ok(_)) => None,
                                Ok(Err(status)) => Some(grpc_error(SHADOW, status).kind()),
                            }
                        }
                        .instrument(span),
                    )
                }
                // The shadow speaks the live protocol (one --model-protocol).
                _ => return,
            };
        tokio::spawn(async move {
            let started = Instant::now();
            let error = send.await;
            metrics.upstream_call(SHADOW, started.elapsed().as_secs_f64(), error);
            metrics.shadow(if error.is_some() { "failed" } else { "sent" });
            drop(permit);
        });
    }
}

/// Envoy's mirror Host: `-shadow` appended to the host name, before any port.
fn shadow_host(url: &str) -> Option<HeaderValue> {
    let url = absolute(url)?;
    let host = url.host()?;
    let value = match url.port() {
        Some(port) => format!("{host}-shadow:{port}"),
        None => format!("{host}-shadow"),
    };
    HeaderValue::from_str(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_suffixes_the_name_not_the_port() {
        assert_eq!(
            shadow_host("http://model-inference-v2:8080").unwrap(),
            "model-inference-v2-shadow:8080"
        );
        assert_eq!(shadow_host("http://v2.local/").unwrap(), "v2.local-shadow");
        assert!(shadow_host("not a url").is_none());
        assert!(shadow_host("ftp://x").is_none());
    }
}
