//! `mlmesh-loadtest`: drives the frontend (or a model, or any URL) with
//! simulated customers and reports what an experiment actually did — each
//! model version's share, stickiness, latency percentiles, errors and
//! customers' acceptance — and fails on the expectations a lab sets.
//!
//! [`run::run`] does the load; [`stats::Report`] is the result;
//! [`expect::violations`] checks it.

pub mod config;
pub mod expect;
pub mod run;
pub mod stats;
pub mod users;

pub use config::{Config, Target};
pub use stats::Report;
