//! Many users' features from one feature-store call: the binary batch
//! answer (one found flag per entity, then each entity's doubles in the
//! store's order) cut into one [`Features`] per entity.

use std::sync::Arc;

use mesh_kit::feature_wire;

use super::{Answer, Features, KnownOrder, Row, StoreOrder};
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
    ) -> Result<Option<Vec<Option<Features>>>, UpstreamError> {
        if !answer.binary {
            return Err(invalid(FEATURE_STORE, "a batch answer that is not binary"));
        }
        if answer.fingerprint.as_deref() != Some(&*asked.fingerprint) {
            self.order.forget(asked);
            return Ok(None);
        }
        let wire = |e| invalid(FEATURE_STORE, e);
        feature_wire::split_batch(&answer.body, count, asked.names.len())
            .map_err(wire)?
            .into_iter()
            .map(|row| {
                let Some(row) = row else { return Ok(None) };
                Ok(Some(Features {
                    row: Row::Listed {
                        values: feature_wire::read_row(row).map_err(wire)?,
                        order: asked.clone(),
                    },
                    served_by: answer.served_by.clone(),
                }))
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
        let mut answer = batch(
            &[1, 0, 1],
            &[&[3.0, 9.0, 1.0, 2.0], &[nan; 4], &[30.0, 9.0, 10.0, 20.0]],
            Some("f"),
        );
        answer.served_by = Some("store-0".into());
        let rows = known
            .read_batch(answer, 3, &order)
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
            let e = known.read_batch(bad, 3, &order).unwrap_err();
            assert_eq!(e.kind(), "invalid", "{e}");
        }
        assert!(known.get().is_some(), "a broken answer forgets nothing");
        // Another fingerprint, or none: the order is forgotten.
        for other in [Some("g"), None] {
            known.order.set(order.clone());
            let answer = batch(&[1], &[&[1.0; 4]], other);
            assert!(known.read_batch(answer, 1, &order).unwrap().is_none());
            assert!(known.get().is_none(), "{other:?}");
        }
    }
}
