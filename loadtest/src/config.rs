//! Command line of `mlmesh-loadtest`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
// The same probability parser every mlmesh service uses for its rate flags.
pub use mesh_kit::config::parse_fraction;

/// What the open loop does with a request due while its pool is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Overflow {
    Wait,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// `GET <BASE_URL>/predict?user_id=…` on the frontend (the experiment).
    Frontend,
    /// `POST <BASE_URL>/v2/models/<model>/infer` with each user's features
    /// (benchmarks model-inference alone).
    Infer,
    /// `GET <BASE_URL>` as given (benchmarks the tool or any endpoint).
    Get,
}

/// How `--target infer` sends each request's features (the one list, in
/// the oip crate; with `grpc`, BASE_URL is the gRPC listener, e.g.
/// http://127.0.0.1:9000).
pub use oip::Protocol;

/// `--expect-share v2=10±2`: the version's share of requests, in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareExpectation {
    pub version: String,
    pub percent: f64,
    pub tolerance: f64,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mlmesh-loadtest",
    version,
    about = "Drive the mlmesh frontend (or a model) and report what an experiment did: \
             the split per model version, stickiness, latency, errors and customer outcomes",
    after_help = "Examples:\n  \
      mlmesh-loadtest http://127.0.0.1:8080 --expect-share v2=10±2 --expect-sticky\n  \
      mlmesh-loadtest http://127.0.0.1:8080 --rate 200/s --duration 30s --feedback --max-p99 50ms\n  \
      mlmesh-loadtest http://127.0.0.1:8082 --target infer --concurrency 64 --duration 20s"
)]
pub struct Config {
    /// Where to send load: the frontend's base URL (the ingress gateway, compose
    /// or `mlmesh up`), a model-inference base URL with `--target infer`, or any
    /// URL with `--target get`.
    pub base_url: String,

    #[arg(long, value_enum, default_value_t = Target::Frontend)]
    pub target: Target,

    /// Model name in OIP paths (`--target infer`).
    #[arg(long, default_value = "propensity")]
    pub model_name: String,

    /// How `--target infer` encodes its requests. The input's name is read
    /// from the model's metadata before the load starts.
    #[arg(long, value_enum, default_value_t = Protocol::HttpJson)]
    pub protocol: Protocol,

    /// `--target infer`: rows per request, each the features of the next
    /// user (a client scoring a batch sends one request for many rows; the
    /// protocols' encodings differ most there). The model bounds it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub rows: u32,

    /// `--protocol grpc`: HTTP/2 connections to spread the requests over,
    /// each carrying many at once as streams. 1 is what a gRPC channel
    /// (Triton's client) and an Envoy sidecar's upstream pool use; one per
    /// request in flight makes every request pay HTTP/2's per-connection
    /// costs (+55% server CPU per request measured, BENCHMARKS.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub grpc_connections: u32,

    /// Closed loop: this many requests in flight, each sent when the last one
    /// answered (default 16 unless --rate is given).
    #[arg(long, short = 'c', conflicts_with = "rate")]
    pub concurrency: Option<usize>,

    /// Open loop: start requests at this rate (`500` or `500/s`) whatever the
    /// answers do; latency counts from each request's scheduled start, so a
    /// stalled server cannot hide its queueing (no coordinated omission).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Open loop: most requests in flight, hence most connections, so an
    /// overload test measures the server, not thousands of the generator's
    /// own connections. What happens past it: --overflow.
    #[arg(long, default_value_t = 10_000, requires = "rate")]
    pub max_in_flight: usize,

    /// Open loop, a request due while all --max-in-flight are busy: `wait`
    /// for one, the wait counting in its latency (as wrk2 does), or `drop`
    /// it, reported as overflow (as an Envoy circuit breaker answers 503 UO
    /// at once), so the latencies are the server's alone.
    #[arg(long, value_enum, default_value_t = Overflow::Wait, requires = "rate")]
    pub overflow: Overflow,

    /// Run for this long (e.g. `30s`). Default: every user makes
    /// --requests-per-user requests once.
    #[arg(long, short = 'd', value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Send exactly this many requests.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,

    /// Seed rows to draw simulated users from.
    #[arg(long, default_value = "models/customers.csv")]
    pub users_file: PathBuf,

    /// Draw from every customer, not only the held-out ones the models never saw.
    #[arg(long)]
    pub all_users: bool,

    /// Requests each simulated user makes.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests_per_user: u32,

    /// Fraction of users that send `x-user-group: beta` (0 to 1).
    #[arg(long, default_value = "0", value_parser = parse_fraction)]
    pub beta_share: f64,

    /// Add this header to every request, e.g. `-H 'x-mlmesh-env: green'` to
    /// test the green environment of a blue/green deployment. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,

    /// After each offer, the simulated customer accepts or declines according
    /// to the dataset's true label, posted to /feedback.
    #[arg(long)]
    pub feedback: bool,

    /// Sign each simulated user in: a JWT from the committed demo key (as
    /// `mlmesh token` mints, `group: beta` for beta users) sent as
    /// `Authorization: Bearer` on /predict and /feedback. With istio/auth/
    /// applied, the ingress gateway refuses feedback without one.
    #[arg(long)]
    pub demo_tokens: bool,

    /// Per-request timeout; a timed-out request counts as an error.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Runtime threads (default: all CPUs).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Seed for shuffling users and picking beta users, so runs repeat.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Fail unless VERSION's share of requests is PERCENT ± TOLERANCE points,
    /// e.g. `v2=10±2` or `v2=10+-2`. Repeatable.
    #[arg(long = "expect-share", value_name = "VERSION=PCT±TOL", value_parser = parse_share)]
    pub expect_share: Vec<ShareExpectation>,

    /// Fail if any user saw more than one model version.
    #[arg(long)]
    pub expect_sticky: bool,

    /// Fail if more than this fraction of requests failed (non-2xx, timeout,
    /// transport error, or a degraded frontend answer).
    #[arg(long, value_parser = parse_fraction)]
    pub max_error_rate: Option<f64>,

    /// Fail if the overall p99 latency exceeds this (e.g. `50ms`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_p99: Option<Duration>,

    /// No live progress output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl Config {
    /// Closed-loop concurrency (when not in open-loop mode).
    pub fn connections(&self) -> usize {
        self.concurrency.unwrap_or(16).max(1)
    }
}

pub fn parse_header(s: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected NAME: VALUE, e.g. 'x-mlmesh-env: green'"))?;
    let name = http::HeaderName::try_from(name.trim())
        .map_err(|_| format!("`{}` is not a valid header name", name.trim()))?;
    let value = http::HeaderValue::try_from(value.trim())
        .map_err(|_| format!("the value of {name} is not a valid header value"))?;
    Ok((name, value))
}

pub fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    match n.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("`{s}` is not a positive rate like 500 or 500/s")),
    }
}

pub fn parse_share(s: &str) -> Result<ShareExpectation, String> {
    let bad = || format!("`{s}`: expected VERSION=PERCENT±TOLERANCE, e.g. v2=10±2 or v2=10+-2");
    let (version, rest) = s.split_once('=').ok_or_else(bad)?;
    let (pct, tol) = rest
        .split_once('±')
        .or_else(|| rest.split_once("+-"))
        .or_else(|| rest.split_once("+/-"))
        .ok_or_else(bad)?;
    let num = |x: &str| {
        x.trim()
            .trim_end_matches('%')
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let (Some(percent), Some(tolerance)) = (num(pct), num(tol)) else {
        return Err(bad());
    };
    if version.trim().is_empty() || percent > 100.0 {
        return Err(bad());
    }
    Ok(ShareExpectation {
        version: version.trim().to_owned(),
        percent,
        tolerance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_expectations_parse_in_both_spellings() {
        let want = ShareExpectation {
            version: "v2".into(),
            percent: 10.0,
            tolerance: 2.0,
        };
        assert_eq!(parse_share("v2=10±2").unwrap(), want);
        assert_eq!(parse_share("v2=10+-2").unwrap(), want);
        assert_eq!(parse_share("v2=10%+/-2%").unwrap(), want);
        for bad in ["v2=10", "=10±2", "v2=abc±2", "v2=10±-1", "v2=150±1", "v2"] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_parse_as_curl_writes_them() {
        let (n, v) = parse_header("X-Mlmesh-Env: green").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-mlmesh-env", "green"));
        assert!(parse_header("no-colon").is_err());
        assert!(parse_header("bad name: x").is_err());
        assert!(parse_header("x-a: line\nbreak").is_err());
    }

    #[test]
    fn rates_and_fractions() {
        assert_eq!(parse_rate("500/s").unwrap(), 500.0);
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        assert!(parse_rate("0").is_err() && parse_rate("-1").is_err() && parse_rate("x").is_err());
        assert!(parse_fraction("1.01").is_err());
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
