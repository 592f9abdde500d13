//! What the frontend learns from an upstream's own answers and keeps for
//! every request after: a model's input layout, the feature store's column
//! order. Replaced when a newer answer says otherwise, dropped when an
//! answer shows it stale.

use std::sync::atomic::{AtomicU32, Ordering};
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

/// Learnt that an upstream cannot do something (read an order from its
/// answers, answer a batch): the next few requests skip trying, so an old
/// upstream is not asked in vain every time and an upgraded one is noticed
/// soon. Racing requests may skip one more or one less; nothing depends on
/// the exact count.
#[derive(Debug, Default)]
pub(super) struct Countdown(AtomicU32);

// === impl Countdown ===

impl Countdown {
    /// The next `requests` calls of [`Self::skip`] say skip.
    pub(super) fn start(&self, requests: u32) {
        self.0.store(requests, Ordering::Relaxed);
    }

    /// Whether this request skips trying (and one fewer will).
    pub(super) fn skip(&self) -> bool {
        let left = self.0.load(Ordering::Relaxed);
        if left == 0 {
            return false;
        }
        self.0.store(left - 1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_countdown_skips_as_many_requests_as_started_with() {
        let c = Countdown::default();
        assert!(!c.skip(), "nothing learnt: try");
        c.start(3);
        assert_eq!(
            [c.skip(), c.skip(), c.skip(), c.skip()],
            [true, true, true, false]
        );
        c.start(1);
        assert!(c.skip());
        assert!(!c.skip());
    }

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
