//! JSON bodies of the read API, written straight into one buffer.
//!
//! A 100-entity batch answer is ~300 KB of 17,000 object keys; through serde
//! every key is escaped again on every row. The keys are the schema's, so they
//! are escaped once here and each row is memcpys plus number formatting.

use std::time::{Duration, UNIX_EPOCH};

use crate::schema::FeatureSchema;
use crate::store::Record;

/// Freshness of one feature value, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureStatus {
    Present,
    NotFound,
    Stale,
}

impl FeatureStatus {
    /// The JSON string, quotes included.
    fn json(self) -> &'static [u8] {
        match self {
            Self::Present => b"\"PRESENT\"",
            Self::NotFound => b"\"NOT_FOUND\"",
            Self::Stale => b"\"STALE\"",
        }
    }
}

/// One entity's answer, before it is written.
pub struct Row<'a> {
    pub entity_id: &'a str,
    pub record: Option<&'a Record>,
    pub stale: bool,
}

#[derive(Debug, Clone)]
pub struct Renderer {
    /// `"NAME":` for every feature, JSON-escaped, by schema position.
    keys: Vec<Vec<u8>>,
}

impl Renderer {
    pub fn new(schema: &FeatureSchema) -> Self {
        let keys = schema
            .names()
            .iter()
            .map(|n| {
                let mut k = Vec::new();
                write_str(&mut k, n);
                k.push(b':');
                k
            })
            .collect();
        Self { keys }
    }

    /// A rough size of one row, so the buffer is allocated once.
    pub fn row_capacity(&self, wanted: &[usize], statuses: bool) -> usize {
        let per_key = if statuses { 2 } else { 1 };
        128 + wanted
            .iter()
            .map(|&i| per_key * self.keys[i].len() + 36)
            .sum::<usize>()
    }

    /// `{"entity_id":…,"found":…,"features":{…},"statuses":{…},"event_time":…}`,
    /// objects in the order of `wanted`; without `statuses` (a caller that
    /// reads only the values, like the frontend) that object is left out,
    /// half the body.
    pub fn row(&self, out: &mut Vec<u8>, row: &Row, wanted: &[usize], statuses: bool) {
        out.extend_from_slice(b"{\"entity_id\":");
        write_str(out, row.entity_id);
        out.extend_from_slice(if row.record.is_some() {
            b",\"found\":true,\"features\":{"
        } else {
            b",\"found\":false,\"features\":{"
        });
        for (n, &i) in wanted.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.keys[i]);
            match value(row.record, i) {
                Some(v) => write_f64(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
        if statuses {
            out.extend_from_slice(b",\"statuses\":{");
            for (n, &i) in wanted.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.keys[i]);
                out.extend_from_slice(status(row, i).json());
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"event_time\":");
        match row.record {
            Some(r) => write_str(out, &format_time(r.event_time_ms)),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }

    /// `{"rows":[…]}`, one row per entity in request order.
    pub fn batch(&self, rows: &[Row], wanted: &[usize], statuses: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + rows.len() * self.row_capacity(wanted, statuses));
        out.extend_from_slice(b"{\"rows\":[");
        for (n, row) in rows.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            self.row(&mut out, row, wanted, statuses);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

fn value(record: Option<&Record>, i: usize) -> Option<f64> {
    record.and_then(|r| r.values[i])
}

/// A value's status: stale applies to values present in a stale row.
pub fn status(row: &Row, i: usize) -> FeatureStatus {
    match value(row.record, i) {
        None => FeatureStatus::NotFound,
        Some(_) if row.stale => FeatureStatus::Stale,
        Some(_) => FeatureStatus::Present,
    }
}

/// Formats exactly as serde_json does (`11.0`, `0.5`), so bodies do not
/// depend on how they were written.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    // Writing into a Vec cannot fail, and values are finite (checked on write
    // and on read), which is all serde_json refuses.
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// A JSON string literal, escaped by serde_json.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Strings always serialize; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
const LAST_RFC3339_MS: u64 = 253_402_300_799_999;

/// RFC 3339 with milliseconds. Event times are whatever Redis holds, so they
/// are clamped to what the format can express (humantime's formatter fails
/// past year 9999, and `to_string` would turn that into a panic).
pub fn format_time(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0).min(LAST_RFC3339_MS);
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> FeatureSchema {
        // Names that need escaping, to show keys are escaped once, correctly.
        FeatureSchema::new(vec!["A".into(), "q\"uote".into(), "ü\\n".into()])
    }

    fn record() -> Record {
        Record {
            values: vec![Some(11.0), None, Some(0.1 + 0.2)],
            event_time_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn a_row_is_exactly_the_documented_json() {
        let r = Renderer::new(&schema());
        let rec = record();
        let mut out = Vec::new();
        let row = Row {
            entity_id: "4\"2",
            record: Some(&rec),
            stale: false,
        };
        r.row(&mut out, &row, &[0, 1, 2], true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"entity_id":"4\"2","found":true,"features":{"A":11.0,"q\"uote":null,"ü\\n":0.30000000000000004},"statuses":{"A":"PRESENT","q\"uote":"NOT_FOUND","ü\\n":"PRESENT"},"event_time":"2023-11-14T22:13:20.123Z"}"#
        );
        let mut out = Vec::new();
        r.row(&mut out, &row, &[0, 1, 2], false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"entity_id":"4\"2","found":true,"features":{"A":11.0,"q\"uote":null,"ü\\n":0.30000000000000004},"event_time":"2023-11-14T22:13:20.123Z"}"#
        );
    }

    #[test]
    fn subsets_keep_the_requested_order_and_stale_marks_only_present_values() {
        let r = Renderer::new(&schema());
        let rec = record();
        let rows = [
            Row {
                entity_id: "1",
                record: Some(&rec),
                stale: true,
            },
            Row {
                entity_id: "2",
                record: None,
                stale: false,
            },
        ];
        let body: serde_json::Value =
            serde_json::from_slice(&r.batch(&rows, &[2, 1], true)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"rows": [
                {"entity_id": "1", "found": true,
                 "features": {"ü\\n": 0.30000000000000004, "q\"uote": null},
                 "statuses": {"ü\\n": "STALE", "q\"uote": "NOT_FOUND"},
                 "event_time": "2023-11-14T22:13:20.123Z"},
                {"entity_id": "2", "found": false,
                 "features": {"ü\\n": null, "q\"uote": null},
                 "statuses": {"ü\\n": "NOT_FOUND", "q\"uote": "NOT_FOUND"},
                 "event_time": null},
            ]})
        );
        let keys: Vec<&String> = body["rows"][0]["features"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["ü\\n", "q\"uote"], "requested order, not sorted");
    }

    #[test]
    fn the_capacity_estimate_covers_a_full_row() {
        let r = Renderer::new(&schema());
        let rec = Record {
            values: vec![Some(-1.234_567_890_123_456_7e-300); 3],
            event_time_ms: i64::MAX,
        };
        let mut out = Vec::new();
        let row = Row {
            entity_id: "123456789",
            record: Some(&rec),
            stale: false,
        };
        r.row(&mut out, &row, &[0, 1, 2], true);
        assert!(
            out.len() <= r.row_capacity(&[0, 1, 2], true),
            "{} bytes",
            out.len()
        );
    }

    #[test]
    fn event_times_outside_rfc3339_are_clamped_not_a_panic() {
        assert_eq!(format_time(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
