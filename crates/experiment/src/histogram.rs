//! Prometheus-style histograms (cumulative counts at upper bucket edges) and
//! what can honestly be said about their quantiles.

use serde::Serialize;

use crate::stats::cs_half_width;

/// Cumulative counts at ascending finite upper edges, plus the total (the
/// `+Inf` bucket).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub count: u64,
}

/// A quantile and the bucket edges it is known to lie between.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantile {
    pub q: f64,
    /// Interpolated within its bucket, as PromQL's `histogram_quantile` does.
    pub estimate: f64,
    /// The quantile is above this edge (0 when nothing is known)...
    pub lo: f64,
    /// ...and at most this one (`inf` while the tail is too thin to say).
    pub hi: f64,
}

impl Histogram {
    /// From `(upper edge, cumulative count)` pairs in any order; `+Inf` (or
    /// the largest count) gives the total.
    pub fn from_buckets(mut buckets: Vec<(f64, u64)>) -> Self {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut h = Self::default();
        for (edge, c) in buckets {
            if edge.is_finite() {
                h.edges.push(edge);
                h.cumulative.push(c);
            }
            h.count = h.count.max(c);
        }
        h
    }

    /// Counts per bucket (the last one is above the largest edge).
    pub fn bucket_counts(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.edges.len() + 1);
        let mut prev = 0;
        for &c in &self.cumulative {
            out.push(c.saturating_sub(prev));
            prev = c;
        }
        out.push(self.count.saturating_sub(prev));
        out
    }

    /// `self - earlier`, bucket by bucket; `None` if the edges differ or a
    /// count went down (the process restarted and its counters reset).
    pub fn minus(&self, earlier: &Self) -> Option<Self> {
        if earlier.count == 0 && earlier.edges.is_empty() {
            return Some(self.clone());
        }
        if self.edges != earlier.edges || self.count < earlier.count {
            return None;
        }
        let cumulative = self
            .cumulative
            .iter()
            .zip(&earlier.cumulative)
            .map(|(a, b)| a.checked_sub(*b))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            edges: self.edges.clone(),
            cumulative,
            count: self.count - earlier.count,
        })
    }

    /// The `q`-quantile with bounds from the bucket counts: at each edge the
    /// share of observations at or below it has an always-valid confidence
    /// sequence at `alpha`; the quantile lies above the largest edge whose
    /// share is surely below `q`, and at or below the smallest edge whose share
    /// surely reaches `q`.
    pub fn quantile(&self, q: f64, tau: f64, alpha: f64) -> Option<Quantile> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        let share = |c: u64| c as f64 / n;
        let half_width = |c: u64| {
            let p = (c as f64 + 1.0) / (n + 2.0);
            cs_half_width(p * (1.0 - p) / n, tau, alpha)
        };
        let mut lo = 0.0;
        let mut hi = f64::INFINITY;
        for (&edge, &c) in self.edges.iter().zip(&self.cumulative) {
            let (f, hw) = (share(c), half_width(c));
            if f + hw < q {
                lo = edge;
            }
            if f - hw >= q && hi.is_infinite() {
                hi = edge;
            }
        }
        Some(Quantile {
            q,
            estimate: self.interpolate(q),
            lo,
            hi,
        })
    }

    fn interpolate(&self, q: f64) -> f64 {
        let rank = q * self.count as f64;
        let mut prev_edge = 0.0;
        let mut prev_c = 0u64;
        for (&edge, &c) in self.edges.iter().zip(&self.cumulative) {
            if c as f64 >= rank && c > prev_c {
                let within = (rank - prev_c as f64) / (c - prev_c) as f64;
                return prev_edge + (edge - prev_edge) * within.clamp(0.0, 1.0);
            }
            prev_edge = edge;
            prev_c = c;
        }
        // In the +Inf bucket: like histogram_quantile, the largest finite edge.
        self.edges.last().copied().unwrap_or(f64::NAN)
    }

    /// The mean of the observations, taking each at its bucket's midpoint
    /// (the open top bucket at its lower edge).
    pub fn mean(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let counts = self.bucket_counts();
        let mut lower = 0.0;
        let mut sum = 0.0;
        for (i, &c) in counts.iter().enumerate() {
            let mid = match self.edges.get(i) {
                Some(&upper) => (lower + upper) / 2.0,
                None => lower,
            };
            sum += mid * c as f64;
            if let Some(&upper) = self.edges.get(i) {
                lower = upper;
            }
        }
        Some(sum / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(edges: &[f64], per_bucket: &[u64]) -> Histogram {
        let mut c = 0;
        let mut buckets = Vec::new();
        for (i, &e) in edges.iter().enumerate() {
            c += per_bucket[i];
            buckets.push((e, c));
        }
        c += per_bucket[edges.len()];
        buckets.push((f64::INFINITY, c));
        Histogram::from_buckets(buckets)
    }

    #[test]
    fn buckets_round_trip_and_subtract() {
        let a = h(&[0.1, 0.5, 1.0], &[1, 2, 3, 4]);
        assert_eq!(a.count, 10);
        assert_eq!(a.bucket_counts(), vec![1, 2, 3, 4]);
        let b = h(&[0.1, 0.5, 1.0], &[2, 2, 5, 4]);
        assert_eq!(b.minus(&a).unwrap().bucket_counts(), vec![1, 0, 2, 0]);
        assert!(a.minus(&b).is_none(), "a reset is detected");
        assert!(a.minus(&h(&[0.2], &[1, 1])).is_none(), "other edges");
    }

    #[test]
    fn quantile_interpolates_like_promql() {
        // 100 observations uniformly in (0, 1]: p50 at 0.5 exactly.
        let x = h(&[0.25, 0.5, 0.75, 1.0], &[25, 25, 25, 25, 0]);
        let q = x.quantile(0.5, 0.05, 0.05).unwrap();
        assert!((q.estimate - 0.5).abs() < 1e-12);
        // Everything in the +Inf bucket: the largest finite edge.
        let tail = h(&[0.1], &[0, 10]);
        assert_eq!(tail.quantile(0.5, 0.05, 0.05).unwrap().estimate, 0.1);
    }

    #[test]
    fn quantile_bounds_bracket_the_true_quantile_and_tighten() {
        let edges = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];
        // 90% in (0.001, 0.0025], 9% in (0.0025, 0.005], 1% in (0.005, 0.01]:
        // the true p99 is 0.005.
        let small = h(&edges, &[0, 90, 9, 1, 0, 0, 0, 0]);
        let big = h(&edges, &[0, 90_000, 9_000, 1_000, 0, 0, 0, 0]);
        let s = small.quantile(0.5, 0.05, 0.05).unwrap();
        assert!(s.lo <= 0.001 && s.hi >= 0.0025, "{s:?}");
        let b = big.quantile(0.5, 0.05, 0.05).unwrap();
        assert_eq!((b.lo, b.hi), (0.001, 0.0025), "p50 pinned to its bucket");
        let p99 = big.quantile(0.99, 0.05, 0.05).unwrap();
        assert!(p99.lo <= 0.005 && p99.hi >= 0.005, "{p99:?}");
        assert!(p99.hi <= 0.01, "{p99:?}");
        // 100 samples cannot bound a p99 from above.
        assert_eq!(small.quantile(0.99, 0.05, 0.05).unwrap().hi, f64::INFINITY);
    }

    #[test]
    fn mean_uses_bucket_midpoints() {
        let x = h(&[1.0, 3.0], &[1, 1, 0]);
        assert_eq!(x.mean(), Some(1.25));
    }
}
