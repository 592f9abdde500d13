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
        // A plain loop, not a `collect` into `Result<Vec<_>, _>`: that moved
        // an `UpstreamError`-sized `Result` through an adapter per column
        // (~65 instructions each, 5.5k per decision).
        let mut out = Vec::with_capacity(columns.len());
        for (value, name) in columns.into_iter().zip(&layout.feature_names) {
            let Some(v) = value else {
                let detail = format!("no value for feature '{name}', which the model needs");
                return Err(invalid(FEATURE_STORE, detail));
            };
            let v = v as f32;
            if !v.is_finite() {
                let detail = format!("feature '{name}' does not fit FP32");
                return Err(invalid(FEATURE_STORE, detail));
            }
            out.push(v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
