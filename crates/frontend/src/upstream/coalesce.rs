//! Concurrent decisions sharing one upstream call. The first caller of a
//! round leads it; callers that reach the same call before the leader runs
//! again follow it; the leader then makes one call for all of them and hands
//! each follower its part.
//!
//! Why: under load most of a decision's cost is per call, not per byte —
//! the kernel's loopback TCP, the HTTP exchange, the callee's routing, span
//! and metrics. One call for many decisions pays that once. At low load a
//! round has one member, and the call is the one it would have been.
//!
//! Nothing here waits on a timer: a leader yields to the runtime once, so
//! the decisions already ready to run (their requests read in the same turn
//! of the event loop) reach the call and join, and then it calls. A follower
//! whose leader goes away (its request cancelled) makes its own call.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

/// The most callers one call serves: the feature store's batch limit is
/// 1000 by default, and past some dozens a bigger batch saves little.
pub(super) const MAX_ROUND: usize = 128;

/// The round open for joining, if any. `T` is what a follower is handed.
pub(super) struct Coalescer<T> {
    open: Mutex<Option<Vec<Follower<T>>>>,
}

/// A caller waiting on a leader's call.
pub(super) struct Follower<T> {
    pub key: Box<str>,
    pub deadline: Instant,
    pub reply: oneshot::Sender<T>,
}

/// What [`Coalescer::join`] made of a caller.
pub(super) enum Joined<'a, T> {
    /// No round was open: this caller opened one and makes the call for
    /// everyone who joins before [`Round::close`].
    Lead(Round<'a, T>),
    /// The caller joined the open round: its part of the leader's answer
    /// arrives here. A sender dropped without answering means "make your
    /// own call" (the leader was cancelled, or the answer was not usable).
    Follow(oneshot::Receiver<T>),
    /// The open round is full: the caller makes its own call.
    Alone,
}

/// A leader's open round. Dropped before [`Round::close`] (the leader's
/// request cancelled), it is closed and its followers make their own calls.
pub(super) struct Round<'a, T> {
    coalescer: &'a Coalescer<T>,
    open: bool,
}

// === impl Coalescer ===

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Self {
            open: Mutex::new(None),
        }
    }
}

impl<T> Coalescer<T> {
    /// Leads a new round, follows the open one, or (round full) goes alone.
    pub(super) fn join(&self, key: &str, deadline: Instant) -> Joined<'_, T> {
        let mut open = self.lock();
        match &mut *open {
            None => {
                *open = Some(Vec::new());
                Joined::Lead(Round {
                    coalescer: self,
                    open: true,
                })
            }
            // The leader is one of the round.
            Some(followers) if followers.len() + 1 >= MAX_ROUND => Joined::Alone,
            Some(followers) => {
                let (reply, answer) = oneshot::channel();
                followers.push(Follower {
                    key: key.into(),
                    deadline,
                    reply,
                });
                Joined::Follow(answer)
            }
        }
    }

    fn take(&self) -> Vec<Follower<T>> {
        self.lock().take().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Follower<T>>>> {
        // A panic while holding it left a plain Vec: still usable.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl Round ===

impl<T> Round<'_, T> {
    /// Lets every caller that is ready to run join, then closes the round:
    /// its followers, in the order they joined (empty: the leader is alone).
    pub(super) async fn close(mut self) -> Vec<Follower<T>> {
        tokio::task::yield_now().await;
        self.open = false;
        self.coalescer.take()
    }
}

impl<T> Drop for Round<'_, T> {
    fn drop(&mut self) {
        if self.open {
            // Dropping the followers drops their senders: each makes its own call.
            drop(self.coalescer.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(1)
    }

    #[tokio::test]
    async fn the_first_caller_leads_and_the_rest_follow_until_it_closes() {
        let c = Coalescer::<u32>::default();
        let Joined::Lead(round) = c.join("a", later()) else {
            panic!("the first caller leads")
        };
        let mut answers = Vec::new();
        for key in ["b", "c"] {
            let Joined::Follow(rx) = c.join(key, later()) else {
                panic!("{key} follows the open round")
            };
            answers.push(rx);
        }
        let followers = round.close().await;
        let keys: Vec<&str> = followers.iter().map(|f| &*f.key).collect();
        assert_eq!(keys, ["b", "c"], "in the order they joined");
        for (n, f) in followers.into_iter().enumerate() {
            f.reply.send(n as u32).unwrap();
        }
        for (n, rx) in answers.into_iter().enumerate() {
            assert_eq!(rx.await.unwrap(), n as u32, "each follower its own part");
        }
        assert!(
            matches!(c.join("d", later()), Joined::Lead(_)),
            "a closed round takes no one: the next caller leads a new one"
        );
    }

    #[tokio::test]
    async fn callers_that_run_while_the_leader_yields_join_its_round() {
        // One runtime thread, as the frontend runs: the tasks spawned before
        // the leader yields run before it closes.
        let c = std::sync::Arc::new(Coalescer::<()>::default());
        let Joined::Lead(round) = c.join("lead", later()) else {
            panic!("leads")
        };
        let followers: Vec<_> = (0..5)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    match c.join(&format!("f{i}"), later()) {
                        Joined::Follow(rx) => rx.await.is_ok(),
                        _ => panic!("f{i} should follow"),
                    }
                })
            })
            .collect();
        let joined = round.close().await;
        assert_eq!(joined.len(), 5, "every ready task joined before the close");
        for f in joined {
            f.reply.send(()).unwrap();
        }
        for f in followers {
            assert!(f.await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_full_round_sends_newcomers_alone() {
        let c = Coalescer::<()>::default();
        let Joined::Lead(round) = c.join("lead", later()) else {
            panic!("leads")
        };
        let kept: Vec<_> = (1..MAX_ROUND)
            .map(|i| match c.join(&i.to_string(), later()) {
                Joined::Follow(rx) => rx,
                _ => panic!("{i} fits"),
            })
            .collect();
        assert!(matches!(c.join("one too many", later()), Joined::Alone));
        assert_eq!(round.close().await.len() + 1, MAX_ROUND);
        drop(kept);
    }

    #[tokio::test]
    async fn a_leader_dropped_before_closing_frees_its_followers() {
        let c = Coalescer::<()>::default();
        let Joined::Lead(round) = c.join("lead", later()) else {
            panic!("leads")
        };
        let Joined::Follow(rx) = c.join("f", later()) else {
            panic!("follows")
        };
        drop(round);
        assert!(rx.await.is_err(), "no answer will come: call alone");
        assert!(
            matches!(c.join("next", later()), Joined::Lead(_)),
            "the dropped round is closed"
        );
    }
}
