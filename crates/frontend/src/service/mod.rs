//! HTTP routes: `/predict`, `/feedback` and the web page.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use mesh_kit::extract::Query;
use serde::Deserialize;

use mesh_kit::clock::unix_now;
use mesh_kit::error::{check_entity_id, clip, parse_json};
use mesh_kit::propagation::{
    COHORT_HEADER, Forwarded, REQUEST_ID_HEADER, USER_GROUP_HEADER, USER_ID_HEADER,
};
use mesh_kit::{ApiError, ServerArgs, Service};

use crate::cohort::{Assigner, Assignment, BETA_GROUP};
use crate::config::{FrontendArgs, RoutingMode};
use crate::decision::{self, Claims, Decision, Signer};
use crate::exposure::Seen;
use crate::feedback::Ledger;
use crate::metrics::{FrontendMetrics, UNKNOWN_VERSION};
use crate::upstream::{ConfigError, UpstreamError, Upstreams};
use events::{Event, EventLog, Exposure};

mod answer;
mod caller;
mod feedback;
mod page;

use answer::{Answer, header_value, respond};
pub use caller::GROUP_COOKIE;
use caller::{
    GroupChoice, authenticated, cookie_is_beta, group_choice, header_str, inbound_deadline,
};
use page::page;

/// Requests to the frontend are tiny; anything bigger is a mistake.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Decisions whose outcome a replica remembers (~40 bytes each, ~4 MB): more
/// than a day of feedback at lab rates, the default life of a decision id.
const FEEDBACK_LEDGER_CAPACITY: usize = 100_000;

/// Distinct users (and user × version outcomes) a replica counts, 8 bytes
/// each (~4 MB): the caravan data set has 5,822 customers.
const SEEN_USERS_CAPACITY: usize = 500_000;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    assigner: Assigner,
    signer: Signer,
    ledger: Ledger,
    users_seen: Seen,
    user_outcomes_seen: Seen,
    threshold: f64,
    upstreams: Upstreams,
    metrics: FrontendMetrics,
    /// This replica's name, reported in every answer's `served_by`.
    pod_name: Option<String>,
    events: EventLog,
}

impl AppState {
    pub fn new(args: &FrontendArgs, svc: &mut Service) -> Result<Self, ConfigError> {
        let metrics = FrontendMetrics::register(svc.registry_mut(), args.canary_percent);
        let upstreams = Upstreams::new(args, metrics.clone())?;
        let signer = signer(args)?;
        let events = EventLog::start(&args.events, svc.registry_mut())?;
        tracing::info!(
            routing = ?args.routing,
            canary_percent = args.canary_percent,
            salt = %args.experiment_salt,
            threshold = args.threshold,
            shadow = args.routing == RoutingMode::Direct
                && args.shadow_url.as_deref().is_some_and(|u| !u.trim().is_empty()),
            "experiment configured"
        );
        // Upstream trouble degrades answers instead of failing readiness: a
        // frontend that went unready with its upstreams would turn a model
        // outage into a full outage at the ingress.
        svc.health().set_ready(true);
        Ok(Self(Arc::new(Inner {
            assigner: Assigner::new(args.experiment_salt.clone(), args.canary_percent),
            signer,
            ledger: Ledger::new(FEEDBACK_LEDGER_CAPACITY),
            users_seen: Seen::new("users", SEEN_USERS_CAPACITY),
            user_outcomes_seen: Seen::new("users' outcomes", SEEN_USERS_CAPACITY),
            threshold: args.threshold,
            upstreams,
            metrics,
            pod_name: svc.pod_name().map(str::to_owned),
            events,
        })))
    }
}

/// The query parameter naming the customer on `/predict` and `/feedback`;
/// the ingress gateway hashes on it (istio/consistent-hash/frontend.yaml).
pub const USER_ID_PARAM: &str = "user_id";

/// A user id given as a JSON string or number (`{"user_id": 42}` works too).
#[derive(Deserialize)]
#[serde(untagged)]
enum UserId {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictBody {
    user_id: Option<UserId>,
}

#[derive(Deserialize)]
struct PredictQuery {
    user_id: Option<String>,
    group: Option<String>,
}

impl AppState {
    async fn predict(
        &self,
        user_id: Option<String>,
        group: GroupChoice,
        headers: &HeaderMap,
        mut fwd: Forwarded,
    ) -> Result<Response, ApiError> {
        let started = Instant::now();
        let named = user_id.or_else(|| header_str(headers, USER_ID_HEADER).map(str::to_owned));
        let auth = authenticated(headers)?;
        let (user_id, group) = match (auth, named) {
            // A token names the user; the request may repeat it (the
            // ingress hashes on ?user_id=) but not name someone else.
            (Some(a), Some(n)) if n != a.user => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "your token is for user '{}', and this request names '{}'",
                        a.user,
                        clip(&n)
                    ),
                ));
            }
            (Some(a), _) => {
                let group = a.group_choice();
                (a.user, group)
            }
            (None, Some(n)) => (n, group),
            (None, None) => {
                return Err(ApiError::bad_request(format!(
                    "user_id is required: ?{USER_ID_PARAM}=, a JSON body {{\"user_id\": ...}} or an x-user-id header"
                )));
            }
        };
        let authenticated = matches!(group, GroupChoice::Token { .. });
        check_entity_id(&user_id)?;
        let beta = match group {
            GroupChoice::Join => true,
            GroupChoice::Leave => false,
            GroupChoice::Unspecified => cookie_is_beta(headers),
            GroupChoice::Token { beta } => beta,
        };
        let assignment = self.0.assigner.assign(&user_id, beta);
        let cohort = assignment.cohort.as_str();
        // Everything downstream (and the mesh's routing rules) sees the
        // resolved user and cohort, however the caller expressed them.
        fwd.insert(USER_ID_HEADER, header_value(&user_id));
        fwd.insert(COHORT_HEADER, HeaderValue::from_static(cohort));
        // The group goes on as resolved, so a mesh rule matching
        // `x-user-group: beta` never disagrees with the cohort (a caller may
        // send the header and leave the group with `?group=none`).
        if beta {
            fwd.insert(USER_GROUP_HEADER, HeaderValue::from_static(BETA_GROUP));
        } else {
            fwd.remove(USER_GROUP_HEADER);
        }
        let request_id = header_str(headers, REQUEST_ID_HEADER)
            .unwrap_or_default()
            .to_owned();
        let deadline = self
            .0
            .upstreams
            .budget_deadline(inbound_deadline(headers, started));

        let mut answer = Answer {
            user_id: &user_id,
            assignment,
            request_id: &request_id,
            threshold: self.0.threshold,
            authenticated,
            frontend: self.0.pod_name.as_deref(),
            feature_store: None,
        };
        let features = match self.0.upstreams.features(&user_id, &fwd, deadline).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(ApiError::not_found(format!("user '{user_id}' not found")));
            }
            Err(e) => return Ok(self.degraded(&answer, None, &e, group)),
        };
        answer.feature_store = features.served_by.clone();
        let scored = match self
            .0
            .upstreams
            .score(assignment.cohort, &features, &fwd, deadline, &request_id)
            .await
        {
            Ok(s) => s,
            Err(f) => {
                return Ok(self.degraded(&answer, f.model_version.as_deref(), &f.error, group));
            }
        };
        let decision = if scored.probability >= self.0.threshold {
            Decision::Offer
        } else {
            Decision::NoOffer
        };
        let decision_id = self.0.signer.sign(&Claims {
            user_id: user_id.clone(),
            model_version: scored.model_version.clone(),
            cohort: assignment.cohort,
            decision,
            issued_at: unix_now(),
            request_id: request_id.clone(),
        });
        self.0
            .metrics
            .decision(&scored.model_version, cohort, decision.as_str(), false);
        self.expose(
            &user_id,
            assignment,
            &request_id,
            Some(&scored.model_version),
        );
        let body = answer.body(
            decision,
            Some(scored.probability),
            Some(&scored.model_version),
            Some(decision_id),
            None,
            scored.served_by.clone(),
        );
        Ok(respond(body, Some(&scored.model_version), group))
    }

    /// The documented fallback: HTTP 200, `no_offer`, `degraded: true` and
    /// the reason. Offering nothing is the safe business default, and a 200
    /// keeps the ingress from retrying into an upstream that is already down.
    fn degraded(
        &self,
        answer: &Answer<'_>,
        model_version: Option<&str>,
        error: &UpstreamError,
        group: GroupChoice,
    ) -> Response {
        // Per request, so debug: under a fault lab this fires hundreds of
        // times a second; the metrics carry the kind. The detail (URLs, raw
        // errors) stays here and in the span; the user gets a stable phrase.
        tracing::debug!(user_id = answer.user_id, error = %error, "degraded decision");
        let reason = error.public_reason(model_version);
        self.0.metrics.decision(
            model_version.unwrap_or(UNKNOWN_VERSION),
            answer.assignment.cohort.as_str(),
            Decision::NoOffer.as_str(),
            true,
        );
        self.expose(
            answer.user_id,
            answer.assignment,
            answer.request_id,
            model_version,
        );
        let body = answer.body(
            Decision::NoOffer,
            None,
            model_version,
            None,
            Some(reason),
            None,
        );
        respond(body, model_version, group)
    }

    /// Counts the user's first answered decision at this replica, and logs
    /// every decision as an `exposure` event.
    fn expose(
        &self,
        user_id: &str,
        assignment: Assignment,
        request_id: &str,
        version: Option<&str>,
    ) {
        if self.0.users_seen.first(user_id) {
            self.0
                .metrics
                .user(assignment.cohort.as_str(), assignment.reason.as_str());
        }
        if self.0.events.is_enabled() {
            self.0.events.log(Event::Exposure(Exposure {
                request_id: request_id.to_owned(),
                user_id: user_id.to_owned(),
                cohort: assignment.cohort.as_str().to_owned(),
                assignment: assignment.reason.as_str().to_owned(),
                version: version.map(str::to_owned),
                time_ms: mesh_kit::clock::unix_now_ms(),
            }));
        }
    }
}

async fn predict_get(
    State(s): State<AppState>,
    Query(q): Query<PredictQuery>,
    headers: HeaderMap,
    fwd: Forwarded,
) -> Result<Response, ApiError> {
    let group = group_choice(q.group.as_deref(), &headers);
    s.predict(q.user_id, group, &headers, fwd).await
}

async fn predict_post(
    State(s): State<AppState>,
    headers: HeaderMap,
    fwd: Forwarded,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // An empty body is fine when the user id comes in x-user-id.
    let req = match &body {
        Ok(b) if b.is_empty() => PredictBody { user_id: None },
        _ => parse_json(&headers, body, "invalid predict request")?,
    };
    let user_id = req.user_id.map(|u| match u {
        UserId::Text(s) => s,
        UserId::Number(n) => n.to_string(),
    });
    let group = group_choice(None, &headers);
    s.predict(user_id, group, &headers, fwd).await
}

/// Business routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/predict", get(predict_get).post(predict_post))
        .route("/feedback", post(feedback::post))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The decision signer: `--decision-key`, else `--decision-key-file`
/// (created when missing), else a per-process random key.
fn signer(args: &FrontendArgs) -> Result<Signer, ConfigError> {
    let key = match (
        args.decision_key.as_deref().filter(|k| !k.is_empty()),
        &args.decision_key_file,
    ) {
        (Some(key), _) => key.as_bytes().to_vec(),
        (None, Some(path)) => {
            decision::load_or_create_key_file(path).map_err(|source| ConfigError::KeyFile {
                path: path.clone(),
                source,
            })?
        }
        (None, None) => {
            tracing::warn!(
                "DECISION_KEY is not set: using a random key, so feedback verifies only at this replica and not across restarts"
            );
            return Ok(Signer::ephemeral(args.decision_max_age));
        }
    };
    if let Some(why) = decision::weak_key_reason(&key) {
        // Loud on purpose: a lab copied to a real cluster keeps its demo key.
        tracing::error!(
            "INSECURE DECISION_KEY: {why}. Generate one: openssl rand -hex 32 (or unset it and use --decision-key-file)"
        );
    }
    Ok(Signer::new(&key, args.decision_max_age))
}

/// The assembled service and its state, for the binary and the tests.
pub fn build(args: &FrontendArgs, server: ServerArgs) -> Result<(Service, AppState), ConfigError> {
    let mut svc = Service::new("frontend", server);
    let state = AppState::new(args, &mut svc)?;
    Ok((svc, state))
}

/// The complete app, for `oneshot` tests.
pub fn app(args: &FrontendArgs, server: ServerArgs) -> Result<Router, ConfigError> {
    let (svc, state) = build(args, server)?;
    Ok(svc.router(router(state), Router::new()))
}
