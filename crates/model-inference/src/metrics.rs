//! Inference metrics, all labelled by `model` and `version` so one dashboard
//! compares v1 and v2 side by side. Handles are resolved once at startup:
//! the label sets are fixed per process and the hot path should not hash them.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use mesh_kit::metrics::{LATENCY_BUCKETS, names};

use crate::stats::Counters;

/// Whether a request is a mirrored copy (Envoy appends `-shadow` to the Host
/// of mirrored requests); shadow answers are discarded by Envoy, so they must
/// be told apart from live ones when comparing versions.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Traffic {
    Live,
    Shadow,
}

impl Traffic {
    /// From a request's `Host` header (see [`Self::from_host`]).
    pub fn of(headers: &axum::http::HeaderMap) -> Self {
        Self::from_host(
            headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok()),
        )
    }

    /// From a Host/authority value: `model-inference-shadow:8080` (current
    /// Envoy) or `model-inference:8080-shadow` (older Envoy).
    pub fn from_host(host: Option<&str>) -> Self {
        let Some(host) = host else { return Self::Live };
        let name = host.split(':').next().unwrap_or(host);
        if name.ends_with("-shadow") || host.ends_with("-shadow") {
            Self::Shadow
        } else {
            Self::Live
        }
    }
}

/// Which of the service's two ports a request came in on.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Protocol {
    /// REST over HTTP/1.1 or h2c, JSON or binary tensors.
    Http,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Rejected as a bad request (4xx other than 429).
    Invalid,
    /// Shed with 429: the queue was full.
    Rejected,
    /// Its deadline passed while queued (504).
    Expired,
    Error,
}

impl Traffic {
    /// Also the `traffic` of the event log's predictions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => events::LIVE,
            Self::Shadow => events::SHADOW,
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Invalid => "invalid",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Error => "error",
        }
    }
}

// Derived label values would be the CamelCase variant names; labels are lower-case.
impl EncodeLabelValue for Traffic {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Ok,
    Outcome::Invalid,
    Outcome::Rejected,
    Outcome::Expired,
    Outcome::Error,
];
const TRAFFIC: [Traffic; 2] = [Traffic::Live, Traffic::Shadow];
const PROTOCOLS: [Protocol; 2] = [Protocol::Http, Protocol::Grpc];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    model: String,
    version: String,
    traffic: Traffic,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    version: String,
    traffic: Traffic,
    protocol: Protocol,
    outcome: Outcome,
}

#[derive(Clone)]
pub struct InferenceMetrics {
    /// Each counter beside the labels it was created with, found by them:
    /// an index computed from enum order could silently count one outcome
    /// under another's label. Ten entries: a scan costs nothing.
    requests: Vec<((Traffic, Protocol, Outcome), Counter)>,
    scores: Vec<(Traffic, Histogram)>,
    pub queue_wait: Histogram,
    pub compute: Histogram,
    pub batch_rows: Histogram,
    pub queue_depth: Gauge,
    /// The statistics extension's cumulative counts, fed beside the above.
    pub stats: Arc<Counters>,
}

impl InferenceMetrics {
    /// `max_batch_rows` sizes the statistics' per-batch-size table.
    pub fn register(
        registry: &mut Registry,
        model: &str,
        version: &str,
        max_batch_rows: usize,
    ) -> Self {
        let ml = ModelLabels {
            model: model.to_owned(),
            version: version.to_owned(),
        };
        let requests_f = Family::<RequestLabels, Counter>::default();
        let scores_f = Family::<TrafficLabels, Histogram>::new_with_constructor(|| {
            Histogram::new((1..=20).map(|i| f64::from(i) / 20.0))
        });
        let latency = || Histogram::new(LATENCY_BUCKETS.iter().copied());
        let queue_wait_f = Family::<ModelLabels, Histogram>::new_with_constructor(latency);
        let compute_f = Family::<ModelLabels, Histogram>::new_with_constructor(latency);
        let batch_f = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ])
        });
        let depth_f = Family::<ModelLabels, Gauge>::default();

        registry.register(
            "inference_requests",
            "Inference requests by traffic (live or shadow), protocol (http or grpc) and outcome",
            requests_f.clone(),
        );
        registry.register(
            names::PREDICTION_SCORE,
            "Predicted purchase probability, per row",
            scores_f.clone(),
        );
        registry.register(
            "inference_queue_wait_seconds",
            "Time a request waited for a batch slot",
            queue_wait_f.clone(),
        );
        registry.register(
            "inference_compute_seconds",
            "Model run time per batch",
            compute_f.clone(),
        );
        registry.register(
            "inference_batch_rows",
            "Rows per model run (micro-batch size)",
            batch_f.clone(),
        );
        registry.register(
            "inference_queue_depth",
            "Requests waiting for a worker",
            depth_f.clone(),
        );

        let mut requests = Vec::new();
        let mut scores = Vec::new();
        for traffic in TRAFFIC {
            for protocol in PROTOCOLS {
                for outcome in OUTCOMES {
                    let l = RequestLabels {
                        model: ml.model.clone(),
                        version: ml.version.clone(),
                        traffic,
                        protocol,
                        outcome,
                    };
                    let c = requests_f.get_or_create(&l).clone();
                    requests.push(((traffic, protocol, outcome), c));
                }
            }
            let l = TrafficLabels {
                model: ml.model.clone(),
                version: ml.version.clone(),
                traffic,
            };
            scores.push((traffic, scores_f.get_or_create(&l).clone()));
        }
        Self {
            requests,
            scores,
            queue_wait: queue_wait_f.get_or_create(&ml).clone(),
            compute: compute_f.get_or_create(&ml).clone(),
            batch_rows: batch_f.get_or_create(&ml).clone(),
            queue_depth: depth_f.get_or_create(&ml).clone(),
            stats: Arc::new(Counters::new(max_batch_rows)),
        }
    }

    pub fn request(&self, traffic: Traffic, protocol: Protocol, outcome: Outcome) {
        let key = (traffic, protocol, outcome);
        if let Some((_, c)) = self.requests.iter().find(|(k, _)| *k == key) {
            c.inc();
        }
    }

    pub fn scores(&self, traffic: Traffic, scores: impl IntoIterator<Item = f32>) {
        if let Some((_, h)) = self.scores.iter().find(|(t, _)| *t == traffic) {
            for s in scores {
                h.observe(f64::from(s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_counted_under_its_own_labels() {
        let mut registry = Registry::default();
        let m = InferenceMetrics::register(&mut registry, "propensity", "v1", 8);
        let keys: Vec<_> = TRAFFIC
            .into_iter()
            .flat_map(|t| PROTOCOLS.into_iter().map(move |p| (t, p)))
            .flat_map(|(t, p)| OUTCOMES.into_iter().map(move |o| (t, p, o)))
            .collect();
        for (i, &(t, p, o)) in keys.iter().enumerate() {
            for _ in 0..=i {
                m.request(t, p, o);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (i, (t, p, o)) in keys.iter().enumerate() {
            let line = format!(
                "inference_requests_total{{model=\"propensity\",version=\"v1\",traffic=\"{}\",protocol=\"{}\",outcome=\"{}\"}} {}",
                t.as_str(),
                p.as_str(),
                o.as_str(),
                i + 1
            );
            assert!(text.contains(&line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn shadow_host_detection() {
        assert_eq!(Traffic::from_host(None), Traffic::Live);
        assert_eq!(
            Traffic::from_host(Some("model-inference:8080")),
            Traffic::Live
        );
        assert_eq!(
            Traffic::from_host(Some("model-inference-shadow:8080")),
            Traffic::Shadow
        );
        assert_eq!(
            Traffic::from_host(Some("model-inference:8080-shadow")),
            Traffic::Shadow
        );
        assert_eq!(
            Traffic::from_host(Some("model-inference.mlmesh.svc.cluster.local-shadow")),
            Traffic::Shadow
        );
        assert_eq!(Traffic::from_host(Some("shadowfax:80")), Traffic::Live);
    }
}
