//! Many users' features from one feature-store call: the binary batch
//! answer (one found flag per entity, then each entity's doubles in the
//! store's order) cut into one [`Features`] per entity.

use std::sync::Arc;

use super::{Answer, Features, KnownOrder, Row, StoreOrder, VALUE_BYTES, binary_values};
use crate::upstream::error::invalid;
use crate::upstream::{FEATURE_STORE, UpstreamError};

impl KnownOrder {
    /// Reads a binary batch answer for `count` entities asked in `asked`'s
    /// order: one row per entity, `None` for one the store does not know.
    /// `Ok(None)`: the store's order is no longer `asked` (forgotten; ask
    /// with names).
    pub(in crate::upstream) fn read_batch(
        &self,
        answer: Answer,
        count: usize,
        asked: &Arc<StoreOrder>,
        served_by: Option<&str>,
    ) -> Result<Option<Vec<Option<Features>>>, UpstreamError> {
        if !answer.binary {
            return Err(invalid(FEATURE_STORE, "a batch answer that is not binary"));
        }
        if answer.fingerprint.as_deref() != Some(&*asked.fingerprint) {
            self.order.forget(asked);
            return Ok(None);
        }
        let row_bytes = asked.names.len() * VALUE_BYTES;
        let want = count + count * row_bytes;
        if answer.body.len() != want {
            let detail = format!(
                "a batch answer of {} bytes for {count} entities of {} features ({want} expected)",
                answer.body.len(),
                asked.names.len()
            );
            return Err(invalid(FEATURE_STORE, detail));
        }
        let (found, rows) = answer.body.split_at(count);
        found
            .iter()
            .enumerate()
            .map(|(n, flag)| match flag {
                0 => Ok(None),
                1 => Ok(Some(Features {
                    row: Row::Listed {
                        values: binary_values(&rows[n * row_bytes..(n + 1) * row_bytes])?,
                        order: asked.clone(),
                    },
                    served_by: served_by.map(str::to_owned),
                })),
                other => Err(invalid(
                    FEATURE_STORE,
                    format!("entity {n}'s found flag is {other}, neither 0 nor 1"),
                )),
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::upstream::features::tests::{binary_after, known_czab, layout};

    /// A binary batch answer: found flags, then each entity's doubles.
    fn batch(found: &[u8], rows: &[&[f64]], fingerprint: Option<&str>) -> Answer {
        binary_after(found, &rows.concat(), fingerprint)
    }

    #[test]
    fn a_batch_answer_gives_each_entity_its_row_or_none() {
        let (known, order) = known_czab();
        let nan = f64::NAN;
        let answer = batch(
            &[1, 0, 1],
            &[&[3.0, 9.0, 1.0, 2.0], &[nan; 4], &[30.0, 9.0, 10.0, 20.0]],
            Some("f"),
        );
        let rows = known
            .read_batch(answer, 3, &order, Some("store-0"))
            .unwrap()
            .expect("the same order");
        assert_eq!(rows.len(), 3);
        let first = rows[0].as_ref().expect("found");
        assert_eq!(first.values_in(&layout()).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(first.served_by.as_deref(), Some("store-0"));
        assert!(rows[1].is_none(), "not found");
        let third = rows[2].as_ref().expect("found");
        assert_eq!(third.values_in(&layout()).unwrap(), vec![10.0, 20.0, 30.0]);

        // Lengths that do not add up, a flag that is neither 0 nor 1, JSON.
        for bad in [
            batch(&[1, 0], &[&[1.0; 4], &[1.0; 4]], Some("f")),
            batch(&[1, 0, 1], &[&[1.0; 4], &[1.0; 4]], Some("f")),
            batch(&[1, 0, 1], &[&[1.0; 4], &[1.0; 4], &[1.0; 3]], Some("f")),
            batch(&[1, 2, 1], &[&[1.0; 4], &[1.0; 4], &[1.0; 4]], Some("f")),
            Answer::from(Bytes::from_static(b"{\"rows\":[]}")),
        ] {
            let e = known.read_batch(bad, 3, &order, None).unwrap_err();
            assert_eq!(e.kind(), "invalid", "{e}");
        }
        assert!(known.get().is_some(), "a broken answer forgets nothing");
        // Another fingerprint, or none: the order is forgotten.
        for other in [Some("g"), None] {
            known.order.set(order.clone());
            let answer = batch(&[1], &[&[1.0; 4]], other);
            assert!(known.read_batch(answer, 1, &order, None).unwrap().is_none());
            assert!(known.get().is_none(), "{other:?}");
        }
    }
}
