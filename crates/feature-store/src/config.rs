//! `mlmesh feature-store` flags; each has an env-var twin.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::schema::default_seed_path;

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Redis to serve from, e.g. redis://localhost:6379 (its value is never
    /// printed: it may carry a password). Without it the
    /// service serves from an in-memory store seeded from --seed-file.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Seed rows (CSV with user_id,held_out,purchase,<features>); its header
    /// is also the feature schema that writes are validated against.
    #[arg(long, env = "SEED_FILE", default_value_os_t = default_seed_path())]
    pub seed_file: PathBuf,

    /// When Redis has lost the seed rows (a memory-only Redis restarted),
    /// load them again from --seed-file instead of staying unready until
    /// someone runs `mlmesh feature-store seed`. compose and k8s/ turn it on.
    #[arg(long, env = "RESEED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub reseed: bool,

    /// Values whose event time is older than this come back as STALE, e.g. `24h`.
    #[arg(long, env = "MAX_AGE", value_parser = humantime::parse_duration)]
    pub max_age: Option<Duration>,

    /// Bound on every Redis call; past it the request fails fast with 503.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// How often readiness re-checks Redis.
    #[arg(long, env = "HEALTH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,

    /// Most entities in one batch read.
    #[arg(long, env = "MAX_BATCH_ENTITIES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch_entities: u32,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
}

impl StoreArgs {
    /// The CLI defaults, with the seed file given explicitly.
    pub fn for_seed_file(seed_file: impl Into<PathBuf>) -> Self {
        Self {
            redis_url: None,
            seed_file: seed_file.into(),
            reseed: false,
            max_age: None,
            redis_timeout: Duration::from_millis(250),
            health_interval: Duration::from_secs(1),
            max_batch_entities: 1000,
            max_body_bytes: 1 << 20,
        }
    }
}

/// `mlmesh feature-store seed`: bulk-load the seed rows into Redis.
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// Redis to load into.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: String,

    /// Seed rows to load.
    #[arg(long = "file", env = "SEED_FILE", default_value_os_t = default_seed_path())]
    pub seed_file: PathBuf,

    /// Bound on each pipelined chunk of writes.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
}
