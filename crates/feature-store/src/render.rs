//! Bodies of the read API, written straight into one buffer: JSON, and the
//! binary form of one entity's values or of a batch's.
//!
//! A 100-entity batch answer is ~300 KB of 17,000 object keys; through serde
//! every key is escaped again on every row. The keys are the schema's, so they
//! are escaped once here and each row is memcpys plus number formatting.

use std::time::{Duration, UNIX_EPOCH};

use mesh_kit::feature_wire;

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

/// How a read answers, beyond which features: the per-feature statuses or
/// not, the values keyed by name or listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Form {
    /// The `statuses` of each value (`?statuses=`, default true).
    pub statuses: bool,
    /// `features` as an object keyed by name (`?names=`, default true);
    /// without names, `values` lists them in the requested order (the
    /// schema's unless `features` says otherwise), and `statuses` too. A
    /// caller that knows the order (from an answer with names and the same
    /// `fingerprint`) then parses numbers, not 85 names per entity.
    pub names: bool,
}

impl Default for Form {
    fn default() -> Self {
        Self {
            statuses: true,
            names: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Renderer {
    /// `"NAME":` for every feature, JSON-escaped, by schema position.
    keys: Vec<Vec<u8>>,
    /// `,"fingerprint":"…"`: the schema's, written into every row.
    fingerprint: Vec<u8>,
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
        let mut fingerprint = b",\"fingerprint\":".to_vec();
        write_str(&mut fingerprint, schema.fingerprint());
        Self { keys, fingerprint }
    }

    /// A rough size of one row, so the buffer is allocated once.
    pub fn row_capacity(&self, wanted: &[usize], form: Form) -> usize {
        let per_key = match form {
            Form { names: false, .. } => 0,
            Form { statuses: true, .. } => 2,
            Form {
                statuses: false, ..
            } => 1,
        };
        let per_status = if form.statuses { 12 } else { 0 };
        160 + wanted
            .iter()
            .map(|&i| per_key * self.keys[i].len() + 26 + per_status)
            .sum::<usize>()
    }

    /// `{"entity_id":…,"found":…,"fingerprint":…,"features":{…},"statuses":{…},"event_time":…}`,
    /// objects in the order of `wanted`; without `statuses` (a caller that
    /// reads only the values, like the frontend) that object is left out,
    /// half the body; without names, `"values":[…]` (and `"statuses":[…]`)
    /// take the objects' place.
    pub fn row(&self, out: &mut Vec<u8>, row: &Row, wanted: &[usize], form: Form) {
        out.extend_from_slice(b"{\"entity_id\":");
        write_str(out, row.entity_id);
        out.extend_from_slice(if row.record.is_some() {
            b",\"found\":true"
        } else {
            b",\"found\":false"
        });
        out.extend_from_slice(&self.fingerprint);
        let (values, statuses, close): (&[u8], &[u8], u8) = if form.names {
            (b",\"features\":{", b",\"statuses\":{", b'}')
        } else {
            (b",\"values\":[", b",\"statuses\":[", b']')
        };
        out.extend_from_slice(values);
        for (n, &i) in wanted.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            if form.names {
                out.extend_from_slice(&self.keys[i]);
            }
            match value(row.record, i) {
                Some(v) => write_f64(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(close);
        if form.statuses {
            out.extend_from_slice(statuses);
            for (n, &i) in wanted.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                if form.names {
                    out.extend_from_slice(&self.keys[i]);
                }
                out.extend_from_slice(status(row, i).json());
            }
            out.push(close);
        }
        out.extend_from_slice(b",\"event_time\":");
        match row.record {
            Some(r) => write_str(out, &format_time(r.event_time_ms)),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }

    /// `{"rows":[…]}`, one row per entity in request order.
    pub fn batch(&self, rows: &[Row], wanted: &[usize], form: Form) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + rows.len() * self.row_capacity(wanted, form));
        out.extend_from_slice(b"{\"rows\":[");
        for (n, row) in rows.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            self.row(&mut out, row, wanted, form);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// One entity's values in the order of `wanted`, in the binary form
/// ([`feature_wire`]): for a caller that already knows the order (by the
/// schema's `fingerprint`, sent beside this body), no number is formatted
/// here or parsed there.
pub fn binary(row: &Row, wanted: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wanted.len() * feature_wire::VALUE_BYTES);
    write_binary(&mut out, row, wanted);
    out
}

/// Many entities' values in the binary batch form ([`feature_wire`]): the
/// found flags, then each entity's [`binary`] row in request order.
pub fn binary_batch(rows: &[Row], wanted: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(feature_wire::batch_len(rows.len(), wanted.len()));
    feature_wire::push_found(&mut out, rows.iter().map(|r| r.record.is_some()));
    for row in rows {
        write_binary(&mut out, row, wanted);
    }
    out
}

fn write_binary(out: &mut Vec<u8>, row: &Row, wanted: &[usize]) {
    feature_wire::push_row(out, wanted.iter().map(|&i| value(row.record, i)));
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
        let fp = schema().fingerprint().to_owned();
        assert_eq!(fp.len(), 16);
        let rec = record();
        let row = Row {
            entity_id: "4\"2",
            record: Some(&rec),
            stale: false,
        };
        let render = |statuses, names| {
            let mut out = Vec::new();
            r.row(&mut out, &row, &[0, 1, 2], Form { statuses, names });
            String::from_utf8(out).unwrap()
        };
        let head = format!(r#"{{"entity_id":"4\"2","found":true,"fingerprint":"{fp}","#);
        let time = r#""event_time":"2023-11-14T22:13:20.123Z"}"#;
        for (statuses, names, middle) in [
            (
                true,
                true,
                r#""features":{"A":11.0,"q\"uote":null,"ü\\n":0.30000000000000004},"statuses":{"A":"PRESENT","q\"uote":"NOT_FOUND","ü\\n":"PRESENT"},"#,
            ),
            (
                false,
                true,
                r#""features":{"A":11.0,"q\"uote":null,"ü\\n":0.30000000000000004},"#,
            ),
            (
                true,
                false,
                r#""values":[11.0,null,0.30000000000000004],"statuses":["PRESENT","NOT_FOUND","PRESENT"],"#,
            ),
            (false, false, r#""values":[11.0,null,0.30000000000000004],"#),
        ] {
            let want = format!("{head}{middle}{time}");
            let got = render(statuses, names);
            assert_eq!(got, want, "statuses {statuses}, names {names}");
            assert!(
                got.len() <= r.row_capacity(&[0, 1, 2], Form { statuses, names }),
                "the buffer is allocated once"
            );
        }
    }

    #[test]
    fn the_binary_form_is_the_values_as_little_endian_doubles() {
        let rec = record();
        let row = Row {
            entity_id: "1",
            record: Some(&rec),
            stale: true,
        };
        let bytes = binary(&row, &[2, 0, 1]);
        assert_eq!(bytes.len(), 3 * feature_wire::VALUE_BYTES);
        let mut want = Vec::new();
        want.extend_from_slice(&(0.1f64 + 0.2).to_le_bytes());
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x26, 0x40]); // 11.0
        want.extend_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(bytes, want, "the order asked, NaN where no value is");
        assert!(binary(&row, &[]).is_empty());
    }

    #[test]
    fn the_binary_batch_is_found_flags_then_each_rows_doubles() {
        let rec = record();
        let row = |record| Row {
            entity_id: "1",
            record,
            stale: false,
        };
        let wanted = [2, 0, 1];
        let bytes = binary_batch(&[row(None), row(Some(&rec)), row(None)], &wanted);
        assert_eq!(&bytes[..3], &[0, 1, 0], "one flag per entity, in order");
        let rows = feature_wire::split_batch(&bytes, 3, wanted.len()).expect("the reader's form");
        assert_eq!(rows[0], None, "an entity not found");
        assert_eq!(
            rows[1],
            Some(&binary(&row(Some(&rec)), &wanted)[..]),
            "a found row as one read gives it"
        );
        assert_eq!(
            feature_wire::read_row(rows[1].unwrap()).unwrap(),
            [Some(0.1 + 0.2), Some(11.0), None]
        );
        assert_eq!(rows[2], None);
        assert!(
            bytes[3..]
                .chunks(feature_wire::VALUE_BYTES)
                .take(3)
                .all(|v| { f64::from_le_bytes(v.try_into().unwrap()).is_nan() }),
            "an entity not found has no values"
        );
        assert!(binary_batch(&[], &wanted).is_empty());
    }

    #[test]
    fn the_fingerprint_names_the_names_and_their_order() {
        let fp = |names: &[&str]| {
            FeatureSchema::new(names.iter().map(|n| (*n).to_owned()).collect())
                .fingerprint()
                .to_owned()
        };
        assert_eq!(fp(&["a", "b"]), fp(&["a", "b"]));
        assert_ne!(fp(&["a", "b"]), fp(&["b", "a"]));
        assert_ne!(fp(&["a", "b"]), fp(&["a", "b", "c"]));
        assert_ne!(fp(&["ab"]), fp(&["a", "b"]));
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
            serde_json::from_slice(&r.batch(&rows, &[2, 1], Form::default())).unwrap();
        let fp = schema().fingerprint().to_owned();
        assert_eq!(
            body,
            serde_json::json!({"rows": [
                {"entity_id": "1", "found": true, "fingerprint": fp,
                 "features": {"ü\\n": 0.30000000000000004, "q\"uote": null},
                 "statuses": {"ü\\n": "STALE", "q\"uote": "NOT_FOUND"},
                 "event_time": "2023-11-14T22:13:20.123Z"},
                {"entity_id": "2", "found": false, "fingerprint": fp,
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
        let row = Row {
            entity_id: "123456789",
            record: Some(&rec),
            stale: false,
        };
        for statuses in [true, false] {
            for names in [true, false] {
                let form = Form { statuses, names };
                let mut out = Vec::new();
                r.row(&mut out, &row, &[0, 1, 2], form);
                assert!(
                    out.len() <= r.row_capacity(&[0, 1, 2], form),
                    "{form:?}: {} bytes",
                    out.len()
                );
            }
        }
    }

    #[test]
    fn event_times_outside_rfc3339_are_clamped_not_a_panic() {
        assert_eq!(format_time(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
