//! The experiment event log: what each service saw, one event per scored
//! row, exposure and outcome, on a Redis stream ([`STREAM_KEY`]), so that
//! the live and the shadow prediction of one request can be put side by
//! side and joined with what the customer then did.
//!
//! The hot path never waits for Redis: [`EventLog::log`] puts the event on
//! a bounded queue and returns; a background writer pipelines `XADD`s (the
//! stream bounded with `MAXLEN ~`). When Redis is slow or down, events are
//! dropped and counted (`mlmesh_events_dropped_total{reason}`), never the
//! requests they describe. Off unless `--event-log-url` is set.
//!
//! Each stream entry is flat text fields, `type` first:
//!
//! | type | fields |
//! |---|---|
//! | `prediction` | `request_id`, `trace_id` (when traced), `row`, `model`, `version`, `traffic` (`live`/`shadow`), `score`, `input_hash`, `time_ms` |
//! | `exposure` | `request_id`, `user_id`, `cohort`, `assignment`, `version` (absent when no model answered), `time_ms` |
//! | `outcome` | `request_id` (the decision's), `user_id`, `version`, `outcome` (`accepted`/`declined`), `time_ms` |

mod event;
mod resp;
mod writer;

pub use event::{
    DecodeError, Event, Exposure, LIVE, Outcome, Prediction, SHADOW, input_hash, read_stream,
};
pub use writer::{EventLog, EventLogArgs, EventLogError};

/// The stream every service writes to; the version is part of the key, so
/// a change of fields makes a new stream instead of mixing shapes.
pub const STREAM_KEY: &str = "mlmesh:events:v1";
