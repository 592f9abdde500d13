//! Reading the experiment event log back in tests: the writers are
//! asynchronous, so a test waits until the stream holds what it expects.

use std::time::{Duration, Instant};

use events::{Event, read_stream};

/// Every event of the stream at `redis_url`, read again until `enough`
/// says so (at most 30 s; then the test fails naming `what`). Every entry
/// must decode.
pub async fn wait_for(
    redis_url: &str,
    what: &str,
    enough: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let client = rustis::client::Client::connect(redis_url)
        .await
        .expect("the test's redis-server answers");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events: Vec<Event> = read_stream(&client, None, 1_000)
            .await
            .expect("XRANGE")
            .into_iter()
            .map(|(id, e)| e.unwrap_or_else(|err| panic!("entry {id}: {err}")))
            .collect();
        if enough(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} events in the log",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
