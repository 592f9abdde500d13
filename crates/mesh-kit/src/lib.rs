//! What every mlmesh service shares so that each one behaves the same under a mesh:
//! flags, server bootstrap with graceful drain, health probes, OpenTelemetry
//! tracing with W3C + B3 propagation, RED metrics, and fault knobs; and what
//! two services or a service and the load tool must agree on: the HTTP/1
//! client for upstream calls ([`client`]) and the feature store's binary
//! answer ([`feature_wire`]).
//!
//! A service builds its business [`axum::Router`], registers its own metrics in
//! [`Service::registry_mut`], and hands both to [`Service::router`] (tests) or
//! [`Service::serve`] (the binary). Everything cross-cutting is layered on here,
//! once, so no service can forget part of it.

pub mod client;
pub mod clock;
pub mod config;
pub mod conn;
pub mod error;
pub mod extract;
pub mod fault;
pub mod feature_wire;
pub mod fingerprint;
pub mod health;
pub mod json;
pub mod metrics;
pub mod propagation;
pub mod server;
pub mod telemetry;

pub use config::ServerArgs;
pub use error::ApiError;
pub use health::Health;
pub use json::Json;
pub use server::Service;
