//! Storage backends. Both hold, per entity, its feature values and one event
//! time, and answer the same operations; the HTTP layer derives statuses
//! from what they return, so reads behave identically on either.
//!
//! Redis layout (versioned so a future layout can coexist during a rollout):
//! one hash per entity at `mlmesh:fs:v1:<entity_id>`, one field per feature
//! name holding the value as a decimal string, and `_event_time_ms` holding
//! the Unix time in milliseconds when the values were observed.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::schema::{FeatureSchema, SeedRow};

pub const KEY_PREFIX: &str = "mlmesh:fs:v1:";
pub const EVENT_TIME_FIELD: &str = "_event_time_ms";
/// Entities per pipeline when bulk-loading.
const LOAD_CHUNK: usize = 500;

/// One entity's row: values by schema position (None: never written).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub values: Vec<Option<f64>>,
    pub event_time_ms: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the feature store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the feature store failed: {0}")]
    Backend(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        Self::Backend(e.to_string())
    }
}

pub enum Backend {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// Rows for `ids`, in order; `None` for unknown entities.
    pub async fn get_many(&self, ids: &[&str]) -> Result<Vec<Option<Record>>, StoreError> {
        match self {
            Self::Memory(m) => Ok(m.get_many(ids)),
            Self::Redis(r) => r.bounded(r.get_many(ids)).await,
        }
    }

    /// Sets some features of one entity (others keep their values) and its event time.
    pub async fn put(
        &self,
        id: &str,
        updates: &[(usize, f64)],
        event_time_ms: i64,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => {
                m.put(id, updates, event_time_ms);
                Ok(())
            }
            Self::Redis(r) => r.bounded(r.put(id, updates, event_time_ms)).await,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.bounded(r.ping()).await,
        }
    }

    /// Replaces the rows of every seed entity; idempotent.
    pub async fn load(&self, rows: &[SeedRow], event_time_ms: i64) -> Result<usize, StoreError> {
        match self {
            Self::Memory(m) => Ok(m.load(rows, event_time_ms)),
            // Each chunk gets its own timeout: a bulk load is many round trips.
            Self::Redis(r) => {
                for chunk in rows.chunks(LOAD_CHUNK) {
                    r.bounded(r.load_chunk(chunk, event_time_ms)).await?;
                }
                Ok(rows.len())
            }
        }
    }
}

/// The zero-setup default: everything in process memory.
pub struct MemoryStore {
    width: usize,
    rows: RwLock<HashMap<String, Record>>,
}

impl MemoryStore {
    pub fn new(schema: &FeatureSchema) -> Self {
        Self {
            width: schema.len(),
            rows: RwLock::new(HashMap::new()),
        }
    }

    fn get_many(&self, ids: &[&str]) -> Vec<Option<Record>> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        ids.iter().map(|id| rows.get(*id).cloned()).collect()
    }

    fn put(&self, id: &str, updates: &[(usize, f64)], event_time_ms: i64) {
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        let row = rows.entry(id.to_owned()).or_insert_with(|| Record {
            values: vec![None; self.width],
            event_time_ms,
        });
        for &(i, v) in updates {
            row.values[i] = Some(v);
        }
        row.event_time_ms = event_time_ms;
    }

    fn load(&self, seed: &[SeedRow], event_time_ms: i64) -> usize {
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        for r in seed {
            let values = r.values.iter().copied().map(Some).collect();
            rows.insert(
                r.entity_id.clone(),
                Record {
                    values,
                    event_time_ms,
                },
            );
        }
        seed.len()
    }
}

pub struct RedisStore {
    conn: ConnectionManager,
    schema: FeatureSchema,
    timeout: Duration,
}

fn key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

impl RedisStore {
    /// Connects lazily: the service starts (unready) even while Redis is
    /// down, and the connection manager reconnects by itself afterwards.
    pub fn connect(
        url: &str,
        schema: FeatureSchema,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Backend(format!("invalid Redis URL: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            schema,
            timeout,
        })
    }

    /// Every Redis call is bounded, whatever the client's own retries do.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    async fn get_many(&self, ids: &[&str]) -> Result<Vec<Option<Record>>, StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(key(id));
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.conn.clone()).await?;
        replies.into_iter().map(|reply| self.parse(reply)).collect()
    }

    /// Decodes one HGETALL reply straight from the wire value: no String
    /// copies, no intermediate map (together ~20% of a batch read's CPU).
    /// An empty hash is an unknown entity; unparsable values count as missing.
    fn parse(&self, reply: redis::Value) -> Result<Option<Record>, StoreError> {
        use redis::Value;
        let pairs: Vec<(Value, Value)> = match reply {
            Value::Map(pairs) => pairs, // RESP3
            Value::Array(flat) => {
                // RESP2: field, value, field, value, ...
                let mut it = flat.into_iter();
                std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
            }
            Value::Nil => Vec::new(),
            other => {
                return Err(StoreError::Backend(format!(
                    "unexpected HGETALL reply: {other:?}"
                )));
            }
        };
        if pairs.is_empty() {
            return Ok(None);
        }
        let names = self.schema.names();
        let mut values = vec![None; names.len()];
        let mut event_time_ms = 0;
        for (i, (field, value)) in pairs.iter().enumerate() {
            let (Value::BulkString(field), Value::BulkString(value)) = (field, value) else {
                continue;
            };
            let text = std::str::from_utf8(value).unwrap_or_default();
            // Small hashes are listpacks, which keep insertion (= schema)
            // order: check the expected position before hashing the name.
            let position = match names.get(i) {
                Some(name) if name.as_bytes() == field.as_slice() => Some(i),
                _ if field.as_slice() == EVENT_TIME_FIELD.as_bytes() => {
                    event_time_ms = text.parse().unwrap_or(0);
                    None
                }
                _ => std::str::from_utf8(field)
                    .ok()
                    .and_then(|f| self.schema.position(f)),
            };
            if let Some(p) = position {
                values[p] = text.parse::<f64>().ok().filter(|v| v.is_finite());
            }
        }
        Ok(Some(Record {
            values,
            event_time_ms,
        }))
    }

    async fn put(
        &self,
        id: &str,
        updates: &[(usize, f64)],
        event_time_ms: i64,
    ) -> Result<(), StoreError> {
        let mut fields: Vec<(&str, String)> = updates
            .iter()
            .map(|&(i, v)| (self.schema.names()[i].as_str(), v.to_string()))
            .collect();
        fields.push((EVENT_TIME_FIELD, event_time_ms.to_string()));
        redis::cmd("HSET")
            .arg(key(id))
            .arg(fields)
            .exec_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn load_chunk(&self, rows: &[SeedRow], event_time_ms: i64) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for r in rows {
            let k = key(&r.entity_id);
            // DEL first so a re-seed leaves exactly the seed row, whatever was written since.
            pipe.del(&k).ignore();
            let mut fields: Vec<(&str, String)> = self
                .schema
                .names()
                .iter()
                .map(String::as_str)
                .zip(r.values.iter().map(f64::to_string))
                .collect();
            fields.push((EVENT_TIME_FIELD, event_time_ms.to_string()));
            pipe.cmd("HSET").arg(&k).arg(fields).ignore();
        }
        pipe.exec_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .exec_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
