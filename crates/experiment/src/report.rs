//! The verdict, and the report that carries it with every check and every
//! look taken so far.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::checks::{Check, Context, Status};
use crate::plan::{Plan, Role};
use crate::snapshot::{Snapshot, VersionCounts};

/// The version of the JSON report's schema (README, "Deciding an experiment").
pub const SCHEMA: &str = "mlmesh.analyze/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Promote,
    Rollback,
    Continue,
    Invalid,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Rollback => "rollback",
            Self::Continue => "continue",
            Self::Invalid => "invalid",
        }
    }

    /// `mlmesh analyze`'s exit code (2 is kept for usage and source errors).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Promote => 0,
            Self::Rollback => 1,
            Self::Continue => 3,
            Self::Invalid => 4,
        }
    }
}

/// The verdict from the checks, with its reasons:
/// 1. a critical metric fails → `rollback` (its failures are real whatever
///    the split);
/// 2. the sample-ratio check fails → `invalid`;
/// 3. a guardrail or goal fails → `rollback`;
/// 4. every critical, guardrail and goal metric passes (minimum samples
///    included) → `promote`;
/// 5. otherwise `continue`.
pub fn decide(checks: &[Check]) -> (Verdict, Vec<String>) {
    let failing = |roles: &[Role]| -> Vec<String> {
        checks
            .iter()
            .filter(|c| roles.contains(&c.role) && c.status == Status::Fail)
            .map(|c| format!("{} ({}): {}", c.name, c.role.as_str(), c.reason))
            .collect()
    };
    let critical = failing(&[Role::Critical]);
    if !critical.is_empty() {
        return (Verdict::Rollback, critical);
    }
    let srm = failing(&[Role::Validity]);
    if !srm.is_empty() {
        return (Verdict::Invalid, srm);
    }
    let others = failing(&[Role::Guardrail, Role::Goal]);
    if !others.is_empty() {
        return (Verdict::Rollback, others);
    }
    let deciding: Vec<&Check> = checks.iter().filter(|c| c.role.decides()).collect();
    let open: Vec<String> = deciding
        .iter()
        .filter(|c| c.status != Status::Pass)
        .map(|c| {
            format!(
                "{} ({}) {}: {}",
                c.name,
                c.role.as_str(),
                c.status.as_str(),
                c.reason
            )
        })
        .collect();
    if open.is_empty() && !deciding.is_empty() {
        let names: Vec<&str> = deciding.iter().map(|c| c.name).collect();
        return (
            Verdict::Promote,
            vec![format!(
                "every critical, guardrail and goal metric passed with its minimum sample: {}",
                names.join(", ")
            )],
        );
    }
    (Verdict::Continue, open)
}

/// One look: when, the verdict, and each check's figures then.
#[derive(Debug, Clone, Serialize)]
pub struct Look {
    pub number: usize,
    /// Seconds since the first look.
    pub elapsed_seconds: f64,
    pub verdict: Verdict,
    pub checks: Vec<LookCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LookCheck {
    pub name: &'static str,
    pub status: Status,
    pub baseline: Option<f64>,
    pub candidate: Option<f64>,
    pub effect: Option<f64>,
    pub ci: Option<[f64; 2]>,
}

/// How the figures were obtained, for the report's method section.
#[derive(Debug, Clone, Serialize)]
pub struct Method {
    pub sequential: &'static str,
    pub family_wise: String,
    pub srm: String,
    pub latency: &'static str,
    pub acceptance: &'static str,
}

/// The report: `mlmesh analyze --json` writes exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub experiment: String,
    pub change: String,
    pub hypothesis: String,
    pub baseline: String,
    pub candidate: String,
    /// Where the figures came from (never with credentials).
    pub source: String,
    /// The window the figures cover, in words.
    pub window: String,
    /// RFC 3339.
    pub generated_at: String,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    pub family_alpha: f64,
    pub method: Method,
    pub checks: Vec<Check>,
    pub looks: Vec<Look>,
    /// The counters the checks were computed from, per arm.
    pub data: Data,
    /// A shadow launch per request, when the event log has shadow
    /// predictions (`mlmesh analyze --event-log-url`); describes, does not
    /// change the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::shadow::ShadowSection>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Data {
    pub baseline: VersionCounts,
    pub candidate: VersionCounts,
    pub users: crate::snapshot::Users,
    /// The users were counted exactly from the event log's exposures, not
    /// from the frontend replicas' metrics.
    pub users_from_event_log: bool,
    pub canary_percent: Option<f64>,
}

impl Report {
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// An experiment under analysis: the plan, the arms, and the looks so far.
pub struct Analysis {
    plan: Plan,
    baseline: String,
    candidate: String,
    source: String,
    window: String,
    started: Option<SystemTime>,
    looks: Vec<Look>,
}

impl Analysis {
    pub fn new(plan: Plan, baseline: &str, candidate: &str, source: &str, window: &str) -> Self {
        Self {
            plan,
            baseline: baseline.to_owned(),
            candidate: candidate.to_owned(),
            source: source.to_owned(),
            window: window.to_owned(),
            started: None,
            looks: Vec::new(),
        }
    }

    /// Forgets all but the last `n` looks (their numbers stay), so a
    /// long-lived analysis polled by a controller keeps a bounded report.
    pub fn keep_last_looks(&mut self, n: usize) {
        let drop = self.looks.len().saturating_sub(n);
        self.looks.drain(..drop);
    }

    /// Evaluates one snapshot, remembers the look, and returns the report.
    pub fn look(&mut self, snap: &Snapshot) -> Report {
        self.look_at(snap, SystemTime::now())
    }

    pub fn look_at(&mut self, snap: &Snapshot, now: SystemTime) -> Report {
        let started = *self.started.get_or_insert(now);
        let checks = Context {
            plan: &self.plan,
            snap,
            baseline: &self.baseline,
            candidate: &self.candidate,
        }
        .checks();
        let (verdict, reasons) = decide(&checks);
        self.looks.push(Look {
            number: self.looks.last().map_or(1, |l| l.number + 1),
            elapsed_seconds: now
                .duration_since(started)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64(),
            verdict,
            checks: checks
                .iter()
                .map(|c| LookCheck {
                    name: c.name,
                    status: c.status,
                    baseline: c.baseline,
                    candidate: c.candidate,
                    effect: c.effect,
                    ci: c.ci,
                })
                .collect(),
        });
        let arm = |v: &str| snap.versions.get(v).cloned().unwrap_or_default();
        Report {
            schema: SCHEMA,
            experiment: self.plan.name.clone(),
            change: self.plan.change.trim().to_owned(),
            hypothesis: self.plan.hypothesis.trim().to_owned(),
            baseline: self.baseline.clone(),
            candidate: self.candidate.clone(),
            source: self.source.clone(),
            window: self.window.clone(),
            generated_at: humantime::format_rfc3339_seconds(now).to_string(),
            verdict,
            reasons,
            family_alpha: self.plan.family_alpha(),
            method: Method {
                sequential: "always-valid confidence sequences (mixture SPRT with a normal mixing distribution, Johari et al. 2017): valid at every look, so repeated looks do not inflate false alarms",
                family_wise: format!(
                    "Bonferroni: the plan's alpha {} is split across the critical, guardrail and goal metrics (family-wise false-alarm rate ≤ {:.3})",
                    self.plan.alpha,
                    self.plan.family_alpha()
                ),
                srm: format!(
                    "Pearson chi-square on the {} split against the expected share, p < {} → invalid",
                    match self.plan.srm.unit {
                        crate::plan::Unit::User => "users' (first exposures, beta group excluded)",
                        crate::plan::Unit::Request => "requests'",
                    },
                    self.plan.srm.alpha
                ),
                latency: "quantiles bounded by bucket edges through a confidence sequence on the share below each edge; chi-square homogeneity of the binned distributions reported",
                acceptance: "one answer per user and version (a user's first feedback), so repeated requests cannot inflate the sample",
            },
            checks,
            looks: self.looks.clone(),
            data: Data {
                baseline: arm(&self.baseline),
                candidate: arm(&self.candidate),
                users: snap.users.clone(),
                users_from_event_log: false,
                canary_percent: snap.canary_percent,
            },
            shadow: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render;
    use crate::snapshot::parse_exposition;

    fn check(name: &'static str, role: Role, status: Status) -> Check {
        Check {
            name,
            role,
            status,
            unit: "share",
            baseline: None,
            candidate: None,
            effect: None,
            ci: None,
            samples: Default::default(),
            threshold: String::new(),
            reason: format!("{name} says {}", status.as_str()),
            alpha: 0.01,
            details: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_verdict_follows_the_documented_order() {
        use Role::*;
        use Status::*;
        let set = |srm, errors, latency, acceptance, report| {
            decide(&[
                check("srm", Validity, srm),
                check("errors", Critical, errors),
                check("latency", Guardrail, latency),
                check("acceptance", Goal, acceptance),
                check("scores", Report, report),
            ])
        };
        // A critical failure rolls back even when the split is broken.
        let (v, why) = set(Fail, Fail, Pass, Pass, Pass);
        assert_eq!(v, Verdict::Rollback);
        assert!(why[0].starts_with("errors (critical)"), "{why:?}");
        // A broken split voids guardrail and goal failures.
        assert_eq!(set(Fail, Pass, Fail, Fail, Pass).0, Verdict::Invalid);
        assert_eq!(set(Pass, Pass, Fail, Pass, Pass).0, Verdict::Rollback);
        assert_eq!(
            set(Pass, Inconclusive, Pass, Fail, Pass).0,
            Verdict::Rollback
        );
        // Report metrics never decide.
        assert_eq!(set(Pass, Pass, Pass, Pass, Fail).0, Verdict::Promote);
        let (v, why) = set(Pass, Pass, NoData, Pass, Pass);
        assert_eq!(v, Verdict::Continue);
        assert_eq!(
            why,
            vec!["latency (guardrail) no-data: latency says no-data"]
        );
        // The split need not be judged yet for a promotion to be refused.
        assert_eq!(
            set(Inconclusive, Pass, Pass, Inconclusive, Pass).0,
            Verdict::Continue
        );
        assert_eq!(Verdict::Invalid.exit_code(), 4);
        assert_eq!(Verdict::Continue.exit_code(), 3);
    }

    #[test]
    fn a_report_renders_in_every_format_and_remembers_its_looks() {
        let text = r#"mlmesh_frontend_canary_percent 50
mlmesh_frontend_decisions_total{model_version="v1",cohort="baseline",decision="offer",degraded="false"} 300
mlmesh_frontend_decisions_total{model_version="v2",cohort="candidate",decision="no_offer",degraded="true"} 150
mlmesh_frontend_decisions_total{model_version="v2",cohort="candidate",decision="offer",degraded="false"} 150
mlmesh_frontend_users_total{cohort="baseline",assignment="bucket"} 60
mlmesh_frontend_users_total{cohort="candidate",assignment="bucket"} 60
mlmesh_frontend_model_request_duration_seconds_bucket{model_version="v1",le="0.001"} 3000
mlmesh_frontend_model_request_duration_seconds_bucket{model_version="v1",le="0.1"} 3000
mlmesh_frontend_model_request_duration_seconds_bucket{model_version="v1",le="+Inf"} 3000
mlmesh_frontend_model_request_duration_seconds_bucket{model_version="v2",le="0.001"} 0
mlmesh_frontend_model_request_duration_seconds_bucket{model_version="v2",le="0.1"} 0
mlmesh_frontend_model_request_duration_seconds_bucket{model_version="v2",le="+Inf"} 3000
"#;
        let snap = Snapshot::from_samples(&parse_exposition(text));
        let mut a = Analysis::new(Plan::caravan_offer(), "v1", "v2", "test", "all");
        a.look(&snap);
        let r = a.look(&snap);
        assert_eq!(r.looks.len(), 2);
        assert_eq!(r.verdict, Verdict::Rollback);
        // A long-polled analysis keeps its last looks, numbered on.
        a.keep_last_looks(1);
        let r3 = a.look(&snap);
        let numbers: Vec<usize> = r3.looks.iter().map(|l| l.number).collect();
        assert_eq!(numbers, [2, 3]);
        assert_eq!(r.check("errors").unwrap().status, Status::Fail);
        // v2's tail is beyond every edge: its p99 is unbounded above.
        let latency = r.check("latency").unwrap();
        assert_eq!(latency.status, Status::Fail, "{latency:?}");
        assert!(
            render::effect(latency).ends_with("+∞]"),
            "{}",
            render::effect(latency)
        );
        let t = render::text(&r, false);
        assert!(
            t.contains("verdict: ROLLBACK") && !t.contains('\x1b'),
            "{t}"
        );
        assert!(render::text(&r, true).contains("\x1b[1;31mROLLBACK"));
        assert!(render::look_line(&r, false).starts_with("look   2"));
        let md = render::markdown(&r);
        assert!(md.contains("## Decision process") && md.contains("**Verdict: `rollback`**"));
        let html = render::html(&r);
        assert!(html.contains("<svg") && html.contains("ROLLBACK") && !html.contains("<script"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["schema"], SCHEMA);
        assert_eq!(json["verdict"], "rollback");
        assert_eq!(json["checks"][1]["name"], "errors");
        assert!(
            json["checks"][2]["ci"][1].is_null(),
            "an unbounded end is null"
        );
    }
}
