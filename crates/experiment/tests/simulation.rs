//! The statistics proved by simulation: seeded A/A experiments looked at
//! every 100 requests must rarely raise a false alarm, and A/B experiments
//! with the fault sizes of mlmesh's knobs must be caught within the stated
//! samples. The measured rates are printed (`cargo test -p experiment --test
//! simulation -- --nocapture`) and recorded in BENCHMARKS.md.

use std::collections::BTreeMap;

use experiment::checks::Context;
use experiment::histogram::Histogram;
use experiment::plan::Plan;
use experiment::report::decide;
use experiment::snapshot::{Snapshot, Users, VersionCounts};
use experiment::{Status, Verdict};
use mesh_kit::metrics::LATENCY_BUCKETS;

/// One arm's true behaviour.
#[derive(Clone, Copy)]
struct Arm {
    error_rate: f64,
    offer_rate: f64,
    acceptance: f64,
    /// Median model-call latency in seconds (log-normal, sigma 0.5).
    latency_median: f64,
}

const HEALTHY: Arm = Arm {
    error_rate: 0.01,
    offer_rate: 0.174,
    acceptance: 0.183,
    latency_median: 0.0015,
};

/// One arm's running counters.
#[derive(Default)]
struct Counts {
    v: VersionCounts,
    latency: Vec<u64>,
}

struct Sim {
    rng: fastrand::Rng,
    arms: [Arm; 2],
    counts: [Counts; 2],
    users: Users,
    candidate_share: f64,
    requests_per_user: u64,
    requests: u64,
}

impl Sim {
    fn new(
        seed: u64,
        baseline: Arm,
        candidate: Arm,
        candidate_share: f64,
        requests_per_user: u64,
    ) -> Self {
        let mut counts: [Counts; 2] = Default::default();
        for c in &mut counts {
            c.latency = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        Self {
            rng: fastrand::Rng::with_seed(seed),
            arms: [baseline, candidate],
            counts,
            users: Users::default(),
            candidate_share,
            requests_per_user,
            requests: 0,
        }
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (1.0 - self.rng.f64(), self.rng.f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// One user and their requests: assigned once, counted once per exposure
    /// and once per answered offer, as the frontend does.
    fn user(&mut self) {
        let arm = usize::from(self.rng.f64() < self.candidate_share);
        if arm == 1 {
            self.users.candidate += 1;
        } else {
            self.users.baseline += 1;
        }
        let truth = self.arms[arm];
        // A customer buys or not: their answer to every offer is the same.
        let buys = self.rng.f64() < truth.acceptance;
        let mut answered = false;
        for _ in 0..self.requests_per_user {
            self.requests += 1;
            let latency = truth.latency_median * (0.5 * self.normal()).exp();
            let bucket = LATENCY_BUCKETS
                .iter()
                .position(|&e| latency <= e)
                .unwrap_or(LATENCY_BUCKETS.len());
            let c = &mut self.counts[arm];
            c.latency[bucket] += 1;
            c.v.decisions += 1;
            if self.rng.f64() < truth.error_rate {
                c.v.degraded += 1;
                continue;
            }
            if self.rng.f64() < truth.offer_rate {
                c.v.offers += 1;
                if buys {
                    c.v.accepted += 1
                } else {
                    c.v.declined += 1
                }
                if !answered {
                    answered = true;
                    if buys {
                        c.v.users_accepted += 1
                    } else {
                        c.v.users_declined += 1
                    }
                }
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut versions = BTreeMap::new();
        for (name, c) in ["v1", "v2"].iter().zip(&self.counts) {
            let mut v = c.v.clone();
            let mut cum = 0;
            let mut buckets = Vec::new();
            for (i, &e) in LATENCY_BUCKETS.iter().enumerate() {
                cum += c.latency[i];
                buckets.push((e, cum));
            }
            buckets.push((f64::INFINITY, cum + c.latency[LATENCY_BUCKETS.len()]));
            v.latency = Histogram::from_buckets(buckets);
            versions.insert((*name).to_owned(), v);
        }
        Snapshot {
            versions,
            users: self.users.clone(),
            canary_percent: Some(self.candidate_share * 100.0),
            unattributed_degraded: 0,
        }
    }

    fn outcomes(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.v.users_accepted + c.v.users_declined)
            .sum()
    }
}

fn verdict(plan: &Plan, snap: &Snapshot) -> (Verdict, Vec<experiment::Check>) {
    let checks = Context {
        plan,
        snap,
        baseline: "v1",
        candidate: "v2",
    }
    .checks();
    (decide(&checks).0, checks)
}

/// Runs until a verdict other than `continue` or `max_requests`, looking
/// every `look_every` requests; returns the first non-continue verdict (if
/// any), with the simulation at that look.
fn run(
    plan: &Plan,
    mut sim: Sim,
    look_every: u64,
    max_requests: u64,
) -> (Option<Verdict>, Vec<experiment::Check>, Sim) {
    let mut next = look_every;
    while sim.requests < max_requests {
        sim.user();
        if sim.requests >= next {
            next += look_every;
            let (v, checks) = verdict(plan, &sim.snapshot());
            if v != Verdict::Continue {
                return (Some(v), checks, sim);
            }
        }
    }
    (None, vec![], sim)
}

#[test]
fn a_a_experiments_looked_at_every_100_requests_rarely_alarm() {
    let plan = Plan::caravan_offer();
    let n = 1_000;
    let mut alarms = BTreeMap::<String, u32>::new();
    let mut false_alarms = 0;
    let mut promoted = 0;
    for seed in 0..n {
        // 10% canary, 5 requests per user, looks every 100 requests up to 5,000.
        let sim = Sim::new(seed, HEALTHY, HEALTHY, 0.1, 5);
        match run(&plan, sim, 100, 5_000) {
            (Some(Verdict::Rollback | Verdict::Invalid), checks, _) => {
                false_alarms += 1;
                for c in checks
                    .iter()
                    .filter(|c| c.status == Status::Fail && (c.role.decides() || c.name == "srm"))
                {
                    *alarms.entry(c.name.to_owned()).or_default() += 1;
                }
            }
            (Some(Verdict::Promote), ..) => promoted += 1,
            _ => {}
        }
    }
    let rate = f64::from(false_alarms) / n as f64;
    println!(
        "A/A: {n} experiments, 10% canary, looks every 100 requests to 5,000: false-alarm rate {:.1}% (by check: {alarms:?}); promoted {:.1}%",
        rate * 100.0,
        f64::from(promoted) / n as f64 * 100.0
    );
    assert!(rate <= 0.05, "false-alarm rate {rate} > 5%");
}

#[test]
fn a_candidate_failing_half_its_calls_is_caught_within_500_candidate_requests() {
    let plan = Plan::caravan_offer();
    let n = 500;
    let failing = Arm {
        error_rate: 0.5,
        ..HEALTHY
    };
    let mut caught = 0;
    let mut at = Vec::new();
    for seed in 0..n {
        let sim = Sim::new(10_000 + seed, HEALTHY, failing, 0.1, 5);
        let (v, checks, sim) = run(&plan, sim, 100, 20_000);
        let cand = sim.counts[1].v.decisions;
        let errors_failed = checks
            .iter()
            .any(|c| c.name == "errors" && c.status == Status::Fail);
        if v == Some(Verdict::Rollback) && errors_failed && cand <= 500 {
            caught += 1;
            at.push(cand);
        }
    }
    at.sort_unstable();
    let power = f64::from(caught) / n as f64;
    println!(
        "errors 1% → 50%, 10% canary: caught within 500 candidate requests in {:.1}% (median at {} candidate requests)",
        power * 100.0,
        at.get(at.len() / 2).copied().unwrap_or(0)
    );
    assert!(power >= 0.9, "power {power} < 90%");
}

/// Acceptance drops of the sizes the score knobs cause on the caravan data
/// (all customers, threshold 0.1, measured with onnxruntime): shifted scores
/// over-offer to customers who do not buy.
#[test]
fn a_silently_worse_candidate_is_caught_within_2000_outcomes() {
    let plan = Plan::caravan_offer();
    let n = 500;
    let cases = [
        (
            "FAULT_SCORE_SHIFT=1.5",
            Arm {
                offer_rate: 0.661,
                acceptance: 0.083,
                ..HEALTHY
            },
        ),
        (
            "FAULT_SCORE_NOISE=3",
            Arm {
                offer_rate: 0.369,
                acceptance: 0.087,
                ..HEALTHY
            },
        ),
    ];
    for (name, worse) in cases {
        let mut caught = 0;
        let mut promoted = 0;
        for seed in 0..n {
            // 50% canary, one request per user (`--all-users`).
            let sim = Sim::new(20_000 + seed, HEALTHY, worse, 0.5, 1);
            let mut next = 100;
            let mut sim = sim;
            while sim.outcomes() < 2_000 {
                sim.user();
                if sim.requests >= next {
                    next += 100;
                    match verdict(&plan, &sim.snapshot()).0 {
                        Verdict::Rollback => {
                            caught += 1;
                            break;
                        }
                        Verdict::Promote => {
                            promoted += 1;
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
        let power = f64::from(caught) / n as f64;
        println!(
            "acceptance 18.3% → {:.1}% ({name}), 50% canary: rollback within 2,000 outcomes in {:.1}%, promoted {promoted}",
            worse.acceptance * 100.0,
            power * 100.0
        );
        assert_eq!(promoted, 0, "{name}: a worse candidate was promoted");
        assert!(power >= 0.9, "{name}: power {power} < 90%");
    }
}

#[test]
fn a_slow_candidate_is_caught_and_a_healthy_one_promoted() {
    let plan = Plan::caravan_offer();
    let slow = Arm {
        latency_median: 0.05,
        ..HEALTHY
    };
    let (v, checks, _) = run(&plan, Sim::new(7, HEALTHY, slow, 0.1, 5), 100, 20_000);
    assert_eq!(v, Some(Verdict::Rollback));
    assert!(
        checks
            .iter()
            .any(|c| c.name == "latency" && c.status == Status::Fail),
        "{checks:#?}"
    );

    // Twins with no errors at all, a 50% split and enough users: every
    // deciding metric can pass.
    let twin = Arm {
        error_rate: 0.0,
        ..HEALTHY
    };
    let (v, checks, sim) = run(&plan, Sim::new(8, twin, twin, 0.5, 1), 500, 200_000);
    println!(
        "identical twins at 50%: {v:?} after {} requests",
        sim.requests
    );
    assert_eq!(v, Some(Verdict::Promote), "{checks:#?}");
}

#[test]
fn a_broken_split_is_invalid() {
    let plan = Plan::caravan_offer();
    // The frontend says 10% but 20% of users land on the candidate.
    let mut sim = Sim::new(9, HEALTHY, HEALTHY, 0.2, 5);
    for _ in 0..400 {
        sim.user();
    }
    let mut snap = sim.snapshot();
    snap.canary_percent = Some(10.0);
    let (v, checks) = verdict(&plan, &snap);
    assert_eq!(v, Verdict::Invalid, "{checks:#?}");
}
