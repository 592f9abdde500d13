//! `POST /feedback`: a customer's answer to an offer, checked against its
//! signed decision id and counted once per decision.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mesh_kit::ApiError;
use mesh_kit::Json;
use mesh_kit::clock::unix_now;
use mesh_kit::error::parse_json;
use mesh_kit::extract::Query;
use serde::Deserialize;

use super::caller::{Authenticated, authenticated};
use super::{AppState, USER_ID_PARAM};
use crate::decision::Decision;
use crate::feedback::{Outcome, Recorded};
use events::Event;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedbackRequest {
    decision_id: String,
    outcome: Outcome,
}

/// `POST /feedback?user_id=42`: the id is there for the mesh, so the
/// ingress can hash feedback to the replica that served the decision (its
/// ledger and user counts are per replica); the decision's own user is what
/// counts, and a different one is refused.
#[derive(Deserialize)]
pub(super) struct FeedbackQuery {
    user_id: Option<String>,
}

/// The route: a token (when the mesh sends one) and the body checked, then
/// [`AppState::record_feedback`].
pub(super) async fn post(
    State(s): State<AppState>,
    Query(q): Query<FeedbackQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let auth = authenticated(&headers)?;
    let req: FeedbackRequest = parse_json(&headers, body, "invalid feedback")?;
    s.record_feedback(req, q.user_id.as_deref(), auth)
}

impl AppState {
    /// Records `req` once per decision id; a repeat of the same outcome is
    /// answered again, another outcome for the same decision is a 409.
    fn record_feedback(
        &self,
        req: FeedbackRequest,
        user_id: Option<&str>,
        auth: Option<Authenticated>,
    ) -> Result<Response, ApiError> {
        let now = unix_now();
        let claims = self
            .0
            .signer
            .verify(&req.decision_id, now)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        // With istio/auth/ applied, feedback needs a token, and a token
        // answers only for its own user's decisions.
        if auth.is_some_and(|a| a.user != claims.user_id) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "that decision was made for another user than your token's",
            ));
        }
        if user_id.is_some_and(|u| u != claims.user_id) {
            return Err(ApiError::bad_request(format!(
                "?{USER_ID_PARAM}= names another user than the one that decision was made for"
            )));
        }
        if claims.decision == Decision::NoOffer {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "that decision was no_offer: there is no offer to accept or decline",
            ));
        }
        let outcome = req.outcome.as_str();
        let expires_at = self.0.signer.expires_at(&claims);
        let recorded = match self
            .0
            .ledger
            .record(&req.decision_id, req.outcome, expires_at, now)
        {
            Recorded::New => {
                let key = (claims.model_version.as_str(), claims.user_id.as_str());
                let first_for_user = self.0.user_outcomes_seen.first(key);
                self.0.metrics.outcome(
                    &claims.model_version,
                    claims.cohort.as_str(),
                    outcome,
                    first_for_user,
                );
                self.0.events.log(Event::Outcome(events::Outcome {
                    request_id: claims.request_id.clone(),
                    user_id: claims.user_id.clone(),
                    version: claims.model_version.clone(),
                    accepted: req.outcome == Outcome::Accepted,
                    time_ms: mesh_kit::clock::unix_now_ms(),
                }));
                true
            }
            // A retry: same answer, counted once.
            Recorded::Repeat => false,
            Recorded::Conflict(first) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "feedback for that decision was already recorded as {}",
                        first.as_str()
                    ),
                ));
            }
        };
        Ok(Json(serde_json::json!({
            "recorded": recorded,
            "outcome": outcome,
            "model_version": claims.model_version,
            "cohort": claims.cohort,
            "user_id": claims.user_id,
        }))
        .into_response())
    }
}
