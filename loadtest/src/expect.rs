//! The assertions scripts and labs put on a run (`--expect-share`,
//! `--expect-sticky`, `--max-error-rate`, `--max-p99`).

use crate::config::Config;
use crate::stats::Report;

/// Every violated expectation, as a sentence; empty when the run passed.
pub fn violations(cfg: &Config, r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for e in &cfg.expect_share {
        let got = r
            .versions
            .iter()
            .find(|v| v.version == e.version)
            .map_or(0.0, |v| v.share_percent);
        if (got - e.percent).abs() > e.tolerance {
            out.push(format!(
                "{} served {got:.2}% of requests, expected {}% ± {}",
                e.version, e.percent, e.tolerance
            ));
        }
    }
    if cfg.expect_sticky && r.sticky_violations > 0 {
        out.push(format!(
            "{} users saw more than one model version (e.g. {})",
            r.sticky_violations,
            r.sticky_violators.join(", ")
        ));
    }
    if let Some(max) = cfg.max_error_rate
        && r.all.error_rate > max
    {
        let worst = r
            .versions
            .iter()
            .max_by(|a, b| a.error_rate.total_cmp(&b.error_rate))
            .map(|v| format!(" (worst: {} at {:.2}%)", v.version, 100.0 * v.error_rate))
            .unwrap_or_default();
        out.push(format!(
            "error rate {:.2}% exceeds {:.2}%{worst}",
            100.0 * r.all.error_rate,
            100.0 * max
        ));
    }
    if let Some(max) = cfg.max_p99 {
        let max_ms = max.as_secs_f64() * 1000.0;
        if r.all.latency.p99_ms > max_ms {
            out.push(format!(
                "p99 latency {:.2}ms exceeds {max_ms}ms",
                r.all.latency.p99_ms
            ));
        }
    }
    out
}
