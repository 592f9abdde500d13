//! The experiment event log across real processes: `mlmesh up --shadow
//! --redis-url` under the load tool writes an exposure per decision, a
//! live prediction for each and its shadow twin from v2 with the same
//! request id and input hash, and an outcome per recorded feedback.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Stack;
use events::{Event, LIVE, SHADOW, read_stream};
use test_support::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_prediction_has_its_shadow_twin_and_every_decision_its_exposure() {
    let redis = RedisServer::start();
    let stack = Stack::start(
        Stack::ports(),
        &["--shadow", "--canary-percent", "50", "--redis-url", &redis.url()],
        &[],
    );
    assert!(
        stack.stdout.lock().unwrap().contains(events::STREAM_KEY),
        "the banner names the event log"
    );
    let report = common::load(&stack, &["--requests", "600", "--rate", "300/s"]).await;
    assert_eq!(report.all.errors, 0, "{}", report.render());

    // Read until the writers have caught up with the load.
    let client = rustis::client::Client::connect(redis.url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events: Vec<Event> = read_stream(&client, 500)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.expect("every entry decodes"))
            .collect();
        let count = |kind: &str| events.iter().filter(|e| e.kind() == kind).count();
        let shadows = events
            .iter()
            .filter(|e| matches!(e, Event::Prediction(p) if p.traffic == SHADOW))
            .count();
        if count("exposure") >= 600 && shadows >= 600 {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{} exposures, {shadows} shadows",
            count("exposure")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

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
    let versions: BTreeSet<&str> = live.values().map(|p| p.version.as_str()).collect();
    assert_eq!(versions, BTreeSet::from(["v1", "v2"]), "a 50% canary");
    for (key, l) in &live {
        let s = shadow
            .get(key)
            .unwrap_or_else(|| panic!("live {key:?} has no shadow twin"));
        assert_eq!(s.version, "v2", "the shadow is v2's");
        assert_eq!(s.input_hash, l.input_hash, "{key:?}: the same input on both sides");
        if l.version == "v2" {
            assert_eq!(s.score, l.score, "{key:?}: one model, one input, one score");
        }
    }
    for x in &exposures {
        let l = live
            .get(&(x.request_id.clone(), 0))
            .unwrap_or_else(|| panic!("exposure {} has no prediction", x.request_id));
        assert_eq!(x.version.as_deref(), Some(l.version.as_str()));
    }
    assert!(!outcomes.is_empty(), "the load tool sends feedback");
    let exposed: BTreeSet<&str> = exposures.iter().map(|x| x.request_id.as_str()).collect();
    for o in &outcomes {
        assert!(exposed.contains(o.request_id.as_str()), "{o:?}");
    }
}
