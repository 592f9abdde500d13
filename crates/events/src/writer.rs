//! The writer: a bounded queue in front of one background task that
//! pipelines `XADD`s to Redis, so a request only ever pays a `try_send`.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::resp::{Batch, Connection, Refused, Target};
use crate::{Event, STREAM_KEY};

/// Events per pipeline: one round trip for up to this many.
const BATCH: usize = 512;
/// How long the writer gathers events before a write: a pipeline of many
/// `XADD`s costs about one syscall pair, a pipeline of one costs the same.
/// The log's readers do not need it sooner.
const LINGER: Duration = Duration::from_millis(20);
/// After a failed write, batches are dropped without trying for this long,
/// so an unreachable Redis drains the queue instead of stalling it.
const BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
pub struct EventLogArgs {
    /// Redis to write the experiment event log to (stream `mlmesh:events:v1`);
    /// off when unset. May carry a password: it is never printed.
    #[arg(long, env = "EVENT_LOG_URL", hide_env_values = true)]
    pub event_log_url: Option<String>,

    /// Bound of the stream, approximately (`XADD … MAXLEN ~ N`): older
    /// events are trimmed.
    #[arg(long, env = "EVENT_LOG_MAX_LEN", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1_000..))]
    pub event_log_max_len: u64,

    /// Events waiting for the writer; when it falls behind, new events are
    /// dropped (and counted), never the requests.
    #[arg(long, env = "EVENT_LOG_QUEUE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub event_log_queue: u64,

    /// Longest a connect or a pipelined write may take before its events
    /// are dropped.
    #[arg(long, env = "EVENT_LOG_TIMEOUT", default_value = "1s",
          value_parser = humantime::parse_duration)]
    pub event_log_timeout: Duration,
}

impl Default for EventLogArgs {
    fn default() -> Self {
        Self {
            event_log_url: None,
            event_log_max_len: 1_000_000,
            event_log_queue: 10_000,
            event_log_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    // Not the URL itself: it may carry a password.
    #[error("invalid --event-log-url: {0}")]
    InvalidUrl(String),
    #[error(
        "--event-log-url must name a standalone Redis (redis://[user:password@]host:port[/db]); Sentinel, Cluster and Unix-socket URLs are not supported"
    )]
    NotStandalone,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Clone, Default)]
struct Metrics {
    written: Counter,
    dropped: Family<DropLabels, Counter>,
}

impl Metrics {
    fn dropped(&self, reason: &'static str, n: usize) {
        self.dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(n as u64);
    }
}

/// The handle services log through; cheap to clone, a no-op when off.
#[derive(Clone)]
pub struct EventLog {
    tx: Option<mpsc::Sender<Event>>,
    metrics: Metrics,
}

// === impl EventLog ===

impl EventLog {
    /// A log that records nothing (no `--event-log-url`).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            metrics: Metrics::default(),
        }
    }

    /// Registers the log's metrics and, when `args` name a Redis, starts the
    /// writer on the current tokio runtime. Redis need not be up: until it
    /// is, events are dropped and counted. The writer ends when every
    /// handle is dropped, after writing what is queued.
    pub fn start(args: &EventLogArgs, registry: &mut Registry) -> Result<Self, EventLogError> {
        let metrics = Metrics::default();
        // Both reasons exist from the start at 0, so a rate() sees the first drop.
        for reason in ["queue_full", "redis"] {
            metrics.dropped(reason, 0);
        }
        registry.register(
            "events_written",
            "Experiment events written to the event log",
            metrics.written.clone(),
        );
        registry.register(
            "events_dropped",
            "Experiment events dropped instead of delaying requests, by reason: queue_full (the writer fell behind), redis (Redis unreachable, slow or failing)",
            metrics.dropped.clone(),
        );
        let Some(url) = args
            .event_log_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        else {
            return Ok(Self { tx: None, metrics });
        };
        let config: rustis::client::Config = url
            .parse()
            .map_err(|e: rustis::Error| EventLogError::InvalidUrl(e.to_string()))?;
        let target = Target::from_config(&config).ok_or(EventLogError::NotStandalone)?;
        let (tx, rx) = mpsc::channel(args.event_log_queue as usize);
        let writer = Writer {
            target,
            conn: None,
            batch: Batch::new(args.event_log_max_len),
            timeout: args.event_log_timeout,
            metrics: metrics.clone(),
            resting_until: None,
            refusing: false,
        };
        tokio::spawn(writer.run(rx));
        tracing::info!(
            url = %mesh_kit::config::redact_url(url),
            stream = STREAM_KEY,
            max_len = args.event_log_max_len,
            "experiment event log on"
        );
        Ok(Self {
            tx: Some(tx),
            metrics,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `event` for the writer and returns at once; a full queue
    /// drops it (counted).
    pub fn log(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event).is_err() {
            self.metrics.dropped("queue_full", 1);
        }
    }
}

struct Writer {
    target: Target,
    /// Dropped after any failure, reopened by the next write.
    conn: Option<Connection>,
    /// Reused for every pipeline.
    batch: Batch,
    timeout: Duration,
    metrics: Metrics,
    /// After a failure: batches before this instant are dropped untried.
    resting_until: Option<Instant>,
    /// The last batch had refused events (warned about once).
    refusing: bool,
}

// === impl Writer ===

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            if batch.len() < BATCH {
                tokio::time::sleep(LINGER).await;
                // Whatever arrived meanwhile, without waiting again.
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
            }
            let n = batch.len();
            if self.resting_until.is_some_and(|t| Instant::now() < t) {
                self.metrics.dropped("redis", n);
            } else {
                match self.write(&batch).await {
                    Ok(Refused { count, first }) => {
                        self.metrics.written.inc_by((n - count) as u64);
                        self.resting_until = None;
                        if let Some(e) = &first {
                            // Redis up but refusing (e.g. the key holds another
                            // type): counted always, said once until it stops.
                            if !self.refusing {
                                tracing::warn!(error = %e, refused = count, "event log: Redis refuses events");
                            }
                            self.metrics.dropped("redis", count);
                        }
                        self.refusing = first.is_some();
                    }
                    Err(e) => {
                        if self.resting_until.is_none() {
                            // Once per outage, not per batch.
                            tracing::warn!(error = %e, "event log: Redis write failed; dropping events until it answers");
                        }
                        self.metrics.dropped("redis", n);
                        self.resting_until = Some(Instant::now() + BACKOFF);
                    }
                }
            }
            batch.clear();
        }
    }

    /// One pipeline of `XADD`s, bounded by the timeout; returns how many
    /// the server refused (with its first error), or an error when the
    /// connection failed and none can be counted as written.
    async fn write(&mut self, events: &[Event]) -> Result<Refused, String> {
        self.batch.clear();
        for e in events {
            self.batch.xadd(e);
        }
        let timeout = self.timeout;
        let work = async {
            if self.conn.is_none() {
                self.conn = Some(Connection::open(&self.target).await?);
            }
            let conn = self.conn.as_mut().expect("connected above");
            conn.send(&self.batch).await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(refused)) => Ok(refused),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                // Mid-pipeline: what the connection would read next is unknown.
                self.conn = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }
}
