//! A keyed answer (`{"features": {name: value, ...}, ...}`) read straight
//! into a model's columns: no map, no `String` per feature; each name is
//! looked up as it is read.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::super::model::Layout;

/// Fills `columns` (the layout's) from a keyed answer's `features`.
pub(super) fn read(
    body: &[u8],
    layout: &Layout,
    columns: &mut [Option<f64>],
) -> Result<(), serde_json::Error> {
    let seed = KeyedRow { layout, columns };
    let mut de = serde_json::Deserializer::from_slice(body);
    seed.deserialize(&mut de)?;
    de.end()
}

/// The feature store's answer: only its `features` object is read.
struct KeyedRow<'l, 'c> {
    layout: &'l Layout,
    columns: &'c mut [Option<f64>],
}

impl<'de> DeserializeSeed<'de> for KeyedRow<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeyedRow<'_, '_> {
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
