//! Storage backends. Both hold, per entity, its feature values and one event
//! time, and answer the same operations; the HTTP layer derives statuses
//! from what they return, so reads behave identically on either.
//!
//! Redis layout (versioned so a future layout can coexist during a rollout):
//! one hash per entity at `mlmesh:fs:v1:<entity_id>`, one field per feature
//! name holding the value as a decimal string, and `_event_time_ms` holding
//! the Unix time in milliseconds when the values were observed. Reads are one
//! pipelined HGETALL per entity over RESP3 (rustis). A bulk load ends by
//! setting [`SEEDED_KEY`], so a Redis that lost its data (a restart of a
//! memory-only Redis) is told apart from one that was seeded.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustis::client::{Client, ReconnectionConfig};
use rustis::resp::{CommandBuilder, cmd};
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use tokio::sync::OnceCell;
use tokio::sync::broadcast::error::RecvError;

use crate::schema::{FeatureSchema, SeedRow};

pub const KEY_PREFIX: &str = "mlmesh:fs:v1:";
pub const EVENT_TIME_FIELD: &str = "_event_time_ms";
/// Set last by every bulk load: "the seed rows are here". Outside
/// `KEY_PREFIX`, so no entity id can collide with it.
pub const SEEDED_KEY: &str = "mlmesh:fs-meta:v1:seeded";
/// Entities per pipeline when bulk-loading.
const LOAD_CHUNK: usize = 500;
/// Redis connections per service. One multiplexed connection frames every
/// reply on one task and was the ceiling of batch reads (~420 batches/s of
/// 100 entities with both cores half idle); four spread that over the
/// runtime's workers (~550/s). More measured no better on 2 cores.
const CONNECTIONS: usize = 4;

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

impl From<rustis::Error> for StoreError {
    fn from(e: rustis::Error) -> Self {
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

    /// Replaces the rows of every seed entity, then marks the store seeded; idempotent.
    pub async fn load(&self, rows: &[SeedRow], event_time_ms: i64) -> Result<usize, StoreError> {
        match self {
            Self::Memory(m) => Ok(m.load(rows, event_time_ms)),
            // Each chunk gets its own timeout: a bulk load is many round trips.
            Self::Redis(r) => {
                for chunk in rows.chunks(LOAD_CHUNK) {
                    r.bounded(r.load_chunk(chunk, event_time_ms)).await?;
                }
                r.bounded(r.mark_seeded(rows.len(), event_time_ms)).await?;
                Ok(rows.len())
            }
        }
    }

    /// Whether the seed rows are in the store (always, for memory).
    pub async fn is_seeded(&self) -> Result<bool, StoreError> {
        match self {
            Self::Memory(_) => Ok(true),
            Self::Redis(r) => r.bounded(r.is_seeded()).await,
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
    /// Boxed: the client's config is ~0.5 KB, far larger than the memory store.
    config: Box<rustis::client::Config>,
    /// Each connected on first use, so the service starts (unready) while
    /// Redis is down; once connected, a client reconnects by itself.
    clients: Vec<OnceCell<Client>>,
    /// Round-robin over `clients`.
    next: AtomicUsize,
    reconnects: Counter,
    schema: FeatureSchema,
    timeout: Duration,
}

fn key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

impl RedisStore {
    /// Checks the URL now and connects on first use.
    pub fn connect(
        url: &str,
        schema: FeatureSchema,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut config: rustis::client::Config = url
            .parse()
            // Not the URL itself: it may carry a password.
            .map_err(|e| StoreError::Backend(format!("invalid Redis URL: {e}")))?;
        config.connect_timeout = timeout;
        config.command_timeout = timeout;
        config.connection_name = "mlmesh-feature-store".to_owned();
        // Retry forever, but quickly: an outage should end within a second
        // of Redis coming back, not after the default 1 s + jitter cadence.
        let mut reconnection = ReconnectionConfig::new_exponential(0, 50, 500, 2);
        reconnection.set_jitter(50);
        config.reconnection = reconnection;
        Ok(Self {
            config: Box::new(config),
            clients: (0..CONNECTIONS).map(|_| OnceCell::new()).collect(),
            next: Default::default(),
            reconnects: Counter::default(),
            schema,
            timeout,
        })
    }

    /// Counts every re-established connection into `counter` (set before
    /// first use: each connection takes the counter when it connects).
    pub fn count_reconnects(&mut self, counter: Counter) {
        self.reconnects = counter;
    }

    async fn client(&self) -> Result<&Client, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.connected(&self.clients[i]).await
    }

    async fn connected<'a>(&self, cell: &'a OnceCell<Client>) -> Result<&'a Client, StoreError> {
        cell.get_or_try_init(|| async {
            let client = Client::connect((*self.config).clone()).await?;
            let mut reconnected = client.on_reconnect();
            let counter = self.reconnects.clone();
            // Ends when the client is dropped and the channel closes.
            tokio::spawn(async move {
                loop {
                    match reconnected.recv().await {
                        Ok(()) => counter.inc(),
                        Err(RecvError::Lagged(n)) => counter.inc_by(n),
                        Err(RecvError::Closed) => break,
                    };
                }
            });
            Ok::<_, rustis::Error>(client)
        })
        .await
        .map_err(StoreError::from)
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
        let client = self.client().await?;
        let replies: Vec<HashReply> = if let [id] = ids {
            vec![client.send(cmd("HGETALL").key(key(id)), None).await?]
        } else {
            let mut pipe = client.create_pipeline();
            for id in ids {
                pipe.queue_command(cmd("HGETALL").key(key(id)));
            }
            pipe.execute().await?
        };
        Ok(replies.iter().map(|r| self.decode(r)).collect())
    }

    /// Maps one HGETALL reply onto schema positions. An empty hash is an
    /// unknown entity; unparsable or non-finite values count as missing.
    fn decode(&self, reply: &HashReply) -> Option<Record> {
        if reply.pairs.is_empty() {
            return None;
        }
        let names = self.schema.names();
        let mut values = vec![None; names.len()];
        let mut event_time_ms = 0;
        for (i, (field, value)) in reply.pairs().enumerate() {
            let text = std::str::from_utf8(value).unwrap_or_default();
            // Small hashes are listpacks, which keep insertion (= schema)
            // order: check the expected position before hashing the name.
            let position = match names.get(i) {
                Some(name) if name.as_bytes() == field => Some(i),
                _ if field == EVENT_TIME_FIELD.as_bytes() => {
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
        Some(Record {
            values,
            event_time_ms,
        })
    }

    /// HSET of `fields` plus the event time, as one command.
    fn hset(
        &self,
        id: &str,
        fields: impl Iterator<Item = (usize, f64)>,
        event_time_ms: i64,
    ) -> CommandBuilder {
        let names = self.schema.names();
        let mut c = cmd("HSET").key(key(id));
        for (i, v) in fields {
            c = c.arg(names[i].as_str()).arg(v.to_string());
        }
        c.arg(EVENT_TIME_FIELD).arg(event_time_ms.to_string())
    }

    async fn put(
        &self,
        id: &str,
        updates: &[(usize, f64)],
        event_time_ms: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .send::<()>(self.hset(id, updates.iter().copied(), event_time_ms), None)
            .await?;
        Ok(())
    }

    async fn load_chunk(&self, rows: &[SeedRow], event_time_ms: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let mut pipe = client.create_pipeline();
        for r in rows {
            // DEL first so a re-seed leaves exactly the seed row, whatever was written since.
            pipe.forget_command(cmd("DEL").key(key(&r.entity_id)));
            pipe.forget_command(self.hset(
                &r.entity_id,
                r.values.iter().copied().enumerate(),
                event_time_ms,
            ));
        }
        pipe.execute::<()>().await?;
        Ok(())
    }

    async fn mark_seeded(&self, rows: usize, event_time_ms: i64) -> Result<(), StoreError> {
        let value = format!("{rows} entities at {event_time_ms} ms");
        let client = self.client().await?;
        client
            .send::<()>(cmd("SET").key(SEEDED_KEY).arg(value), None)
            .await?;
        Ok(())
    }

    async fn is_seeded(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n: u64 = client.send(cmd("EXISTS").key(SEEDED_KEY), None).await?;
        Ok(n == 1)
    }

    /// Every connection, so readiness never reports one that is down.
    async fn ping(&self) -> Result<(), StoreError> {
        for cell in &self.clients {
            self.connected(cell)
                .await?
                .send::<()>(cmd("PING"), None)
                .await?;
        }
        Ok(())
    }
}

/// One HGETALL reply as it came off the wire: every name and value copied
/// into one buffer (two allocations per entity instead of two per field),
/// so decoding it costs a few memcpys and no String per field.
#[derive(Default)]
struct HashReply {
    bytes: Vec<u8>,
    /// (name start, value start, value end) into `bytes`.
    pairs: Vec<(u32, u32, u32)>,
}

impl HashReply {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|&(n, v, e)| {
            (
                &self.bytes[n as usize..v as usize],
                &self.bytes[v as usize..e as usize],
            )
        })
    }
}

impl<'de> Deserialize<'de> for HashReply {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HashReplyVisitor)
    }
}

struct HashReplyVisitor;

impl<'de> Visitor<'de> for HashReplyVisitor {
    type Value = HashReply;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an HGETALL reply")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HashReply, A::Error> {
        let n = map.size_hint().unwrap_or(0);
        let mut reply = HashReply {
            bytes: Vec::with_capacity(n * 16),
            pairs: Vec::with_capacity(n),
        };
        loop {
            let name = reply.bytes.len() as u32;
            if map.next_key_seed(AppendBytes(&mut reply.bytes))?.is_none() {
                return Ok(reply);
            }
            let value = reply.bytes.len() as u32;
            map.next_value_seed(AppendBytes(&mut reply.bytes))?;
            reply.pairs.push((name, value, reply.bytes.len() as u32));
        }
    }

    /// A missing key can come back as a null map.
    fn visit_unit<E>(self) -> Result<HashReply, E> {
        Ok(HashReply::default())
    }
}

/// Appends one bulk string to the reply's buffer.
struct AppendBytes<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for AppendBytes<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for AppendBytes<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a bulk string")
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<(), E> {
        self.0.extend_from_slice(v);
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }
}
