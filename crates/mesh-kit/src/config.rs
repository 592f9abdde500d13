//! Flags every service takes. Each has an env-var twin so the same binary is
//! configured by flags locally and by env in compose and Kubernetes.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::fault::FaultArgs;

/// Server, shutdown, logging and fault flags shared by all services.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// After SIGTERM, how long to keep serving with /readyz failing, so the
    /// mesh stops routing here before connections close. Match it to the
    /// sidecar's terminationDrainDuration.
    #[arg(long, env = "DRAIN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// After the drain delay, how long in-flight requests may take to finish
    /// before the process exits anyway.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log line format on stderr. Filter with RUST_LOG (default: info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub faults: FaultArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServerArgs {
    /// Defaults suited to tests and embedding: loopback, ephemeral port, no drain wait.
    pub fn for_tests() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_delay: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(5),
            log_format: LogFormat::Text,
            faults: FaultArgs::default(),
        }
    }
}

/// Parses a probability in `[0, 1]`; used by every rate-like flag.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` must be between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_outside_unit_interval_are_rejected() {
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
        assert!(parse_fraction("half").is_err());
    }
}
