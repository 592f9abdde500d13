//! The test statistics. Distributions come from `statrs`; what is written
//! here is only the formulas that combine them.
//!
//! Every interval that can change a verdict is an *always-valid confidence
//! sequence*: the mixture sequential probability ratio test of Robbins,
//! as Johari, Pekelis & Walsh (2017, "Always valid inference") use it for A/B
//! tests and Optimizely's Stats Engine ships it. With a normal mixing
//! distribution of scale `tau` over the effect, the probability that the
//! interval *ever* misses the true effect, however often it is looked at, is
//! at most `alpha` (asymptotically, through the normal approximation of the
//! estimate). So `mlmesh analyze --watch` may look every 15 seconds without
//! inflating false alarms, which a fixed-sample test would.

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// An estimate with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }
}

/// `successes` out of `trials`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub successes: u64,
    pub trials: u64,
}

impl Count {
    pub fn new(successes: u64, trials: u64) -> Self {
        Self { successes, trials }
    }

    pub fn rate(&self) -> Option<f64> {
        (self.trials > 0).then(|| self.successes as f64 / self.trials as f64)
    }

    /// Variance of the rate's estimate, from the Agresti–Caffo adjusted rate
    /// (one success and one failure added): never zero, so an arm with no
    /// errors yet still has an honest, non-degenerate width.
    fn variance(&self) -> f64 {
        let n = self.trials as f64;
        let p = (self.successes as f64 + 1.0) / (n + 2.0);
        p * (1.0 - p) / n
    }
}

/// The Wilson score interval of a proportion at `1 - alpha` (fixed-sample):
/// well-behaved near 0 and 1 and for small counts, unlike the Wald interval.
/// `None` without trials.
pub fn wilson(count: Count, alpha: f64) -> Option<Interval> {
    use statrs::distribution::Normal;
    let n = count.trials as f64;
    let p = count.rate()?;
    let z = Normal::standard().inverse_cdf(1.0 - alpha / 2.0);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // Exactly 0 and 1 at the edges, not float noise next to them.
    Some(Interval {
        estimate: p,
        lo: if count.successes == 0 {
            0.0
        } else {
            (centre - half).max(0.0)
        },
        hi: if count.successes == count.trials {
            1.0
        } else {
            (centre + half).min(1.0)
        },
    })
}

/// Spearman's rank correlation of paired samples (ties take their average
/// rank); `None` for fewer than two pairs or a constant side.
pub fn spearman(pairs: &[(f64, f64)]) -> Option<f64> {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut ix: Vec<usize> = (0..v.len()).collect();
        ix.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < ix.len() {
            let mut j = i;
            while j + 1 < ix.len() && v[ix[j + 1]] == v[ix[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0 + 1.0;
            for k in &ix[i..=j] {
                r[*k] = avg;
            }
            i = j + 1;
        }
        r
    }
    if pairs.len() < 2 {
        return None;
    }
    let a = ranks(&pairs.iter().map(|p| p.0).collect::<Vec<_>>());
    let b = ranks(&pairs.iter().map(|p| p.1).collect::<Vec<_>>());
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// Half-width of the two-sided always-valid `1 - alpha` confidence sequence
/// for an estimate whose variance is `variance`, with normal mixing scale
/// `tau`:
///
/// `sqrt( V (V + τ²) / τ² · (2 ln(1/α) + ln((V + τ²) / V)) )`
///
/// (the boundary where the mixture likelihood ratio reaches `1/alpha`).
/// `tau` should be of the size of the effects that matter: the interval is
/// tightest when the estimate's standard error has shrunk to about `tau`.
pub fn cs_half_width(variance: f64, tau: f64, alpha: f64) -> f64 {
    if variance <= 0.0 || !variance.is_finite() {
        return f64::INFINITY;
    }
    let t2 = tau * tau;
    let v = variance;
    (v * (v + t2) / t2 * (2.0 * (1.0 / alpha).ln() + ((v + t2) / v).ln())).sqrt()
}

/// The candidate's rate minus the baseline's, with its confidence sequence.
/// `None` when either arm has no trials.
pub fn rate_difference(
    baseline: Count,
    candidate: Count,
    tau: f64,
    alpha: f64,
) -> Option<Interval> {
    let (pb, pc) = (baseline.rate()?, candidate.rate()?);
    let hw = cs_half_width(baseline.variance() + candidate.variance(), tau, alpha);
    let d = pc - pb;
    Some(Interval {
        estimate: d,
        lo: (d - hw).max(-1.0),
        hi: (d + hw).min(1.0),
    })
}

/// Pearson's chi-square goodness-of-fit of a two-way split against the
/// expected candidate share: (statistic, p-value), 1 degree of freedom.
pub fn split_chi_square(
    baseline: u64,
    candidate: u64,
    expected_candidate_share: f64,
) -> Option<(f64, f64)> {
    let n = (baseline + candidate) as f64;
    let p = expected_candidate_share;
    if n == 0.0 || !(p > 0.0 && p < 1.0) {
        return None;
    }
    let (eb, ec) = (n * (1.0 - p), n * p);
    let stat = (baseline as f64 - eb).powi(2) / eb + (candidate as f64 - ec).powi(2) / ec;
    Some((stat, chi_square_sf(stat, 1.0)))
}

/// Chi-square test of homogeneity of two binned distributions (a 2 × k
/// table, empty columns dropped): (statistic, degrees of freedom, p-value).
pub fn homogeneity_chi_square(a: &[u64], b: &[u64]) -> Option<(f64, f64, f64)> {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    let n = na + nb;
    let mut stat = 0.0;
    let mut columns = 0u32;
    for (&x, &y) in a.iter().zip(b) {
        let col = (x + y) as f64;
        if col == 0.0 {
            continue;
        }
        columns += 1;
        let (ea, eb) = (na * col / n, nb * col / n);
        stat += (x as f64 - ea).powi(2) / ea + (y as f64 - eb).powi(2) / eb;
    }
    if columns < 2 {
        return Some((0.0, 0.0, 1.0));
    }
    let df = f64::from(columns - 1);
    Some((stat, df, chi_square_sf(stat, df)))
}

fn chi_square_sf(stat: f64, df: f64) -> f64 {
    ChiSquared::new(df).map_or(f64::NAN, |d| d.sf(stat))
}

/// Two-sample Kolmogorov–Smirnov distance between two binned distributions
/// (the largest gap between their CDFs at the bin edges).
pub fn ks_distance(a: &[u64], b: &[u64]) -> Option<f64> {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    let (mut ca, mut cb, mut d) = (0.0, 0.0, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ca += x as f64;
        cb += y as f64;
        d = d.max((ca / na - cb / nb).abs());
    }
    Some(d)
}

/// The KS distance two samples of sizes `n` and `m` from one distribution
/// exceed with probability `alpha` (large-sample critical value,
/// `sqrt(-ln(α/2)/2) · sqrt((n+m)/(n·m))`; conservative for binned data).
pub fn ks_critical(n: u64, m: u64, alpha: f64) -> f64 {
    let (n, m) = (n as f64, m as f64);
    (-(alpha / 2.0).ln() / 2.0).sqrt() * ((n + m) / (n * m)).sqrt()
}

/// Population stability index of `b` against `a` (the drift measure of ML
/// monitoring: < 0.1 stable, 0.1–0.25 moderate, > 0.25 large). Empty bins
/// get half a count so the logarithm stays finite.
pub fn psi(a: &[u64], b: &[u64]) -> Option<f64> {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .map(|(&x, &y)| {
                let pa = (x as f64).max(0.5) / na;
                let pb = (y as f64).max(0.5) / nb;
                (pb - pa) * (pb / pa).ln()
            })
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use statrs::distribution::{Binomial, DiscreteCDF, Normal};

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn the_wilson_interval_matches_its_formula_and_covers_by_simulation() {
        // 12 of 100 at 95%: the textbook figures (0.0700, 0.1981).
        let i = wilson(Count::new(12, 100), 0.05).unwrap();
        assert!(
            close(i.lo, 0.0700, 5e-4) && close(i.hi, 0.1981, 5e-4),
            "{i:?}"
        );
        assert_eq!(wilson(Count::new(0, 0), 0.05), None);
        let zero = wilson(Count::new(0, 50), 0.05).unwrap();
        assert!(
            zero.lo == 0.0 && zero.hi > 0.0 && zero.hi < 0.08,
            "{zero:?}"
        );
        // Coverage, simulated: for several true rates and sizes, the 95%
        // interval holds the true rate in about 95% of 4000 draws.
        let mut rng = fastrand::Rng::with_seed(7);
        for (p, n) in [(0.02, 200), (0.12, 100), (0.5, 40), (0.9, 300)] {
            let runs = 4_000;
            let covered = (0..runs)
                .filter(|_| {
                    let k = (0..n).filter(|_| rng.f64() < p).count() as u64;
                    wilson(Count::new(k, n), 0.05).unwrap().contains(p)
                })
                .count();
            let rate = covered as f64 / runs as f64;
            println!("Wilson 95% interval, p = {p}, n = {n}: coverage {rate:.3} over {runs} draws");
            assert!((0.92..=0.98).contains(&rate), "p {p} n {n}: {rate}");
        }
    }

    #[test]
    fn spearman_is_one_for_any_rising_map_and_handles_ties() {
        let rising: Vec<(f64, f64)> = (0..20)
            .map(|i| (f64::from(i), f64::from(i).exp()))
            .collect();
        assert!(close(spearman(&rising).unwrap(), 1.0, 1e-12));
        let falling: Vec<(f64, f64)> = rising.iter().map(|&(a, b)| (a, -b)).collect();
        assert!(close(spearman(&falling).unwrap(), -1.0, 1e-12));
        // Ties: x = [1, 2, 2, 3], y = [1, 2, 3, 4]: ranks [1, 2.5, 2.5, 4] vs 1..4.
        let tied = [(1.0, 1.0), (2.0, 2.0), (2.0, 3.0), (3.0, 4.0)];
        let r = spearman(&tied).unwrap();
        assert!(close(r, 4.5 / (4.5f64 * 5.0).sqrt(), 1e-12), "{r}");
        assert_eq!(spearman(&[(1.0, 1.0)]), None);
        assert_eq!(spearman(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn confidence_sequence_matches_the_mixture_boundary() {
        // V = 0.0025, tau = 0.05, alpha = 0.05, by hand:
        // sqrt(0.0025 * 0.005 / 0.0025 * (2 ln 20 + ln 2)) = sqrt(0.005 * 6.6846)
        let hw = cs_half_width(0.0025, 0.05, 0.05);
        assert!(close(
            hw,
            (0.005f64 * (2.0 * 20f64.ln() + 2f64.ln())).sqrt(),
            1e-12
        ));
        assert!(close(hw, 0.18282, 1e-4), "{hw}");
        // The likelihood ratio at the boundary is exactly 1/alpha.
        let (v, t2) = (0.0025f64, 0.0025f64);
        let lr = (v / (v + t2)).sqrt() * (t2 * hw * hw / (2.0 * v * (v + t2))).exp();
        assert!(close(lr, 20.0, 1e-9), "{lr}");
    }

    #[test]
    fn a_sequence_is_wider_than_a_fixed_sample_interval_and_shrinks() {
        let z = Normal::standard().inverse_cdf(0.975);
        for n in [100.0f64, 1_000.0, 10_000.0, 100_000.0] {
            let v = 0.25 / n;
            let fixed = z * v.sqrt();
            let seq = cs_half_width(v, 0.05, 0.05);
            assert!(seq > fixed, "n={n}: {seq} <= {fixed}");
            assert!(seq < 4.0 * fixed, "n={n}: {seq} too wide");
        }
        assert!(cs_half_width(0.25 / 1e4, 0.05, 0.05) < cs_half_width(0.25 / 1e3, 0.05, 0.05));
        assert_eq!(cs_half_width(0.0, 0.05, 0.05), f64::INFINITY);
    }

    #[test]
    fn rate_difference_is_candidate_minus_baseline() {
        let d = rate_difference(Count::new(10, 1000), Count::new(50, 100), 0.05, 0.05).unwrap();
        assert!(close(d.estimate, 0.49, 1e-12));
        assert!(d.lo > 0.2 && d.hi < 0.8, "{d:?}");
        assert!(rate_difference(Count::new(0, 0), Count::new(1, 1), 0.05, 0.05).is_none());
        // No errors in either arm: a narrow interval around 0, not a degenerate one.
        let z = rate_difference(Count::new(0, 5000), Count::new(0, 500), 0.02, 0.05).unwrap();
        assert!(z.lo < 0.0 && z.hi > 0.0 && z.hi < 0.01, "{z:?}");
    }

    #[test]
    fn chi_square_p_values_match_statrs_and_tables() {
        // 1 df: the 0.05 and 0.001 critical values are 3.841 and 10.828 (tables).
        let (_, p) = split_chi_square(500, 500, 0.5).unwrap();
        assert!(close(p, 1.0, 1e-12));
        // 100 expected at 10% of 1000; 131 observed: (31²/100 + 31²/900) = 10.678.
        let (stat, p) = split_chi_square(869, 131, 0.1).unwrap();
        assert!(close(stat, 961.0 / 100.0 + 961.0 / 900.0, 1e-9), "{stat}");
        assert!(p > 0.001 && p < 0.0012, "{p}");
        let (stat, p) = split_chi_square(868, 132, 0.1).unwrap();
        assert!(stat > 10.828 && p < 0.001, "{stat} {p}");
        // A 2x2 homogeneity table equals the 1-df test: 10.828 ↔ p = 0.001.
        let (_, df, p) = homogeneity_chi_square(&[50, 50], &[50, 50]).unwrap();
        assert_eq!(df, 1.0);
        assert!(close(p, 1.0, 1e-12));
        let (stat, df, p) = homogeneity_chi_square(&[30, 70, 0], &[60, 40, 0]).unwrap();
        assert_eq!(df, 1.0);
        assert!(close(stat, 18.1818, 1e-3), "{stat}");
        assert!(p < 1e-4);
    }

    #[test]
    fn ks_critical_value_matches_the_published_constant() {
        // c(0.05) = 1.358, c(0.01) = 1.628 (Smirnov's table).
        let c05 = ks_critical(1, 1, 0.05) / 2f64.sqrt();
        assert!(close(c05, 1.358, 1e-3), "{c05}");
        assert!(close(ks_critical(1, 1, 0.01) / 2f64.sqrt(), 1.628, 1e-3));
        assert_eq!(ks_distance(&[1, 1, 0], &[0, 1, 1]), Some(0.5));
        assert_eq!(ks_distance(&[5, 5], &[1, 1]), Some(0.0));
    }

    #[test]
    fn psi_is_zero_for_equal_shapes_and_grows_with_drift() {
        assert!(close(psi(&[10, 20, 30], &[1, 2, 3]).unwrap(), 0.0, 1e-12));
        let small = psi(&[100, 100], &[110, 90]).unwrap();
        let large = psi(&[100, 100], &[180, 20]).unwrap();
        assert!(
            small > 0.0 && small < 0.1 && large > 0.25,
            "{small} {large}"
        );
    }

    #[test]
    fn wide_intervals_cover_a_binomial_at_their_nominal_rate() {
        // A sanity check of the normal approximation against statrs' exact
        // binomial: P(|X/n - p| > hw) is far below alpha for one look.
        let (n, p) = (400u64, 0.2);
        let hw = cs_half_width(p * (1.0 - p) / n as f64, 0.05, 0.05);
        let b = Binomial::new(p, n).unwrap();
        let lo = ((p - hw) * n as f64).floor() as u64;
        let hi = ((p + hw) * n as f64).ceil() as u64;
        let outside = b.cdf(lo) + (1.0 - b.cdf(hi));
        assert!(outside < 0.01, "{outside}");
    }
}
