//! One outcome per decision. Decision ids are stateless (signed), so without
//! this a client retrying a feedback POST, or a double click, would count an
//! acceptance twice and skew the experiment's conversion rates.
//!
//! The ledger is per replica and bounded: it remembers decisions until their
//! ids expire (`--decision-max-age`) or, past `capacity` entries, drops the
//! oldest first. A replay that reaches another replica, or one of a decision
//! already dropped, is counted again; the frontend runs one replica by default.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Accepted,
    Declined,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Declined => "declined",
        }
    }
}

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First outcome for this decision: count it.
    New,
    /// The same outcome again (a retry): answer as before, count nothing.
    Repeat,
    /// A different outcome than the one already recorded: refuse.
    Conflict(Outcome),
}

pub struct Ledger {
    capacity: usize,
    /// Keyed by a hash of the decision id under a per-process random key, so
    /// ids chosen to collide (the request id inside is client-controlled)
    /// cannot be precomputed.
    hasher: RandomState,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    outcomes: HashMap<u64, Outcome>,
    /// Keys in the order recorded, with the time their id expires.
    order: VecDeque<(u64, u64)>,
}

impl Ledger {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            inner: Mutex::default(),
        }
    }

    /// Records `outcome` for the decision `id`, whose id stops verifying at
    /// `expires_at` (Unix seconds); `now` is the current time.
    pub fn record(&self, id: &str, outcome: Outcome, expires_at: u64, now: u64) -> Recorded {
        let key = self.hasher.hash_one(id);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { outcomes, order } = &mut *inner;
        // Expired ids no longer verify, so forgetting them loses nothing.
        while let Some(&(old, expires)) = order.front() {
            if expires > now && order.len() < self.capacity {
                break;
            }
            order.pop_front();
            outcomes.remove(&old);
        }
        match outcomes.entry(key) {
            Entry::Occupied(e) if *e.get() == outcome => Recorded::Repeat,
            Entry::Occupied(e) => Recorded::Conflict(*e.get()),
            Entry::Vacant(e) => {
                e.insert(outcome);
                order.push_back((key, expires_at));
                Recorded::New
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outcomes
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Accepted, Declined};

    #[test]
    fn the_first_outcome_counts_a_retry_repeats_and_a_change_conflicts() {
        let l = Ledger::new(10);
        assert_eq!(l.record("a", Accepted, 100, 0), Recorded::New);
        assert_eq!(l.record("a", Accepted, 100, 1), Recorded::Repeat);
        assert_eq!(
            l.record("a", Declined, 100, 2),
            Recorded::Conflict(Accepted)
        );
        assert_eq!(l.record("b", Declined, 100, 3), Recorded::New);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn expired_decisions_are_forgotten() {
        let l = Ledger::new(10);
        l.record("a", Accepted, 100, 0);
        l.record("b", Accepted, 200, 0);
        // At 150 "a" no longer verifies anyway; "b" still does.
        assert_eq!(l.record("c", Accepted, 300, 150), Recorded::New);
        assert_eq!(l.len(), 2);
        assert_eq!(l.record("b", Accepted, 200, 151), Recorded::Repeat);
    }

    #[test]
    fn memory_is_bounded_by_dropping_the_oldest() {
        let l = Ledger::new(3);
        for id in ["a", "b", "c", "d"] {
            assert_eq!(l.record(id, Accepted, 1000, 0), Recorded::New);
        }
        assert_eq!(l.len(), 3);
        assert_eq!(l.record("d", Accepted, 1000, 0), Recorded::Repeat);
        // "a" was dropped to make room, so it counts again (documented).
        assert_eq!(l.record("a", Accepted, 1000, 0), Recorded::New);
        assert_eq!(l.len(), 3);
    }
}
