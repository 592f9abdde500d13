//! A user's features on their way from the feature store's answer to a
//! model's input: the answer kept as its bytes, each value read straight into
//! the column the model's layout gives it.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::FEATURE_STORE;
use super::UpstreamError;
use super::error::invalid;
use super::model::Layout;

/// A user's features as the feature store answered, kept as its bytes until
/// a model's layout says which value goes in which column: no map and no
/// `String` per feature on the way to the model.
#[derive(Debug)]
pub struct Features {
    body: Bytes,
    /// The feature-store replica that answered (its `x-mlmesh-served-by`).
    pub served_by: Option<String>,
}

// === impl Features ===

impl Features {
    pub(super) fn new(body: Bytes, served_by: Option<String>) -> Self {
        Self { body, served_by }
    }

    /// The values in `layout`'s column order, read from the feature store's
    /// `{"features": {name: value, ...}, ...}` without building a map: each
    /// name is looked up as it is read. A column with no value (absent or
    /// null), or a value FP32 cannot hold, is an error naming the feature.
    pub(super) fn values_in(&self, layout: &Layout) -> Result<Vec<f32>, UpstreamError> {
        let mut columns = vec![None; layout.width()];
        let seed = Row {
            layout,
            columns: &mut columns,
        };
        let mut de = serde_json::Deserializer::from_slice(&self.body);
        seed.deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| invalid(FEATURE_STORE, e))?;
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

/// The feature store's answer: only its `features` object is read.
struct Row<'l, 'c> {
    layout: &'l Layout,
    columns: &'c mut [Option<f64>],
}

impl<'de> DeserializeSeed<'de> for Row<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Row<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with `features`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<RawKey<'de>>()? {
            if *key.0 == *b"features" {
                map.next_value_seed(Columns {
                    layout: self.layout,
                    columns: &mut *self.columns,
                })?;
                seen = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if seen {
            Ok(())
        } else {
            Err(de::Error::missing_field("features"))
        }
    }
}

/// `{name: value|null, ...}` into the layout's columns; names the model does
/// not take are skipped.
struct Columns<'l, 'c> {
    layout: &'l Layout,
    columns: &'c mut [Option<f64>],
}

impl<'de> DeserializeSeed<'de> for Columns<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Columns<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of feature values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let names = &self.layout.feature_names;
        // The store usually lists features in the model's order: try the
        // column after the last one found before hashing the name.
        let mut next = 0;
        while let Some(name) = map.next_key::<RawKey<'de>>()? {
            let name = name.0.as_ref();
            let column = match names.get(next) {
                Some(expected) if expected.as_bytes() == name => Some(next),
                _ => std::str::from_utf8(name)
                    .ok()
                    .and_then(|name| self.layout.columns.get(name))
                    .copied(),
            };
            match column {
                Some(i) => {
                    self.columns[i] = map.next_value::<Option<f64>>()?;
                    next = i + 1;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A map key as its bytes, borrowed from the input unless it has escapes
/// (serde's own `Cow` always copies). Bytes, not `str`: serde_json checks a
/// `str` key's UTF-8 (~100 instructions per key, 85 keys per decision), and a
/// key is only ever compared with names that are valid UTF-8 already.
struct RawKey<'de>(Cow<'de, [u8]>);

impl<'de> de::Deserialize<'de> for RawKey<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = RawKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a feature name")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(RawKey(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(RawKey(Cow::Owned(v.to_owned())))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawKey(Cow::Borrowed(v.as_bytes())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawKey(Cow::Owned(v.as_bytes().to_owned())))
            }
        }
        d.deserialize_bytes(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new("features", "a,b,c")
    }

    fn features(json: &str) -> Features {
        Features::new(Bytes::from(json.to_owned()), None)
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
