//! Fetching the model from a registry URL at startup, as KServe's storage
//! initializer and Seldon do: bounded in time and size, retried with backoff
//! on what a retry can fix, verified against a pinned SHA-256 before it is
//! ever loaded, and cached so a restarted container (same `emptyDir`) does
//! not download it again.
//!
//! Under Istio this is the egress use case (`istio/egress/`): the registry is
//! outside the mesh, and only model-inference may reach it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// Attempts per download; only transport errors, timeouts of one attempt,
/// 429 and 5xx are retried, within the one overall deadline.
pub const DOWNLOAD_ATTEMPTS: u32 = 4;
/// The first wait between attempts; doubled after each.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What to fetch, where to, and within which bounds.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    pub url: String,
    /// Lowercase hex, 64 digits (checked by the flag's parser).
    pub sha256: String,
    /// The cache file; its directory must be writable.
    pub dest: PathBuf,
    /// For the whole fetch, retries and waits included.
    pub timeout: Duration,
    pub max_bytes: u64,
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "the model from {url} is not the pinned one: expected sha256 {expected}, got {actual} ({bytes} bytes); refusing to serve it"
    )]
    Digest {
        url: String,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("downloading the model from {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("downloading the model from {url}: larger than --model-max-bytes ({limit} bytes)")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "downloading the model from {url}: not done within --model-download-timeout ({after:?})"
    )]
    Timeout { url: String, after: Duration },
    #[error("downloading the model from {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("model cache file {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

// === impl FetchError ===

impl FetchError {
    /// Whether another attempt could succeed.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Digest { .. } | Self::TooLarge { .. } | Self::Cache { .. } => false,
        }
    }
}

/// `url` safe for logs and errors: no userinfo, and no query (a presigned
/// URL's query is its credential).
pub fn shown(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?…"),
        None => (url, ""),
    };
    format!("{}{query}", mesh_kit::config::redact_url(base))
}

/// Makes `spec.dest` hold the pinned model: kept if it already does,
/// downloaded otherwise. Returns whether it was downloaded.
pub async fn fetch(spec: &FetchSpec) -> Result<bool, FetchError> {
    let url = shown(&spec.url);
    if let Some(actual) = file_digest(&spec.dest).await?
        && actual == spec.sha256
    {
        tracing::info!(path = %spec.dest.display(), "model cache holds the pinned model; not downloading");
        return Ok(false);
    }
    let deadline = Instant::now() + spec.timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        tracing::info!(%url, attempt, "downloading the model");
        let budget = deadline.saturating_duration_since(Instant::now());
        // ureq is blocking: the download runs off the async runtime.
        let (s, u) = (spec.clone(), url.clone());
        let error = match tokio::task::spawn_blocking(move || download_once(&s, &u, budget)).await {
            Ok(Ok(bytes)) => {
                tracing::info!(%url, bytes, sha256 = %spec.sha256, path = %spec.dest.display(), "model downloaded and verified");
                return Ok(true);
            }
            Ok(Err(e)) => e,
            Err(join) => FetchError::Transport {
                url: url.clone(),
                detail: format!("the download task failed: {join}"),
            },
        };
        let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
        if !error.is_retryable() || attempt >= spec.attempts || wait.is_zero() {
            return Err(error);
        }
        tracing::warn!(%error, attempt, retry_in = ?wait, "model download failed; retrying");
        tokio::time::sleep(wait).await;
        backoff *= 2;
        attempt += 1;
    }
}

/// One attempt within `budget`: streams into `<dest>.part`, hashing as it
/// goes, and renames it into place only once the digest matches.
fn download_once(spec: &FetchSpec, url: &str, budget: Duration) -> Result<u64, FetchError> {
    let part = spec.dest.with_extension("part");
    let result = stream_to(spec, url, budget, &part).and_then(|bytes| {
        std::fs::rename(&part, &spec.dest).map_err(|source| FetchError::Cache {
            path: spec.dest.clone(),
            source,
        })?;
        Ok(bytes)
    });
    if result.is_err() {
        // Never leave a partial or wrong file behind to be mistaken for a model.
        let _ = std::fs::remove_file(&part);
    }
    result
}

fn stream_to(
    spec: &FetchSpec,
    url: &str,
    budget: Duration,
    part: &Path,
) -> Result<u64, FetchError> {
    let timeout = || FetchError::Timeout {
        url: url.to_owned(),
        after: spec.timeout,
    };
    if budget.is_zero() {
        return Err(timeout());
    }
    let failed = |e: ureq::Error| match e {
        ureq::Error::Timeout(_) => timeout(),
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => timeout(),
        e => FetchError::Transport {
            url: url.to_owned(),
            detail: e.to_string(),
        },
    };
    let too_large = || FetchError::TooLarge {
        url: url.to_owned(),
        limit: spec.max_bytes,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(budget))
        .timeout_connect(Some(budget.min(Duration::from_secs(10))))
        .http_status_as_error(false)
        // The system's CAs, as curl uses: a registry behind a company CA works.
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into();
    let mut res = agent.get(&spec.url).call().map_err(failed)?;
    let status = res.status();
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    if res
        .body()
        .content_length()
        .is_some_and(|n| n > spec.max_bytes)
    {
        return Err(too_large());
    }
    let cache = |source| FetchError::Cache {
        path: part.to_owned(),
        source,
    };
    let mut file = std::fs::File::create(part).map_err(cache)?;
    // No ureq limit (its default is 10 MB): the bytes are counted here.
    let mut reader = res.body_mut().with_config().limit(u64::MAX).reader();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(timeout()),
            Err(e) => {
                return Err(FetchError::Transport {
                    url: url.to_owned(),
                    detail: e.to_string(),
                });
            }
        };
        bytes += n as u64;
        // Counted as it arrives: a server may send no length, or lie.
        if bytes > spec.max_bytes {
            return Err(too_large());
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(cache)?;
    }
    file.sync_all().map_err(cache)?;
    let actual = hex(&hasher.finalize());
    if actual != spec.sha256 {
        return Err(FetchError::Digest {
            url: url.to_owned(),
            expected: spec.sha256.clone(),
            actual,
            bytes,
        });
    }
    Ok(bytes)
}

/// The SHA-256 of the file at `path`, or `None` when there is none.
async fn file_digest(path: &Path) -> Result<Option<String>, FetchError> {
    let cache = |source| FetchError::Cache {
        path: path.to_owned(),
        source,
    };
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cache(e)),
    };
    // In pieces: a model may be as large as the container's memory limit.
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = file.read(&mut buf).await.map_err(cache)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes`' SHA-256 as `--model-sha256` takes it (and `sha256sum` prints it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Parses `--model-sha256`: 64 hex digits, any case, stored lowercase.
pub fn parse_sha256(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("a SHA-256 is 64 hex digits (`sha256sum FILE` prints it)".into())
    }
}

/// Parses `--model-download-url`: an absolute http(s) URL.
pub fn parse_download_url(s: &str) -> Result<String, String> {
    match s.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
            Ok(s.to_owned())
        }
        _ => Err(format!("{} is not an absolute http(s) URL", shown(s))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_urls_are_checked_when_parsed() {
        let d = "AB".repeat(32);
        assert_eq!(parse_sha256(&d).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"g".repeat(64)).is_err());
        assert!(parse_download_url("https://example.com/m.onnx").is_ok());
        assert!(parse_download_url("file:///etc/passwd").is_err());
        assert!(parse_download_url("models/m.onnx").is_err());
    }

    #[test]
    fn shown_urls_carry_no_credentials() {
        let s = shown("https://user:s3cret@registry.example/m.onnx?X-Amz-Signature=abc");
        assert_eq!(s, "https://***@registry.example/m.onnx?…");
        let e = parse_download_url("ftp://u:s3cret@h/m").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
