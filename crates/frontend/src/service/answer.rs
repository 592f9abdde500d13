//! The `/predict` answer: its JSON body and headers (model version, the
//! group cookie).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mesh_kit::Json;
use opentelemetry::trace::TraceContextExt;
use serde::Serialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use mesh_kit::propagation::MODEL_VERSION_HEADER;

use super::caller::{GROUP_COOKIE, GroupChoice};
use crate::cohort::{Assignment, BETA_GROUP, Reason};
use crate::decision::Decision;

#[derive(Serialize)]
pub(super) struct PredictResponse<'a> {
    user_id: &'a str,
    decision: &'static str,
    score: Option<f64>,
    threshold: f64,
    model_version: Option<&'a str>,
    cohort: &'static str,
    bucket: u8,
    assignment: Reason,
    request_id: &'a str,
    trace_id: Option<String>,
    decision_id: Option<String>,
    degraded: bool,
    /// Why the answer is degraded, when it is.
    reason: Option<String>,
    /// Whether the user came from a token the ingress gateway verified.
    authenticated: bool,
    served_by: ServedBy<'a>,
}

/// Which replica of each service took part in the answer (their
/// `--pod-name`s; null where a service has none or was not reached), so a
/// curl loop shows consistent hashing keeping a customer on one pod.
#[derive(Serialize)]
struct ServedBy<'a> {
    frontend: Option<&'a str>,
    feature_store: Option<String>,
    model_inference: Option<String>,
}

fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The parts of a prediction answer known before any upstream is called.
pub(super) struct Answer<'a> {
    pub user_id: &'a str,
    pub assignment: Assignment,
    pub request_id: &'a str,
    pub threshold: f64,
    pub authenticated: bool,
    /// This replica's name; the feature store's once it has answered.
    pub frontend: Option<&'a str>,
    pub feature_store: Option<String>,
}

impl<'a> Answer<'a> {
    pub fn body(
        &self,
        decision: Decision,
        score: Option<f64>,
        model_version: Option<&'a str>,
        decision_id: Option<String>,
        reason: Option<String>,
        model_served_by: Option<String>,
    ) -> PredictResponse<'a> {
        PredictResponse {
            user_id: self.user_id,
            decision: decision.as_str(),
            score,
            threshold: self.threshold,
            model_version,
            cohort: self.assignment.cohort.as_str(),
            bucket: self.assignment.bucket,
            assignment: self.assignment.reason,
            request_id: self.request_id,
            trace_id: current_trace_id(),
            degraded: reason.is_some(),
            decision_id,
            reason,
            authenticated: self.authenticated,
            served_by: ServedBy {
                frontend: self.frontend,
                feature_store: self.feature_store.clone(),
                model_inference: model_served_by,
            },
        }
    }
}

pub(super) fn header_value(s: &str) -> HeaderValue {
    // Ids were validated to a header-safe alphabet already.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

pub(super) fn respond(
    body: PredictResponse<'_>,
    model_version: Option<&str>,
    group: GroupChoice,
) -> Response {
    let mut res = Json(body).into_response();
    let headers = res.headers_mut();
    if let Some(v) = model_version {
        headers.insert(MODEL_VERSION_HEADER, header_value(v));
    }
    let cookie = match group {
        GroupChoice::Join => Some(format!(
            "{GROUP_COOKIE}={BETA_GROUP}; Path=/; Max-Age=2592000; SameSite=Lax"
        )),
        GroupChoice::Leave => Some(format!("{GROUP_COOKIE}=; Path=/; Max-Age=0; SameSite=Lax")),
        GroupChoice::Unspecified | GroupChoice::Token { .. } => None,
    };
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, c);
    }
    res
}
