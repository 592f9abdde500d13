//! The events and their stream-entry form (one definition, for the writers
//! and every reader).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use rustis::client::Client;
use rustis::resp::cmd;

use crate::STREAM_KEY;

/// `traffic` of a prediction served to the customer.
pub const LIVE: &str = "live";
/// `traffic` of a mirrored copy whose answer was thrown away.
pub const SHADOW: &str = "shadow";

/// One scored row, as model-inference answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// `x-request-id`: the same on a request and its mirrored copy.
    pub request_id: String,
    pub trace_id: Option<String>,
    /// The row's index in its request (a batch has several).
    pub row: u32,
    // Shared: the same two strings in every event a process writes.
    pub model: Arc<str>,
    pub version: Arc<str>,
    /// [`LIVE`] or [`SHADOW`].
    pub traffic: &'static str,
    pub score: f32,
    /// [`input_hash`] of the row: a pair is the same input on both sides.
    pub input_hash: String,
    pub time_ms: i64,
}

/// A customer shown a decision: who, in which cohort, on which version.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposure {
    pub request_id: String,
    pub user_id: String,
    pub cohort: String,
    /// Why the user is in that cohort (the frontend's assignment reason).
    pub assignment: String,
    /// The model version that answered; `None` for a degraded decision.
    pub version: Option<String>,
    pub time_ms: i64,
}

/// What the customer did with a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The decision's request id (signed into its decision id).
    pub request_id: String,
    pub user_id: String,
    pub version: String,
    pub accepted: bool,
    pub time_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Prediction(Prediction),
    Exposure(Exposure),
    Outcome(Outcome),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("event without a type")]
    NoType,
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{kind} event without {field}")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind} event: {field} {value:?} is not valid")]
    Invalid {
        kind: &'static str,
        field: &'static str,
        value: String,
    },
}

// === impl Event ===

impl Event {
    /// When the service saw it (ms since the Unix epoch).
    pub fn time_ms(&self) -> i64 {
        match self {
            Self::Prediction(p) => p.time_ms,
            Self::Exposure(x) => x.time_ms,
            Self::Outcome(o) => o.time_ms,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Prediction(_) => "prediction",
            Self::Exposure(_) => "exposure",
            Self::Outcome(_) => "outcome",
        }
    }

    /// The stream entry's fields, `type` first.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        self.fold_fields(Vec::with_capacity(10), |mut f, k, v| {
            f.push((k, v.to_owned()));
            f
        })
    }

    /// Folds the stream entry's fields in order, `type` first, borrowing
    /// what the event holds and formatting numbers into one scratch buffer,
    /// so the writer encodes an event without an allocation per field (a
    /// command builder is the accumulator). [`Self::fields`] is this,
    /// collected.
    pub fn fold_fields<B>(&self, init: B, mut f: impl FnMut(B, &'static str, &str) -> B) -> B {
        let mut scratch = String::with_capacity(24);
        let mut num =
            |acc, k, v: &dyn std::fmt::Display, f: &mut dyn FnMut(B, &'static str, &str) -> B| {
                scratch.clear();
                let _ = write!(scratch, "{v}");
                f(acc, k, &scratch)
            };
        let acc = f(init, "type", self.kind());
        match self {
            Self::Prediction(p) => {
                let mut acc = f(acc, "request_id", &p.request_id);
                if let Some(t) = &p.trace_id {
                    acc = f(acc, "trace_id", t);
                }
                let acc = num(acc, "row", &p.row, &mut f);
                let acc = f(acc, "model", &p.model);
                let acc = f(acc, "version", &p.version);
                let acc = f(acc, "traffic", p.traffic);
                let acc = num(acc, "score", &p.score, &mut f);
                let acc = f(acc, "input_hash", &p.input_hash);
                num(acc, "time_ms", &p.time_ms, &mut f)
            }
            Self::Exposure(e) => {
                let acc = f(acc, "request_id", &e.request_id);
                let acc = f(acc, "user_id", &e.user_id);
                let acc = f(acc, "cohort", &e.cohort);
                let mut acc = f(acc, "assignment", &e.assignment);
                if let Some(v) = &e.version {
                    acc = f(acc, "version", v);
                }
                num(acc, "time_ms", &e.time_ms, &mut f)
            }
            Self::Outcome(o) => {
                let acc = f(acc, "request_id", &o.request_id);
                let acc = f(acc, "user_id", &o.user_id);
                let acc = f(acc, "version", &o.version);
                let outcome = if o.accepted { "accepted" } else { "declined" };
                let acc = f(acc, "outcome", outcome);
                num(acc, "time_ms", &o.time_ms, &mut f)
            }
        }
    }

    /// An event from a stream entry's fields (as [`Self::fields`] wrote them).
    pub fn decode(fields: &HashMap<String, String>) -> Result<Self, DecodeError> {
        let kind = fields.get("type").ok_or(DecodeError::NoType)?;
        match kind.as_str() {
            "prediction" => {
                let f = Fields("prediction", fields);
                let traffic = match f.text("traffic")?.as_str() {
                    LIVE => LIVE,
                    SHADOW => SHADOW,
                    other => return Err(f.invalid("traffic", other)),
                };
                Ok(Self::Prediction(Prediction {
                    request_id: f.text("request_id")?,
                    trace_id: fields.get("trace_id").cloned(),
                    row: f.parse("row")?,
                    model: f.text("model")?.into(),
                    version: f.text("version")?.into(),
                    traffic,
                    score: f.parse::<f32>("score").and_then(|s| {
                        if s.is_finite() {
                            Ok(s)
                        } else {
                            Err(f.invalid("score", &s.to_string()))
                        }
                    })?,
                    input_hash: f.text("input_hash")?,
                    time_ms: f.parse("time_ms")?,
                }))
            }
            "exposure" => {
                let f = Fields("exposure", fields);
                Ok(Self::Exposure(Exposure {
                    request_id: f.text("request_id")?,
                    user_id: f.text("user_id")?,
                    cohort: f.text("cohort")?,
                    assignment: f.text("assignment")?,
                    version: fields.get("version").cloned(),
                    time_ms: f.parse("time_ms")?,
                }))
            }
            "outcome" => {
                let f = Fields("outcome", fields);
                let outcome = f.text("outcome")?;
                let accepted = match outcome.as_str() {
                    "accepted" => true,
                    "declined" => false,
                    _ => return Err(f.invalid("outcome", &outcome)),
                };
                Ok(Self::Outcome(Outcome {
                    request_id: f.text("request_id")?,
                    user_id: f.text("user_id")?,
                    version: f.text("version")?,
                    accepted,
                    time_ms: f.parse("time_ms")?,
                }))
            }
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

/// One entry's fields, for decoding with the event kind in every error.
struct Fields<'a>(&'static str, &'a HashMap<String, String>);

impl Fields<'_> {
    fn text(&self, field: &'static str) -> Result<String, DecodeError> {
        self.1.get(field).cloned().ok_or(DecodeError::Missing {
            kind: self.0,
            field,
        })
    }

    fn parse<T: std::str::FromStr>(&self, field: &'static str) -> Result<T, DecodeError> {
        let text = self.text(field)?;
        text.parse().map_err(|_| self.invalid(field, &text))
    }

    fn invalid(&self, field: &'static str, value: &str) -> DecodeError {
        DecodeError::Invalid {
            kind: self.0,
            field,
            value: value.chars().take(64).collect(),
        }
    }
}

/// A short, stable fingerprint of one input row: XXH3-64 (seed 0) of the
/// values' little-endian f32 bytes, as 16 hex digits. The same in every
/// process, platform and release (a specified, frozen hash, not std's
/// hasher), so a live and a shadow prediction can be checked to have scored
/// one input; and ~20x cheaper than a byte-at-a-time hash on an 85-feature
/// row, as it runs once per scored row on the hot path.
pub fn input_hash(row: &[f32]) -> String {
    let mut bytes = [0u8; 4 * 128];
    let h = if row.len() <= 128 {
        for (chunk, v) in bytes.chunks_exact_mut(4).zip(row) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        xxhash_rust::xxh3::xxh3_64(&bytes[..4 * row.len()])
    } else {
        let mut state = xxhash_rust::xxh3::Xxh3::new();
        for v in row {
            state.update(&v.to_le_bytes());
        }
        state.digest()
    };
    format!("{h:016x}")
}

/// Every event of the stream with its entry id (`<ms>-<seq>`), oldest
/// first, read in pages of `page` entries; with `since_ms`, only the entries
/// written from then on (an entry id is its write time, never before the
/// event's own time, so no event of that period is missed). Entries that do
/// not decode are returned as errors, not skipped: a reader decides what to
/// do with them.
pub async fn read_stream(
    client: &Client,
    since_ms: Option<i64>,
    page: usize,
) -> Result<Vec<(String, Result<Event, DecodeError>)>, rustis::Error> {
    let mut out = Vec::new();
    let mut start = since_ms.map_or_else(|| "-".to_owned(), |ms| format!("{}-0", ms.max(0)));
    loop {
        let entries: Vec<(String, Vec<String>)> = client
            .send(
                cmd("XRANGE")
                    .key(STREAM_KEY)
                    .arg(start.as_str())
                    .arg("+")
                    .arg("COUNT")
                    .arg(page),
                None,
            )
            .await?;
        let n = entries.len();
        for (id, flat) in entries {
            let fields: HashMap<String, String> = flat
                .chunks_exact(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect();
            start = format!("({id}");
            out.push((id, Event::decode(&fields)));
        }
        if n < page {
            return Ok(out);
        }
    }
}

/// A small live prediction for unit tests.
#[cfg(test)]
pub(crate) fn sample_prediction() -> Event {
    Event::Prediction(Prediction {
        request_id: "r".into(),
        trace_id: None,
        row: 0,
        model: "m".into(),
        version: "v1".into(),
        traffic: LIVE,
        score: 0.5,
        input_hash: input_hash(&[0.0]),
        time_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(e: Event) {
        let fields: HashMap<String, String> = e
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(Event::decode(&fields), Ok(e));
    }

    #[test]
    fn every_event_reads_back_as_written() {
        roundtrip(Event::Prediction(Prediction {
            request_id: "r-1".into(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            row: 2,
            model: "propensity".into(),
            version: "v2".into(),
            traffic: SHADOW,
            score: 0.198_689_22,
            input_hash: input_hash(&[1.0, 2.5]),
            time_ms: 1_764_000_000_000,
        }));
        roundtrip(Event::Exposure(Exposure {
            request_id: "r-1".into(),
            user_id: "42".into(),
            cohort: "candidate".into(),
            assignment: "hash".into(),
            version: None,
            time_ms: 1,
        }));
        roundtrip(Event::Outcome(Outcome {
            request_id: "r-1".into(),
            user_id: "42".into(),
            version: "v1".into(),
            accepted: false,
            time_ms: 1,
        }));
    }

    #[test]
    fn bad_entries_are_errors_that_name_the_field() {
        let f = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(Event::decode(&f(&[])), Err(DecodeError::NoType));
        assert!(matches!(
            Event::decode(&f(&[("type", "click")])),
            Err(DecodeError::UnknownType(_))
        ));
        assert_eq!(
            Event::decode(&f(&[
                ("type", "outcome"),
                ("outcome", "accepted"),
                ("request_id", "r")
            ])),
            Err(DecodeError::Missing {
                kind: "outcome",
                field: "user_id"
            })
        );
        let mut p = sample_prediction().fields();
        p.retain(|(k, _)| *k != "score");
        p.push(("score", "NaN".into()));
        let fields = p.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert!(matches!(
            Event::decode(&fields),
            Err(DecodeError::Invalid { field: "score", .. })
        ));
    }

    #[test]
    fn the_input_hash_is_xxh3_and_tells_rows_apart() {
        // XXH3-64 of no bytes, seed 0 (the reference implementation's value).
        assert_eq!(input_hash(&[]), "2d06800538d394c2");
        // The streaming form for long rows gives the one-shot form's value.
        let long: Vec<f32> = (0..300).map(|i| i as f32 * 0.5).collect();
        let bytes: Vec<u8> = long.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            input_hash(&long),
            format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
        );
        assert_eq!(input_hash(&long[..128]), {
            format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes[..512]))
        });
        assert_eq!(input_hash(&[1.0, 2.0]), input_hash(&[1.0, 2.0]));
        assert_ne!(input_hash(&[1.0, 2.0]), input_hash(&[2.0, 1.0]));
        assert_ne!(input_hash(&[0.0]), input_hash(&[-0.0]));
        assert_eq!(input_hash(&[0.5]).len(), 16);
    }
}
