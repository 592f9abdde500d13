//! A user's features on their way from the feature store's answer to a
//! model's input: each value read straight into the column the model's
//! layout gives it. The store's first answer keys the values by name; it
//! also says the store's column order (its `fingerprint` and the names in
//! order), and from then on the values come listed in that order
//! (`names=false`), in binary (`format=binary`): 85 doubles to copy, not 85
//! names or numbers to parse per decision. A store older than the binary
//! form answers the listed JSON, which is read as well.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mesh_kit::feature_wire;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use super::FEATURE_STORE;
use super::UpstreamError;
use super::error::invalid;
use super::learnt::{Countdown, Learnt};
use super::model::Layout;

mod batch;
mod keyed;

/// The feature store's column order, learnt from an answer with names.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoreOrder {
    /// The store's schema fingerprint: a listed answer with another one was
    /// written in another order.
    fingerprint: Box<str>,
    names: Vec<Box<str>>,
}

/// The order last learnt, shared by every request.
#[derive(Debug, Default)]
pub(super) struct KnownOrder {
    order: Learnt<StoreOrder>,
    /// Keyed answers still to read without trying to learn from them, after
    /// one that had no fingerprint (a store older than `names=false`): the
    /// names are parsed again only once per [`RELEARN_AFTER`] answers, not
    /// on every one, and an upgraded store is noticed soon after.
    not_learning: Countdown,
}

/// See [`KnownOrder::not_learning`].
const RELEARN_AFTER: u32 = 1000;

/// A layout's columns for each column of one store order: the map is worked
/// out once per order, then each decision only copies values.
#[derive(Debug, Default)]
pub(super) struct StoreColumns(Mutex<Option<(Arc<StoreOrder>, ColumnMap)>>);

/// For each store column, the layout's column (`None`: the model does not
/// take that feature).
type ColumnMap = Arc<[Option<usize>]>;

impl StoreColumns {
    fn for_order(&self, order: &Arc<StoreOrder>, layout: &Layout) -> ColumnMap {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, map)) = &*slot
            && Arc::ptr_eq(seen, order)
        {
            return map.clone();
        }
        let map: ColumnMap = order
            .names
            .iter()
            .map(|name| layout.columns.get(name).copied())
            .collect();
        *slot = Some((order.clone(), map.clone()));
        map
    }
}

/// What one answer of the feature store gives.
#[derive(Debug)]
pub(super) enum Read {
    Features(Features),
    /// A listed answer in an order other than the one asked with (the store
    /// was redeployed with another schema): ask again with names.
    Reordered,
}

/// A user's features as the feature store answered.
#[derive(Debug)]
pub struct Features {
    row: Row,
    /// The feature-store replica that answered (its `x-mlmesh-served-by`).
    pub served_by: Option<String>,
}

#[derive(Debug)]
enum Row {
    /// `{"features": {name: value, ...}, ...}`, kept as its bytes until a
    /// model's layout says which value goes in which column.
    Keyed(Bytes),
    /// `{"values": [...], ...}` in the store's order.
    Listed {
        values: Vec<Option<f64>>,
        order: Arc<StoreOrder>,
    },
}

// === impl KnownOrder ===

impl KnownOrder {
    pub(super) fn get(&self) -> Option<Arc<StoreOrder>> {
        self.order.get()
    }

    /// Learns the order from a keyed answer, unless a recent one had none.
    fn learn_from(&self, body: &[u8]) {
        if self.not_learning.skip() {
            return;
        }
        match StoreOrder::learn(body) {
            Some(order) => {
                if self.get().as_deref() != Some(&order) {
                    self.order.set(Arc::new(order));
                }
            }
            None => self.not_learning.start(RELEARN_AFTER),
        }
    }

    /// Reads one answer of the store, asked for listed values in `asked`'s
    /// order or (`None`) keyed by name; a keyed answer teaches the order, a
    /// listed one in another order forgets it.
    pub(super) fn read(
        &self,
        answer: Answer,
        asked: Option<Arc<StoreOrder>>,
    ) -> Result<Read, UpstreamError> {
        let served_by = answer.served_by;
        let row = match asked {
            None => {
                self.learn_from(&answer.body);
                Row::Keyed(answer.body)
            }
            Some(order) => {
                let (fingerprint, values) = if answer.binary {
                    let values = feature_wire::read_row(&answer.body)
                        .map_err(|e| invalid(FEATURE_STORE, e))?;
                    (answer.fingerprint, values)
                } else {
                    let listed: Listed = serde_json::from_slice(&answer.body)
                        .map_err(|e| invalid(FEATURE_STORE, e))?;
                    (listed.fingerprint.map(Cow::into_owned), listed.values)
                };
                if fingerprint.as_deref() != Some(&*order.fingerprint) {
                    self.order.forget(&order);
                    return Ok(Read::Reordered);
                }
                if values.len() != order.names.len() {
                    let detail = format!(
                        "{} values listed for {} features",
                        values.len(),
                        order.names.len()
                    );
                    return Err(invalid(FEATURE_STORE, detail));
                }
                Row::Listed { values, order }
            }
        };
        Ok(Read::Features(Features { row, served_by }))
    }
}

/// One answer of the store as [`KnownOrder::read`] takes it.
pub(super) struct Answer {
    pub body: Bytes,
    /// The body is the binary form (`application/octet-stream`).
    pub binary: bool,
    /// The binary form's fingerprint header.
    pub fingerprint: Option<String>,
    /// The replica that answered (its `x-mlmesh-served-by`).
    pub served_by: Option<String>,
}

/// A JSON answer, as the tests write them.
#[cfg(test)]
impl From<Bytes> for Answer {
    fn from(body: Bytes) -> Self {
        Self {
            body,
            binary: false,
            fingerprint: None,
            served_by: None,
        }
    }
}

/// A listed answer: what the frontend reads of it.
#[derive(Deserialize)]
struct Listed<'a> {
    #[serde(borrow)]
    fingerprint: Option<Cow<'a, str>>,
    values: Vec<Option<f64>>,
}

// === impl StoreOrder ===

impl StoreOrder {
    /// The order of a keyed answer's names, if it says its fingerprint (an
    /// answer that cannot be read teaches nothing; reading its values says
    /// what is wrong with it).
    fn learn(body: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Keyed {
            fingerprint: Option<Box<str>>,
            features: Names,
        }
        let keyed: Keyed = serde_json::from_slice(body).ok()?;
        Some(Self {
            fingerprint: keyed.fingerprint?,
            names: keyed.features.0,
        })
    }
}

/// An object's keys in their order, values skipped.
struct Names(Vec<Box<str>>);

impl<'de> de::Deserialize<'de> for Names {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NamesVisitor;
        impl<'de> Visitor<'de> for NamesVisitor {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of feature values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Names, A::Error> {
                let mut names = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    names.push(name.into_boxed_str());
                }
                Ok(Names(names))
            }
        }
        d.deserialize_map(NamesVisitor)
    }
}

// === impl Features ===

impl Features {
    /// The values in `layout`'s column order. A column with no value (absent
    /// or null), or a value FP32 cannot hold, is an error naming the feature.
    pub(super) fn values_in(&self, layout: &Layout) -> Result<Vec<f32>, UpstreamError> {
        let mut columns = vec![None; layout.width()];
        match &self.row {
            Row::Keyed(body) => {
                keyed::read(body, layout, &mut columns).map_err(|e| invalid(FEATURE_STORE, e))?
            }
            Row::Listed { values, order } => {
                let map = layout.store_columns.for_order(order, layout);
                for (column, value) in map.iter().zip(values) {
                    if let Some(i) = *column {
                        columns[i] = *value;
                    }
                }
            }
        }
        columns
            .into_iter()
            .zip(&layout.feature_names)
            .map(|(v, name)| match v {
                Some(v) => {
                    let v = v as f32;
                    if v.is_finite() {
                        Ok(v)
                    } else {
                        let detail = format!("feature '{name}' does not fit FP32");
                        Err(invalid(FEATURE_STORE, detail))
                    }
                }
                None => {
                    let detail = format!("no value for feature '{name}', which the model needs");
                    Err(invalid(FEATURE_STORE, detail))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn layout() -> Layout {
        Layout::new("features", "a,b,c")
    }

    /// A keyed answer, read as the first answer is (no order known).
    fn features(json: &str) -> Features {
        match KnownOrder::default().read(Bytes::from(json.to_owned()).into(), None) {
            Ok(Read::Features(f)) => f,
            other => panic!("{json}: {other:?}"),
        }
    }

    fn body(json: &serde_json::Value) -> Bytes {
        Bytes::from(json.to_string())
    }

    #[test]
    fn a_keyed_answer_teaches_the_order_and_a_listed_one_uses_it() {
        let known = KnownOrder::default();
        // Raw text: serde_json's own map would sort the names.
        let keyed = r#"{"entity_id":"1","found":true,"fingerprint":"f1","features":{"c":3,"z":9,"a":1,"b":2},"event_time":null}"#;
        let Read::Features(f) = known.read(Bytes::from(keyed).into(), None).unwrap() else {
            panic!("keyed answers are read")
        };
        assert_eq!(f.values_in(&layout()).unwrap(), vec![1.0, 2.0, 3.0]);
        let order = known.get().expect("learnt");
        assert_eq!(order.fingerprint.as_ref(), "f1");
        let names: Vec<&str> = order.names.iter().map(|n| &**n).collect();
        assert_eq!(names, ["c", "z", "a", "b"], "the store's order, not sorted");

        // Listed in that order: the same columns for the model.
        let listed = serde_json::json!({
            "entity_id": "1", "found": true, "fingerprint": "f1",
            "values": [3, 9, 1, 2], "event_time": null,
        });
        let Read::Features(f) = known
            .read(body(&listed).into(), Some(order.clone()))
            .unwrap()
        else {
            panic!("the same fingerprint is read")
        };
        assert_eq!(f.values_in(&layout()).unwrap(), vec![1.0, 2.0, 3.0]);
        // In the model's own order (the fast path) as well.
        let same = Arc::new(StoreOrder {
            fingerprint: "f2".into(),
            names: vec!["a".into(), "b".into(), "c".into()],
        });
        let listed = serde_json::json!({"fingerprint": "f2", "values": [1, 2, 3]});
        let Read::Features(f) = known.read(body(&listed).into(), Some(same)).unwrap() else {
            panic!("read")
        };
        assert_eq!(f.values_in(&layout()).unwrap(), vec![1.0, 2.0, 3.0]);
        // A null or a missing model feature names it, as in a keyed answer.
        let listed = serde_json::json!({"fingerprint": "f1", "values": [3, 9, null, 2]});
        let Read::Features(f) = known
            .read(body(&listed).into(), Some(order.clone()))
            .unwrap()
        else {
            panic!("read")
        };
        let e = f.values_in(&layout()).unwrap_err();
        assert!(e.to_string().contains("'a'"), "{e}");
    }

    #[test]
    fn another_fingerprint_forgets_the_order_and_asks_again() {
        let known = KnownOrder::default();
        let order = Arc::new(StoreOrder {
            fingerprint: "old".into(),
            names: vec!["a".into(), "b".into(), "c".into()],
        });
        known.order.set(order.clone());
        for stale in [
            serde_json::json!({"fingerprint": "new", "values": [1, 2, 3]}),
            // An older store behind a rollout: no fingerprint at all.
            serde_json::json!({"values": [1, 2, 3]}),
        ] {
            known.order.set(order.clone());
            assert!(
                matches!(
                    known.read(body(&stale).into(), Some(order.clone())),
                    Ok(Read::Reordered)
                ),
                "{stale}"
            );
            assert!(known.get().is_none(), "forgotten: {stale}");
        }
        // A keyed answer without a fingerprint (an older store) teaches
        // nothing: the frontend keeps asking with names, and tries to learn
        // again only after RELEARN_AFTER more answers.
        let old = body(&serde_json::json!({"features": {"a": 1, "b": 2, "c": 3}}));
        let new =
            body(&serde_json::json!({"fingerprint": "up", "features": {"a": 1, "b": 2, "c": 3}}));
        assert!(matches!(
            known.read(old.into(), None),
            Ok(Read::Features(_))
        ));
        assert!(known.get().is_none());
        for _ in 0..RELEARN_AFTER {
            assert!(matches!(
                known.read(new.clone().into(), None),
                Ok(Read::Features(_))
            ));
            assert!(known.get().is_none(), "not learning yet");
        }
        assert!(matches!(
            known.read(new.into(), None),
            Ok(Read::Features(_))
        ));
        assert_eq!(
            known.get().unwrap().fingerprint.as_ref(),
            "up",
            "the upgraded store"
        );
    }

    /// The binary form: doubles in the store's order, NaN for no value, the
    /// fingerprint in a header; `prefix` before them (a batch's flags).
    pub(super) fn binary_after(prefix: &[u8], values: &[f64], fingerprint: Option<&str>) -> Answer {
        let mut body = prefix.to_vec();
        body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        Answer {
            body: body.into(),
            binary: true,
            fingerprint: fingerprint.map(str::to_owned),
            served_by: None,
        }
    }

    fn binary(values: &[f64], fingerprint: Option<&str>) -> Answer {
        binary_after(&[], values, fingerprint)
    }

    /// A store order `c, z, a, b` (fingerprint `f`), known to a new [`KnownOrder`].
    pub(super) fn known_czab() -> (KnownOrder, Arc<StoreOrder>) {
        let known = KnownOrder::default();
        let order = Arc::new(StoreOrder {
            fingerprint: "f".into(),
            names: vec!["c".into(), "z".into(), "a".into(), "b".into()],
        });
        known.order.set(order.clone());
        (known, order)
    }

    #[test]
    fn a_binary_answer_is_read_like_a_listed_one() {
        let (known, order) = known_czab();
        let read = |answer| known.read(answer, Some(order.clone()));
        let Ok(Read::Features(f)) = read(binary(&[3.0, 9.0, 1.5, -2.0], Some("f"))) else {
            panic!("read")
        };
        assert_eq!(f.values_in(&layout()).unwrap(), vec![1.5, -2.0, 3.0]);
        // NaN is no value: the model's feature is named; the others' NaN is no matter.
        let Ok(Read::Features(f)) = read(binary(&[3.0, f64::NAN, f64::NAN, 2.0], Some("f"))) else {
            panic!("read")
        };
        let e = f.values_in(&layout()).unwrap_err();
        assert!(e.to_string().contains("'a'"), "{e}");
        // Too few, too many, or not whole doubles.
        for bad in [
            binary(&[1.0, 2.0, 3.0], Some("f")),
            binary(&[1.0; 5], Some("f")),
            Answer {
                body: Bytes::from_static(&[0; 31]),
                binary: true,
                fingerprint: Some("f".into()),
                served_by: None,
            },
        ] {
            assert_eq!(read(bad).unwrap_err().kind(), "invalid");
        }
        assert!(
            known.get().is_some(),
            "an answer that does not add up forgets nothing"
        );
        // Another fingerprint, or none, is another order.
        for other in [Some("g"), None] {
            known.order.set(order.clone());
            let answer = binary(&[3.0, 9.0, 1.5, -2.0], other);
            assert!(matches!(read(answer), Ok(Read::Reordered)), "{other:?}");
            assert!(known.get().is_none(), "{other:?}");
        }
    }

    #[test]
    fn a_listed_answer_that_does_not_add_up_is_an_error() {
        let known = KnownOrder::default();
        let order = Arc::new(StoreOrder {
            fingerprint: "f".into(),
            names: vec!["a".into(), "b".into(), "c".into()],
        });
        for bad in [
            r#"{"fingerprint":"f","values":[1,2]}"#,
            r#"{"fingerprint":"f","values":[1,2,3,4]}"#,
            r#"{"fingerprint":"f","values":[1,"2",3]}"#,
            r#"{"fingerprint":"f"}"#,
            r#"{"fingerprint":"f","values":{"a":1}}"#,
            "not json",
        ] {
            let e = known
                .read(Bytes::from(bad).into(), Some(order.clone()))
                .unwrap_err();
            assert_eq!(e.kind(), "invalid", "{bad}");
        }
    }

    #[test]
    fn values_land_in_the_models_column_order() {
        let f = features(
            r#"{"entity_id":"u1","features":{"c":3,"x":{"nested":[1]},"a":1.5,"b":-2},"as_of":null}"#,
        );
        assert_eq!(f.values_in(&layout()).unwrap(), vec![1.5, -2.0, 3.0]);
        // An escaped name is still found.
        let f = features(r#"{"features":{"\u0061":1,"b":2,"c":3}}"#);
        assert_eq!(f.values_in(&layout()).unwrap(), vec![1.0, 2.0, 3.0]);
        // In the model's order (the fast path), with strangers between,
        // rotated, and backwards: the same columns.
        for json in [
            r#"{"features":{"a":1,"b":2,"c":3}}"#,
            r#"{"features":{"z":0,"a":1,"y":9,"b":2,"c":3,"d":4}}"#,
            // A stranger whose escape is no character: skipped like any stranger.
            r#"{"features":{"\ud800":0,"a":1,"b":2,"c":3}}"#,
            // Escaped names off the expected order: looked up all the same.
            r#"{"features":{"\u0063":3,"\u0062":2,"\u0061":1}}"#,
            r#"{"features":{"b":2,"c":3,"a":1}}"#,
            r#"{"features":{"c":3,"b":2,"a":1}}"#,
        ] {
            assert_eq!(
                features(json).values_in(&layout()).unwrap(),
                vec![1.0, 2.0, 3.0],
                "{json}"
            );
        }
    }

    #[test]
    fn a_missing_null_or_oversized_value_names_the_feature() {
        for (json, needle) in [
            (r#"{"features":{"a":1,"b":2}}"#, "'c'"),
            (r#"{"features":{"a":1,"b":null,"c":3}}"#, "'b'"),
            (r#"{"features":{"a":1e39,"b":2,"c":3}}"#, "'a'"),
            (r#"{"features":{"a":"1","b":2,"c":3}}"#, "invalid type"),
            (r#"{"entity_id":"u1"}"#, "features"),
            (r#"{"features":{"a":1,"b":2,"c":3}} trailing"#, "trailing"),
            ("not json", "expected"),
        ] {
            let e = features(json).values_in(&layout()).unwrap_err();
            assert_eq!(e.kind(), "invalid", "{json}");
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
    }
}
