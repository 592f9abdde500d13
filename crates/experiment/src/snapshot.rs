//! What the checks are computed from: the experiment's counters at one
//! moment, per model version, read from `/metrics` expositions or from
//! Prometheus into the same shape.

use std::collections::BTreeMap;

use mesh_kit::metrics::names;
use serde::Serialize;

use crate::histogram::Histogram;

/// One series: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Samples by exposed series name (`mlmesh_frontend_users_total`,
/// `mlmesh_prediction_score_bucket`, ...).
#[derive(Debug, Clone, Default)]
pub struct Samples(pub BTreeMap<String, Vec<Sample>>);

/// Counters of one model version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VersionCounts {
    /// Answered decisions (degraded ones included).
    pub decisions: u64,
    /// Decisions that fell back because this version failed or timed out.
    pub degraded: u64,
    /// Offers among the non-degraded decisions.
    pub offers: u64,
    /// Feedback per decision.
    pub accepted: u64,
    pub declined: u64,
    /// A user's first feedback on this version's offers.
    pub users_accepted: u64,
    pub users_declined: u64,
    /// The model call as the frontend saw it.
    pub latency: Histogram,
    /// Live prediction scores.
    pub scores: Histogram,
    /// Mirrored (shadow) prediction scores.
    pub shadow_scores: Histogram,
}

/// First exposures of users, by cohort and how they were assigned.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Users {
    /// Assigned by their hash bucket: the randomized ones.
    pub baseline: u64,
    pub candidate: u64,
    /// Forced into the candidate (`x-user-group: beta`): not randomized.
    pub beta: u64,
}

impl Users {
    /// Exact distinct users per cohort from the event log's exposures, each
    /// user counted once, where their first exposure put them (the metrics
    /// count per frontend replica; the log sees every replica). `None`
    /// without exposures.
    pub fn from_exposures(events: &[events::Event]) -> Option<Self> {
        let mut seen = std::collections::HashSet::new();
        let mut users = Self::default();
        for e in events {
            let events::Event::Exposure(x) = e else {
                continue;
            };
            if !seen.insert(x.user_id.as_str()) {
                continue;
            }
            match (x.cohort.as_str(), x.assignment.as_str()) {
                (_, "beta-group") => users.beta += 1,
                ("baseline", _) => users.baseline += 1,
                ("candidate", _) => users.candidate += 1,
                _ => {}
            }
        }
        (!seen.is_empty()).then_some(users)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub versions: BTreeMap<String, VersionCounts>,
    pub users: Users,
    /// The frontend's configured canary percent (the largest across replicas).
    pub canary_percent: Option<f64>,
    /// Degraded decisions no version can be blamed for (the call failed
    /// before any answer named a version).
    pub unattributed_degraded: u64,
}

/// A counter went down between two snapshots.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} went down since the first look: a service restarted and its counters reset; start the analysis again"
)]
pub struct CounterReset(pub String);

/// Label filters and groupings each series is read with; the Prometheus
/// source asks for exactly these `sum by` aggregations.
pub struct Wanted {
    /// Exposed series name.
    pub series: String,
    /// Labels to keep (`sum by`).
    pub by: &'static [&'static str],
}

/// Every series the snapshot is built from.
pub fn wanted() -> Vec<Wanted> {
    use names::*;
    let w = |name: &str, suffix: &str, by: &'static [&'static str]| Wanted {
        series: exposed(name, suffix),
        by,
    };
    vec![
        w(
            FRONTEND_DECISIONS,
            "_total",
            &["model_version", "decision", "degraded"],
        ),
        w(FRONTEND_OUTCOMES, "_total", &["model_version", "outcome"]),
        w(
            FRONTEND_USER_OUTCOMES,
            "_total",
            &["model_version", "outcome"],
        ),
        w(FRONTEND_USERS, "_total", &["cohort", "assignment"]),
        w(FRONTEND_CANARY_PERCENT, "", &[]),
        w(FRONTEND_MODEL_LATENCY, "_bucket", &["model_version", "le"]),
        w(PREDICTION_SCORE, "_bucket", &["version", "traffic", "le"]),
    ]
}

fn label<'a>(s: &'a Sample, name: &str) -> &'a str {
    s.labels.get(name).map_or("", String::as_str)
}

fn count(v: f64) -> u64 {
    // Prometheus' increase() extrapolates to fractions; counts are whole.
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

impl Samples {
    fn get(&self, series: &str) -> &[Sample] {
        self.0.get(series).map_or(&[], Vec::as_slice)
    }

    /// Merges another set (e.g. a second service's exposition).
    pub fn extend(&mut self, other: Samples) {
        for (k, v) in other.0 {
            self.0.entry(k).or_default().extend(v);
        }
    }
}

impl Snapshot {
    pub fn from_samples(s: &Samples) -> Self {
        use names::*;
        let mut snap = Snapshot::default();
        for x in s.get(&exposed(FRONTEND_DECISIONS, "_total")) {
            let n = count(x.value);
            let version = label(x, "model_version");
            let degraded = label(x, "degraded") == "true";
            if version == "unknown" {
                if degraded {
                    snap.unattributed_degraded += n;
                }
                continue;
            }
            let v = snap.versions.entry(version.to_owned()).or_default();
            v.decisions += n;
            if degraded {
                v.degraded += n;
            } else if label(x, "decision") == "offer" {
                v.offers += n;
            }
        }
        for (series, per_user) in [
            (exposed(FRONTEND_OUTCOMES, "_total"), false),
            (exposed(FRONTEND_USER_OUTCOMES, "_total"), true),
        ] {
            for x in s.get(&series) {
                let v = snap
                    .versions
                    .entry(label(x, "model_version").to_owned())
                    .or_default();
                let n = count(x.value);
                match (label(x, "outcome"), per_user) {
                    ("accepted", false) => v.accepted += n,
                    ("declined", false) => v.declined += n,
                    ("accepted", true) => v.users_accepted += n,
                    ("declined", true) => v.users_declined += n,
                    _ => {}
                }
            }
        }
        for x in s.get(&exposed(FRONTEND_USERS, "_total")) {
            let n = count(x.value);
            match (label(x, "cohort"), label(x, "assignment")) {
                (_, "beta-group") => snap.users.beta += n,
                ("baseline", _) => snap.users.baseline += n,
                ("candidate", _) => snap.users.candidate += n,
                _ => {}
            }
        }
        snap.canary_percent = s
            .get(&exposed(FRONTEND_CANARY_PERCENT, ""))
            .iter()
            .map(|x| x.value)
            .filter(|v| v.is_finite())
            .reduce(f64::max);
        let latency = histograms(s.get(&exposed(FRONTEND_MODEL_LATENCY, "_bucket")), |x| {
            Some(label(x, "model_version").to_owned())
        });
        for (version, h) in latency {
            if version != "unknown" {
                snap.versions.entry(version).or_default().latency = h;
            }
        }
        for traffic in ["live", "shadow"] {
            let scores = histograms(s.get(&exposed(PREDICTION_SCORE, "_bucket")), |x| {
                (label(x, "traffic") == traffic).then(|| label(x, "version").to_owned())
            });
            for (version, h) in scores {
                let v = snap.versions.entry(version).or_default();
                match traffic {
                    "live" => v.scores = h,
                    _ => v.shadow_scores = h,
                }
            }
        }
        snap
    }

    /// `self - earlier`: what happened between two looks.
    pub fn minus(&self, earlier: &Self) -> Result<Self, CounterReset> {
        let sub = |a: u64, b: u64, what: &str| {
            a.checked_sub(b)
                .ok_or_else(|| CounterReset(what.to_owned()))
        };
        let hist = |a: &Histogram, b: &Histogram, what: &str| {
            a.minus(b).ok_or_else(|| CounterReset(what.to_owned()))
        };
        let mut out = Snapshot {
            canary_percent: self.canary_percent,
            unattributed_degraded: sub(
                self.unattributed_degraded,
                earlier.unattributed_degraded,
                "degraded decisions",
            )?,
            users: Users {
                baseline: sub(self.users.baseline, earlier.users.baseline, "users")?,
                candidate: sub(self.users.candidate, earlier.users.candidate, "users")?,
                beta: sub(self.users.beta, earlier.users.beta, "users")?,
            },
            versions: BTreeMap::new(),
        };
        let empty = VersionCounts::default();
        for (name, now) in &self.versions {
            let then = earlier.versions.get(name).unwrap_or(&empty);
            out.versions.insert(
                name.clone(),
                VersionCounts {
                    decisions: sub(now.decisions, then.decisions, "decisions")?,
                    degraded: sub(now.degraded, then.degraded, "decisions")?,
                    offers: sub(now.offers, then.offers, "decisions")?,
                    accepted: sub(now.accepted, then.accepted, "outcomes")?,
                    declined: sub(now.declined, then.declined, "outcomes")?,
                    users_accepted: sub(now.users_accepted, then.users_accepted, "outcomes")?,
                    users_declined: sub(now.users_declined, then.users_declined, "outcomes")?,
                    latency: hist(&now.latency, &then.latency, "model latency")?,
                    scores: hist(&now.scores, &then.scores, "prediction scores")?,
                    shadow_scores: hist(&now.shadow_scores, &then.shadow_scores, "shadow scores")?,
                },
            );
        }
        Ok(out)
    }
}

/// Sums bucket series into one histogram per key (`None` skips a sample).
fn histograms(
    samples: &[Sample],
    key: impl Fn(&Sample) -> Option<String>,
) -> BTreeMap<String, Histogram> {
    let mut by_key: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for x in samples {
        let Some(k) = key(x) else { continue };
        let Some(le) = parse_le(label(x, "le")) else {
            continue;
        };
        let e = by_key
            .entry(k)
            .or_default()
            .entry(le.to_bits())
            .or_insert((le, 0.0));
        e.1 += x.value;
    }
    by_key
        .into_iter()
        .map(|(k, buckets)| {
            let b = buckets
                .into_values()
                .map(|(le, v)| (le, count(v)))
                .collect();
            (k, Histogram::from_buckets(b))
        })
        .collect()
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

/// Reads the sample lines of a Prometheus or OpenMetrics text exposition
/// (what the services' `/metrics` serve): `name{labels} value [timestamp]
/// [# exemplar]`. Comments, `# TYPE`/`# HELP` and unparsable lines are
/// skipped: only the series the snapshot wants are looked up afterwards.
/// (The strict OpenMetrics parser the tests use is LGPL and stays dev-only.)
pub fn parse_exposition(text: &str) -> Samples {
    let mut out = Samples::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, sample)) = parse_line(line) {
            out.0.entry(name).or_default().push(sample);
        }
    }
    out
}

fn parse_line(line: &str) -> Option<(String, Sample)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name.to_owned(), Sample { labels, value }))
}

/// `a="x",b="y\"z"}` → the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposures_count_each_user_once_where_they_first_landed() {
        let x = |user: &str, cohort: &str, assignment: &str| {
            events::Event::Exposure(events::Exposure {
                request_id: format!("r-{user}"),
                user_id: user.into(),
                cohort: cohort.into(),
                assignment: assignment.into(),
                version: Some("v1".into()),
                time_ms: 0,
            })
        };
        assert_eq!(Users::from_exposures(&[]), None);
        let log = [
            x("1", "baseline", "bucket"),
            x("1", "baseline", "bucket"),
            x("2", "candidate", "bucket"),
            x("3", "candidate", "beta-group"),
            // Moved by a larger canary later: still counted where first seen.
            x("1", "candidate", "bucket"),
            x("4", "baseline", "bucket"),
        ];
        assert_eq!(
            Users::from_exposures(&log),
            Some(Users {
                baseline: 2,
                candidate: 1,
                beta: 1
            })
        );
    }

    const EXPOSITION: &str = r#"# HELP mlmesh_frontend_decisions Decisions
# TYPE mlmesh_frontend_decisions counter
mlmesh_frontend_decisions_total{model_version="v1",cohort="baseline",decision="offer",degraded="false"} 17
mlmesh_frontend_decisions_total{model_version="v1",cohort="baseline",decision="no_offer",degraded="false"} 80
mlmesh_frontend_decisions_total{model_version="v2",cohort="candidate",decision="no_offer",degraded="true"} 3
mlmesh_frontend_decisions_total{model_version="unknown",cohort="candidate",decision="no_offer",degraded="true"} 2
mlmesh_frontend_user_outcomes_total{model_version="v1",cohort="baseline",outcome="accepted"} 4
mlmesh_frontend_users_total{cohort="baseline",assignment="bucket"} 90
mlmesh_frontend_users_total{cohort="candidate",assignment="beta-group"} 5
mlmesh_frontend_canary_percent 10
mlmesh_frontend_model_request_duration_seconds_bucket{model_version="v1",le="0.001"} 50 # {trace_id="abc"} 0.0004 1700000000.000
mlmesh_frontend_model_request_duration_seconds_bucket{model_version="v1",le="+Inf"} 97
mlmesh_prediction_score_bucket{model="propensity",version="v2",traffic="shadow",le="0.5"} 6
mlmesh_prediction_score_bucket{model="propensity",version="v2",traffic="shadow",le="+Inf"} 7
weird{a="x\"y\\z",b="line\nbreak"} 1
# EOF
"#;

    #[test]
    fn reads_an_exposition_into_a_snapshot() {
        let s = parse_exposition(EXPOSITION);
        let weird = &s.0["weird"][0];
        assert_eq!(weird.labels["a"], "x\"y\\z");
        assert_eq!(weird.labels["b"], "line\nbreak");
        let snap = Snapshot::from_samples(&s);
        let v1 = &snap.versions["v1"];
        assert_eq!((v1.decisions, v1.offers, v1.degraded), (97, 17, 0));
        assert_eq!(v1.users_accepted, 4);
        assert_eq!(v1.latency.count, 97);
        assert_eq!(v1.latency.cumulative, vec![50]);
        let v2 = &snap.versions["v2"];
        assert_eq!((v2.decisions, v2.degraded), (3, 3));
        assert_eq!(v2.shadow_scores.count, 7);
        assert_eq!(v2.scores.count, 0);
        assert_eq!(snap.unattributed_degraded, 2);
        assert_eq!(
            snap.users,
            Users {
                baseline: 90,
                candidate: 0,
                beta: 5
            }
        );
        assert_eq!(snap.canary_percent, Some(10.0));
    }

    #[test]
    fn deltas_subtract_and_detect_resets() {
        let later = Snapshot::from_samples(&parse_exposition(EXPOSITION));
        let mut earlier = later.clone();
        earlier.versions.get_mut("v1").unwrap().decisions = 7;
        earlier.users.baseline = 40;
        let d = later.minus(&earlier).unwrap();
        assert_eq!(d.versions["v1"].decisions, 90);
        assert_eq!(d.users.baseline, 50);
        assert!(earlier.minus(&later).is_err());
    }
}
