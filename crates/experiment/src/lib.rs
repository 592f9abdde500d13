//! Deciding an experiment from its metrics: promote, rollback, continue or
//! invalid, with statistics that stay valid however often they are looked at.
//!
//! The pieces, in the order data flows through them:
//! - [`source`]: where the counters come from (the services' own `/metrics`,
//!   or Prometheus' HTTP API), behind the [`source::Source`] trait;
//! - [`snapshot`]: the counters per model version at one moment, and deltas;
//! - [`plan`]: the hypothesis and each metric's role, margin, sample and alpha;
//! - [`checks`] and [`stats`]: each metric compared with always-valid
//!   confidence sequences, the split checked for a sample-ratio mismatch;
//! - [`report`]: the verdict and the looks; [`render`] prints it as a
//!   terminal table, Markdown or a self-contained HTML page;
//! - [`shadow`]: a shadow launch per request, from the event log: the
//!   baseline's live and the candidate's shadow prediction side by side.

pub mod checks;
pub mod histogram;
pub mod plan;
pub mod render;
pub mod report;
pub mod shadow;
pub mod snapshot;
pub mod source;
pub mod stats;

pub use checks::{Check, Status};
pub use plan::{Plan, Role};
pub use report::{Analysis, Report, Verdict};
pub use snapshot::Snapshot;
