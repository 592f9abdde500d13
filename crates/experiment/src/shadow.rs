//! A shadow launch, judged per request: the live prediction of each request
//! (the baseline's) beside the shadow prediction of the same request (the
//! candidate's), from the event log. How often would the candidate have
//! decided differently, in which direction, and — joined with what the
//! customers did — for the customers who accepted the offer, how often would
//! it have withheld it?

use std::collections::HashMap;

use events::{Event, Prediction};
use serde::Serialize;

use crate::stats::{Count, Interval, spearman, wilson};

/// The confidence of every interval of the section (fixed-sample: the
/// section describes, the verdict does not depend on it).
pub const ALPHA: f64 = 0.05;
/// Points kept for the report's scatter plot.
const SCATTER_POINTS: usize = 400;

/// A share with its Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Share {
    pub count: u64,
    pub of: u64,
    /// `None` when `of` is 0.
    pub interval: Option<Interval>,
}

impl Share {
    fn new(count: u64, of: u64) -> Self {
        Self {
            count,
            of,
            interval: wilson(Count::new(count, of), ALPHA),
        }
    }
}

/// How far apart the two models' scores are over the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoreDifferences {
    /// Mean of candidate − baseline.
    pub mean: f64,
    pub p50_abs: f64,
    pub p95_abs: f64,
    /// Spearman's rank correlation: do both models order the customers alike?
    pub rank_correlation: Option<f64>,
}

/// Predictions that found no twin, by side, with the likely reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unpaired {
    pub live: u64,
    pub shadow: u64,
    /// Pairs whose inputs differ (`input_hash`): not the same request seen
    /// twice, so left out.
    pub input_mismatch: u64,
    pub why: Vec<String>,
}

/// The shadow section of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowSection {
    /// The offer threshold the decisions are made at.
    pub threshold: f64,
    pub pairs: u64,
    pub unpaired: Unpaired,
    /// Both models make the same decision.
    pub agreement: Share,
    /// The baseline offered, the candidate would not have.
    pub flips_to_no_offer: Share,
    /// The baseline did not offer, the candidate would have.
    pub flips_to_offer: Share,
    pub scores: Option<ScoreDifferences>,
    /// Of the offers the customers accepted: how often the candidate would
    /// have withheld the offer.
    pub withheld_from_accepted: Share,
    /// Of the offers the customers declined: how often the candidate would
    /// have withheld them too (the flips that would have helped).
    pub withheld_from_declined: Share,
    /// Decisions of the pairs: `[baseline offer, baseline no offer]` ×
    /// `[candidate offer, candidate no offer]`.
    pub flip_table: [[u64; 2]; 2],
    /// Up to 400 (baseline, candidate) score pairs, evenly sampled, for a plot.
    pub scatter: Vec<[f32; 2]>,
}

/// Compares the live predictions of `baseline` with the shadow predictions
/// of `candidate` in `events`; `None` when there is no shadow prediction of
/// the candidate at all.
pub fn compare(
    events: &[Event],
    baseline: &str,
    candidate: &str,
    threshold: f64,
) -> Option<ShadowSection> {
    type Key<'a> = (&'a str, u32);
    let mut live: HashMap<Key, &Prediction> = HashMap::new();
    let mut shadow: HashMap<Key, &Prediction> = HashMap::new();
    let mut outcomes: HashMap<&str, bool> = HashMap::new();
    let mut live_on_candidate = 0u64;
    for e in events {
        match e {
            Event::Prediction(p) if p.request_id.is_empty() => {}
            Event::Prediction(p) if p.traffic == events::LIVE && *p.version == *baseline => {
                live.insert((&p.request_id, p.row), p);
            }
            Event::Prediction(p) if p.traffic == events::LIVE && *p.version == *candidate => {
                live_on_candidate += 1;
            }
            Event::Prediction(p) if p.traffic == events::SHADOW && *p.version == *candidate => {
                shadow.insert((&p.request_id, p.row), p);
            }
            // One outcome per decision (the frontend records the first).
            Event::Outcome(o) if o.version == baseline => {
                outcomes.entry(&o.request_id).or_insert(o.accepted);
            }
            _ => {}
        }
    }
    if shadow.is_empty() {
        return None;
    }
    let offers = |score: f32| f64::from(score) >= threshold;
    let (mut agree, mut to_no, mut to_yes, mut mismatch) = (0u64, 0u64, 0u64, 0u64);
    let (mut accepted, mut accepted_withheld, mut declined, mut declined_withheld) =
        (0u64, 0u64, 0u64, 0u64);
    let mut scores: Vec<(f64, f64)> = Vec::new();
    let mut paired_shadow = 0u64;
    let mut table = [[0u64; 2]; 2];
    let mut keys: Vec<&Key> = live.keys().collect();
    keys.sort();
    for key in keys {
        let l = live[key];
        let Some(s) = shadow.get(key) else { continue };
        paired_shadow += 1;
        if s.input_hash != l.input_hash {
            mismatch += 1;
            continue;
        }
        let (a, b) = (offers(l.score), offers(s.score));
        table[usize::from(!a)][usize::from(!b)] += 1;
        match (a, b) {
            _ if a == b => agree += 1,
            (true, false) => to_no += 1,
            _ => to_yes += 1,
        }
        if a && key.1 == 0 {
            match outcomes.get(key.0) {
                Some(true) => {
                    accepted += 1;
                    accepted_withheld += u64::from(!b);
                }
                Some(false) => {
                    declined += 1;
                    declined_withheld += u64::from(!b);
                }
                None => {}
            }
        }
        scores.push((f64::from(l.score), f64::from(s.score)));
    }
    let pairs = scores.len() as u64;
    let unpaired_live = live.len() as u64 - paired_shadow;
    let unpaired_shadow = shadow.len() as u64 - paired_shadow;
    let mut why = Vec::new();
    if unpaired_live > 0 {
        why.push(format!(
            "{unpaired_live} live {baseline} predictions have no shadow twin: the mirror samples (SHADOW_PERCENT, Istio's mirrorPercentage), sheds under load, or its event was dropped (mlmesh_events_dropped_total)"
        ));
    }
    if unpaired_shadow > 0 {
        why.push(format!(
            "{unpaired_shadow} shadow predictions have no live {baseline} twin: {live_on_candidate} live calls were the candidate's own (its canary users), or the live event was dropped"
        ));
    }
    if mismatch > 0 {
        why.push(format!(
            "{mismatch} pairs scored different inputs (input_hash): a request id reused for another customer"
        ));
    }
    let step = (scores.len() / SCATTER_POINTS).max(1);
    let scatter = scores
        .iter()
        .step_by(step)
        .take(SCATTER_POINTS)
        .map(|&(a, b)| [a as f32, b as f32])
        .collect();
    Some(ShadowSection {
        threshold,
        pairs,
        unpaired: Unpaired {
            live: unpaired_live,
            shadow: unpaired_shadow,
            input_mismatch: mismatch,
            why,
        },
        agreement: Share::new(agree, pairs),
        flips_to_no_offer: Share::new(to_no, pairs),
        flips_to_offer: Share::new(to_yes, pairs),
        scores: differences(&scores),
        withheld_from_accepted: Share::new(accepted_withheld, accepted),
        withheld_from_declined: Share::new(declined_withheld, declined),
        flip_table: table,
        scatter,
    })
}

fn differences(pairs: &[(f64, f64)]) -> Option<ScoreDifferences> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let mean = pairs.iter().map(|(a, b)| b - a).sum::<f64>() / n;
    let mut abs: Vec<f64> = pairs.iter().map(|(a, b)| (b - a).abs()).collect();
    abs.sort_by(f64::total_cmp);
    // Nearest rank.
    let q = |p: f64| abs[((p * n).ceil() as usize).clamp(1, abs.len()) - 1];
    Some(ScoreDifferences {
        mean,
        p50_abs: q(0.5),
        p95_abs: q(0.95),
        rank_correlation: spearman(pairs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::{LIVE, Outcome, SHADOW};

    fn prediction(id: &str, version: &str, traffic: &'static str, score: f32, input: f32) -> Event {
        Event::Prediction(Prediction {
            request_id: id.into(),
            trace_id: None,
            row: 0,
            model: "propensity".into(),
            version: version.into(),
            traffic,
            score,
            input_hash: events::input_hash(&[input]),
            time_ms: 0,
        })
    }

    fn outcome(id: &str, accepted: bool) -> Event {
        Event::Outcome(Outcome {
            request_id: id.into(),
            user_id: "u".into(),
            version: "v1".into(),
            accepted,
            time_ms: 0,
        })
    }

    #[test]
    fn no_shadow_no_section() {
        let e = [prediction("a", "v1", LIVE, 0.5, 1.0)];
        assert_eq!(compare(&e, "v1", "v2", 0.1), None);
    }

    #[test]
    fn identical_models_agree_on_every_pair() {
        let mut e = Vec::new();
        for i in 0..50 {
            let id = format!("r{i}");
            let s = i as f32 / 100.0;
            e.push(prediction(&id, "v1", LIVE, s, i as f32));
            e.push(prediction(&id, "v2", SHADOW, s, i as f32));
        }
        let s = compare(&e, "v1", "v2", 0.1).unwrap();
        assert_eq!(s.pairs, 50);
        assert_eq!((s.agreement.count, s.agreement.of), (50, 50));
        assert_eq!(s.flips_to_no_offer.count + s.flips_to_offer.count, 0);
        let d = s.scores.unwrap();
        assert_eq!((d.mean, d.p95_abs), (0.0, 0.0));
        assert!((d.rank_correlation.unwrap() - 1.0).abs() < 1e-12);
        assert!(s.unpaired.why.is_empty());
    }

    #[test]
    fn flips_are_counted_by_direction_and_joined_with_outcomes() {
        let e = vec![
            // offered by v1 and accepted; v2 would withhold it
            prediction("a", "v1", LIVE, 0.30, 1.0),
            prediction("a", "v2", SHADOW, 0.05, 1.0),
            outcome("a", true),
            // offered and accepted; v2 agrees
            prediction("b", "v1", LIVE, 0.40, 2.0),
            prediction("b", "v2", SHADOW, 0.35, 2.0),
            outcome("b", true),
            // offered and declined; v2 would withhold it
            prediction("c", "v1", LIVE, 0.20, 3.0),
            prediction("c", "v2", SHADOW, 0.01, 3.0),
            outcome("c", false),
            // not offered; v2 would offer
            prediction("d", "v1", LIVE, 0.02, 4.0),
            prediction("d", "v2", SHADOW, 0.50, 4.0),
            // a twin of another input: left out
            prediction("e", "v1", LIVE, 0.02, 5.0),
            prediction("e", "v2", SHADOW, 0.02, 6.0),
            // unpaired on each side
            prediction("f", "v1", LIVE, 0.02, 7.0),
            prediction("g", "v2", SHADOW, 0.02, 8.0),
            // the candidate's own live call (a canary user)
            prediction("g", "v2", LIVE, 0.02, 8.0),
        ];
        let s = compare(&e, "v1", "v2", 0.1).unwrap();
        assert_eq!(s.pairs, 4);
        assert_eq!(s.agreement.count, 1);
        assert_eq!(s.flips_to_no_offer.count, 2);
        assert_eq!(s.flips_to_offer.count, 1);
        assert_eq!(
            (s.withheld_from_accepted.count, s.withheld_from_accepted.of),
            (1, 2)
        );
        assert_eq!(
            (s.withheld_from_declined.count, s.withheld_from_declined.of),
            (1, 1)
        );
        assert_eq!(
            (
                s.unpaired.live,
                s.unpaired.shadow,
                s.unpaired.input_mismatch
            ),
            (1, 1, 1)
        );
        assert_eq!(s.unpaired.why.len(), 3, "{:?}", s.unpaired.why);
        assert!(s.unpaired.why[1].contains("1 live calls were the candidate's own"));
        let i = s.withheld_from_accepted.interval.unwrap();
        assert!(i.lo < 0.5 && 0.5 < i.hi);
        assert_eq!(s.scatter.len(), 4);
        // [v1 offer, v1 no offer] x [v2 offer, v2 no offer]
        assert_eq!(s.flip_table, [[1, 2], [1, 0]]);
    }
}
