//! Tensor `data` as a flat row-major FP32 vector, whatever the JSON nesting.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Tensor `data`, flat or nested to any depth, flattened row-major while
/// parsing. Every element must be a number that is finite *as FP32*: serde
/// reads `1e39` as a finite f64 that becomes +inf in f32. Written flat.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlatF32(pub Vec<f32>);

/// Deep enough for any tensor rank a client would send; guards the stack.
const MAX_NESTING: usize = 16;

/// Room for a row of a typical tabular model (mlmesh's have 85 features)
/// before the vector grows: growing from empty took six reallocations and
/// ~1.5k instructions per single-row request. 512 bytes, whatever the size.
const INITIAL_CAPACITY: usize = 128;

// === impl FlatF32 ===

impl FlatF32 {
    /// Raw little-endian FP32 bytes, as the binary extension carries them;
    /// `None` unless every element is a finite FP32.
    pub fn from_le_bytes(bytes: &[u8]) -> Result<Self, NonFinite> {
        let mut out = Vec::with_capacity(bytes.len() / 4);
        for (i, chunk) in bytes.chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if !v.is_finite() {
                return Err(NonFinite { index: i, value: v });
            }
            out.push(v);
        }
        Ok(Self(out))
    }
}

/// A binary element that is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFinite {
    pub index: usize,
    pub value: f32,
}

impl Serialize for FlatF32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for FlatF32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::with_capacity(INITIAL_CAPACITY);
        d.deserialize_seq(Nested {
            out: &mut out,
            depth: 0,
        })?;
        Ok(Self(out))
    }
}

struct Nested<'a> {
    out: &'a mut Vec<f32>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Nested<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Nested<'_> {
    fn push<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        let f = v as f32;
        if f.is_finite() {
            self.out.push(f);
            Ok(())
        } else {
            Err(E::custom(format_args!(
                "tensor data must be finite FP32 numbers, got {v:e}"
            )))
        }
    }
}

impl<'de> Visitor<'de> for Nested<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers (flat or nested)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_NESTING {
            return Err(de::Error::custom("tensor data is nested too deeply"));
        }
        while seq
            .next_element_seed(Nested {
                out: &mut *self.out,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        if self.depth == 0 {
            return Err(E::custom("tensor data must be an array"));
        }
        self.push(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(data: &str) -> Result<Vec<f32>, String> {
        serde_json::from_str::<FlatF32>(data)
            .map(|f| f.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flattens_nested_data() {
        assert_eq!(parse("[1, 2.5, -3]").unwrap(), vec![1.0, 2.5, -3.0]);
        assert_eq!(parse("[[1, 2], [3, 4]]").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(parse("[[[1]], [[2]]]").unwrap(), vec![1.0, 2.0]);
        assert_eq!(parse("[]").unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn rejects_what_is_not_a_finite_fp32_number() {
        for bad in [
            "[1e39]", "[-1e39]", "[\"1\"]", "[true]", "[null]", "[{}]", "1", "\"abc\"", "[1e400]",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
        let msg = parse("[1, 1e39]").unwrap_err();
        assert!(msg.contains("finite FP32"), "{msg}");
    }

    #[test]
    fn rejects_absurd_nesting() {
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn round_trips_through_json_and_bytes() {
        let v = FlatF32(vec![0.1, -2.5, 3e-8, 65504.0]);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<FlatF32>(&json).unwrap(), v);
        let bytes: Vec<u8> = v.0.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(FlatF32::from_le_bytes(&bytes).unwrap(), v);
        let nan: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(FlatF32::from_le_bytes(&nan).unwrap_err().index, 1);
    }
}
