//! Serves customers' features for online prediction, from Redis or from an
//! embedded in-memory store, with a status per feature (PRESENT, NOT_FOUND,
//! STALE) so stale data is never passed off as fresh.

pub mod config;
pub mod metrics;
pub mod render;
pub mod schema;
pub mod service;
pub mod store;

pub use config::{SeedArgs, StoreArgs};
pub use service::{AppState, StartError, app, build, router};

use schema::read_seed_file;
use store::{Backend, RedisStore};

/// What `mlmesh feature-store seed` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReport {
    pub entities: usize,
    pub features: usize,
}

/// Bulk-loads the seed rows into Redis (pipelined; re-running gives the same rows).
pub async fn seed(args: &SeedArgs) -> Result<SeedReport, StartError> {
    let (schema, rows) = read_seed_file(&args.seed_file)?;
    let features = schema.len();
    let store = Backend::Redis(RedisStore::connect(
        &args.redis_url,
        schema,
        args.redis_timeout,
    )?);
    store.ping().await?;
    let entities = store.load(&rows, service::now_ms()).await?;
    Ok(SeedReport { entities, features })
}
