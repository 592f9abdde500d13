//! The experiment's verdict over HTTP (`mlmesh analyze serve`): what
//! `mlmesh analyze` decides, on request, for progressive-delivery
//! controllers — Argo Rollouts' `web` metric provider and Flagger's webhooks
//! — and for people with `curl`. One endpoint:
//!
//! `GET /v1/verdict?baseline=v1&candidate=v2[&window=10m][&status=ok]`
//! (or POST, as Flagger's webhooks call it; the body is ignored)
//! answers the report of `mlmesh analyze --json` (schema `mlmesh.analyze/v1`)
//! with a status that says the verdict:
//!
//! | verdict | status | why |
//! |---|---|---|
//! | `promote`, `continue` | 200 | the candidate may go on (Flagger: the check passes) |
//! | `rollback` | 409 | the candidate conflicts with the plan (Flagger: the check fails) |
//! | `invalid` | 422 | the experiment's own data cannot be trusted (a sample-ratio mismatch) |
//! | source down | 502 + `Retry-After` | no verdict could be made: retry, do not roll back |
//! | bad query | 400 | |
//!
//! With `status=ok` every verdict answers 200 and only the body says which:
//! Argo Rollouts counts a non-2xx as a measurement *error* (retried up to
//! `consecutiveErrorLimit`), so its `failureCondition` must see a rollback
//! in a 200, and a 502 then means exactly "retry". (502, not 503: a sidecar
//! retries 503s by default and ejects the pod that sent them; the source,
//! not this service, is what failed.)
//!
//! Evaluations are cached per (baseline, candidate, window) for `--cache-ttl`
//! and made once however many polls arrive together, so a controller polling
//! every 30 s (or several at once) does not hammer Prometheus; each source
//! read is bounded by `--source-timeout`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use experiment::source::{Prometheus, Scrape, Source, SourceArgs, SourceError};
use experiment::{Analysis, Plan, Report, Snapshot, Verdict};
use mesh_kit::Json;
use mesh_kit::error::{ApiError, clip};
use mesh_kit::extract::Query;
use mesh_kit::{Health, ServerArgs, Service};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;

/// The route; the one place its path is written.
pub const VERDICT_PATH: &str = "/v1/verdict";
/// Response header naming the verdict, for clients that read only headers.
pub const VERDICT_HEADER: &str = "x-mlmesh-verdict";
/// Response header: `hit` when the answer came from the cache.
pub const CACHE_HEADER: &str = "x-mlmesh-cache";
/// Looks kept per analysis: the report of a long-polled one stays small.
const KEPT_LOOKS: usize = 50;
/// Distinct (baseline, candidate, window) analyses kept at once.
const MAX_ANALYSES: usize = 32;
/// Seconds a controller should wait before asking again when the source is down.
const RETRY_AFTER_SECS: u32 = 15;

#[derive(Debug, Clone, Args)]
pub struct VerdictArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// The experiment plan (YAML) [default: the built-in caravan-offer plan].
    #[arg(long, env = "PLAN_FILE", value_name = "FILE")]
    pub plan: Option<PathBuf>,

    /// Bound on each read of the source.
    #[arg(long, env = "SOURCE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub source_timeout: Duration,

    /// How long an evaluation answers every poll for the same query.
    #[arg(long, env = "CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,
}

/// Where the counters come from, for every evaluation.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Prometheus(String),
    Scrape {
        frontend: String,
        models: Vec<String>,
    },
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// One evaluation's result, as cached.
#[derive(Clone)]
enum Outcome {
    Report(Box<Report>),
    /// The source could not be read: no verdict.
    Unavailable(String),
}

struct Entry {
    analysis: Analysis,
    last: Option<(Instant, Outcome)>,
    /// With --scrape and a window: this query's own readings, oldest
    /// first, from which the window's change is taken.
    readings: VecDeque<(Instant, Snapshot)>,
}

type Key = (String, String, Option<Duration>);
/// An analysis shared by the polls of one query, and when it was made.
type Shared = (Instant, Arc<tokio::sync::Mutex<Entry>>);

pub struct Inner {
    source: SourceConfig,
    plan: Plan,
    timeout: Duration,
    ttl: Duration,
    analyses: Mutex<HashMap<Key, Shared>>,
    evaluations: Family<OutcomeLabels, Counter>,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The service, its state, ready to serve: the plan is loaded now, so a bad
/// plan stops the process before it listens.
pub fn build(
    args: &VerdictArgs,
    source: SourceConfig,
    server: ServerArgs,
) -> Result<(Service, AppState), experiment::plan::PlanError> {
    let plan = Plan::load_or_default(args.plan.as_deref())?;
    let mut svc = Service::new("verdict", server);
    let evaluations = Family::<OutcomeLabels, Counter>::default();
    svc.registry_mut().register(
        "verdict_evaluations",
        "Evaluations of the experiment (source reads), by outcome: a verdict or unavailable",
        evaluations.clone(),
    );
    let state = AppState(Arc::new(Inner {
        source,
        plan,
        timeout: args.source_timeout,
        ttl: args.cache_ttl,
        analyses: Mutex::new(HashMap::new()),
        evaluations,
    }));
    ready(svc.health());
    Ok((svc, state))
}

/// Ready at once: the source is read on request, and a source that is down
/// is an answer (502), not a reason to take the pod out of its Service.
fn ready(health: Health) {
    health.set_ready(true);
}

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        // POST too: Flagger's webhooks POST a JSON payload (the canary's
        // name, phase, metadata), which the verdict does not need.
        .route(VERDICT_PATH, get(verdict).post(verdict))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerdictQuery {
    #[serde(default = "default_baseline")]
    baseline: String,
    #[serde(default = "default_candidate")]
    candidate: String,
    window: Option<String>,
    #[serde(default)]
    status: StatusMode,
}

fn default_baseline() -> String {
    "v1".into()
}

fn default_candidate() -> String {
    "v2".into()
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum StatusMode {
    /// The status says the verdict (Flagger, curl -f).
    #[default]
    Verdict,
    /// 200 for every verdict (Argo Rollouts' web metric).
    Ok,
}

/// The status `mode` gives `verdict`.
pub fn status_for(verdict: Verdict, body_only: bool) -> StatusCode {
    match (verdict, body_only) {
        (_, true) | (Verdict::Promote | Verdict::Continue, false) => StatusCode::OK,
        (Verdict::Rollback, false) => StatusCode::CONFLICT,
        (Verdict::Invalid, false) => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// A model version as the metrics label it: short, and safe in a PromQL
/// string.
fn check_version(what: &str, v: &str) -> Result<(), ApiError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {:?} is not a model version (letters, digits, '-', '_', '.'; at most 63)",
            clip(v)
        )))
    }
}

fn parse_window(w: &str) -> Result<Duration, ApiError> {
    let d = humantime::parse_duration(w)
        .map_err(|e| ApiError::bad_request(format!("window {:?}: {e}", clip(w))))?;
    let (min, max) = (Duration::from_secs(10), Duration::from_secs(30 * 24 * 3600));
    if d < min || d > max {
        return Err(ApiError::bad_request(format!(
            "window {:?} is outside 10s..30d",
            clip(w)
        )));
    }
    Ok(d)
}

async fn verdict(
    State(state): State<AppState>,
    Query(q): Query<VerdictQuery>,
) -> Result<Response, ApiError> {
    check_version("baseline", &q.baseline)?;
    check_version("candidate", &q.candidate)?;
    if q.baseline == q.candidate {
        return Err(ApiError::bad_request(format!(
            "baseline and candidate are both {}",
            q.baseline
        )));
    }
    let window = q.window.as_deref().map(parse_window).transpose()?;
    let entry = state.entry((q.baseline.clone(), q.candidate.clone(), window));
    // One evaluation at a time per query: polls arriving together wait for
    // it and are answered from the cache.
    let mut e = entry.lock().await;
    let (outcome, cached) = match &e.last {
        Some((at, outcome)) if at.elapsed() < state.0.ttl => (outcome.clone(), true),
        _ => {
            let outcome = state.evaluate(&mut e, window).await;
            e.last = Some((Instant::now(), outcome.clone()));
            (outcome, false)
        }
    };
    drop(e);
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static(CACHE_HEADER),
        HeaderValue::from_static(if cached { "hit" } else { "miss" }),
    );
    match outcome {
        Outcome::Report(report) => {
            headers.insert(
                HeaderName::from_static(VERDICT_HEADER),
                HeaderValue::from_static(report.verdict.as_str()),
            );
            let status = status_for(report.verdict, q.status == StatusMode::Ok);
            Ok((status, headers, Json(*report)).into_response())
        }
        Outcome::Unavailable(why) => {
            let err = ApiError {
                retry_after: Some(RETRY_AFTER_SECS),
                ..ApiError::new(StatusCode::BAD_GATEWAY, why)
            };
            let mut res = err.into_response();
            res.headers_mut().extend(headers);
            Ok(res)
        }
    }
}

// === impl AppState ===

impl AppState {
    /// The analysis for `key`, made on first use; the oldest is forgotten
    /// past [`MAX_ANALYSES`], so arbitrary queries cannot grow the map.
    fn entry(&self, key: Key) -> Arc<tokio::sync::Mutex<Entry>> {
        let mut map = self.0.analyses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, e)) = map.get(&key) {
            return e.clone();
        }
        if map.len() >= MAX_ANALYSES
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let window = match (key.2, &self.0.source) {
            (None, _) => "the counters since the services started".to_owned(),
            (Some(w), SourceConfig::Prometheus(_)) => {
                format!("the last {}", humantime::format_duration(w))
            }
            (Some(w), SourceConfig::Scrape { .. }) => format!(
                "the last {} of the verdict service's own readings (less until it has read that long)",
                humantime::format_duration(w)
            ),
        };
        let analysis = Analysis::new(
            self.0.plan.clone(),
            &key.0,
            &key.1,
            &self.describe(),
            &window,
        );
        let e = Arc::new(tokio::sync::Mutex::new(Entry {
            analysis,
            last: None,
            readings: VecDeque::new(),
        }));
        map.insert(key, (Instant::now(), e.clone()));
        e
    }

    fn describe(&self) -> String {
        match &self.0.source {
            SourceConfig::Prometheus(url) => Prometheus::new(url, None, self.0.timeout).describe(),
            SourceConfig::Scrape { frontend, models } => {
                Scrape::new(frontend, models, self.0.timeout).describe()
            }
        }
    }

    async fn evaluate(&self, e: &mut Entry, window: Option<Duration>) -> Outcome {
        let scrape = matches!(self.0.source, SourceConfig::Scrape { .. });
        let read = async {
            match &self.0.source {
                // increase() over the window is already the change.
                SourceConfig::Prometheus(url) => {
                    Prometheus::new(url, window, self.0.timeout)
                        .snapshot()
                        .await
                }
                SourceConfig::Scrape { frontend, models } => {
                    Scrape::new(frontend, models, self.0.timeout)
                        .snapshot()
                        .await
                }
            }
        };
        // The source's own timeout bounds each request; this bounds the
        // whole read (Prometheus takes several queries).
        let snap: Result<Snapshot, String> =
            match tokio::time::timeout(self.0.timeout * 2, read).await {
                Ok(r) => r.map_err(|e: SourceError| e.to_string()),
                Err(_) => Err(format!(
                    "reading the experiment's counters took longer than {}",
                    humantime::format_duration(self.0.timeout * 2)
                )),
            };
        let snap = match (snap, window) {
            (Ok(now), Some(w)) if scrape => Ok(windowed(&mut e.readings, now, w)),
            (other, _) => other,
        };
        let outcome = match snap {
            Ok(snap) => {
                e.analysis.keep_last_looks(KEPT_LOOKS - 1);
                Outcome::Report(Box::new(e.analysis.look(&snap)))
            }
            Err(why) => {
                tracing::warn!(error = %why, "no verdict: the source is unavailable");
                Outcome::Unavailable(format!("no verdict: {why}"))
            }
        };
        let label = match &outcome {
            Outcome::Report(r) => r.verdict.as_str(),
            Outcome::Unavailable(_) => "unavailable",
        };
        self.0
            .evaluations
            .get_or_create(&OutcomeLabels {
                outcome: label.to_owned(),
            })
            .inc();
        outcome
    }
}

/// The change over the last `window` from a query's own readings (the
/// services' counters are totals): `now` minus the newest reading at least
/// `window` old, or the oldest while none is. A counter that went down (a
/// service restarted) starts the readings over.
fn windowed(
    readings: &mut VecDeque<(Instant, Snapshot)>,
    now: Snapshot,
    window: Duration,
) -> Snapshot {
    let at = Instant::now();
    // Keep only the newest reading older than the window, and what follows.
    while readings.len() > 1 && readings[1].0.elapsed() >= window {
        readings.pop_front();
    }
    let change = match readings.front() {
        Some((_, base)) => now.minus(base).ok(),
        None => None,
    };
    if change.is_none() {
        readings.clear();
    }
    // At most ~100 readings per window, however often it is polled.
    if readings
        .back()
        .is_none_or(|(t, _)| t.elapsed() >= window / 100)
    {
        readings.push_back((at, now.clone()));
    }
    // Nothing to compare with yet: the change is nothing.
    change.unwrap_or_else(|| now.minus(&now).unwrap_or_default())
}
