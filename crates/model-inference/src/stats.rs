//! The counters behind the statistics extension (`/v2/models/{name}/stats`):
//! Triton's cumulative counts and durations, fed at the same places as the
//! Prometheus histograms (handler, queue, model run) and read as one
//! snapshot in Triton's JSON shape.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A count and its cumulative nanoseconds.
#[derive(Debug, Default)]
struct Timed {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Timed {
    fn add(&self, count: u64, ns: u64) {
        self.count.fetch_add(count, Relaxed);
        self.ns.fetch_add(ns, Relaxed);
    }

    fn read(&self) -> oip::Duration {
        oip::Duration {
            count: self.count.load(Relaxed),
            ns: self.ns.load(Relaxed),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
pub struct Counters {
    success: Timed,
    fail: Timed,
    queue: Timed,
    compute_infer: Timed,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
    /// Index = rows in the model run; `[0]` is never used.
    batches: Box<[Timed]>,
}

// === impl Counters ===

impl Counters {
    pub fn new(max_batch_rows: usize) -> Self {
        Self {
            success: Timed::default(),
            fail: Timed::default(),
            queue: Timed::default(),
            compute_infer: Timed::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            batches: (0..=max_batch_rows).map(|_| Timed::default()).collect(),
        }
    }

    /// One answered infer request and how long the handler took.
    pub fn request(&self, ok: bool, took: Duration) {
        let t = if ok { &self.success } else { &self.fail };
        t.add(1, nanos(took));
    }

    /// A request taken off the queue after `waited`.
    pub fn queued(&self, waited: Duration) {
        self.queue.add(1, nanos(waited));
    }

    /// One successful model run of `rows` rows for `requests` requests: each
    /// request is charged the run's whole time, as Triton does.
    pub fn executed(&self, rows: usize, requests: usize, took: Duration) {
        let ns = nanos(took);
        self.execution_count.fetch_add(1, Relaxed);
        self.inference_count.fetch_add(rows as u64, Relaxed);
        self.compute_infer
            .add(requests as u64, ns.saturating_mul(requests as u64));
        if let Some(b) = self.batches.get(rows) {
            b.add(1, ns);
        }
        let now = u64::try_from(mesh_kit::clock::unix_now_ms()).unwrap_or(0);
        self.last_inference_ms.store(now, Relaxed);
    }

    pub fn snapshot(&self, name: &str, version: &str) -> oip::ModelStatistics {
        let batch_stats = self
            .batches
            .iter()
            .enumerate()
            .filter_map(|(size, t)| {
                let infer = t.read();
                (infer.count > 0).then(|| oip::BatchStatistics {
                    batch_size: size as u64,
                    compute_infer: infer,
                    compute_input: oip::Duration::default(),
                    compute_output: oip::Duration::default(),
                })
            })
            .collect();
        oip::ModelStatistics {
            name: name.to_owned(),
            version: version.to_owned(),
            last_inference: self.last_inference_ms.load(Relaxed),
            inference_count: self.inference_count.load(Relaxed),
            execution_count: self.execution_count.load(Relaxed),
            inference_stats: oip::InferenceStatistics {
                success: self.success.read(),
                fail: self.fail.read(),
                queue: self.queue.read(),
                compute_infer: self.compute_infer.read(),
                ..Default::default()
            },
            batch_stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_request_run_and_batch_size() {
        let c = Counters::new(8);
        c.request(true, Duration::from_micros(30));
        c.request(true, Duration::from_micros(10));
        c.request(false, Duration::from_micros(5));
        c.queued(Duration::from_micros(2));
        c.queued(Duration::from_micros(3));
        c.executed(3, 2, Duration::from_micros(7));
        c.executed(9, 1, Duration::from_micros(1)); // past the table: counted, not binned
        let s = c.snapshot("m", "v1");
        assert_eq!(
            (
                s.inference_stats.success.count,
                s.inference_stats.success.ns
            ),
            (2, 40_000)
        );
        assert_eq!(
            (s.inference_stats.fail.count, s.inference_stats.fail.ns),
            (1, 5_000)
        );
        assert_eq!(
            (s.inference_stats.queue.count, s.inference_stats.queue.ns),
            (2, 5_000)
        );
        assert_eq!(s.inference_stats.compute_infer.count, 3);
        assert_eq!(s.inference_stats.compute_infer.ns, 2 * 7_000 + 1_000);
        assert_eq!((s.inference_count, s.execution_count), (12, 2));
        assert_eq!(s.batch_stats.len(), 1);
        assert_eq!(s.batch_stats[0].batch_size, 3);
        assert_eq!(
            s.batch_stats[0].compute_infer,
            oip::Duration {
                count: 1,
                ns: 7_000
            }
        );
        assert!(s.last_inference > 0);
    }
}
