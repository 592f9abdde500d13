//! HTTP API, modelled on Feast's online read: values plus a status per feature.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mesh_kit::Json;
use mesh_kit::extract::{Path, Query};
use mesh_kit::feature_wire;
use mesh_kit::propagation::FEATURE_FINGERPRINT_HEADER;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use mesh_kit::error::{check_entity_id, clip, parse_json};
use mesh_kit::{ApiError, Health, ServerArgs, Service};

use crate::config::StoreArgs;
use crate::metrics::{LookupStatus, StoreMetrics};
use crate::render::{self, Form, Renderer, Row, format_time};
use crate::schema::{FeatureSchema, SeedError, SeedRow, read_seed_file};
use crate::store::{Backend, MemoryStore, Record, RedisStore, StoreError};

pub use mesh_kit::error::MAX_ENTITY_ID_LEN;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Seed(#[from] SeedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    backend: Backend,
    schema: FeatureSchema,
    renderer: Renderer,
    max_age: Option<Duration>,
    max_batch: usize,
    max_body_bytes: usize,
    metrics: StoreMetrics,
    /// The seed rows, kept when `--reseed` may need them again.
    reseed: Option<Vec<SeedRow>>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl AppState {
    /// Opens the backend (Redis, or memory seeded from the seed file),
    /// registers metrics and starts the readiness watcher.
    pub async fn start(args: &StoreArgs, svc: &mut Service) -> Result<Self, StartError> {
        let (schema, rows) = read_seed_file(&args.seed_file)?;
        let mut backend = match &args.redis_url {
            Some(url) => Backend::Redis(RedisStore::connect(
                url,
                schema.clone(),
                args.redis_timeout,
            )?),
            None => {
                let store = Backend::Memory(MemoryStore::new(&schema));
                store.load(&rows, now_ms()).await?;
                store
            }
        };
        let metrics = StoreMetrics::register(svc.registry_mut(), backend.name());
        if let Backend::Redis(redis) = &mut backend {
            redis.count_reconnects(metrics.reconnects.clone());
        }
        tracing::info!(
            backend = backend.name(),
            features = schema.len(),
            seed_rows = rows.len(),
            reseed = args.reseed,
            "feature store open"
        );
        let reseed = (args.reseed && matches!(backend, Backend::Redis(_))).then_some(rows);
        let state = Self(Arc::new(Inner {
            backend,
            renderer: Renderer::new(&schema),
            schema,
            max_age: args.max_age,
            max_batch: args.max_batch_entities as usize,
            max_body_bytes: args.max_body_bytes,
            metrics,
            reseed,
        }));
        tokio::spawn(Self::watch_readiness(
            Arc::downgrade(&state.0),
            svc.health(),
            args.health_interval,
        ));
        Ok(state)
    }

    /// Checks the backend on an interval: readiness follows reachability and
    /// the presence of the seed rows, and the service recovers by itself
    /// when Redis comes back (re-seeding it first with `--reseed`).
    ///
    /// Its owner is the service: the task holds only a weak reference and
    /// ends once the last `AppState` is gone (a test's app dropped), or when
    /// draining begins (readiness is off for good then).
    async fn watch_readiness(state: std::sync::Weak<Inner>, health: Health, every: Duration) {
        let mut was_ready = false;
        let mut ever_ready = false;
        loop {
            let Some(inner) = state.upgrade() else {
                tracing::debug!("feature store gone; readiness watch ends");
                return;
            };
            if health.is_draining() {
                return;
            }
            let status = Self(inner).serving_state().await;
            let ready = status.is_ok();
            if ready != was_ready {
                match &status {
                    Ok(()) if ever_ready => tracing::info!("feature store ready again"),
                    Ok(()) => {}
                    Err(why) => tracing::warn!(reason = %why, "feature store not ready"),
                }
                health.set_ready(ready);
                was_ready = ready;
                ever_ready |= ready;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// `Ok` when the store answers and holds the seed rows; otherwise why not.
    async fn serving_state(&self) -> Result<(), String> {
        let inner = &self.0;
        inner
            .backend
            .ping()
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        if inner.backend.is_seeded().await.map_err(|e| e.to_string())? {
            return Ok(());
        }
        let Some(rows) = &inner.reseed else {
            // Why not ready: every lookup would answer NOT_FOUND, and the
            // frontend would serve degraded decisions while this said "ready".
            return Err(
                "the seed rows are missing from Redis (restarted without persistence?); \
                 run `mlmesh feature-store seed` or start with --reseed"
                    .to_owned(),
            );
        };
        tracing::warn!("the seed rows are missing from Redis; loading them again (--reseed)");
        let n = inner
            .backend
            .load(rows, now_ms())
            .await
            .map_err(|e| format!("re-seeding failed: {e}"))?;
        inner.metrics.reseeds.inc();
        tracing::info!(entities = n, "re-seeded Redis");
        Ok(())
    }

    /// Reads entities, timing and counting the lookup.
    async fn lookup(&self, ids: &[&str]) -> Result<Vec<Option<Record>>, ApiError> {
        let started = Instant::now();
        let res = self.0.backend.get_many(ids).await;
        self.0
            .metrics
            .lookup_seconds
            .observe(started.elapsed().as_secs_f64());
        res.map_err(|e| {
            self.0.metrics.lookups(LookupStatus::Error, ids.len());
            self.unavailable(e)
        })
    }

    /// A failed store call: counted by kind, answered 503 with a JSON error.
    fn unavailable(&self, e: StoreError) -> ApiError {
        self.0.metrics.error(&e);
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }

    /// Schema positions for an optional subset of feature names (all when absent).
    fn wanted<'a>(
        &self,
        names: Option<impl Iterator<Item = &'a str>>,
    ) -> Result<Vec<usize>, ApiError> {
        let Some(names) = names else {
            return Ok((0..self.0.schema.len()).collect());
        };
        // Each name at most once: a repeated name would repeat its value in
        // every row, so a small request could ask for a huge answer
        // (117 KB of names made a 348 MB response). With duplicates refused
        // an answer is at most max_batch x schema features.
        let mut seen = vec![false; self.0.schema.len()];
        let mut picked = Vec::new();
        for n in names {
            let i =
                self.0.schema.position(n).ok_or_else(|| {
                    ApiError::bad_request(format!("unknown feature '{}'", clip(n)))
                })?;
            if std::mem::replace(&mut seen[i], true) {
                return Err(ApiError::bad_request(format!(
                    "feature '{n}' is listed twice"
                )));
            }
            picked.push(i);
        }
        if picked.is_empty() {
            return Err(ApiError::bad_request(
                "the feature subset is empty; omit it to get every feature",
            ));
        }
        Ok(picked)
    }

    /// One response row, with its staleness decided and the lookup counted.
    fn row<'a>(&self, entity_id: &'a str, record: Option<&'a Record>, now: i64) -> Row<'a> {
        let stale = match (record, self.0.max_age) {
            (Some(r), Some(max_age)) => {
                now.saturating_sub(r.event_time_ms) > max_age.as_millis() as i64
            }
            _ => false,
        };
        let status = match record {
            None => LookupStatus::NotFound,
            Some(_) if stale => LookupStatus::Stale,
            Some(_) => LookupStatus::Present,
        };
        self.0.metrics.lookups(status, 1);
        Row {
            entity_id,
            record,
            stale,
        }
    }
}

/// How far in the future a written `event_time` may lie (clock skew).
pub const MAX_FUTURE_EVENT_TIME: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Deserialize)]
struct SubsetQuery {
    features: Option<String>,
    /// `false` leaves the `statuses` object out (default `true`).
    statuses: Option<bool>,
    /// `false` lists the values instead of keying them by name (default `true`).
    names: Option<bool>,
    /// `binary`: the listed values as raw doubles, the fingerprint in a
    /// header (default `json`).
    format: Option<Format>,
}

/// The body of a single read.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    Json,
    /// [`render::binary`]: the values only, listed.
    Binary,
}

/// The answer's form as a read asked for it.
fn form(statuses: Option<bool>, names: Option<bool>) -> Form {
    let default = Form::default();
    Form {
        statuses: statuses.unwrap_or(default.statuses),
        names: names.unwrap_or(default.names),
    }
}

async fn get_one(
    State(s): State<AppState>,
    Path(entity_id): Path<String>,
    Query(q): Query<SubsetQuery>,
) -> Result<Response, ApiError> {
    check_entity_id(&entity_id)?;
    let binary = q.format == Some(Format::Binary);
    if binary {
        check_binary_form(q.names, q.statuses)?;
    }
    let wanted = s.wanted(q.features.as_deref().map(|f| f.split(',').map(str::trim)))?;
    let record = s.lookup(&[&entity_id]).await?.pop().flatten();
    let row = s.row(&entity_id, record.as_ref(), now_ms());
    if row.record.is_none() {
        return Err(ApiError::not_found(format!(
            "entity '{entity_id}' not found"
        )));
    }
    if binary {
        return Ok(binary_body(render::binary(&row, &wanted), &s.0.schema));
    }
    let form = form(q.statuses, q.names);
    let mut body = Vec::with_capacity(s.0.renderer.row_capacity(&wanted, form));
    s.0.renderer.row(&mut body, &row, &wanted, form);
    Ok(mesh_kit::json::serialized(body))
}

/// The binary form lists the values alone: no names, no statuses.
fn check_binary_form(names: Option<bool>, statuses: Option<bool>) -> Result<(), ApiError> {
    if names == Some(true) || statuses == Some(true) {
        return Err(ApiError::bad_request(
            "format=binary lists the values alone: names=true and statuses=true need format=json",
        ));
    }
    Ok(())
}

/// The binary form's answer: the values, and in headers what the JSON would
/// have said beside them that a caller of this form needs (the order's
/// fingerprint).
fn binary_body(body: Vec<u8>, schema: &FeatureSchema) -> Response {
    (
        [
            (http::header::CONTENT_TYPE, feature_wire::CONTENT_TYPE),
            (
                http::header::HeaderName::from_static(FEATURE_FINGERPRINT_HEADER),
                schema.fingerprint(),
            ),
        ],
        Bytes::from(body),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    entity_ids: Vec<String>,
    #[serde(default)]
    features: Option<Vec<String>>,
    /// `false` leaves each row's `statuses` object out.
    #[serde(default)]
    statuses: Option<bool>,
    /// `false` lists each row's values instead of keying them by name.
    #[serde(default)]
    names: Option<bool>,
    /// `binary`: [`render::binary_batch`], the fingerprint in a header.
    #[serde(default)]
    format: Option<Format>,
}

async fn get_batch(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: BatchRequest = parse_json(&headers, body, "invalid batch request")?;
    if req.entity_ids.is_empty() {
        return Err(ApiError::bad_request("entity_ids is empty"));
    }
    if req.entity_ids.len() > s.0.max_batch {
        return Err(ApiError::payload_too_large(format!(
            "{} entities exceed the batch limit of {}; split the request",
            req.entity_ids.len(),
            s.0.max_batch
        )));
    }
    for id in &req.entity_ids {
        check_entity_id(id)?;
    }
    let binary = req.format == Some(Format::Binary);
    if binary {
        check_binary_form(req.names, req.statuses)?;
    }
    let wanted = s.wanted(req.features.as_ref().map(|f| f.iter().map(String::as_str)))?;
    let ids: Vec<&str> = req.entity_ids.iter().map(String::as_str).collect();
    s.0.metrics.batch_entities.observe(ids.len() as f64);
    let records = s.lookup(&ids).await?;
    let now = now_ms();
    let rows: Vec<Row> = ids
        .iter()
        .zip(&records)
        .map(|(id, r)| s.row(id, r.as_ref(), now))
        .collect();
    if binary {
        return Ok(binary_body(
            render::binary_batch(&rows, &wanted),
            &s.0.schema,
        ));
    }
    Ok(mesh_kit::json::serialized(s.0.renderer.batch(
        &rows,
        &wanted,
        form(req.statuses, req.names),
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteRequest {
    features: Map<String, Value>,
    /// RFC 3339; defaults to now.
    #[serde(default)]
    event_time: Option<String>,
}

async fn put_one(
    State(s): State<AppState>,
    Path(entity_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_entity_id(&entity_id)?;
    let req: WriteRequest = parse_json(&headers, body, "invalid write request")?;
    if req.features.is_empty() {
        return Err(ApiError::bad_request("features is empty"));
    }
    let mut updates = Vec::with_capacity(req.features.len());
    for (name, value) in &req.features {
        let i =
            s.0.schema
                .position(name)
                .ok_or_else(|| ApiError::bad_request(format!("unknown feature '{name}'")))?;
        // As the model reads it: FP32. 1e39 is a finite f64 but +inf as f32,
        // and would degrade every later decision for this entity.
        let v = value
            .as_f64()
            .filter(|v| crate::schema::fits_model_input(*v))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "feature '{name}' must be a number the model can read (finite as 32-bit float, |x| <= {:e}), got {value}",
                    f32::MAX
                ))
            })?;
        updates.push((i, v));
    }
    let event_time_ms = match &req.event_time {
        None => now_ms(),
        Some(t) => {
            let ms = humantime::parse_rfc3339_weak(t)
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "event_time '{}' is not an RFC 3339 time after 1970",
                        clip(t)
                    ))
                })?;
            // A value from the future would never turn stale (year 9999 was
            // accepted); clocks may disagree by a little, not by more.
            if ms > now_ms() + MAX_FUTURE_EVENT_TIME.as_millis() as i64 {
                return Err(ApiError::bad_request(format!(
                    "event_time '{}' is more than {} in the future",
                    clip(t),
                    humantime::format_duration(MAX_FUTURE_EVENT_TIME)
                )));
            }
            ms
        }
    };
    s.0.backend
        .put(&entity_id, &updates, event_time_ms)
        .await
        .map_err(|e| s.unavailable(e))?;
    Ok(Json(json!({ "entity_id": entity_id, "written": updates.len(), "event_time": format_time(event_time_ms) }))
        .into_response())
}

async fn schema(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "features": s.0.schema.names(),
        "fingerprint": s.0.schema.fingerprint(),
        "backend": s.0.backend.name(),
    }))
}

/// Business routes.
pub fn router(state: AppState) -> Router {
    let max_body = state.0.max_body_bytes;
    Router::new()
        .route("/v1/features/{entity_id}", get(get_one).put(put_one))
        .route("/v1/features:batch", post(get_batch))
        .route("/v1/schema", get(schema))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The assembled service and its state, for the binary and the tests.
pub async fn build(
    args: &StoreArgs,
    server: ServerArgs,
) -> Result<(Service, AppState), StartError> {
    let mut svc = Service::new("feature-store", server);
    let state = AppState::start(args, &mut svc).await?;
    Ok((svc, state))
}

/// The complete app, for `oneshot` tests.
pub async fn app(
    args: &StoreArgs,
    server: ServerArgs,
) -> Result<(Router, AppState, Health), StartError> {
    let (svc, state) = build(args, server).await?;
    let health = svc.health();
    Ok((
        svc.router(router(state.clone()), Router::new()),
        state,
        health,
    ))
}
