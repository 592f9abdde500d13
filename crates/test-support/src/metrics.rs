//! Reading `/metrics` the strict way: the exposition must parse as OpenMetrics.

use std::collections::HashMap;

use openmetrics_parser::{OpenMetricsValue, openmetrics::parse_openmetrics};

/// One parsed sample: its labels and what it carries.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: HashMap<String, String>,
    /// Counter or gauge value; histogram count.
    pub value: f64,
    /// Histogram exemplars' `trace_id`s.
    pub exemplar_trace_ids: Vec<String>,
}

/// The samples of `family` (fails the test if the text is not OpenMetrics or
/// the family is missing).
pub fn samples(text: &str, family: &str) -> Vec<Sample> {
    let parsed = parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics: {e:?}"));
    let fam = parsed
        .families
        .get(family)
        .unwrap_or_else(|| panic!("metric family {family} missing"));
    fam.iter_samples()
        .map(|s| {
            let labels = s
                .get_labelset()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let (value, exemplar_trace_ids) = match &s.value {
                OpenMetricsValue::Counter(c) => (c.value.as_f64(), vec![]),
                OpenMetricsValue::Gauge(g) => (g.as_f64(), vec![]),
                OpenMetricsValue::Histogram(h) => (
                    h.count.unwrap_or_default() as f64,
                    h.buckets
                        .iter()
                        .filter_map(|b| b.exemplar.as_ref()?.labels.get("trace_id").cloned())
                        .collect(),
                ),
                other => panic!("unexpected sample type {other:?}"),
            };
            Sample {
                labels,
                value,
                exemplar_trace_ids,
            }
        })
        .collect()
}

/// The one sample of `family` whose labels include all of `want`; a filter
/// matching several series is a test bug (it would read an arbitrary one).
pub fn sample(text: &str, family: &str, want: &[(&str, &str)]) -> Sample {
    let mut matching: Vec<Sample> = samples(text, family)
        .into_iter()
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match matching.len() {
        1 => matching.remove(0),
        0 => panic!("no {family} sample with labels {want:?}"),
        n => panic!("{n} {family} samples match {want:?}; narrow the labels"),
    }
}
