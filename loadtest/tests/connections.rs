//! The tool's HTTP/1 connections (`mesh_kit::client`) as a run uses them,
//! against a raw TCP server that counts what it accepts: kept alive and
//! reused, a fresh one where the server closed the last, and `Host` and the
//! base URL's path as a gateway needs.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use test_support::raw_http::{RawAnswer, raw_http_server};

/// The raw server; with `close`, it closes the connection after each answer.
async fn raw_server(close: bool) -> (String, std::sync::Arc<test_support::raw_http::Seen>) {
    raw_http_server(if close {
        RawAnswer::OkThenClose
    } else {
        RawAnswer::Ok
    })
    .await
}

fn loadtest(args: Vec<String>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlmesh-loadtest"))
        .args(args)
        .output()
        .expect("run mlmesh-loadtest")
}

/// Runs the tool with `args` and returns its JSON report.
async fn report(args: &[&str]) -> Value {
    let json = std::env::temp_dir().join(format!(
        "loadtest-conn-{}-{}.json",
        std::process::id(),
        report_number()
    ));
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend([
        "--quiet".into(),
        "--json".into(),
        json.display().to_string(),
    ]);
    let out = tokio::task::spawn_blocking(move || loadtest(all))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    report
}

/// Distinct file names for reports of tests running at once.
fn report_number() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused_one_per_worker() {
    let (url, seen) = raw_server(false).await;
    let r = report(&[&url, "--target", "get", "-n", "400", "-c", "4"]).await;
    assert_eq!(r["all"]["statuses"]["200"], 400, "{r}");
    let connections = seen.connections.load(Ordering::Relaxed);
    assert!(
        (1..=4).contains(&connections),
        "400 requests from 4 workers took {connections} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_not_used_again() {
    let (url, seen) = raw_server(true).await;
    // 20 requests 50 ms apart: each finds the last connection closed.
    let r = report(&[&url, "--target", "get", "--rate", "20", "-n", "20"]).await;
    assert_eq!(r["all"]["statuses"]["200"], 20, "{r}");
    assert_eq!(r["all"]["errors"], 0, "{r}");
    assert_eq!(seen.connections.load(Ordering::Relaxed), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_the_host_and_the_base_urls_path() {
    let (url, seen) = raw_server(false).await;
    let authority = url.trim_start_matches("http://").to_owned();
    let r = report(&[
        &format!("{url}/lab/v2/health/live?probe=1"),
        "--target",
        "get",
        "-n",
        "2",
    ])
    .await;
    assert_eq!(r["all"]["statuses"]["200"], 2, "{r}");
    // A `--header host:` wins over the URL's, as for a gateway reached by IP.
    report(&[
        &url,
        "--target",
        "get",
        "-n",
        "1",
        "--header",
        "host: lab.example",
    ])
    .await;
    let heads = seen.heads.lock().unwrap();
    assert_eq!(heads.len(), 3);
    for head in &heads[..2] {
        assert!(
            head.starts_with("GET /lab/v2/health/live?probe=1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("host: {authority}\r\n")), "{head}");
    }
    assert!(heads[2].starts_with("GET / HTTP/1.1\r\n"), "{}", heads[2]);
    assert!(heads[2].contains("host: lab.example\r\n"), "{}", heads[2]);
    assert!(!heads[2].contains(&authority), "{}", heads[2]);
}
