//! Dev-only helpers shared by mlmesh's test suites, so every suite uses the
//! real thing the same way: a real `redis-server` per test, a real OTLP/HTTP
//! collector, strict OpenMetrics parsing, RSA keys from openssl, and `oneshot` calls that insist on
//! JSON answers.

pub mod event_log;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod otlp;
pub mod proxy;
pub mod python;
pub mod raw_http;
pub mod redis_server;
pub mod serve;

pub use redis_server::RedisServer;
