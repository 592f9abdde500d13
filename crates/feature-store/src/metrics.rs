//! Feature-store metrics, labelled by backend (`redis` or `memory`).

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use mesh_kit::metrics::LATENCY_BUCKETS;

use crate::store::StoreError;

/// Outcome of one entity lookup.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum LookupStatus {
    Present,
    NotFound,
    Stale,
    Error,
}

impl LookupStatus {
    const ALL: [Self; 4] = [Self::Present, Self::NotFound, Self::Stale, Self::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Present => "present",
            Self::NotFound => "not_found",
            Self::Stale => "stale",
            Self::Error => "error",
        }
    }
}

impl EncodeLabelValue for LookupStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    backend: String,
    status: LookupStatus,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    backend: String,
    kind: String,
}

#[derive(Clone)]
pub struct StoreMetrics {
    lookups: Vec<Counter>,
    errors: Family<ErrorLabels, Counter>,
    backend: String,
    pub lookup_seconds: Histogram,
    pub batch_entities: Histogram,
    pub reconnects: Counter,
    /// Times the service found the seed rows gone and loaded them again.
    pub reseeds: Counter,
}

impl StoreMetrics {
    pub fn register(registry: &mut Registry, backend: &str) -> Self {
        let b = BackendLabels {
            backend: backend.to_owned(),
        };
        let lookups_f = Family::<LookupLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let seconds_f = Family::<BackendLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS.iter().copied())
        });
        let batch_f = Family::<BackendLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0])
        });
        let reconnects_f = Family::<BackendLabels, Counter>::default();
        let reseeds = Counter::default();
        registry.register(
            "feature_store_reseeds",
            "Times the seed rows were found missing in Redis and loaded again (--reseed)",
            reseeds.clone(),
        );
        registry.register(
            "feature_lookups",
            "Entity lookups by status",
            lookups_f.clone(),
        );
        registry.register(
            "feature_lookup_seconds",
            "Backend read latency per request",
            seconds_f.clone(),
        );
        registry.register(
            "feature_store_errors",
            "Backend failures by kind (timeout, backend)",
            errors.clone(),
        );
        registry.register(
            "feature_store_reconnects",
            "Times a Redis connection was re-established after it broke",
            reconnects_f.clone(),
        );
        registry.register(
            "feature_batch_entities",
            "Entities per batch read",
            batch_f.clone(),
        );
        let lookups = LookupStatus::ALL
            .iter()
            .map(|&status| {
                lookups_f
                    .get_or_create(&LookupLabels {
                        backend: backend.to_owned(),
                        status,
                    })
                    .clone()
            })
            .collect();
        for kind in ["timeout", "backend"] {
            // Pre-create so dashboards see 0 rather than no series.
            let _ = errors.get_or_create(&ErrorLabels {
                backend: backend.to_owned(),
                kind: kind.to_owned(),
            });
        }
        Self {
            lookups,
            errors,
            backend: backend.to_owned(),
            lookup_seconds: seconds_f.get_or_create(&b).clone(),
            batch_entities: batch_f.get_or_create(&b).clone(),
            reconnects: reconnects_f.get_or_create(&b).clone(),
            reseeds,
        }
    }

    pub fn lookups(&self, status: LookupStatus, n: usize) {
        self.lookups[status as usize].inc_by(n as u64);
    }

    pub fn error(&self, e: &StoreError) {
        let kind = match e {
            StoreError::Timeout(_) => "timeout",
            StoreError::Backend(_) => "backend",
        };
        self.errors
            .get_or_create(&ErrorLabels {
                backend: self.backend.clone(),
                kind: kind.to_owned(),
            })
            .inc();
    }
}
