//! Reading a user's features from the feature store: one `GET` per
//! decision, or (`--feature-reads batched`) one `POST /v1/features:batch`
//! for the decisions that need the store at the same moment.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{Method, StatusCode, header};
use bytes::Bytes;
use serde::Serialize;

use mesh_kit::feature_wire;
use mesh_kit::propagation::{COHORT_HEADER, FEATURE_FINGERPRINT_HEADER, Forwarded, USER_ID_HEADER};

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::coalesce::{Coalescer, Follower, Joined};
use super::features::{self, Features, Read, StoreOrder};
use super::learnt::Countdown;
use super::{Answer, FEATURE_STORE, UpstreamError, Upstreams, served_by};

/// A user's features, or `None` when the store does not know the user.
pub(super) type Lookup = Result<Option<Features>, UpstreamError>;

/// What a leader hands a follower: its lookup, and the leader's span (the
/// batch call's parent), which the follower's span links to so that its
/// trace leads to the call that read its features.
type Handed = (Lookup, SpanContext);

/// Batched reads the store refused (a store from before the binary batch
/// form): the next this many reads go one by one before a batch is tried
/// again, so a rollout is noticed but an old store is not asked in vain on
/// every decision.
const RETRY_BATCH_AFTER: u32 = 1000;

/// The batched reads' state.
#[derive(Default)]
pub(super) struct Batching {
    rounds: Coalescer<Handed>,
    /// See [`RETRY_BATCH_AFTER`].
    refused: Countdown,
}

/// The batch request the frontend sends: listed values in binary.
#[derive(Serialize)]
struct BatchRead<'a> {
    entity_ids: &'a [&'a str],
    statuses: bool,
    names: bool,
    format: &'static str,
}

impl Upstreams {
    /// The user's features; `None` when the feature store does not know the user.
    pub async fn features(&self, user_id: &str, fwd: &Forwarded, deadline: Instant) -> Lookup {
        if let Some(batching) = &self.batching
            // A batch answers listed values: only once the order is known.
            && let Some(order) = self.store_order.get()
            && !batching.refused.skip()
        {
            match batching.rounds.join(user_id, deadline) {
                Joined::Lead(round) => {
                    let followers = round.close().await;
                    if !followers.is_empty() {
                        return self
                            .features_batched(user_id, followers, order, fwd, deadline)
                            .await;
                    }
                }
                Joined::Follow(answer) => {
                    let started = Instant::now();
                    match tokio::time::timeout_at(deadline.into(), answer).await {
                        Ok(Ok((lookup, leader))) => {
                            tracing::Span::current().add_link(leader);
                            return lookup;
                        }
                        // No answer will come: read alone.
                        Ok(Err(_)) => {}
                        Err(_) => {
                            return Err(UpstreamError::Timeout {
                                upstream: FEATURE_STORE,
                                after: deadline.saturating_duration_since(started),
                            });
                        }
                    }
                }
                Joined::Alone => {}
            }
        }
        self.features_alone(user_id, fwd, deadline).await
    }

    /// One `GET` for one user.
    async fn features_alone(&self, user_id: &str, fwd: &Forwarded, deadline: Instant) -> Lookup {
        self.metrics.feature_read(1);
        let accept = |s: StatusCode| s == StatusCode::OK || s == StatusCode::NOT_FOUND;
        // Listed values once the store's order is known; asked again with
        // names if the store has changed its order since (so at most twice:
        // an answer with names needs no order).
        let mut listed = true;
        loop {
            let order = if listed { self.store_order.get() } else { None };
            let url = super::http::features_url(&self.features_base, user_id, order.is_some())?;
            let answer = self
                .call(
                    FEATURE_STORE,
                    Method::GET,
                    &url,
                    fwd,
                    None,
                    deadline,
                    accept,
                )
                .await?;
            if answer.status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            match self.store_order.read(store_answer(answer), order)? {
                Read::Features(f) => return Ok(Some(f)),
                // Per request while replicas of two schemas serve side by
                // side (a rollout), so debug.
                Read::Reordered => {
                    tracing::debug!("the feature store's column order changed; asking with names");
                    listed = false;
                }
            }
        }
    }

    /// One batch for the leader (`user_id`) and its followers; hands each
    /// follower its row and returns the leader's. A batch the store refuses
    /// or answers in another order sends everyone back to reading alone.
    async fn features_batched(
        &self,
        user_id: &str,
        followers: Vec<Follower<Handed>>,
        order: Arc<StoreOrder>,
        fwd: &Forwarded,
        deadline: Instant,
    ) -> Lookup {
        let mut ids = Vec::with_capacity(1 + followers.len());
        ids.push(user_id);
        ids.extend(followers.iter().map(|f| &*f.key));
        self.metrics.feature_read(ids.len());
        let body = serde_json::to_vec(&BatchRead {
            entity_ids: &ids,
            statuses: false,
            names: false,
            format: "binary",
        })
        .expect("strings serialize");
        // The call is for every member, so it runs until the last deadline
        // (each follower gives up at its own), and carries no one user's id
        // or cohort: the rest (request id, environment) is the leader's.
        let last = followers
            .iter()
            .map(|f| f.deadline)
            .fold(deadline, Instant::max);
        let mut shared = fwd.clone();
        shared.remove(USER_ID_HEADER);
        shared.remove(COHORT_HEADER);
        let result = self
            .call(
                FEATURE_STORE,
                Method::POST,
                &self.features_batch_url,
                &shared,
                Some((Bytes::from(body), None)),
                last,
                |s| s == StatusCode::OK,
            )
            .await;
        let rows = match result {
            Ok(answer) => self
                .store_order
                .read_batch(store_answer(answer), ids.len(), &order),
            Err(UpstreamError::Status { status, detail, .. }) if (400..500).contains(&status) => {
                tracing::info!(status, %detail, "the feature store refused a batched read; reading one by one for a while");
                if let Some(b) = &self.batching {
                    b.refused.start(RETRY_BATCH_AFTER);
                }
                Ok(None)
            }
            Err(e) => Err(e),
        };
        match rows {
            Ok(Some(rows)) => {
                let leader = leader_span();
                let mut rows = rows.into_iter();
                let own = rows.next().expect("one row per id, the leader's first");
                for (follower, row) in followers.into_iter().zip(rows) {
                    // A follower that gave up no longer listens.
                    let _ = follower.reply.send((Ok(row), leader.clone()));
                }
                Ok(own)
            }
            // Refused, or another order: dropping the followers' senders
            // sends them to read alone (asking with names if the order was
            // forgotten), and so does the leader.
            Ok(None) => {
                drop(followers);
                self.features_alone(user_id, fwd, deadline).await
            }
            Err(e) => {
                let leader = leader_span();
                for follower in followers {
                    let _ = follower.reply.send((Err(e.clone()), leader.clone()));
                }
                Err(e)
            }
        }
    }
}

/// The current span's context: in a leader, its decision's span.
fn leader_span() -> SpanContext {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone()
}

/// One answer of the store in the form [`features::KnownOrder`] reads.
fn store_answer(answer: Answer) -> features::Answer {
    let headers = &answer.headers;
    features::Answer {
        binary: headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == feature_wire::CONTENT_TYPE.as_bytes()),
        fingerprint: headers
            .get(FEATURE_FINGERPRINT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        served_by: served_by(headers),
        body: answer.body,
    }
}
