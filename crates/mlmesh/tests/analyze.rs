//! `mlmesh analyze` against real `mlmesh up` stacks driven by the load tool
//! with feedback: a healthy canary is never rolled back or voided, a failing
//! candidate is rolled back on its errors, a score-degraded one is never
//! promoted, the same verdict comes through Debian's real Prometheus, and
//! every bad input or unreachable source exits 2 with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::Stack;
use serde_json::Value;
use test_support::redis_server::REFUSED_PORT;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlmesh-analyze-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn analyze(args: &[String]) -> Output {
    common::mlmesh()
        .arg("analyze")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mlmesh analyze")
}

/// Runs `mlmesh analyze ARGS --json DIR/report.json` and returns the exit
/// code, stdout and the parsed report.
fn analyze_json(args: &[String], dir: &Path) -> (i32, String, Value) {
    let json = dir.join("report.json");
    let mut all = args.to_vec();
    all.extend(["--json".into(), json.display().to_string()]);
    let out = analyze(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().expect("exited");
    assert_ne!(code, 2, "source or usage error:\n{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    println!("{stdout}");
    (code, stdout, report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_neither_rolled_back_nor_invalid() {
    let stack = Stack::start(Stack::ports(), &[], &[]);
    let r = common::load(&stack, &[]).await;
    assert_eq!(r.all.errors, 0);
    let dir = scratch("healthy");
    let mut args = stack.scrape_args();
    args.extend([
        "--markdown".into(),
        dir.join("report.md").display().to_string(),
        "--html".into(),
        dir.join("report.html").display().to_string(),
    ]);
    let (code, stdout, report) = analyze_json(&args, &dir);
    assert!(code == 0 || code == 3, "exit {code}");
    assert!(["promote", "continue"].contains(&report["verdict"].as_str().unwrap()));
    assert_eq!(report["schema"], "mlmesh.analyze/v1");
    assert_eq!(report["baseline"], "v1");
    assert_eq!(report["candidate"], "v2");
    for c in report["checks"].as_array().unwrap() {
        for key in [
            "name",
            "role",
            "status",
            "baseline",
            "candidate",
            "effect",
            "ci",
            "samples",
            "reason",
        ] {
            assert!(c.get(key).is_some(), "{key} missing in {c}");
        }
        // v2 offers to more customers than v1: report checks may say so,
        // but nothing that decides may fail.
        if c["role"] != "report" {
            assert_ne!(c["status"], "fail", "{c}");
        }
    }
    // Every held-out customer once in the split, none of them beta.
    let srm = check(&report, "srm");
    assert_eq!(srm["status"], "pass", "{srm}");
    let users = srm["samples"]["baseline"].as_u64().unwrap()
        + srm["samples"]["candidate"].as_u64().unwrap();
    assert_eq!(users, r.users as u64);
    // The counts are the load tool's.
    let errors = check(&report, "errors");
    let decisions = errors["samples"]["baseline"].as_u64().unwrap()
        + errors["samples"]["candidate"].as_u64().unwrap();
    assert_eq!(decisions, r.requests);
    assert_eq!(errors["status"], "pass", "{errors}");
    let latency = check(&report, "latency");
    assert_eq!(
        latency["samples"]["candidate"].as_u64(),
        Some(errors["samples"]["candidate"].as_u64().unwrap())
    );
    // One answer per user: fewer outcomes than the load tool's per-decision ones.
    let acceptance = check(&report, "acceptance");
    let v1 = r.versions.iter().find(|v| v.version == "v1").unwrap();
    assert!(
        acceptance["samples"]["baseline"].as_u64().unwrap() * 5 == v1.accepted + v1.declined,
        "{acceptance}"
    );
    assert!(stdout.contains("verdict: "), "{stdout}");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for section in [
        "## What changed",
        "## Hypothesis",
        "## Metrics",
        "## Decision process",
        "## Results",
        "## Verdict",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && !html.contains("http://cdn") && !html.contains("<script src"),
        "not self-contained"
    );

    // With a window, --scrape judges only what happens after its first
    // reading: nothing here, so no data and no decision.
    let mut windowed = stack.scrape_args();
    windowed.extend(["--window".into(), "1s".into()]);
    let (code, _, report) = analyze_json(&windowed, &dir);
    assert_eq!(code, 3);
    assert_eq!(check(&report, "errors")["samples"]["candidate"], 0);

    // A model's /metrics is not the frontend's: named, exit 2.
    let out = analyze(&[
        "--scrape".into(),
        "--frontend-url".into(),
        format!("http://127.0.0.1:{}", stack.v1_port),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mlmesh_frontend_canary_percent") && err.contains("frontend"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back_on_its_errors_while_watching() {
    let stack = Stack::start(Stack::ports(), common::FAILING_CANDIDATE, &[]);
    let dir = scratch("failing");
    let mut args = stack.scrape_args();
    args.extend([
        "--watch".into(),
        "--interval".into(),
        "500ms".into(),
        "--max-duration".into(),
        "2m".into(),
    ]);
    args.extend([
        "--json".into(),
        dir.join("report.json").display().to_string(),
    ]);
    let watcher = common::mlmesh()
        .arg("analyze")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::load(&stack, &["--requests", "2000", "--rate", "200/s"]).await;
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("look ")).count() >= 1,
        "{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verdict"], "rollback");
    let errors = check(&report, "errors");
    assert_eq!(errors["status"], "fail", "{errors}");
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("errors (critical)"),
        "{report:#}"
    );
    // Caught within 500 candidate requests.
    assert!(
        errors["samples"]["candidate"].as_u64().unwrap() <= 500,
        "{errors}"
    );
    let looks = report["looks"].as_array().unwrap();
    assert_eq!(looks.last().unwrap()["verdict"], "rollback");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_score_degraded_candidate_is_never_promoted() {
    let stack = Stack::start(
        Stack::ports(),
        &[
            "--canary-percent",
            "50",
            "--set",
            "v2.FAULT_SCORE_SHIFT=1.5",
        ],
        &[],
    );
    // Every customer once: the faulty v2 over-offers to customers who do not buy.
    let r = common::load(
        &stack,
        &["--all-users", "--requests-per-user", "1", "-c", "8"],
    )
    .await;
    assert_eq!(r.all.errors, 0, "all 200s");
    let dir = scratch("degraded");
    let (code, _, report) = analyze_json(&stack.scrape_args(), &dir);
    assert!(code == 1 || code == 3, "exit {code}: {}", report["verdict"]);
    let acceptance = check(&report, "acceptance");
    if code == 1 {
        assert_eq!(acceptance["status"], "fail", "{acceptance}");
    }
    assert!(
        acceptance["effect"].as_f64().unwrap() < -0.05,
        "{acceptance}"
    );
    // The score shift shows in the report before any outcome would.
    assert_eq!(check(&report, "scores")["status"], "fail");
    assert_eq!(check(&report, "offer_rate")["status"], "fail");
    std::fs::remove_dir_all(dir).ok();
}

/// Wait until Prometheus has scraped the final counts of all three services
/// (each is scraped on its own schedule): every check's samples equal those
/// read from the services themselves. Returns Prometheus' exit code and
/// report.
async fn until_prometheus_caught_up(stack: &Stack, args: &[String], dir: &Path) -> (i32, Value) {
    const CHECKS: [&str; 5] = ["srm", "errors", "latency", "acceptance", "scores"];
    let samples = |r: &Value| -> Vec<Value> {
        CHECKS
            .iter()
            .map(|n| check(r, n)["samples"].clone())
            .collect()
    };
    let (_, _, direct) = analyze_json(&stack.scrape_args(), dir);
    let want = samples(&direct);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, _, report) = analyze_json(args, dir);
        if samples(&report) == want {
            return (code, report);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never caught up: {:?} vs {want:?}",
            samples(&report)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_verdict_comes_through_real_prometheus() {
    let stack = Stack::start(Stack::ports(), common::FAILING_CANDIDATE, &[]);
    let prom = common::prometheus::prometheus(&stack).await;
    prom.wait_for_all_targets().await;
    let dir = scratch("prometheus");
    let args = vec!["--prometheus".to_owned(), prom.base.clone()];
    // `increase()` cannot count what a series held when Prometheus first saw
    // it, and the labelled series appear with the first request: a warm-up
    // makes every series exist and be scraped before the measured load, so
    // the windowed figures below do not depend on where the scrapes fell.
    common::load(&stack, &["--requests", "300"]).await;
    until_prometheus_caught_up(&stack, &args, &dir).await;
    common::load(&stack, &["--requests", "1500"]).await;
    let (code, report) = until_prometheus_caught_up(&stack, &args, &dir).await;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["verdict"], "rollback");
    assert!(
        report["source"]
            .as_str()
            .unwrap()
            .starts_with("Prometheus at")
    );
    // Over a window: increase() of the same counters.
    let (code, _, windowed) = analyze_json(
        &[
            args[0].clone(),
            args[1].clone(),
            "--window".into(),
            "5m".into(),
        ],
        &dir,
    );
    assert_eq!(code, 1, "{windowed:#}");
    assert_eq!(windowed["verdict"], "rollback");
    // The measured load is inside the window whole (give or take
    // increase()'s extrapolation at the edges).
    let arms = &check(&windowed, "errors")["samples"];
    let calls = arms["baseline"].as_u64().unwrap() + arms["candidate"].as_u64().unwrap();
    assert!(calls >= 1400, "{calls} calls in the window: {windowed:#}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_input_and_unreachable_sources_exit_2_with_the_reason() {
    let dead = format!("http://127.0.0.1:{REFUSED_PORT}");
    let dir = scratch("bad");
    let plan = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--scrape".into(), "--frontend-url".into(), dead.clone()],
            "frontend at",
        ),
        (vec!["--prometheus".into(), dead.clone()], "Prometheus at"),
        (
            vec![
                "--prometheus".into(),
                "http://admin:s3cret@127.0.0.1:1".into(),
            ],
            "unreachable",
        ),
        (
            vec!["--plan".into(), "/nonexistent.yaml".into()],
            "reading /nonexistent.yaml",
        ),
        (
            vec![
                "--plan".into(),
                plan(
                    "roles.yaml",
                    "name: x\nhypothesis: h\nmetrics: [{metric: errors, role: boss}]\n",
                ),
            ],
            "unknown variant `boss`",
        ),
        (
            vec![
                "--plan".into(),
                plan(
                    "margin.yaml",
                    "name: x\nhypothesis: h\nmetrics: [{metric: errors, role: critical, margin: -1}]\n",
                ),
            ],
            "margin must be",
        ),
        (
            vec!["--plan".into(), plan("yaml.yaml", "{{{")],
            "not a valid plan",
        ),
        (vec!["--baseline".into(), "v2".into()], "both v2"),
        (
            vec!["--window".into(), "soon".into()],
            "invalid value 'soon'",
        ),
        (
            vec!["--scrape".into(), "--prometheus".into(), dead.clone()],
            "cannot be used with",
        ),
    ];
    for (args, want) in cases {
        let out = analyze(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("s3cret"), "a password was printed: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::remove_dir_all(dir).ok();
}
