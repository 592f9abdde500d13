//! What the frontend learns from an upstream's own answers and keeps for
//! every request after: a model's input layout, the feature store's column
//! order. Replaced when a newer answer says otherwise, dropped when an
//! answer shows it stale.

use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub(super) struct Learnt<T>(Mutex<Option<Arc<T>>>);

impl<T> Default for Learnt<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

// === impl Learnt ===

impl<T> Learnt<T> {
    pub(super) fn get(&self) -> Option<Arc<T>> {
        self.slot().clone()
    }

    pub(super) fn set(&self, value: Arc<T>) {
        *self.slot() = Some(value);
    }

    /// Drops `stale` unless another request already replaced it.
    pub(super) fn forget(&self, stale: &Arc<T>) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|v| Arc::ptr_eq(v, stale)) {
            *slot = None;
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<T>>> {
        // A panic elsewhere cannot leave an `Option<Arc<_>>` half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_stale_value_keeps_a_newer_one() {
        let learnt = Learnt::default();
        let (old, new) = (Arc::new(1), Arc::new(2));
        learnt.set(old.clone());
        learnt.set(new.clone());
        learnt.forget(&old);
        assert_eq!(
            learnt.get(),
            Some(new.clone()),
            "another request's newer value stays"
        );
        learnt.forget(&new);
        assert_eq!(learnt.get(), None);
    }
}
