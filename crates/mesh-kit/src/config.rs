//! Flags every service takes. Each has an env-var twin so the same binary is
//! configured by flags locally and by env in compose and Kubernetes.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
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

    /// A connection that has not sent a whole request head within this time
    /// is closed: new, idle between keep-alive requests, or trickling bytes
    /// (slowloris). A proxy in front that reuses a connection at the very
    /// instant it closes sees a reset; Envoy notices idle closes, so this is
    /// rare, and shorter proxy idle timeouts avoid it entirely.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Most open client connections; past it new ones are closed at once.
    /// Bounded in turn by the open-files limit (raised to its hard limit at
    /// startup).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    pub max_connections: usize,

    /// This replica's name, stamped on every answer as `x-mlmesh-served-by`
    /// (and, by the frontend, in its JSON) so a curl loop shows which pod
    /// served each request. k8s/base sets it from the pod's name with the
    /// downward API; unset, no header is sent.
    #[arg(long, env = POD_NAME_ENV, value_parser = parse_pod_name)]
    pub pod_name: Option<String>,

    /// Log line format on stderr. Filter with RUST_LOG (default: info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub faults: FaultArgs,
}

/// The env twin of `--pod-name`, which Kubernetes' downward API fills.
pub const POD_NAME_ENV: &str = "POD_NAME";

/// A pod name as Kubernetes makes them (a DNS subdomain: at most 253 of
/// `a-z0-9.-`), so it is always a valid header value and never a surprise
/// in a log line.
fn parse_pod_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a pod name (1 to 253 of a-z, 0-9, '-' and '.')"
        ))
    }
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
            header_read_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            pod_name: None,
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

    #[test]
    fn pod_names_are_what_kubernetes_makes() {
        for ok in ["frontend-7d9f8b6c5d-x2k4q", "feature-store-0", "a.b"] {
            assert_eq!(parse_pod_name(ok).as_deref(), Ok(ok));
        }
        let long = "a".repeat(254);
        for bad in [
            "",
            "Frontend",
            "pod name",
            "pod\nx-evil: 1",
            "p\u{e9}",
            &long,
        ] {
            assert!(parse_pod_name(bad).is_err(), "{bad:?}");
        }
    }
}

/// `url` safe to print: any userinfo (`user:password@`) becomes `***@`.
/// Conservative on purpose: everything before the last `@` of a URL goes,
/// so a password with an unescaped `/` or `?` cannot slip through either.
pub fn redact_url(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    match url.split_once("://") {
        Some((scheme, _)) if scheme.len() < at => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => format!("***@{}", &url[at + 1..]),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn userinfo_never_survives() {
        for (url, shown) in [
            (
                "redis://:pw@127.0.0.1:6379/0",
                "redis://***@127.0.0.1:6379/0",
            ),
            ("redis://default:pw@redis:6379", "redis://***@redis:6379"),
            ("rediss://u:p/a?s#s@host", "rediss://***@host"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (":pw@host", "***@host"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("pw"));
        }
    }
}
