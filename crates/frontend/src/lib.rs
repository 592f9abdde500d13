//! The frontend: the experiment's assignment point and the app people open.
//! It gives each user a sticky cohort, fetches the user's features, asks the
//! cohort's model for a score over the Open Inference Protocol, turns the
//! score into an offer decision, and records customers' feedback on it.
//!
//! [`router`] holds the routes (`/`, `/predict`, `/feedback`); [`build`]
//! assembles the service around them with `mesh-kit`.

pub mod cohort;
pub mod config;
pub mod decision;
pub mod exposure;
pub mod feedback;
pub mod metrics;
pub mod service;
pub mod upstream;

pub use config::{FeatureReads, FrontendArgs, RoutingMode};
pub use service::{AppState, GROUP_COOKIE, app, build, router};
