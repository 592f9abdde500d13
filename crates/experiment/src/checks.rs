//! The checks: each compares the candidate with the baseline on one metric
//! and says pass, fail, inconclusive or no-data, with a one-line reason.

use serde::Serialize;
use serde_json::json;

use crate::histogram::{Histogram, Quantile};
use crate::plan::{MetricKind, Plan, Resolved, Role, Unit};
use crate::snapshot::{Snapshot, VersionCounts};
use crate::stats::{self, Count, Interval};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    Inconclusive,
    NoData,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Inconclusive => "inconclusive",
            Self::NoData => "no-data",
        }
    }
}

/// Samples per arm, in the check's unit (users, decisions, outcomes, calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Arms {
    pub baseline: u64,
    pub candidate: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub role: Role,
    pub status: Status,
    /// What `baseline`, `candidate` and `effect` are measured in.
    pub unit: &'static str,
    pub baseline: Option<f64>,
    pub candidate: Option<f64>,
    /// Candidate minus baseline (for `scores`: the KS distance).
    pub effect: Option<f64>,
    /// The effect's interval at the check's alpha (`null` ends: unbounded).
    pub ci: Option<[f64; 2]>,
    pub samples: Arms,
    /// The rule in force, in words.
    pub threshold: String,
    pub reason: String,
    pub alpha: f64,
    /// Check-specific figures (quantiles, test statistics, ...).
    pub details: serde_json::Value,
}

/// Percentage points, for reasons.
fn pp(x: f64) -> String {
    format!("{:+.1} pp", x * 100.0)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Seconds as ms, for reasons.
pub fn ms(x: f64) -> String {
    if x.is_infinite() {
        "∞".into()
    } else if x < 0.01 {
        format!("{:.2} ms", x * 1e3)
    } else {
        format!("{:.0} ms", x * 1e3)
    }
}

fn ci_pp(i: &Interval) -> String {
    format!("[{:.1}, {:.1}]", i.lo * 100.0, i.hi * 100.0)
}

/// Everything a check needs to know about the experiment.
pub struct Context<'a> {
    pub plan: &'a Plan,
    pub snap: &'a Snapshot,
    pub baseline: &'a str,
    pub candidate: &'a str,
}

impl Context<'_> {
    fn arm(&self, version: &str) -> VersionCounts {
        self.snap.versions.get(version).cloned().unwrap_or_default()
    }

    fn missing(&self, version: &str) -> String {
        let seen: Vec<&str> = self.snap.versions.keys().map(String::as_str).collect();
        format!(
            "nothing from {version} yet (versions seen: {})",
            if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            }
        )
    }

    /// Every check of the plan, the sample-ratio check first.
    pub fn checks(&self) -> Vec<Check> {
        let mut out = vec![self.srm()];
        for m in self.plan.resolved() {
            out.push(match m.metric {
                MetricKind::Errors => self.errors(&m),
                MetricKind::Latency => self.latency(&m),
                MetricKind::Acceptance => self.acceptance(&m),
                MetricKind::OfferRate => self.offer_rate(&m),
                MetricKind::Scores => self.scores(&m),
            });
        }
        out
    }

    fn srm(&self) -> Check {
        let srm = &self.plan.srm;
        let (b, c, unit, what) = match srm.unit {
            Unit::User => (
                self.snap.users.baseline,
                self.snap.users.candidate,
                "users",
                "users (first exposures, beta group left out)",
            ),
            Unit::Request => (
                self.arm(self.baseline).decisions,
                self.arm(self.candidate).decisions,
                "requests",
                "decisions",
            ),
        };
        let expected = srm
            .expected_candidate_percent
            .or(self.snap.canary_percent)
            .map(|p| p / 100.0);
        let mut check = Check {
            name: "srm",
            role: Role::Validity,
            status: Status::NoData,
            unit: "share",
            baseline: Some(b as f64),
            candidate: Some(c as f64),
            effect: None,
            ci: None,
            samples: Arms {
                baseline: b,
                candidate: c,
            },
            threshold: format!("chi-square p ≥ {}", srm.alpha),
            reason: String::new(),
            alpha: srm.alpha,
            details: json!({ "unit": unit, "beta_users": self.snap.users.beta }),
        };
        let Some(expected) = expected.filter(|p| *p > 0.0 && *p < 1.0) else {
            check.reason = match expected {
                None => "no expected split: the frontend's canary percent was not found; set srm.expected_candidate_percent".into(),
                Some(p) => format!("a {}% canary has nothing to compare", p * 100.0),
            };
            return check;
        };
        check.threshold = format!("{} candidate, chi-square p ≥ {}", pct(expected), srm.alpha);
        let n = b + c;
        if n == 0 {
            check.reason = format!("no {what} counted yet");
            return check;
        }
        let observed = c as f64 / n as f64;
        check.effect = Some(observed - expected);
        let (stat, p) = stats::split_chi_square(b, c, expected).expect("n > 0, 0 < p < 1");
        check.details["expected_share"] = json!(expected);
        check.details["observed_share"] = json!(observed);
        check.details["chi_square"] = json!(stat);
        check.details["p_value"] = json!(p);
        let split = format!(
            "{b}/{c} {what} ({} candidate, {} expected)",
            pct(observed),
            pct(expected)
        );
        (check.status, check.reason) = if n < srm.min_sample {
            (
                Status::Inconclusive,
                format!(
                    "{split}: {} more needed before judging the split",
                    srm.min_sample - n
                ),
            )
        } else if p < srm.alpha {
            (
                Status::Fail,
                format!(
                    "sample-ratio mismatch: {split}, p = {p:.2e}: the assignment or the routing is broken, or something drops one cohort's {unit}; no comparison can be trusted"
                ),
            )
        } else {
            (Status::Pass, format!("{split}, p = {p:.3}"))
        };
        check
    }

    /// A two-rate comparison without a judgement yet: the check's frame, and
    /// the difference's interval with a one-line summary once both arms have
    /// data.
    fn rate_frame(
        &self,
        m: &Resolved,
        (b, c): (Count, Count),
        unit: &'static str,
        noun: &str,
    ) -> (Check, Option<(Interval, String)>) {
        let mut check = Check {
            name: m.metric.as_str(),
            role: m.role,
            status: Status::NoData,
            unit: "share",
            baseline: b.rate(),
            candidate: c.rate(),
            effect: None,
            ci: None,
            samples: Arms {
                baseline: b.trials,
                candidate: c.trials,
            },
            threshold: String::new(),
            reason: String::new(),
            alpha: m.alpha,
            details: json!({ "unit": unit, "min_sample": m.min_sample, "tau": m.tau }),
        };
        let Some(d) = stats::rate_difference(b, c, m.tau, m.alpha) else {
            check.reason = match (b.trials, c.trials) {
                (0, 0) => format!("no {unit} yet"),
                (_, 0) => format!("no {unit} on {} yet", self.candidate),
                _ => format!("no {unit} on {} yet", self.baseline),
            };
            return (check, None);
        };
        check.effect = Some(d.estimate);
        check.ci = Some([d.lo, d.hi]);
        let summary = format!(
            "{} {noun} {} vs {}'s {}: {} {}",
            self.candidate,
            pct(c.rate().unwrap_or(0.0)),
            self.baseline,
            pct(b.rate().unwrap_or(0.0)),
            pp(d.estimate),
            ci_pp(&d)
        );
        (check, Some((d, summary)))
    }

    /// A rate where lower is better (`errors`) or higher is better
    /// (`acceptance`), judged on the difference against the margin.
    fn rate_check(
        &self,
        m: &Resolved,
        counts: (Count, Count),
        lower_is_better: bool,
        unit: &'static str,
        noun: &str,
    ) -> Check {
        let (mut check, judged) = self.rate_frame(m, counts, unit, noun);
        let margin = pp(if lower_is_better { m.margin } else { -m.margin });
        let cmp = if lower_is_better { "≤" } else { "≥" };
        check.threshold = format!("pass {cmp} {margin}; fail if surely worse");
        // The margin as an effect (candidate − baseline), for plots.
        check.details["margin_effect"] = json!(if lower_is_better { m.margin } else { -m.margin });
        let Some((d, summary)) = judged else {
            return check;
        };
        // Fail: surely worse than the baseline (the hypothesis says "at
        // least as good"). Pass: surely within the margin, which is what a
        // finite sample can prove of "at least as good".
        let (worse, fine) = if lower_is_better {
            (d.lo > 0.0, d.hi <= m.margin)
        } else {
            (d.hi < 0.0, d.lo >= -m.margin)
        };
        let short = m
            .min_sample
            .saturating_sub(counts.0.trials.min(counts.1.trials));
        (check.status, check.reason) = if worse {
            (
                Status::Fail,
                format!("{summary}: surely worse than {}", self.baseline),
            )
        } else if fine && short == 0 {
            (Status::Pass, format!("{summary}, within {margin}"))
        } else if fine {
            (
                Status::Inconclusive,
                format!("{summary}; needs {short} more {unit} per version"),
            )
        } else {
            (
                Status::Inconclusive,
                format!("{summary}: the interval still spans the {margin} margin"),
            )
        };
        check
    }

    fn errors(&self, m: &Resolved) -> Check {
        let (b, c) = (self.arm(self.baseline), self.arm(self.candidate));
        let counts = (
            Count::new(b.degraded, b.decisions),
            Count::new(c.degraded, c.decisions),
        );
        let mut check = self.rate_check(m, counts, true, "decisions", "fails");
        check.details["unattributed_degraded"] = json!(self.snap.unattributed_degraded);
        if c.decisions == 0 && b.decisions == 0 {
            check.reason = self.missing(self.candidate);
        }
        check
    }

    fn acceptance(&self, m: &Resolved) -> Check {
        let (b, c) = (self.arm(self.baseline), self.arm(self.candidate));
        let per_user =
            |v: &VersionCounts| Count::new(v.users_accepted, v.users_accepted + v.users_declined);
        let per_decision = |v: &VersionCounts| Count::new(v.accepted, v.accepted + v.declined);
        let mut check = self.rate_check(
            m,
            (per_user(&b), per_user(&c)),
            false,
            "answered users",
            "converts",
        );
        check.details["per_decision"] = json!({
            "baseline": per_decision(&b), "candidate": per_decision(&c),
        });
        check
    }

    fn offer_rate(&self, m: &Resolved) -> Check {
        let (b, c) = (self.arm(self.baseline), self.arm(self.candidate));
        let count = |v: &VersionCounts| Count::new(v.offers, v.decisions - v.degraded);
        let (mut check, judged) =
            self.rate_frame(m, (count(&b), count(&c)), "decisions", "offers to");
        check.threshold = "report: differs if the CI excludes 0".into();
        if let Some((d, summary)) = judged {
            (check.status, check.reason) = if d.contains(0.0) {
                (Status::Pass, format!("{summary}: no difference detected"))
            } else {
                (
                    Status::Fail,
                    format!("{summary}: the versions offer at different rates"),
                )
            };
        }
        check
    }

    fn latency(&self, m: &Resolved) -> Check {
        let (b, c) = (
            self.arm(self.baseline).latency,
            self.arm(self.candidate).latency,
        );
        let q = m.quantile;
        let label = format!("p{}", trim_float(q * 100.0));
        let mut check = Check {
            name: "latency",
            role: m.role,
            status: Status::NoData,
            unit: "seconds",
            baseline: None,
            candidate: None,
            effect: None,
            ci: None,
            samples: Arms {
                baseline: b.count,
                candidate: c.count,
            },
            threshold: format!(
                "{label} ≤ {:.2} × {}'s + {}",
                1.0 + m.margin,
                self.baseline,
                ms(m.slack_seconds)
            ),
            reason: String::new(),
            alpha: m.alpha,
            details: json!({ "quantile": q, "min_sample": m.min_sample }),
        };
        // Two versions, two bounds each: half the metric's alpha per version.
        let per = m.alpha / 2.0;
        let (Some(bq), Some(cq)) = (b.quantile(q, m.tau, per), c.quantile(q, m.tau, per)) else {
            check.reason = if c.count == 0 {
                format!("no model calls timed on {} yet", self.candidate)
            } else {
                format!("no model calls timed on {} yet", self.baseline)
            };
            return check;
        };
        let table = |h: &Histogram| -> serde_json::Value {
            [0.5, 0.95, 0.99]
                .iter()
                .filter_map(|&q| h.quantile(q, m.tau, per))
                .map(|x: Quantile| (format!("p{}", trim_float(x.q * 100.0)), json!(x)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        check.details["baseline_quantiles"] = table(&b);
        check.details["candidate_quantiles"] = table(&c);
        if let Some((stat, df, p)) =
            stats::homogeneity_chi_square(&b.bucket_counts(), &c.bucket_counts())
        {
            check.details["distribution_chi_square"] =
                json!({ "statistic": stat, "df": df, "p_value": p });
        }
        check.baseline = Some(bq.estimate);
        check.candidate = Some(cq.estimate);
        check.effect = Some(cq.estimate - bq.estimate);
        check.ci = Some([cq.lo - bq.hi, cq.hi - bq.lo]);
        let allowance = (1.0 + m.margin) * bq.hi + m.slack_seconds;
        check.details["allowance_seconds"] = json!(allowance);
        check.details["margin_effect"] = json!(allowance - bq.estimate);
        let summary = format!(
            "{} {label} {} (in ({}, {}]) vs {}'s {} (in ({}, {}])",
            self.candidate,
            ms(cq.estimate),
            ms(cq.lo),
            ms(cq.hi),
            self.baseline,
            ms(bq.estimate),
            ms(bq.lo),
            ms(bq.hi)
        );
        let short = m.min_sample.saturating_sub(b.count.min(c.count));
        (check.status, check.reason) = if bq.hi.is_infinite() {
            (
                Status::Inconclusive,
                format!(
                    "{summary}: too few of {}'s calls to bound its {label}",
                    self.baseline
                ),
            )
        } else if cq.lo > allowance {
            (
                Status::Fail,
                format!("{summary}: slower than the {} allowed", ms(allowance)),
            )
        } else if cq.hi <= allowance && short == 0 {
            (
                Status::Pass,
                format!("{summary}: within the {} allowed", ms(allowance)),
            )
        } else if cq.hi <= allowance {
            (
                Status::Inconclusive,
                format!("{summary}; needs {short} more calls per version"),
            )
        } else {
            (
                Status::Inconclusive,
                format!(
                    "{summary}: cannot yet tell whether it stays within {}",
                    ms(allowance)
                ),
            )
        };
        check
    }

    fn scores(&self, m: &Resolved) -> Check {
        let b = self.arm(self.baseline).scores;
        let cand = self.arm(self.candidate);
        // A shadow launch: the candidate's scores are all mirrored ones.
        let (c, traffic) = if cand.scores.count == 0 && cand.shadow_scores.count > 0 {
            (cand.shadow_scores, "shadow")
        } else {
            (cand.scores, "live")
        };
        let mut check = Check {
            name: "scores",
            role: m.role,
            status: Status::NoData,
            unit: "ks-distance",
            baseline: b.mean(),
            candidate: c.mean(),
            effect: None,
            ci: None,
            samples: Arms {
                baseline: b.count,
                candidate: c.count,
            },
            threshold: String::new(),
            reason: String::new(),
            alpha: m.alpha,
            details: json!({ "candidate_traffic": traffic, "baseline_means_are": "bucket midpoints" }),
        };
        let (bc, cc) = (b.bucket_counts(), c.bucket_counts());
        let (Some(d), Some(psi)) = (stats::ks_distance(&bc, &cc), stats::psi(&bc, &cc)) else {
            check.reason =
                "no prediction scores from one of the versions yet (the model services' /metrics)"
                    .into();
            return check;
        };
        let crit = stats::ks_critical(b.count, c.count, m.alpha);
        check.effect = Some(d);
        check.threshold = format!("report only: KS distance ≤ {crit:.3}");
        check.details["ks_critical"] = json!(crit);
        check.details["psi"] = json!(psi);
        let head = format!(
            "{}'s {traffic} scores vs {}'s: KS distance {d:.3} (critical {crit:.3}), PSI {psi:.3}",
            self.candidate, self.baseline
        );
        (check.status, check.reason) = if d > crit {
            (
                Status::Fail,
                format!("{head}: the score distributions differ"),
            )
        } else {
            (Status::Pass, format!("{head}: no shift detected"))
        };
        check
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}
