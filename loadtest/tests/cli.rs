//! The `mlmesh-loadtest` binary as scripts use it: exact request counts,
//! the JSON report, exit 1 on a violated expectation, exit 2 on bad usage.
//! The target is a small in-test HTTP server whose answers are known.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::Value;
use test_support::serve::serve;

/// `/split` alternates v1 and v2; `/fail` answers 500 as v2; `/slow` takes 100 ms.
async fn server() -> test_support::serve::Served {
    let n = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/split",
            get(move || {
                let i = n.fetch_add(1, Ordering::Relaxed);
                async move {
                    (
                        [(
                            "x-model-version",
                            if i.is_multiple_of(2) { "v1" } else { "v2" },
                        )],
                        "ok",
                    )
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                "slow"
            }),
        )
        .route(
            "/fail",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [("x-model-version", "v2")],
                    "no",
                )
                    .into_response()
            }),
        );
    serve(app).await
}

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlmesh-loadtest"))
        .args(args)
        .output()
        .expect("run mlmesh-loadtest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_exactly_writes_json_and_passes_expectations() {
    let s = server().await;
    let json = std::env::temp_dir().join(format!("loadtest-{}.json", std::process::id()));
    let url = s.url("/split");
    let out = tokio::task::spawn_blocking({
        let json = json.clone();
        move || {
            loadtest(&[
                &url,
                "--target",
                "get",
                "-n",
                "400",
                "-c",
                "4",
                "--quiet",
                "--json",
                json.to_str().unwrap(),
                "--expect-share",
                "v1=50±0.5",
                "--expect-share",
                "v2=50+-0.5",
                "--max-error-rate",
                "0",
            ])
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("400 requests in"), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["requests"], 400);
    assert_eq!(report["all"]["statuses"]["200"], 400);
    let versions = report["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    for v in versions {
        assert_eq!(v["requests"], 200, "{v}");
        assert!(v["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    }
    let _ = std::fs::remove_file(json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violated_expectation_exits_1_with_the_reason() {
    let s = server().await;
    let url = s.url("/fail");
    let out = tokio::task::spawn_blocking(move || {
        loadtest(&[
            &url,
            "--target",
            "get",
            "-n",
            "50",
            "--quiet",
            "--max-error-rate",
            "0.01",
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAILED: error rate 100.00% exceeds 1.00% (worst: v2 at 100.00%)"),
        "{stdout}"
    );
    assert!(stdout.contains("500=50"), "{stdout}");
}

#[test]
fn bad_usage_exits_2_and_says_why() {
    for (args, says) in [
        (
            &["http://127.0.0.1:1", "--expect-share", "v2=ten"][..],
            "expected VERSION=PERCENT",
        ),
        (&["http://127.0.0.1:1", "--rate", "0"][..], "positive rate"),
        (
            &["http://127.0.0.1:1", "--rate", "10", "-c", "4"][..],
            "cannot be used with",
        ),
        (
            &["not a url", "--target", "get", "-n", "1"][..],
            "not an absolute http:// URL",
        ),
        (
            &["http://127.0.0.1:1", "--users-file", "/nonexistent.csv"][..],
            "/nonexistent.csv",
        ),
    ] {
        let out = loadtest(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A user id that cannot be put in the query and the `x-user-id` header as
/// it is stops the run before any request, naming the id (it was a panic in
/// a worker).
#[test]
fn a_user_id_no_request_can_carry_exits_2_naming_it() {
    let csv = std::env::temp_dir().join(format!("loadtest-users-{}.csv", std::process::id()));
    std::fs::write(&csv, "user_id,held_out,purchase,f1\nbad\tid,1,0,0.5\n").unwrap();
    let out = loadtest(&[
        "http://127.0.0.1:1",
        "--users-file",
        csv.to_str().unwrap(),
        "-n",
        "1",
        "--quiet",
    ]);
    let _ = std::fs::remove_file(&csv);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"user id "bad\tid""#), "{stderr}");
}

/// Open loop past its pool: `wait` counts the wait for a slot in the latency
/// (wrk2's rule), `drop` sends nothing it cannot start on time and says how
/// many it dropped, so the latencies are the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_waits_or_drops_as_overflow_says() {
    let s = server().await;
    let url = s.url("/slow");
    let run = |overflow: &'static str, rate: &'static str| {
        let url = url.clone();
        let json = std::env::temp_dir().join(format!(
            "loadtest-overflow-{overflow}-{rate}-{}.json",
            std::process::id()
        ));
        tokio::task::spawn_blocking(move || {
            let out = loadtest(&[
                &url,
                "--target",
                "get",
                "--rate",
                rate,
                "--duration",
                "1s",
                "--max-in-flight",
                "2",
                "--overflow",
                overflow,
                "--quiet",
                "--json",
                json.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{out:?}");
            let report: Value =
                serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            let _ = std::fs::remove_file(json);
            (report, String::from_utf8_lossy(&out.stdout).into_owned())
        })
    };
    // Two slots of 100 ms: at most ~20 of the ~200 due in a second can be sent.
    let (dropped, text) = run("drop", "200").await.unwrap();
    let (sent, overflow) = (
        dropped["requests"].as_u64().unwrap(),
        dropped["overflow"].as_u64().unwrap(),
    );
    assert!((5..=24).contains(&sent), "{dropped}");
    assert!((190..=202).contains(&(sent + overflow)), "{dropped}");
    assert!(
        text.contains(&format!(
            "not sent (every --max-in-flight slot busy, --overflow drop): {overflow}"
        )),
        "{text}"
    );
    let server_only = dropped["all"]["latency"]["max_ms"].as_f64().unwrap();
    assert!(
        server_only < 500.0,
        "dropped requests must not add waiting: {dropped}"
    );

    // Far past the pool: every request due in the second is still either
    // sent or counted, none lost because the generator fell behind.
    let (flood, _) = run("drop", "200000").await.unwrap();
    let accounted = flood["requests"].as_u64().unwrap() + flood["overflow"].as_u64().unwrap();
    assert!((196_000..=200_002).contains(&accounted), "{flood}");

    let (waited, _) = run("wait", "200").await.unwrap();
    assert_eq!(waited["overflow"], 0, "{waited}");
    let with_wait = waited["all"]["latency"]["p99_ms"].as_f64().unwrap();
    assert!(
        with_wait > 500.0,
        "the wait for a slot counts from the schedule: {waited}"
    );
}

/// What the gateway of istio/auth/ would see from `--demo-tokens`: counted
/// by a stand-in frontend that checks each bearer token as the gateway does
/// (crates/identity against the demo JWKS) and that it names the user the
/// request is about, beta claim for beta users only.
struct Signed {
    /// The demo key's JWKS, as istio/auth/ carries it (built once).
    jwks: String,
    predicts: AtomicU64,
    feedbacks: AtomicU64,
    beta: AtomicU64,
    wrong: std::sync::Mutex<Vec<String>>,
}

fn check_token(
    signed: &Signed,
    headers: &axum::http::HeaderMap,
    user: &str,
) -> Option<identity::Claims> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let claims = token.and_then(|t| identity::verify(t, &signed.jwks, identity::DEMO_ISSUER).ok());
    match claims {
        Some(c) if c.sub == user => Some(c),
        other => {
            signed
                .wrong
                .lock()
                .unwrap()
                .push(format!("user {user}: {other:?}"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tokens_sign_in_every_simulated_user() {
    use axum::extract::{Query, State};
    use std::collections::HashMap;
    let signed = Arc::new(Signed {
        jwks: identity::Minter::demo().jwks_json(),
        predicts: AtomicU64::default(),
        feedbacks: AtomicU64::default(),
        beta: AtomicU64::default(),
        wrong: Default::default(),
    });
    let app = axum::Router::new()
        .route(
            "/predict",
            get(
                |State(s): State<Arc<Signed>>,
                 Query(q): Query<HashMap<String, String>>,
                 headers: axum::http::HeaderMap| async move {
                    let user = q.get("user_id").cloned().unwrap_or_default();
                    if let Some(c) = check_token(&s, &headers, &user) {
                        s.predicts.fetch_add(1, Ordering::Relaxed);
                        let beta_header = headers.get("x-user-group").is_some();
                        if c.group.as_deref() == Some("beta") {
                            s.beta.fetch_add(1, Ordering::Relaxed);
                        }
                        if beta_header != (c.group.as_deref() == Some("beta")) {
                            s.wrong.lock().unwrap().push(format!("user {user}: group {c:?}"));
                        }
                    }
                    (
                        [("x-model-version", "v1")],
                        axum::Json(serde_json::json!({
                            "decision": "offer", "decision_id": format!("d-{user}"), "degraded": false
                        })),
                    )
                },
            ),
        )
        .route(
            "/feedback",
            axum::routing::post(
                |State(s): State<Arc<Signed>>,
                 Query(q): Query<HashMap<String, String>>,
                 headers: axum::http::HeaderMap| async move {
                    let user = q.get("user_id").cloned().unwrap_or_default();
                    match check_token(&s, &headers, &user) {
                        Some(_) => {
                            s.feedbacks.fetch_add(1, Ordering::Relaxed);
                            axum::Json(serde_json::json!({"recorded": true})).into_response()
                        }
                        None => StatusCode::FORBIDDEN.into_response(),
                    }
                },
            ),
        )
        .with_state(Arc::clone(&signed));
    let s = serve(app).await;
    let url = s.url("");
    let users = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/customers.csv");
    let out = tokio::task::spawn_blocking(move || {
        loadtest(&[
            &url,
            "-n",
            "300",
            "-c",
            "4",
            "--requests-per-user",
            "1",
            "--beta-share",
            "0.3",
            "--feedback",
            "--demo-tokens",
            "--users-file",
            users,
            "--quiet",
        ])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let wrong = signed.wrong.lock().unwrap().clone();
    assert!(
        wrong.is_empty(),
        "{} badly signed: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(signed.predicts.load(Ordering::Relaxed), 300);
    assert_eq!(signed.feedbacks.load(Ordering::Relaxed), 300);
    let beta = signed.beta.load(Ordering::Relaxed);
    assert!(
        (50..=130).contains(&beta),
        "about 30% of 300 users are beta: {beta}"
    );
}
