//! The event log against a real `redis-server`: events are written,
//! bounded and read back as written; with Redis killed, logging still
//! returns at once and the drops are counted, and writing resumes when
//! Redis is back; a writer that falls behind drops, never blocks.

use std::time::{Duration, Instant};

use events::{Event, EventLog, EventLogArgs, LIVE, Prediction, STREAM_KEY, read_stream};
use prometheus_client::registry::Registry;
use test_support::redis_server::RedisServer;

fn prediction(i: u32) -> Event {
    Event::Prediction(Prediction {
        request_id: format!("req-{i}"),
        trace_id: None,
        row: 0,
        model: "propensity".into(),
        version: "v1".into(),
        traffic: LIVE,
        score: i as f32 / 10_000.0,
        input_hash: events::input_hash(&[i as f32]),
        time_ms: 1_764_000_000_000 + i64::from(i),
    })
}

fn args(url: String, max_len: u64, queue: u64) -> EventLogArgs {
    EventLogArgs {
        event_log_url: Some(url),
        event_log_max_len: max_len,
        event_log_queue: queue,
        event_log_timeout: Duration::from_millis(300),
    }
}

/// A counter of the log's registry, summed over its labels.
fn counter(registry: &Registry, family: &str, reason: Option<&str>) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    test_support::metrics::samples(&text, family)
        .iter()
        .filter(|s| reason.is_none_or(|r| s.labels.get("reason").map(String::as_str) == Some(r)))
        .map(|s| s.value)
        .sum()
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_written_bounded_and_read_back_as_written() {
    let redis = RedisServer::start();
    let mut registry = Registry::default();
    let log = EventLog::start(&args(redis.url(), 1_000, 10_000), &mut registry).unwrap();
    assert!(log.is_enabled());
    for i in 0..5_000 {
        log.log(prediction(i));
        // Give the writer a turn now and then, as requests would.
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    until("5000 events written", || {
        counter(&registry, "events_written", None) + counter(&registry, "events_dropped", None)
            >= 5_000.0
    })
    .await;
    assert_eq!(counter(&registry, "events_dropped", None), 0.0);

    // Bounded: MAXLEN ~ trims whole stream nodes, so a little above 1000.
    let len: u64 = redis.query(&["XLEN", STREAM_KEY]).parse().unwrap();
    println!("XLEN after 5000 events with MAXLEN ~ 1000: {len}");
    assert!((1_000..2_000).contains(&len), "XLEN {len}");

    // Read back: every kept event decodes, oldest first, the newest last.
    let client = rustis::client::Client::connect(redis.url()).await.unwrap();
    let read = read_stream(&client, None, 128).await.unwrap();
    assert_eq!(read.len() as u64, len, "paged reads see every entry once");
    // From a time on: entries written since then only.
    let later = mesh_kit::clock::unix_now_ms() + 60_000;
    assert!(
        read_stream(&client, Some(later), 128)
            .await
            .unwrap()
            .is_empty()
    );
    let since_start = read_stream(&client, Some(0), 128).await.unwrap();
    assert_eq!(since_start.len() as u64, len);
    let events: Vec<Event> = read.into_iter().map(|(_, e)| e.unwrap()).collect();
    assert_eq!(events.last(), Some(&prediction(4_999)));
    let first = match &events[0] {
        Event::Prediction(p) => p.request_id.clone(),
        e => panic!("{e:?}"),
    };
    assert_eq!(events[0], prediction(5_000 - len as u32), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_costs_events_not_requests_and_writing_resumes() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let mut registry = Registry::default();
    let log = EventLog::start(&args(redis.url(), 10_000, 10_000), &mut registry).unwrap();
    log.log(prediction(0));
    until("the first event", || {
        counter(&registry, "events_written", None) == 1.0
    })
    .await;

    redis.kill();
    let started = Instant::now();
    for i in 1..=2_000 {
        log.log(prediction(i));
    }
    // Logging never waits for Redis (2000 try_sends, no network).
    println!(
        "2000 events logged with Redis down in {:?}",
        started.elapsed()
    );
    until("the drops counted", || {
        counter(&registry, "events_dropped", Some("redis")) >= 1.0
            && counter(&registry, "events_written", None)
                + counter(&registry, "events_dropped", None)
                >= 2_001.0
    })
    .await;
    let dropped = counter(&registry, "events_dropped", None);
    println!("dropped while Redis was down: {dropped}");
    assert_eq!(counter(&registry, "events_written", None), 1.0);

    // Back on the same port: new events are written again.
    let redis = RedisServer::start_on(port);
    let written_before = counter(&registry, "events_written", None);
    let mut i = 10_000;
    until("writing resumed", || {
        i += 1;
        log.log(prediction(i));
        counter(&registry, "events_written", None) > written_before
    })
    .await;
    let len: u64 = redis.query(&["XLEN", STREAM_KEY]).parse().unwrap();
    assert!(len >= 1, "XLEN {len} after Redis came back");
}

#[tokio::test(flavor = "current_thread")]
async fn a_writer_that_falls_behind_drops_instead_of_blocking() {
    let redis = RedisServer::start();
    let mut registry = Registry::default();
    let log = EventLog::start(&args(redis.url(), 10_000, 10), &mut registry).unwrap();
    // One thread and no await: the writer cannot run, the queue holds 10.
    for i in 0..1_000 {
        log.log(prediction(i));
    }
    assert_eq!(
        counter(&registry, "events_dropped", Some("queue_full")),
        990.0
    );
    until("the queued ten written", || {
        counter(&registry, "events_written", None) == 10.0
    })
    .await;
    assert_eq!(redis.query(&["XLEN", STREAM_KEY]), "10");
}

#[tokio::test]
async fn off_without_a_url_and_no_password_in_errors() {
    let mut registry = Registry::default();
    let off = EventLog::start(&EventLogArgs::default(), &mut registry).unwrap();
    assert!(!off.is_enabled());
    off.log(prediction(0));
    let bad = EventLog::start(
        &args("rediss://:s3cret@[::1:6379".into(), 10_000, 10),
        &mut registry,
    );
    let e = bad.err().expect("an unparsable URL is refused").to_string();
    assert!(
        e.contains("invalid --event-log-url") && !e.contains("s3cret"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_authenticates_selects_its_database_and_counts_refusals() {
    let redis = RedisServer::start_with_password("pa55-word");
    // Database 3 of a password-protected Redis, as a URL names them.
    let url = format!("{}/3", redis.url());
    let mut registry = Registry::default();
    let log = EventLog::start(&args(url, 10_000, 10_000), &mut registry).unwrap();
    for i in 0..100 {
        log.log(prediction(i));
    }
    until("100 events written", || {
        counter(&registry, "events_written", None) == 100.0
    })
    .await;
    assert_eq!(redis.query(&["-n", "3", "XLEN", STREAM_KEY]), "100");
    assert_eq!(redis.query(&["-n", "0", "EXISTS", STREAM_KEY]), "0");

    // The key taken by another type: Redis refuses each XADD; counted as
    // dropped, not as written, and the writer keeps going.
    redis.query(&["-n", "3", "DEL", STREAM_KEY]);
    redis.query(&["-n", "3", "SET", STREAM_KEY, "not a stream"]);
    for i in 100..150 {
        log.log(prediction(i));
    }
    until("50 refusals counted", || {
        counter(&registry, "events_dropped", Some("redis")) == 50.0
    })
    .await;
    assert_eq!(counter(&registry, "events_written", None), 100.0);
    redis.query(&["-n", "3", "DEL", STREAM_KEY]);
    log.log(prediction(150));
    until("writing again", || {
        counter(&registry, "events_written", None) == 101.0
    })
    .await;

    // A wrong password: every event dropped, the requests' side unaffected.
    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let mut registry = Registry::default();
    let log = EventLog::start(&args(wrong, 10_000, 10_000), &mut registry).unwrap();
    for i in 0..10 {
        log.log(prediction(i));
    }
    until("refused AUTH counted", || {
        counter(&registry, "events_dropped", Some("redis")) == 10.0
    })
    .await;
    assert_eq!(counter(&registry, "events_written", None), 0.0);
}

#[test]
fn only_a_standalone_redis_is_accepted() {
    let mut registry = Registry::default();
    let e = EventLog::start(
        &args(
            "redis+sentinel://:pw@127.0.0.1:26379/mymaster".into(),
            10_000,
            10,
        ),
        &mut registry,
    )
    .err()
    .map(|e| e.to_string());
    let e = e.expect("a Sentinel URL is refused");
    assert!(e.contains("standalone") && !e.contains("pw@"), "{e}");
}
