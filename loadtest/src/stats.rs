//! What the run measured, per model version, and the report built from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Requests that got no `x-model-version` (transport errors, plain targets).
pub const NO_VERSION: &str = "-";

/// Latencies are kept in microseconds, from 1 µs to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone)]
pub struct VersionStats {
    pub requests: u64,
    pub errors: u64,
    pub degraded: u64,
    pub latency_us: Histogram<u64>,
    /// The answers that were not errors only.
    pub ok_latency_us: Histogram<u64>,
    pub statuses: BTreeMap<String, u64>,
    pub accepted: u64,
    pub declined: u64,
}

impl Default for VersionStats {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            degraded: 0,
            latency_us: new_histogram(),
            ok_latency_us: new_histogram(),
            statuses: BTreeMap::new(),
            accepted: 0,
            declined: 0,
        }
    }
}

impl VersionStats {
    fn merge(&mut self, o: &Self) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.degraded += o.degraded;
        self.latency_us
            .add(&o.latency_us)
            .expect("histograms share bounds");
        self.ok_latency_us
            .add(&o.ok_latency_us)
            .expect("histograms share bounds");
        for (k, v) in &o.statuses {
            *self.statuses.entry(k.clone()).or_default() += v;
        }
        self.accepted += o.accepted;
        self.declined += o.declined;
    }
}

/// One slice of the measurements; the run keeps several so recording never
/// contends, and merges them for progress lines and the report.
#[derive(Debug, Default)]
pub struct Shard {
    pub versions: HashMap<String, VersionStats>,
    /// User index → versions that answered that user (every user who made a
    /// request has an entry).
    pub user_versions: HashMap<usize, BTreeSet<String>>,
    pub feedback_errors: u64,
}

/// One finished request.
pub struct Observation<'a> {
    pub user: Option<usize>,
    pub version: Option<&'a str>,
    pub status: &'a str,
    pub latency: Duration,
    pub error: bool,
    pub degraded: bool,
}

impl Shard {
    pub fn record(&mut self, o: &Observation<'_>) {
        let version = o.version.unwrap_or(NO_VERSION);
        let s = match self.versions.get_mut(version) {
            Some(s) => s,
            None => self.versions.entry(version.to_owned()).or_default(),
        };
        s.requests += 1;
        s.errors += u64::from(o.error);
        s.degraded += u64::from(o.degraded);
        let us = u64::try_from(o.latency.as_micros()).unwrap_or(u64::MAX);
        s.latency_us.saturating_record(us.max(1));
        if !o.error {
            s.ok_latency_us.saturating_record(us.max(1));
        }
        match s.statuses.get_mut(o.status) {
            Some(n) => *n += 1,
            None => {
                s.statuses.insert(o.status.to_owned(), 1);
            }
        }
        if let Some(u) = o.user {
            let seen = self.user_versions.entry(u).or_default();
            // A degraded answer came from no model, so it says nothing about stickiness.
            if let Some(v) = o.version
                && !o.degraded
                && !seen.contains(v)
            {
                seen.insert(v.to_owned());
            }
        }
    }

    pub fn outcome(&mut self, version: &str, accepted: bool) {
        let s = self.versions.entry(version.to_owned()).or_default();
        if accepted {
            s.accepted += 1;
        } else {
            s.declined += 1;
        }
    }

    pub fn merge(&mut self, o: &Self) {
        for (k, v) in &o.versions {
            self.versions.entry(k.clone()).or_default().merge(v);
        }
        for (u, vs) in &o.user_versions {
            self.user_versions
                .entry(*u)
                .or_default()
                .extend(vs.iter().cloned());
        }
        self.feedback_errors += o.feedback_errors;
    }

    /// Everything, all versions together.
    pub fn total(&self) -> VersionStats {
        let mut t = VersionStats::default();
        for v in self.versions.values() {
            t.merge(v);
        }
        t
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Acceptance rate with a 95% Wilson score interval (sound for small counts
/// and rates near 0, unlike the normal approximation).
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub rate: f64,
    pub ci95_low: f64,
    pub ci95_high: f64,
}

pub fn wilson(successes: u64, n: u64) -> Option<Rate> {
    if n == 0 {
        return None;
    }
    let (s, n) = (successes as f64, n as f64);
    let z = 1.959_963_984_540_054_f64;
    let p = s / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    Some(Rate {
        rate: p,
        ci95_low: (centre - half).max(0.0),
        ci95_high: (centre + half).min(1.0),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionReport {
    pub version: String,
    pub requests: u64,
    /// Percent of all requests.
    pub share_percent: f64,
    pub errors: u64,
    pub error_rate: f64,
    pub degraded: u64,
    pub latency: Latency,
    /// Of the answers that were not errors: under overload the quick 429s of
    /// shed requests would flatter `latency`; this is what served ones took.
    pub ok_latency: Latency,
    pub statuses: BTreeMap<String, u64>,
    pub accepted: u64,
    pub declined: u64,
    pub acceptance: Option<Rate>,
}

impl VersionReport {
    fn of(version: &str, s: &VersionStats, all_requests: u64) -> Self {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Self {
            version: version.to_owned(),
            requests: s.requests,
            share_percent: 100.0 * ratio(s.requests, all_requests),
            errors: s.errors,
            error_rate: ratio(s.errors, s.requests),
            degraded: s.degraded,
            latency: Latency::of(&s.latency_us),
            ok_latency: Latency::of(&s.ok_latency_us),
            statuses: s.statuses.clone(),
            accepted: s.accepted,
            declined: s.declined,
            acceptance: wilson(s.accepted, s.accepted + s.declined),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub base_url: String,
    pub target: String,
    /// `closed (16 connections)` or `open (500 req/s)`.
    pub load: String,
    pub elapsed_secs: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    pub versions: Vec<VersionReport>,
    pub all: VersionReport,
    pub users: usize,
    pub beta_users: usize,
    /// Users answered by more than one model version.
    pub sticky_violations: usize,
    pub sticky_violators: Vec<String>,
    pub feedback_errors: u64,
    /// Open loop, `--overflow drop`: requests not sent because every
    /// `--max-in-flight` slot was busy when they were due (not in `requests`).
    pub overflow: u64,
}

impl Report {
    pub fn build(
        base_url: &str,
        target: &str,
        load: String,
        elapsed: Duration,
        merged: &Shard,
        user_ids: &[String],
        beta_users: usize,
    ) -> Self {
        let total = merged.total();
        let mut versions: Vec<VersionReport> = merged
            .versions
            .iter()
            .map(|(k, v)| VersionReport::of(k, v, total.requests))
            .collect();
        versions.sort_by(|a, b| a.version.cmp(&b.version));
        let mut violators: Vec<String> = merged
            .user_versions
            .iter()
            .filter(|(_, vs)| vs.len() > 1)
            .map(|(u, _)| user_ids[*u].clone())
            .collect();
        violators.sort();
        let secs = elapsed.as_secs_f64();
        Self {
            base_url: base_url.to_owned(),
            target: target.to_owned(),
            load,
            elapsed_secs: secs,
            requests: total.requests,
            throughput_rps: if secs > 0.0 {
                total.requests as f64 / secs
            } else {
                0.0
            },
            all: VersionReport::of("all", &total, total.requests),
            versions,
            users: merged.user_versions.len(),
            beta_users,
            sticky_violations: violators.len(),
            sticky_violators: violators.into_iter().take(20).collect(),
            feedback_errors: merged.feedback_errors,
            overflow: 0,
        }
    }

    /// The human table.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} requests in {:.2}s ({:.1} req/s), {} load, {} -> {}",
            self.requests,
            self.elapsed_secs,
            self.throughput_rps,
            self.load,
            self.target,
            self.base_url
        );
        let _ = writeln!(
            out,
            "\n{:<8} {:>9} {:>7} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}  acceptance (95% CI)",
            "version", "requests", "share", "errors", "err%", "p50", "p90", "p99", "p99.9", "max"
        );
        for v in self.versions.iter().chain(std::iter::once(&self.all)) {
            let acc = v.acceptance.as_ref().map_or_else(
                || "-".to_owned(),
                |a| {
                    format!(
                        "{:.1}% [{:.1}, {:.1}] of {}",
                        100.0 * a.rate,
                        100.0 * a.ci95_low,
                        100.0 * a.ci95_high,
                        v.accepted + v.declined
                    )
                },
            );
            let _ = writeln!(
                out,
                "{:<8} {:>9} {:>6.1}% {:>8} {:>6.2}% {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
                v.version,
                v.requests,
                v.share_percent,
                v.errors,
                100.0 * v.error_rate,
                fmt_ms(v.latency.p50_ms),
                fmt_ms(v.latency.p90_ms),
                fmt_ms(v.latency.p99_ms),
                fmt_ms(v.latency.p999_ms),
                fmt_ms(v.latency.max_ms),
                acc
            );
        }
        let statuses: Vec<String> = self
            .all
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "\nstatus: {}", statuses.join(" "));
        if self.all.degraded > 0 {
            let _ = writeln!(
                out,
                "degraded answers (counted as errors): {}",
                self.all.degraded
            );
        }
        if self.users > 0 {
            let _ = writeln!(
                out,
                "users: {} ({} beta), sticky violations: {}{}",
                self.users,
                self.beta_users,
                self.sticky_violations,
                if self.sticky_violators.is_empty() {
                    String::new()
                } else {
                    format!(" (e.g. {})", self.sticky_violators.join(", "))
                }
            );
        }
        if self.feedback_errors > 0 {
            let _ = writeln!(out, "feedback posts that failed: {}", self.feedback_errors);
        }
        if self.overflow > 0 {
            let _ = writeln!(
                out,
                "not sent (every --max-in-flight slot busy, --overflow drop): {}",
                self.overflow
            );
        }
        out
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.2}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_known_values() {
        // 10 of 100: Wilson 95% is [5.52%, 17.44%].
        let r = wilson(10, 100).unwrap();
        assert!((r.ci95_low - 0.0552).abs() < 5e-4, "{r:?}");
        assert!((r.ci95_high - 0.1744).abs() < 5e-4, "{r:?}");
        let zero = wilson(0, 20).unwrap();
        assert_eq!(zero.ci95_low, 0.0);
        assert!(zero.ci95_high > 0.1);
        assert!(wilson(0, 0).is_none());
    }

    #[test]
    fn stickiness_counts_users_with_two_versions_but_not_degraded_answers() {
        let mut s = Shard::default();
        let obs = |user, version, degraded| Observation {
            user: Some(user),
            version: Some(version),
            status: "200",
            latency: Duration::from_millis(1),
            error: degraded,
            degraded,
        };
        s.record(&obs(0, "v1", false));
        s.record(&obs(0, "v1", false));
        s.record(&obs(1, "v1", false));
        s.record(&obs(1, "v2", true)); // a failed v2 call did not answer the user
        s.record(&obs(2, "v1", false));
        s.record(&obs(2, "v2", false));
        let ids: Vec<String> = (0..3).map(|i| format!("u{i}")).collect();
        let r = Report::build(
            "http://x",
            "frontend",
            "closed".into(),
            Duration::from_secs(1),
            &s,
            &ids,
            0,
        );
        assert_eq!(r.sticky_violations, 1);
        assert_eq!(r.sticky_violators, ["u2"]);
        assert_eq!(r.requests, 6);
        let v2 = r.versions.iter().find(|v| v.version == "v2").unwrap();
        assert_eq!((v2.requests, v2.errors, v2.degraded), (2, 1, 1));
        assert!((v2.share_percent - 100.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn ok_latency_leaves_out_the_quick_refusals() {
        let mut s = Shard::default();
        let obs = |status, ms, error| Observation {
            user: None,
            version: Some("v1"),
            status,
            latency: Duration::from_millis(ms),
            error,
            degraded: false,
        };
        for _ in 0..9 {
            s.record(&obs("429", 1, true));
        }
        s.record(&obs("200", 40, false));
        let r = Report::build(
            "http://x",
            "infer",
            "open".into(),
            Duration::from_secs(1),
            &s,
            &[],
            0,
        );
        assert!(r.all.latency.p50_ms < 2.0, "{:?}", r.all.latency);
        assert!(
            (r.all.ok_latency.p50_ms - 40.0).abs() < 0.1,
            "{:?}",
            r.all.ok_latency
        );
    }
}
