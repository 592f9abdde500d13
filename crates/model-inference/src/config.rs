//! `mlmesh model-inference` flags; each has an env-var twin.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// ONNX model file to serve (input FP32 [batch, features]); with
    /// --model-download-url, where the download is cached (a writable
    /// directory, e.g. an emptyDir).
    #[arg(long, env = "MODEL_PATH")]
    pub model_path: PathBuf,

    /// Fetch the model from this http(s) URL at startup (a model registry
    /// outside the mesh) into --model-path, unless that file already holds
    /// it. Needs --model-sha256; a mismatch, an HTTP error or a timeout stops
    /// the service before it ever turns ready. (Not --model-url: that is the
    /// frontend's flag for the model service.)
    #[arg(long, env = "MODEL_DOWNLOAD_URL", requires = "model_sha256", value_parser = crate::fetch::parse_download_url)]
    pub model_download_url: Option<String>,

    /// The SHA-256 the downloaded model must have (`sha256sum FILE`).
    #[arg(long, env = "MODEL_SHA256", value_parser = crate::fetch::parse_sha256)]
    pub model_sha256: Option<String>,

    /// The whole download, retries included, must finish within this.
    #[arg(long, env = "MODEL_DOWNLOAD_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub model_download_timeout: Duration,

    /// Largest model accepted from --model-download-url, in bytes.
    #[arg(long, env = "MODEL_MAX_BYTES", default_value_t = 256 << 20)]
    pub model_max_bytes: u64,

    /// Name the model is served under: /v2/models/{name}.
    #[arg(long, env = "MODEL_NAME", default_value = "propensity", value_parser = parse_path_segment)]
    pub model_name: String,

    /// Version the model is served as (v1, v2, ...): /v2/models/{name}/versions/{version},
    /// the `x-model-version` response header and the `version` metric label.
    #[arg(long, env = "MODEL_VERSION", default_value = "v1", value_parser = parse_path_segment)]
    pub model_version: String,

    /// Most rows in one model run, and in one request.
    #[arg(long, env = "MAX_BATCH_SIZE", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch_size: u32,

    /// How long a request may wait for others to share its model run. 0 batches
    /// whatever is already queued and never waits.
    #[arg(long, env = "MAX_QUEUE_DELAY", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub max_queue_delay: Duration,

    /// Requests that may wait for a worker; beyond it requests are shed with 429.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,

    /// How long a request that finds the queue full waits for a place before
    /// it is shed with 429. The wait holds its connection, so a keep-alive
    /// client with a bounded pool (an Envoy sidecar) slows down instead of
    /// being refused and straight back; 0 sheds at once.
    #[arg(long, env = "ADMISSION_WAIT", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub admission_wait: Duration,

    /// Inference threads, each with its own model session [default: half the CPUs, at least 1].
    #[arg(long, env = "INFERENCE_WORKERS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: Option<u32>,

    /// Largest accepted request body, in bytes (a gRPC message too).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Where the gRPC protocol (inference.GRPCInferenceService and
    /// grpc.health.v1) listens, or `off`. Its own port, as in KServe and
    /// Triton, so the mesh can declare it `grpc` and balance per request.
    #[arg(long, env = "GRPC_LISTEN", default_value = "0.0.0.0:9000", value_parser = parse_grpc_listen)]
    pub grpc_listen: GrpcListen,

    /// Fault knob: added to every logit (probabilities follow), e.g. 1.5 makes
    /// the model over-confident while still answering 200.
    #[arg(long, env = "FAULT_SCORE_SHIFT", default_value_t = 0.0, allow_negative_numbers = true, value_parser = parse_finite)]
    pub fault_score_shift: f32,

    /// Fault knob: standard deviation of Gaussian noise added to every logit,
    /// which degrades ranking quality (AUC) while still answering 200.
    #[arg(long, env = "FAULT_SCORE_NOISE", default_value_t = 0.0, value_parser = parse_non_negative)]
    pub fault_score_noise: f32,

    /// One `prediction` event per scored row (events crate).
    #[command(flatten)]
    pub events: events::EventLogArgs,
}

/// `--grpc-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcListen {
    Off,
    On(std::net::SocketAddr),
}

impl GrpcListen {
    pub fn addr(self) -> Option<std::net::SocketAddr> {
        match self {
            Self::Off => None,
            Self::On(a) => Some(a),
        }
    }
}

fn parse_grpc_listen(s: &str) -> Result<GrpcListen, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(GrpcListen::Off);
    }
    s.trim()
        .parse()
        .map(GrpcListen::On)
        .map_err(|e| format!("{s:?} is neither `off` nor an address like 0.0.0.0:9000: {e}"))
}

impl ModelArgs {
    /// The download to make before loading, when a URL is configured.
    pub fn fetch_spec(&self) -> Option<crate::fetch::FetchSpec> {
        let url = self.model_download_url.clone()?;
        Some(crate::fetch::FetchSpec {
            url,
            // `requires` makes clap refuse a URL without a digest; code that
            // builds ModelArgs by hand gets a digest nothing matches.
            sha256: self.model_sha256.clone().unwrap_or_default(),
            dest: self.model_path.clone(),
            timeout: self.model_download_timeout,
            max_bytes: self.model_max_bytes,
            attempts: crate::fetch::DOWNLOAD_ATTEMPTS,
        })
    }

    /// Defaults for a model file, as the CLI would give them.
    pub fn for_model(path: impl Into<PathBuf>, version: &str) -> Self {
        Self {
            model_path: path.into(),
            model_download_url: None,
            model_sha256: None,
            model_download_timeout: Duration::from_secs(120),
            model_max_bytes: 256 << 20,
            model_name: "propensity".into(),
            model_version: version.into(),
            max_batch_size: 64,
            max_queue_delay: Duration::ZERO,
            queue_capacity: 1024,
            admission_wait: Duration::from_millis(50),
            workers: None,
            max_body_bytes: 1 << 20,
            // Tests and embedders choose their own gRPC listener.
            grpc_listen: GrpcListen::Off,
            fault_score_shift: 0.0,
            fault_score_noise: 0.0,
            events: events::EventLogArgs::default(),
        }
    }
}

fn parse_path_segment(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` must be non-empty and use only letters, digits, '-', '_', '.'"
        ))
    }
}

fn parse_finite(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a finite number")),
    }
}

fn parse_non_negative(s: &str) -> Result<f32, String> {
    parse_finite(s).and_then(|v| {
        if v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("`{s}` must not be negative"))
        }
    })
}
