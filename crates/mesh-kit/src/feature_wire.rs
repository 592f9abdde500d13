//! The feature store's binary answer (`format=binary`), written by the store
//! and read by the frontend: one definition of its bytes for both.
//!
//! A row is one entity's values in the store's column order (named by its
//! [`fingerprint`](crate::fingerprint), sent beside the body in
//! `x-mlmesh-feature-fingerprint`), each an IEEE 754 double, little-endian,
//! NaN for a value the store does not have. Stored values are always finite,
//! so NaN says nothing else. A batch is first one byte per entity in request
//! order (1 found, 0 not), then each entity's row in the same order (all NaN
//! for one not found). A reader that knows how many entities it asked and how
//! many features a row has checks the length before it reads a value.

/// The binary answer's `Content-Type`.
pub const CONTENT_TYPE: &str = "application/octet-stream";

/// Bytes per value: a little-endian double.
pub const VALUE_BYTES: usize = std::mem::size_of::<f64>();

/// What a binary answer's bytes can get wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a binary answer of {len} bytes is not doubles")]
    NotDoubles { len: usize },
    #[error(
        "a batch answer of {len} bytes for {entities} entities of {features} features \
         ({want} expected)"
    )]
    BatchLength {
        len: usize,
        entities: usize,
        features: usize,
        want: usize,
    },
    #[error("entity {entity}'s found flag is {flag}, neither 0 nor 1")]
    FoundFlag { entity: usize, flag: u8 },
}

/// The length of a batch of `entities` rows of `features` values.
pub fn batch_len(entities: usize, features: usize) -> usize {
    entities + entities * features * VALUE_BYTES
}

/// Appends one row: each value, NaN for `None`.
pub fn push_row(out: &mut Vec<u8>, values: impl IntoIterator<Item = Option<f64>>) {
    for v in values {
        out.extend_from_slice(&v.unwrap_or(f64::NAN).to_le_bytes());
    }
}

/// Appends a batch's found flags, one byte per entity.
pub fn push_found(out: &mut Vec<u8>, found: impl IntoIterator<Item = bool>) {
    out.extend(found.into_iter().map(u8::from));
}

/// One row's values, `None` for NaN.
pub fn read_row(bytes: &[u8]) -> Result<Vec<Option<f64>>, WireError> {
    if !bytes.len().is_multiple_of(VALUE_BYTES) {
        return Err(WireError::NotDoubles { len: bytes.len() });
    }
    Ok(bytes
        .chunks_exact(VALUE_BYTES)
        .map(|b| {
            let v = f64::from_le_bytes(b.try_into().expect("chunks of VALUE_BYTES"));
            (!v.is_nan()).then_some(v)
        })
        .collect())
}

/// A batch of `entities` rows of `features` values: each entity's row bytes
/// (for [`read_row`]) in request order, `None` for one not found. Every
/// length and flag is checked before a row is handed out.
pub fn split_batch(
    body: &[u8],
    entities: usize,
    features: usize,
) -> Result<Vec<Option<&[u8]>>, WireError> {
    let want = batch_len(entities, features);
    if body.len() != want {
        return Err(WireError::BatchLength {
            len: body.len(),
            entities,
            features,
            want,
        });
    }
    let (found, rows) = body.split_at(entities);
    let row_bytes = features * VALUE_BYTES;
    found
        .iter()
        .enumerate()
        .map(|(n, &flag)| match flag {
            0 => Ok(None),
            1 => Ok(Some(&rows[n * row_bytes..(n + 1) * row_bytes])),
            flag => Err(WireError::FoundFlag { entity: n, flag }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_round_trips_with_nan_for_none() {
        let values = [Some(1.5), None, Some(-0.0), Some(f64::MAX)];
        let mut out = Vec::new();
        push_row(&mut out, values);
        assert_eq!(out.len(), 4 * VALUE_BYTES);
        assert_eq!(&out[..8], &1.5f64.to_le_bytes());
        assert!(f64::from_le_bytes(out[8..16].try_into().unwrap()).is_nan());
        assert_eq!(read_row(&out).unwrap(), values);
    }

    #[test]
    fn a_row_that_is_not_whole_doubles_is_refused() {
        assert_eq!(read_row(&[0; 12]), Err(WireError::NotDoubles { len: 12 }));
        assert_eq!(read_row(&[]).unwrap(), []);
    }

    #[test]
    fn a_batch_is_flags_then_rows_and_splits_back() {
        let mut out = Vec::new();
        push_found(&mut out, [false, true, false]);
        for found in [None, Some(2.0), None] {
            push_row(&mut out, [found, found]);
        }
        assert_eq!(out.len(), batch_len(3, 2));
        assert_eq!(&out[..3], &[0, 1, 0]);
        let rows = split_batch(&out, 3, 2).unwrap();
        assert_eq!(rows[0], None);
        assert_eq!(read_row(rows[1].unwrap()).unwrap(), [Some(2.0), Some(2.0)]);
        assert_eq!(rows[2], None);
        assert_eq!(split_batch(&[], 0, 85).unwrap(), []);
    }

    #[test]
    fn a_batch_of_the_wrong_length_or_flag_is_refused() {
        let mut out = Vec::new();
        push_found(&mut out, [true]);
        push_row(&mut out, [Some(1.0)]);
        assert_eq!(
            split_batch(&out, 1, 2),
            Err(WireError::BatchLength {
                len: 9,
                entities: 1,
                features: 2,
                want: 17
            })
        );
        assert!(split_batch(&out[..8], 1, 1).is_err());
        out[0] = 7;
        assert_eq!(
            split_batch(&out, 1, 1),
            Err(WireError::FoundFlag { entity: 0, flag: 7 })
        );
    }
}
