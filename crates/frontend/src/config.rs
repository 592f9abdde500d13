//! Frontend flags (each with an env twin, like every mlmesh service).

use std::time::Duration;

use clap::{Args, ValueEnum};
use mesh_kit::config::parse_fraction;

/// Who picks the model version for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoutingMode {
    /// One `--model-url`; the frontend only sets the cohort header and the
    /// mesh (an Istio VirtualService) routes on it.
    Mesh,
    /// The frontend calls `--model-v1-url` or `--model-v2-url` itself (and
    /// mirrors to `--shadow-url`), so experiments work without Istio.
    Direct,
}

/// How decisions read their users' features from the feature store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FeatureReads {
    /// `batched` in `direct` mode, `single` in `mesh` mode.
    Auto,
    /// One `GET /v1/features/{id}` per decision. Under Istio each read is
    /// then routed on its own user's headers (consistent hashing on
    /// `x-user-id` keeps a customer on one feature-store pod), and faults,
    /// retries and traces are per decision, as the labs show them.
    Single,
    /// Decisions that need the store at the same moment share one `POST
    /// /v1/features:batch` (binary): under load one call serves dozens of
    /// decisions, which saves each of them a loopback round trip and the
    /// store's per-request work. At low load every read is alone, as with
    /// `single`. The batch call is in the trace of the decision that led
    /// it; the other decisions' spans link to that decision's span.
    Batched,
}

/// The protocol the frontend speaks to model-inference unless told
/// otherwise: the one that costs the whole chain least per decision in
/// BENCHMARKS.md (session 19: binary tensors, 4% fewer instructions than
/// JSON, the model no longer parsing 85 numbers per call). A user's `curl`
/// still talks JSON to the frontend; only the frontend's own hop changes.
pub const DEFAULT_MODEL_PROTOCOL: oip::Protocol = oip::Protocol::HttpBinary;

/// model-inference's gRPC port (its `--grpc-listen` default), where a
/// `*-grpc-url` left unset points.
pub const DEFAULT_GRPC_PORT: u16 = 9000;

/// The offer threshold the frontend decides at unless told otherwise (and
/// `mlmesh analyze` judges a shadow launch at).
pub const DEFAULT_THRESHOLD: f64 = 0.1;

#[derive(Debug, Clone, Args)]
pub struct FrontendArgs {
    /// `mesh` under Istio, `direct` under docker compose and `mlmesh up`.
    #[arg(long, env = "ROUTING_MODE", value_enum, default_value_t = RoutingMode::Mesh)]
    pub routing: RoutingMode,

    /// Base URL of the feature store.
    #[arg(
        long,
        env = "FEATURE_STORE_URL",
        default_value = "http://feature-store:8080"
    )]
    pub feature_store_url: String,

    /// How the frontend talks to model-inference: OIP REST with JSON or
    /// binary tensors, or gRPC (to the `*-grpc-url`s below).
    #[arg(long, env = "MODEL_PROTOCOL", value_enum, default_value_t = DEFAULT_MODEL_PROTOCOL)]
    pub model_protocol: oip::Protocol,

    /// How decisions read their users' features: `batched` shares one
    /// feature-store call among concurrent decisions; `auto` batches in
    /// `direct` mode only.
    #[arg(long, env = "FEATURE_READS", value_enum, default_value_t = FeatureReads::Auto)]
    pub feature_reads: FeatureReads,

    /// Base URL of model-inference's REST port in `mesh` mode (the mesh
    /// picks v1 or v2).
    #[arg(long, env = "MODEL_URL", default_value = "http://model-inference:8080")]
    pub model_url: String,

    /// `--model-protocol grpc`, `mesh` mode: model-inference's gRPC port.
    /// Default: `--model-url`'s host on port 9000.
    #[arg(long, env = "MODEL_GRPC_URL")]
    pub model_grpc_url: Option<String>,

    /// `direct` mode: the baseline model (serves the baseline cohort).
    #[arg(long, env = "MODEL_V1_URL", required_if_eq("routing", "direct"))]
    pub model_v1_url: Option<String>,

    /// `direct` mode: the candidate model (serves the candidate cohort).
    #[arg(long, env = "MODEL_V2_URL", required_if_eq("routing", "direct"))]
    pub model_v2_url: Option<String>,

    /// `--model-protocol grpc`, `direct` mode: the baseline's gRPC port.
    /// Default: `--model-v1-url`'s host on port 9000.
    #[arg(long, env = "MODEL_V1_GRPC_URL")]
    pub model_v1_grpc_url: Option<String>,

    /// `--model-protocol grpc`, `direct` mode: the candidate's gRPC port.
    /// Default: `--model-v2-url`'s host on port 9000.
    #[arg(long, env = "MODEL_V2_GRPC_URL")]
    pub model_v2_grpc_url: Option<String>,

    /// `direct` mode: mirror live inference calls here, fire-and-forget, with
    /// a `-shadow` Host as Envoy does; the answers are discarded.
    #[arg(long, env = "SHADOW_URL")]
    pub shadow_url: Option<String>,

    /// `--model-protocol grpc`: the shadow's gRPC port. Default:
    /// `--shadow-url`'s host on port 9000.
    #[arg(long, env = "SHADOW_GRPC_URL")]
    pub shadow_grpc_url: Option<String>,

    /// Share of live calls mirrored to `--shadow-url`, in percent.
    #[arg(long, env = "SHADOW_PERCENT", default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub shadow_percent: u8,

    /// The model's name in the Open Inference Protocol paths.
    #[arg(long, env = "MODEL_NAME", default_value = "propensity")]
    pub model_name: String,

    /// Percent of the 100 user buckets assigned to the candidate (v2).
    /// Raising it only moves users from baseline to candidate.
    #[arg(long, env = "CANARY_PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub canary_percent: u8,

    /// Hashed with the user id into a bucket; change it to start a new
    /// experiment with fresh, independent assignments.
    #[arg(long, env = "EXPERIMENT_SALT", default_value = "mlmesh-experiment-1")]
    pub experiment_salt: String,

    /// Offer when the predicted purchase probability is at least this. The
    /// default offers to roughly the top 17-20% of customers.
    #[arg(long, env = "DECISION_THRESHOLD", default_value_t = DEFAULT_THRESHOLD, value_parser = parse_fraction)]
    pub threshold: f64,

    /// Timeout on every call to an upstream (feature store, model).
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Secret that signs decision ids, so feedback cannot be forged. Give
    /// every frontend replica the same key; when unset a random per-process
    /// key is used and feedback verifies only at the replica that decided.
    #[arg(long, env = "DECISION_KEY", hide_env_values = true)]
    pub decision_key: Option<String>,

    /// File holding the decision key, used when `--decision-key` is unset.
    /// When the file does not exist, a random key is written to it first
    /// (mode 0600), so every replica sharing the file, and every restart,
    /// sign with the same key without anyone choosing one (compose does this).
    #[arg(long, env = "DECISION_KEY_FILE")]
    pub decision_key_file: Option<std::path::PathBuf>,

    /// Feedback for decisions older than this is rejected.
    #[arg(long, env = "DECISION_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub decision_max_age: Duration,

    /// `exposure` and `outcome` events (events crate).
    #[command(flatten)]
    pub events: events::EventLogArgs,
}

impl FrontendArgs {
    /// Whether concurrent decisions' feature reads share one call.
    pub fn batches_feature_reads(&self) -> bool {
        match self.feature_reads {
            FeatureReads::Batched => true,
            FeatureReads::Single => false,
            FeatureReads::Auto => self.routing == RoutingMode::Direct,
        }
    }

    /// `direct` routing to the given model URLs, 10% canary; for tests and `mlmesh up`.
    pub fn direct(feature_store_url: String, v1: String, v2: String) -> Self {
        Self {
            routing: RoutingMode::Direct,
            feature_store_url,
            model_protocol: DEFAULT_MODEL_PROTOCOL,
            feature_reads: FeatureReads::Auto,
            model_url: String::new(),
            model_grpc_url: None,
            model_v1_url: Some(v1),
            model_v2_url: Some(v2),
            model_v1_grpc_url: None,
            model_v2_grpc_url: None,
            shadow_url: None,
            shadow_grpc_url: None,
            shadow_percent: 100,
            model_name: "propensity".into(),
            canary_percent: 10,
            experiment_salt: "mlmesh-experiment-1".into(),
            threshold: DEFAULT_THRESHOLD,
            upstream_timeout: Duration::from_secs(1),
            decision_key: Some("mlmesh-test-decision-key".into()),
            decision_key_file: None,
            decision_max_age: Duration::from_secs(24 * 3600),
            events: events::EventLogArgs::default(),
        }
    }
}
