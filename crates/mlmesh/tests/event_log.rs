//! The experiment event log across real processes: `mlmesh up --shadow
//! --redis-url` under the load tool writes an exposure per decision, a
//! live prediction for each and its shadow twin from v2 with the same
//! request id and input hash, and an outcome per recorded feedback.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Stack;
use events::{Event, LIVE, SHADOW};
use test_support::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_prediction_has_its_shadow_twin_and_every_decision_its_exposure() {
    let redis = RedisServer::start();
    let stack = Stack::start(
        Stack::ports(),
        &[
            "--shadow",
            "--canary-percent",
            "50",
            "--redis-url",
            &redis.url(),
        ],
        &[],
    );
    assert!(
        stack.stdout.lock().unwrap().contains(events::STREAM_KEY),
        "the banner names the event log"
    );
    // A light load: the invariants below need every call answered.
    let report = common::load(&stack, &["--requests", "600", "--rate", "150/s"]).await;
    assert_eq!(report.all.errors, 0, "{}", report.render());

    // Read until the writers have caught up with the load.
    let events =
        test_support::event_log::wait_for(&redis.url(), "600 exposures and shadows", |events| {
            let exposures = events.iter().filter(|e| e.kind() == "exposure").count();
            let shadows = events
                .iter()
                .filter(|e| matches!(e, Event::Prediction(p) if p.traffic == SHADOW))
                .count();
            exposures >= 600 && shadows >= 600
        })
        .await;

    let mut live = BTreeMap::new();
    let mut shadow = BTreeMap::new();
    let (mut exposures, mut outcomes) = (Vec::new(), Vec::new());
    for e in &events {
        match e {
            Event::Prediction(p) if p.traffic == LIVE => {
                live.insert((p.request_id.clone(), p.row), p);
            }
            Event::Prediction(p) => {
                shadow.insert((p.request_id.clone(), p.row), p);
            }
            Event::Exposure(x) => exposures.push(x),
            Event::Outcome(o) => outcomes.push(o),
        }
    }
    println!(
        "{} live, {} shadow predictions, {} exposures, {} outcomes",
        live.len(),
        shadow.len(),
        exposures.len(),
        outcomes.len()
    );
    assert_eq!(exposures.len(), 600);
    assert_eq!(live.len(), 600, "one live prediction per decision");
    let versions: BTreeSet<&str> = live.values().map(|p| &*p.version).collect();
    assert_eq!(versions, BTreeSet::from(["v1", "v2"]), "a 50% canary");
    for (key, l) in &live {
        let s = shadow
            .get(key)
            .unwrap_or_else(|| panic!("live {key:?} has no shadow twin"));
        assert_eq!(&*s.version, "v2", "the shadow is v2's");
        assert_eq!(
            s.input_hash, l.input_hash,
            "{key:?}: the same input on both sides"
        );
        if &*l.version == "v2" {
            // Not bit-equal: the two copies may be batched with different
            // rows, and tract's kernels for another batch size round the
            // last bits differently (seen: 0.020979285 vs 0.020979345).
            assert!(
                (s.score - l.score).abs() < 1e-5,
                "{key:?}: one model, one input, one score: {} vs {}",
                s.score,
                l.score
            );
        }
    }
    for x in &exposures {
        let l = live
            .get(&(x.request_id.clone(), 0))
            .unwrap_or_else(|| panic!("exposure {} has no prediction", x.request_id));
        assert_eq!(x.version.as_deref(), Some(&*l.version));
    }
    assert!(!outcomes.is_empty(), "the load tool sends feedback");
    let exposed: BTreeSet<&str> = exposures.iter().map(|x| x.request_id.as_str()).collect();
    for o in &outcomes {
        assert!(exposed.contains(o.request_id.as_str()), "{o:?}");
    }
}

/// `mlmesh analyze --event-log-url` against a stack: the report's shadow
/// section (JSON).
fn analyze_shadow(stack: &Stack, redis: &RedisServer) -> serde_json::Value {
    let out = tempfile_path("report.json");
    let status = common::mlmesh()
        .arg("analyze")
        .args(stack.scrape_args())
        .args(["--event-log-url", &redis.url(), "--json"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_ne!(status.code(), Some(2), "analyze failed: {status}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    // With exposures in the log, the sample-ratio check counts users from it.
    assert_eq!(
        report["data"]["users_from_event_log"], true,
        "{:#}",
        report["data"]
    );
    let users = &report["data"]["users"];
    assert!(users["baseline"].as_u64().unwrap() > 0, "{users}");
    report["shadow"].clone()
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mlmesh-event-log-{}-{}",
        std::process::id(),
        test_support::redis_server::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A shadow launch of v2 under `extra` (v2's settings): its shadow section.
async fn shadow_launch(extra: &[&str]) -> (serde_json::Value, Stack, RedisServer) {
    let redis = RedisServer::start();
    let mut args = vec!["--shadow", "--redis-url"];
    let url = redis.url();
    args.push(&url);
    args.extend_from_slice(extra);
    let stack = Stack::start(Stack::ports(), &args, &[]);
    common::load(&stack, &["--requests", "400", "--rate", "150/s"]).await;
    // Until every live call's twin is in (the writers are asynchronous).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = analyze_shadow(&stack, &redis);
        if s["pairs"].as_u64().unwrap_or(0) > 0 && s["unpaired"]["live"] == 0 {
            return (s, stack, redis);
        }
        assert!(Instant::now() < deadline, "pairs never completed: {s:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn rate(share: &serde_json::Value) -> f64 {
    share["count"].as_f64().unwrap() / share["of"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_says_how_often_v2_would_decide_differently() {
    // Healthy v2 (10% canary: the rest are v1's live calls, each paired).
    let (healthy, stack, redis) = shadow_launch(&[]).await;
    let pairs = healthy["pairs"].as_u64().unwrap();
    println!(
        "healthy v2: {pairs} pairs, agreement {}, flips {} / {}, withheld from accepted {}",
        rate(&healthy["agreement"]),
        healthy["flips_to_no_offer"]["count"],
        healthy["flips_to_offer"]["count"],
        healthy["withheld_from_accepted"]
    );
    assert!(pairs >= 300, "{healthy:#}");

    // The same agreement computed without the log or analyze: each paired
    // customer's answer from v1, and from v2 by forcing the candidate.
    let events = test_support::event_log::wait_for(&redis.url(), "the log", |_| true).await;
    let user_of: BTreeMap<&str, &str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Exposure(x) if x.version.as_deref() == Some("v1") => {
                Some((x.request_id.as_str(), x.user_id.as_str()))
            }
            _ => None,
        })
        .collect();
    let http = reqwest::Client::new();
    let mut decisions: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    let mut agree = 0u64;
    let mut n = 0u64;
    for user in user_of.values() {
        if !decisions.contains_key(user) {
            let mut both = [false; 2];
            for (i, beta) in [false, true].into_iter().enumerate() {
                let mut req = http.get(format!("{}/predict?user_id={user}", stack.frontend));
                if beta {
                    req = req.header("x-user-group", "beta");
                }
                let a: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
                assert_eq!(a["model_version"], if beta { "v2" } else { "v1" }, "{a}");
                both[i] = a["decision"] == "offer";
            }
            decisions.insert(user, (both[0], both[1]));
        }
    }
    for user in user_of.values() {
        let (a, b) = decisions[user];
        n += 1;
        agree += u64::from(a == b);
    }
    assert_eq!(n, pairs, "one pair per v1 decision");
    assert_eq!(
        healthy["agreement"]["count"].as_u64().unwrap(),
        agree,
        "analyze's agreement is what the two models answer for the same customers"
    );
    drop(stack);

    // Two identical models agree on everything.
    let (same, _s, _r) = shadow_launch(&["--set", "v2.MODEL_PATH=models/propensity-v1.onnx"]).await;
    assert_eq!(rate(&same["agreement"]), 1.0, "{same:#}");
    // Up to rounding: the two copies of a request may be batched differently.
    assert!(
        same["scores"]["p95_abs"].as_f64().unwrap() < 1e-5,
        "{same:#}"
    );

    // A candidate whose logits are noisy flips far more decisions.
    let (noisy, _s, _r) = shadow_launch(&["--set", "v2.FAULT_SCORE_NOISE=2"]).await;
    let flips = |s: &serde_json::Value| 1.0 - rate(&s["agreement"]);
    println!(
        "flip rate: healthy {:.3}, identical {:.3}, noisy {:.3}",
        flips(&healthy),
        flips(&same),
        flips(&noisy)
    );
    assert!(
        flips(&noisy) > flips(&healthy) + 0.1,
        "noisy {noisy:#} vs healthy {healthy:#}"
    );
    assert!(
        noisy["scores"]["rank_correlation"].as_f64().unwrap()
            < healthy["scores"]["rank_correlation"].as_f64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_join_under_mesh_style_mirroring_too() {
    // The frontend in mesh mode calls one model URL; in front of it a proxy
    // that routes to v1 and mirrors to v2 as Envoy does (same headers, Host
    // `-shadow`): the pairs must join just the same.
    let redis = RedisServer::start();
    let ports = Stack::ports();
    let [_, _, v1, v2] = ports;
    let mirror = test_support::proxy::Recorder::mirroring(
        &format!("http://127.0.0.1:{v1}"),
        &format!("http://127.0.0.1:{v2}"),
    )
    .await;
    let stack = Stack::start(
        ports,
        &[
            "--redis-url",
            &redis.url(),
            "--set",
            "frontend.ROUTING_MODE=mesh",
            "--set",
            &format!("frontend.MODEL_URL={}", mirror.base()),
        ],
        &[],
    );
    common::load(&stack, &["--requests", "300", "--rate", "150/s"]).await;
    // Joined: each live v1 prediction has its v2 shadow twin of the same input.
    let joined = |events: &[Event]| {
        let mut live = BTreeMap::new();
        let mut shadow = BTreeMap::new();
        for e in events {
            if let Event::Prediction(p) = e {
                let side = if p.traffic == LIVE {
                    &mut live
                } else {
                    &mut shadow
                };
                side.insert((&p.request_id, p.row), (&*p.version, &p.input_hash));
            }
        }
        let joined = live
            .iter()
            .filter(|(k, (v, h))| {
                *v == "v1"
                    && shadow
                        .get(*k)
                        .is_some_and(|(sv, sh)| *sv == "v2" && sh == h)
            })
            .count();
        (joined, live.len())
    };
    let events = test_support::event_log::wait_for(&redis.url(), "every pair joined", |e| {
        let (j, live) = joined(e);
        live >= 300 && j == live
    })
    .await;
    let (j, live) = joined(&events);
    println!("mesh-style mirroring: {j} of {live} live predictions joined");
}
