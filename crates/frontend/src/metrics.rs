//! The experiment's own metrics: what each model version decided, what
//! customers did about it, and how the upstreams behaved.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use mesh_kit::metrics::{LATENCY_BUCKETS, names};

/// Label value when no model version answered (the call failed before any
/// response told us which version it reached).
pub const UNKNOWN_VERSION: &str = "unknown";

/// Histogram: users whose features one feature-store call read
/// (`--feature-reads`), exposed as `mlmesh_frontend_feature_read_users`.
pub const FEATURE_READ_USERS: &str = "frontend_feature_read_users";

/// Users per feature-store call: powers of two up to a full round.
const READ_USERS_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    model_version: String,
    cohort: &'static str,
    decision: &'static str,
    degraded: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    model_version: String,
    cohort: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UserLabels {
    cohort: &'static str,
    assignment: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    model_version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    result: &'static str,
}

#[derive(Clone)]
pub struct FrontendMetrics {
    decisions: Family<DecisionLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    user_outcomes: Family<OutcomeLabels, Counter>,
    users: Family<UserLabels, Counter>,
    model_seconds: Family<VersionLabels, Histogram>,
    upstream_seconds: Family<UpstreamLabels, Histogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    shadow: Family<ShadowLabels, Counter>,
    feature_read_users: Histogram,
}

impl FrontendMetrics {
    pub fn register(registry: &mut Registry, canary_percent: u8) -> Self {
        let m = Self {
            decisions: Family::default(),
            outcomes: Family::default(),
            user_outcomes: Family::default(),
            users: Family::default(),
            model_seconds: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.iter().copied())
            }),
            upstream_seconds: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.iter().copied())
            }),
            upstream_errors: Family::default(),
            shadow: Family::default(),
            feature_read_users: Histogram::new(READ_USERS_BUCKETS.iter().copied()),
        };
        registry.register(
            names::FRONTEND_DECISIONS,
            "Decisions by the model version that made them, cohort, decision, and whether the fallback answered",
            m.decisions.clone(),
        );
        registry.register(
            names::FRONTEND_OUTCOMES,
            "Customer outcomes reported through /feedback, by the model version that decided",
            m.outcomes.clone(),
        );
        registry.register(
            names::FRONTEND_USER_OUTCOMES,
            "A user's first outcome on a version's offers at this replica: the acceptance rate per user, which repeated requests cannot inflate",
            m.user_outcomes.clone(),
        );
        registry.register(
            names::FRONTEND_USERS,
            "Users seen for the first time at this replica, by cohort and assignment (bucket or beta-group): the sample-ratio check's unit",
            m.users.clone(),
        );
        registry.register(
            names::FRONTEND_MODEL_LATENCY,
            "Model calls as the frontend saw them (retries included), by the version that answered",
            m.model_seconds.clone(),
        );
        registry.register(
            "frontend_upstream_request_duration_seconds",
            "Latency of calls to upstream services, failures included",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "frontend_upstream_errors",
            "Failed upstream calls by upstream and kind (timeout, connect, status, invalid)",
            m.upstream_errors.clone(),
        );
        registry.register(
            "frontend_shadow_requests",
            "Mirrored inference calls: sent, failed, or dropped because too many were in flight",
            m.shadow.clone(),
        );
        registry.register(
            FEATURE_READ_USERS,
            "Users whose features one feature-store call read: 1 for a read of its own, more when concurrent decisions shared a batch (--feature-reads)",
            m.feature_read_users.clone(),
        );
        let canary = Gauge::<i64>::default();
        canary.set(i64::from(canary_percent));
        registry.register(
            names::FRONTEND_CANARY_PERCENT,
            "Percent of user buckets assigned to the candidate cohort",
            canary,
        );
        m
    }

    pub fn decision(
        &self,
        model_version: &str,
        cohort: &'static str,
        decision: &'static str,
        degraded: bool,
    ) {
        self.decisions
            .get_or_create(&DecisionLabels {
                model_version: model_version.to_owned(),
                cohort,
                decision,
                degraded: if degraded { "true" } else { "false" },
            })
            .inc();
    }

    /// One decision's feedback; `first_for_user` also counts it as the
    /// user's answer to this version's offers.
    pub fn outcome(
        &self,
        model_version: &str,
        cohort: &'static str,
        outcome: &'static str,
        first_for_user: bool,
    ) {
        let labels = OutcomeLabels {
            model_version: model_version.to_owned(),
            cohort,
            outcome,
        };
        self.outcomes.get_or_create(&labels).inc();
        if first_for_user {
            self.user_outcomes.get_or_create(&labels).inc();
        }
    }

    /// A user's first exposure to the experiment.
    pub fn user(&self, cohort: &'static str, assignment: &'static str) {
        self.users
            .get_or_create(&UserLabels { cohort, assignment })
            .inc();
    }

    /// One model call, end to end (retries included), by the version that answered.
    pub fn model_call(&self, model_version: &str, seconds: f64) {
        self.model_seconds
            .get_or_create(&VersionLabels {
                model_version: model_version.to_owned(),
            })
            .observe(seconds);
    }

    pub fn upstream_call(&self, upstream: &'static str, seconds: f64, error: Option<&'static str>) {
        self.upstream_seconds
            .get_or_create(&UpstreamLabels { upstream })
            .observe(seconds);
        if let Some(kind) = error {
            self.upstream_errors
                .get_or_create(&UpstreamErrorLabels { upstream, kind })
                .inc();
        }
    }

    /// One feature-store call made, for `users` decisions.
    pub fn feature_read(&self, users: usize) {
        self.feature_read_users.observe(users as f64);
    }

    pub fn shadow(&self, result: &'static str) {
        self.shadow.get_or_create(&ShadowLabels { result }).inc();
    }
}
