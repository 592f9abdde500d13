//! Which users this replica has already seen, so the experiment can be
//! counted per user (its randomization unit) rather than per request.
//!
//! A user who asks for ten predictions is still one user: the sample-ratio
//! check compares users per cohort, and the acceptance rate takes a user's
//! first answer to a version's offers. Counting requests instead would make
//! heavy users look like many independent samples and overstate confidence.
//!
//! Per replica: a user served by two replicas is counted at each. The load
//! balancer in front of the frontend does not know the cohort, so both
//! cohorts are inflated alike and the split stays unbiased; consistent-hash
//! routing on `x-user-id` makes the counts exact.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// A bounded set of "seen" keys, stored as 64-bit hashes (8 bytes each, not
/// the ids). Once full it stops recording and says so once in the log: the
/// counts then cover the first `capacity` keys, never a wrong number.
pub struct Seen {
    what: &'static str,
    keys: Mutex<HashSet<u64>>,
    capacity: usize,
    // Per-process random keys: ids chosen to collide cannot be crafted.
    hasher: RandomState,
    full_logged: AtomicBool,
}

impl Seen {
    pub fn new(what: &'static str, capacity: usize) -> Self {
        Self {
            what,
            keys: Mutex::new(HashSet::new()),
            capacity,
            hasher: RandomState::new(),
            full_logged: AtomicBool::new(false),
        }
    }

    /// True the first time `key` is offered; false after, and false for new
    /// keys once the set is full.
    pub fn first(&self, key: impl Hash) -> bool {
        let h = self.hasher.hash_one(key);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.contains(&h) {
            return false;
        }
        if keys.len() >= self.capacity {
            drop(keys);
            if !self.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    capacity = self.capacity,
                    "{} seen at this replica reached the tracking bound: later ones are not counted",
                    self.what
                );
            }
            return false;
        }
        keys.insert(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_first_once() {
        let s = Seen::new("users", 10);
        assert!(s.first("42"));
        assert!(!s.first("42"));
        assert!(s.first("43"));
        assert!(s.first(("v1", "42")));
        assert!(!s.first(("v1", "42")));
        assert!(s.first(("v2", "42")));
    }

    #[test]
    fn a_full_set_counts_no_new_keys_but_still_knows_old_ones() {
        let s = Seen::new("users", 2);
        assert!(s.first(1));
        assert!(s.first(2));
        assert!(!s.first(3));
        assert!(!s.first(1));
        assert!(!s.first(3));
    }
}
