//! The experiment plan: the hypothesis in words and, per metric, its role,
//! the margin it is judged against, the sample it needs and its alpha.
//! Built-in defaults are the caravan-offer experiment
//! (`experiments/caravan-offer.yaml` is the same plan written out).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a metric does to the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Fails → rollback, even when the split is off.
    Critical,
    /// Fails → rollback.
    Guardrail,
    /// Fails → rollback (the candidate is proven worse); must pass to promote.
    Goal,
    /// Shown, never decides.
    Report,
    /// The sample-ratio check: fails → invalid.
    Validity,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Guardrail => "guardrail",
            Self::Goal => "goal",
            Self::Report => "report",
            Self::Validity => "validity",
        }
    }

    /// Metrics whose alpha is part of the family-wise split.
    pub fn decides(self) -> bool {
        matches!(self, Self::Critical | Self::Guardrail | Self::Goal)
    }
}

/// The metrics mlmesh can judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Degraded decisions blamed on the version, per decision (lower is better).
    Errors,
    /// The model call's latency quantile (lower is better).
    Latency,
    /// Accepted / answered offers, one answer per user (higher is better).
    Acceptance,
    /// Offers / decisions.
    OfferRate,
    /// The prediction-score distribution.
    Scores,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Errors => "errors",
            Self::Latency => "latency",
            Self::Acceptance => "acceptance",
            Self::OfferRate => "offer_rate",
            Self::Scores => "scores",
        }
    }
}

/// The unit whose split is checked for a sample-ratio mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Sticky cohorts (the frontend assigns users): first exposures per cohort.
    User,
    /// A per-request split (Istio's weighted canary): decisions per version.
    Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Srm {
    #[serde(default = "Srm::default_unit")]
    pub unit: Unit,
    /// p-value below which the split is declared broken.
    #[serde(default = "Srm::default_alpha")]
    pub alpha: f64,
    /// Expected candidate share in percent; default: the frontend's canary percent.
    #[serde(default)]
    pub expected_candidate_percent: Option<f64>,
    /// Units (users or requests) before the check is made.
    #[serde(default = "Srm::default_min_sample")]
    pub min_sample: u64,
}

impl Srm {
    fn default_unit() -> Unit {
        Unit::User
    }
    fn default_alpha() -> f64 {
        0.001
    }
    fn default_min_sample() -> u64 {
        100
    }
}

impl Default for Srm {
    fn default() -> Self {
        Self {
            unit: Self::default_unit(),
            alpha: Self::default_alpha(),
            expected_candidate_percent: None,
            min_sample: Self::default_min_sample(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    pub metric: MetricKind,
    pub role: Role,
    /// What a pass must prove the candidate stays within: absolute for rates
    /// (0.01 = one percentage point; a rate fails when the candidate is
    /// surely worse at all), relative for latency (0.25 = 25% slower; latency
    /// fails beyond it).
    #[serde(default)]
    pub margin: Option<f64>,
    /// Latency only: slowdowns below this many seconds never count.
    #[serde(default)]
    pub slack_seconds: Option<f64>,
    /// Latency only: the quantile judged (default 0.99).
    #[serde(default)]
    pub quantile: Option<f64>,
    /// Per arm, before the metric may pass.
    #[serde(default)]
    pub min_sample: Option<u64>,
    /// This metric's alpha; default: the plan's alpha split evenly across
    /// the critical, guardrail and goal metrics.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Scale of the effects that matter (the mixture's standard deviation).
    #[serde(default)]
    pub tau: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    /// What is being changed, in words.
    #[serde(default)]
    pub change: String,
    pub hypothesis: String,
    /// Family-wise false-alarm rate over the deciding metrics.
    #[serde(default = "Plan::default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub srm: Srm,
    pub metrics: Vec<Metric>,
}

/// A plan that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid plan: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A metric with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Resolved {
    pub metric: MetricKind,
    pub role: Role,
    pub margin: f64,
    pub slack_seconds: f64,
    pub quantile: f64,
    pub min_sample: u64,
    pub alpha: f64,
    pub tau: f64,
}

pub const DEFAULT_PLAN: &str = include_str!("../../../experiments/caravan-offer.yaml");

impl Plan {
    fn default_alpha() -> f64 {
        0.05
    }

    /// The caravan-offer experiment.
    pub fn caravan_offer() -> Self {
        Self::parse(DEFAULT_PLAN, "built-in plan").expect("the built-in plan is valid")
    }

    /// The plan in `path`, or the built-in caravan-offer plan without one.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, PlanError> {
        match path {
            Some(p) => Self::load(p),
            None => Ok(Self::caravan_offer()),
        }
    }

    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, PlanError> {
        let plan: Plan = serde_yaml_ng::from_str(text).map_err(|e| PlanError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        plan.validate().map_err(|message| PlanError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(plan)
    }

    fn validate(&self) -> Result<(), String> {
        let unit_open = |x: f64| x > 0.0 && x < 1.0;
        if !unit_open(self.alpha) {
            return Err(format!("alpha must be in (0, 1), not {}", self.alpha));
        }
        if !unit_open(self.srm.alpha) {
            return Err(format!(
                "srm.alpha must be in (0, 1), not {}",
                self.srm.alpha
            ));
        }
        if let Some(p) = self.srm.expected_candidate_percent
            && !(p > 0.0 && p < 100.0)
        {
            return Err(format!(
                "srm.expected_candidate_percent must be in (0, 100), not {p}"
            ));
        }
        if self.metrics.is_empty() {
            return Err("metrics: at least one metric is needed".into());
        }
        let mut seen = Vec::new();
        for m in &self.metrics {
            let name = m.metric.as_str();
            if seen.contains(&m.metric) {
                return Err(format!("metric {name} is listed twice"));
            }
            seen.push(m.metric);
            if m.role == Role::Validity {
                return Err(format!(
                    "metric {name}: role validity belongs to the srm section; use critical, guardrail, goal or report"
                ));
            }
            let non_negative = |what: &str, v: Option<f64>| match v {
                Some(x) if !(x.is_finite() && x >= 0.0) => Err(format!(
                    "metric {name}: {what} must be a finite number >= 0, not {x}"
                )),
                _ => Ok(()),
            };
            non_negative("margin", m.margin)?;
            non_negative("slack_seconds", m.slack_seconds)?;
            if let Some(a) = m.alpha
                && !unit_open(a)
            {
                return Err(format!("metric {name}: alpha must be in (0, 1), not {a}"));
            }
            if let Some(q) = m.quantile
                && !unit_open(q)
            {
                return Err(format!(
                    "metric {name}: quantile must be in (0, 1), not {q}"
                ));
            }
            if let Some(t) = m.tau
                && !(t.is_finite() && t > 0.0)
            {
                return Err(format!("metric {name}: tau must be > 0, not {t}"));
            }
            if m.role.decides() && matches!(m.metric, MetricKind::Scores | MetricKind::OfferRate) {
                return Err(format!(
                    "metric {name} has no direction (better or worse): it can only be a report"
                ));
            }
        }
        Ok(())
    }

    /// Each metric with its defaults and its share of the plan's alpha.
    pub fn resolved(&self) -> Vec<Resolved> {
        let deciding = self
            .metrics
            .iter()
            .filter(|m| m.role.decides())
            .count()
            .max(1);
        self.metrics
            .iter()
            .map(|m| {
                let (margin, min_sample, tau) = match m.metric {
                    MetricKind::Errors => (0.01, 250, 0.05),
                    MetricKind::Latency => (0.25, 250, 0.05),
                    MetricKind::Acceptance => (0.02, 200, 0.05),
                    MetricKind::OfferRate => (0.0, 200, 0.05),
                    MetricKind::Scores => (0.0, 200, 0.05),
                };
                let split = self.alpha / deciding as f64;
                Resolved {
                    metric: m.metric,
                    role: m.role,
                    margin: m.margin.unwrap_or(margin),
                    slack_seconds: m.slack_seconds.unwrap_or(0.005),
                    quantile: m.quantile.unwrap_or(0.99),
                    min_sample: m.min_sample.unwrap_or(min_sample),
                    alpha: m
                        .alpha
                        .unwrap_or(if m.role.decides() { split } else { self.alpha }),
                    tau: m.tau.unwrap_or(tau),
                }
            })
            .collect()
    }

    /// The family-wise bound on false rollbacks: the sum of the deciding
    /// metrics' alphas (Bonferroni), each spent by an always-valid interval.
    pub fn family_alpha(&self) -> f64 {
        self.resolved()
            .iter()
            .filter(|m| m.role.decides())
            .map(|m| m.alpha)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_plan_is_the_shipped_file() {
        let p = Plan::caravan_offer();
        assert_eq!(p.name, "caravan-offer");
        assert!(p.hypothesis.contains("accepted at least as often"));
        let r = p.resolved();
        let roles: Vec<_> = r.iter().map(|m| (m.metric, m.role)).collect();
        assert!(roles.contains(&(MetricKind::Errors, Role::Critical)));
        assert!(roles.contains(&(MetricKind::Latency, Role::Guardrail)));
        assert!(roles.contains(&(MetricKind::Acceptance, Role::Goal)));
        assert!((p.family_alpha() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn bad_plans_are_refused_with_the_reason() {
        let base = "name: x\nhypothesis: h\n";
        let cases = [
            ("metrics: []", "at least one metric"),
            (
                "metrics: [{metric: errors, role: boss}]",
                "unknown variant `boss`",
            ),
            (
                "metrics: [{metric: clicks, role: goal}]",
                "unknown variant `clicks`",
            ),
            (
                "metrics: [{metric: errors, role: critical, margin: -0.1}]",
                "margin must be",
            ),
            (
                "metrics: [{metric: errors, role: critical, alpha: 1.5}]",
                "alpha must be",
            ),
            (
                "metrics: [{metric: latency, role: guardrail, quantile: 1}]",
                "quantile must be",
            ),
            (
                "metrics: [{metric: errors, role: critical}, {metric: errors, role: goal}]",
                "twice",
            ),
            (
                "metrics: [{metric: scores, role: goal}]",
                "only be a report",
            ),
            ("metrics: [{metric: errors, role: validity}]", "srm section"),
            (
                "metrics: [{metric: errors, role: critical, margn: 1}]",
                "unknown field `margn`",
            ),
            (
                "alpha: 0\nmetrics: [{metric: errors, role: critical}]",
                "alpha must be",
            ),
            (
                "srm: {expected_candidate_percent: 120}\nmetrics: [{metric: errors, role: critical}]",
                "expected_candidate_percent",
            ),
            ("metrics: {metric: errors", "not a valid plan"),
        ];
        for (yaml, want) in cases {
            let err = Plan::parse(&format!("{base}{yaml}"), "p.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
        assert!(
            Plan::load(Path::new("/nonexistent/plan.yaml"))
                .unwrap_err()
                .to_string()
                .contains("reading /nonexistent/plan.yaml")
        );
    }

    #[test]
    fn alpha_is_split_across_deciding_metrics_only() {
        let p = Plan::parse(
            "name: x\nhypothesis: h\nalpha: 0.06\nmetrics:\n - {metric: errors, role: critical}\n - {metric: acceptance, role: goal}\n - {metric: scores, role: report}\n - {metric: latency, role: guardrail, alpha: 0.01}\n",
            "p",
        )
        .unwrap();
        let r = p.resolved();
        assert!((r[0].alpha - 0.02).abs() < 1e-12);
        assert!((r[3].alpha - 0.01).abs() < 1e-12);
        assert!((p.family_alpha() - 0.05).abs() < 1e-12);
    }
}
