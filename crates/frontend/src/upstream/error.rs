//! How an upstream call failed (classified for metrics, told to end users
//! in a short stable form) and how the frontend's configuration is refused.

use std::time::Duration;

use mesh_kit::config::redact_url;
use serde::Deserialize;

use super::FEATURE_STORE;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{upstream} did not answer within {after:?}")]
    Timeout {
        upstream: &'static str,
        after: Duration,
    },
    #[error("{upstream} is unreachable: {detail}")]
    Connect {
        upstream: &'static str,
        detail: String,
    },
    #[error("{upstream} answered {status}: {detail}")]
    Status {
        upstream: &'static str,
        status: u16,
        detail: String,
        /// The callee's `x-model-version`, if it sent one: errors are
        /// attributed to the version that produced them.
        model_version: Option<String>,
    },
    #[error("{upstream} answered something unusable: {detail}")]
    Invalid {
        upstream: &'static str,
        detail: String,
    },
}

impl UpstreamError {
    /// What the end user is told in a degraded answer's `reason`: short,
    /// stable, and free of internal URLs and raw errors (those stay in the
    /// logs, the spans and the `kind` label of the metrics), e.g.
    /// `feature store unavailable`, `model v2 timed out`.
    pub fn public_reason(&self, model_version: Option<&str>) -> String {
        let (upstream, what) = match self {
            Self::Timeout { upstream, .. } => (*upstream, "timed out"),
            Self::Connect { upstream, .. } => (*upstream, "unavailable"),
            Self::Status { upstream, .. } => (*upstream, "failed"),
            Self::Invalid { upstream, .. } => (*upstream, "answered something unusable"),
        };
        match (upstream, model_version) {
            (FEATURE_STORE, _) => format!("feature store {what}"),
            (_, Some(v)) if !v.is_empty() && v.len() <= 32 => format!("model {v} {what}"),
            _ => format!("model {what}"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } => "connect",
            Self::Status { .. } => "status",
            Self::Invalid { .. } => "invalid",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // URLs are shown redacted: one given with credentials (refused) must not
    // print its password.
    #[error(
        "--shadow-url {:?} is not an absolute http URL without credentials",
        redact_url(.0)
    )]
    ShadowUrl(String),
    #[error(
        "{flag} {url:?} is not an absolute http URL without credentials",
        flag = .0,
        url = redact_url(.1)
    )]
    Url(&'static str, String),
    #[error(
        "no gRPC URL for the model at {:?}: give the *-grpc-url flag an absolute http URL",
        redact_url(.0)
    )]
    GrpcUrl(String),
    #[error("--routing direct needs --model-v1-url and --model-v2-url")]
    MissingModelUrl,
    #[error("decision key file {path}: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    EventLog(#[from] events::EventLogError),
}

/// A failure to connect, send or read (refused, reset, closed early): the
/// client's Display hides the cause ("client error (Connect)"), so the
/// source chain says what actually happened.
pub(super) fn transport_error(
    upstream: &'static str,
    e: &(dyn std::error::Error + 'static),
) -> UpstreamError {
    let detail = with_causes(e.to_string(), e.source());
    UpstreamError::Connect { upstream, detail }
}

/// `detail: cause: its cause: …` down the source chain.
pub(super) fn with_causes(
    mut detail: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    detail
}

pub(super) fn invalid(upstream: &'static str, detail: impl ToString) -> UpstreamError {
    UpstreamError::Invalid {
        upstream,
        detail: detail.to_string(),
    }
}

/// The callee's `{"error": ...}` message, or a short excerpt of whatever it sent.
pub(super) fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body).map_or_else(
        |_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        |b| b.error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_url_is_named_without_its_password() {
        let url = "http://svc:hunter2@feature-store:8080";
        for e in [
            ConfigError::Url("--feature-store-url", url.into()),
            ConfigError::ShadowUrl(url.into()),
            ConfigError::GrpcUrl(url.into()),
        ] {
            let shown = e.to_string();
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("***@feature-store:8080"), "{shown}");
        }
    }

    #[test]
    fn error_messages_come_from_json_or_an_excerpt() {
        assert_eq!(error_message(br#"{"error":"boom"}"#), "boom");
        assert_eq!(error_message(b"plain"), "plain");
    }
}
