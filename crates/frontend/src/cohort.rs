//! Sticky experiment assignment.
//!
//! A user's bucket is a pure function of (salt, user id), and a bucket is in
//! the candidate cohort when it is below the canary percentage. So the same
//! user always lands in the same cohort, and raising the percentage only
//! moves users from baseline to candidate, never back.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Number of buckets users hash into; one bucket is one percent of users.
pub const BUCKETS: u8 = 100;

/// Value of `x-user-group` (header, `?group=` or cookie) that forces the candidate.
pub const BETA_GROUP: &str = "beta";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cohort {
    /// Served by v1, the model in production.
    Baseline,
    /// Served by v2, the model under test.
    Candidate,
}

impl Cohort {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Candidate => "candidate",
        }
    }
}

/// Why a user is in their cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The hash bucket decided.
    Bucket,
    /// `x-user-group: beta` (or its cookie) forced the candidate.
    BetaGroup,
}

impl Reason {
    /// As serialized (and as the `assignment` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bucket => "bucket",
            Self::BetaGroup => "beta-group",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub cohort: Cohort,
    pub bucket: u8,
    pub reason: Reason,
}

#[derive(Debug, Clone)]
pub struct Assigner {
    salt: String,
    canary_percent: u8,
}

impl Assigner {
    pub fn new(salt: impl Into<String>, canary_percent: u8) -> Self {
        Self {
            salt: salt.into(),
            canary_percent: canary_percent.min(BUCKETS),
        }
    }

    pub fn canary_percent(&self) -> u8 {
        self.canary_percent
    }

    /// The user's bucket in `0..100`. SHA-256 rather than a fast hash: it is
    /// specified, identical on every platform and release, and easy to
    /// reproduce from a notebook when analysing an experiment.
    pub fn bucket(&self, user_id: &str) -> u8 {
        let digest = Sha256::new()
            .chain_update(self.salt.as_bytes())
            .chain_update(b":")
            .chain_update(user_id.as_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u8
    }

    pub fn assign(&self, user_id: &str, beta: bool) -> Assignment {
        let bucket = self.bucket(user_id);
        let (cohort, reason) = if beta {
            (Cohort::Candidate, Reason::BetaGroup)
        } else if bucket < self.canary_percent {
            (Cohort::Candidate, Reason::Bucket)
        } else {
            (Cohort::Baseline, Reason::Bucket)
        };
        Assignment {
            cohort,
            bucket,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> impl Iterator<Item = String> {
        (1..=5000).map(|i| i.to_string())
    }

    #[test]
    fn assignment_is_a_pure_function_of_salt_and_user() {
        let a = Assigner::new("s1", 10);
        let b = Assigner::new("s1", 10);
        for u in users() {
            assert_eq!(a.assign(&u, false), b.assign(&u, false));
        }
    }

    #[test]
    fn canary_share_tracks_the_percentage() {
        for pct in [0u8, 10, 50, 100] {
            let a = Assigner::new("mlmesh-experiment-1", pct);
            let candidates = users()
                .filter(|u| a.assign(u, false).cohort == Cohort::Candidate)
                .count();
            let share = candidates as f64 / 5000.0 * 100.0;
            assert!(
                (share - f64::from(pct)).abs() <= 1.5,
                "{pct}% canary gave {share:.2}%"
            );
        }
    }

    #[test]
    fn raising_the_percentage_only_moves_baseline_users() {
        let low = Assigner::new("s", 10);
        let high = Assigner::new("s", 20);
        let mut moved = 0;
        for u in users() {
            let (before, after) = (low.assign(&u, false).cohort, high.assign(&u, false).cohort);
            assert!(
                !(before == Cohort::Candidate && after == Cohort::Baseline),
                "user {u} moved back to baseline"
            );
            moved += usize::from(before != after);
        }
        assert!(
            moved > 300,
            "about 10% of 5000 users should move, got {moved}"
        );
    }

    #[test]
    fn a_new_salt_reshuffles_users() {
        let (a, b) = (Assigner::new("exp-1", 50), Assigner::new("exp-2", 50));
        let same = users()
            .filter(|u| a.assign(u, false).cohort == b.assign(u, false).cohort)
            .count();
        // Independent assignments agree about half the time.
        assert!((2200..2800).contains(&same), "{same} of 5000 agree");
    }

    #[test]
    fn beta_group_forces_the_candidate_even_at_zero_percent() {
        let a = Assigner::new("s", 0);
        let got = a.assign("7", true);
        assert_eq!(got.cohort, Cohort::Candidate);
        assert_eq!(got.reason, Reason::BetaGroup);
        assert_eq!(a.assign("7", false).cohort, Cohort::Baseline);
    }

    #[test]
    fn bucket_is_stable_across_releases() {
        // Pinned: changing the hash would silently reshuffle every running
        // experiment. Recompute with:
        // python3 -c 'import hashlib;print(int.from_bytes(hashlib.sha256(b"mlmesh-experiment-1:42").digest()[:8],"big")%100)'
        let a = Assigner::new("mlmesh-experiment-1", 10);
        assert_eq!(a.bucket("42"), PINNED_BUCKET_OF_42);
    }

    const PINNED_BUCKET_OF_42: u8 = 47;
}
