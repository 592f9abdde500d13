//! `mlmesh-loadtest` against a real `mlmesh up` stack: it must report the
//! experiment the stack actually runs (split, stickiness, beta, faults), and
//! its latency bookkeeping must agree with a delay the server injects.

mod common;

use clap::Parser;
use common::{Proc, Stack};
use loadtest::{Config, Report, expect, run, users};
use test_support::redis_server::free_port;

fn config(args: &[&str]) -> Config {
    let mut argv = vec!["mlmesh-loadtest"];
    argv.extend_from_slice(args);
    let mut cfg = Config::try_parse_from(argv).expect("valid loadtest flags");
    cfg.users_file = common::models().join("customers.csv");
    cfg.quiet = true;
    cfg
}

async fn load(cfg: &Config) -> Report {
    let users = users::load(&cfg.users_file, cfg.all_users, cfg.beta_share, cfg.seed).unwrap();
    run::run(cfg, users).await.unwrap()
}

fn version<'a>(r: &'a Report, v: &str) -> &'a loadtest::stats::VersionReport {
    r.versions
        .iter()
        .find(|x| x.version == v)
        .unwrap_or_else(|| panic!("no {v} in the report:\n{}", r.render()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_the_canary_split_stickiness_and_a_forced_beta_share() {
    let stack = Stack::start(Stack::ports(), &[], &[]);
    // Every held-out customer, 5 requests each: the 10% canary, sticky.
    let cfg = config(&[
        &stack.frontend,
        "--expect-share",
        "v2=10±2",
        "--expect-sticky",
        "--feedback",
    ]);
    let r = load(&cfg).await;
    println!("{}", r.render());
    assert_eq!(r.requests, 1165 * 5);
    assert_eq!(r.users, 1165);
    assert_eq!(r.all.errors, 0);
    assert_eq!(r.sticky_violations, 0);
    assert!(
        expect::violations(&cfg, &r).is_empty(),
        "{:?}",
        expect::violations(&cfg, &r)
    );
    assert!(
        version(&r, "v1").accepted + version(&r, "v1").declined > 0,
        "feedback posted"
    );
    assert_eq!(r.feedback_errors, 0);

    // A quarter of the users in the beta group: v2 gets them plus ~10% of the rest.
    let cfg = config(&[&stack.frontend, "--beta-share", "0.25", "--expect-sticky"]);
    let r = load(&cfg).await;
    let expected =
        100.0 * (r.beta_users as f64 + 0.1 * (r.users - r.beta_users) as f64) / r.users as f64;
    let share = version(&r, "v2").share_percent;
    assert!(
        (share - expected).abs() < 3.0,
        "v2 share {share:.1}% with {} of {} users in beta (expected ~{expected:.1}%)",
        r.beta_users,
        r.users
    );
    assert_eq!(r.sticky_violations, 0);

    // And a wrong expectation is reported as violated.
    let wrong = config(&[&stack.frontend, "--expect-share", "v2=50±1"]);
    let v = expect::violations(&wrong, &r);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("v2 served"), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_on_v2_shows_as_v2_errors_and_trips_the_error_budget() {
    let stack = Stack::start(
        Stack::ports(),
        &["--canary-percent", "50", "--set", "v2.FAULT_ERROR_RATE=0.5"],
        &[],
    );
    let cfg = config(&[
        &stack.frontend,
        "--requests",
        "2000",
        "--max-error-rate",
        "0.01",
    ]);
    let r = load(&cfg).await;
    println!("{}", r.render());
    let (v1, v2) = (version(&r, "v1"), version(&r, "v2"));
    assert_eq!(v1.errors, 0);
    assert!(
        (0.4..0.6).contains(&v2.error_rate),
        "v2 error rate {:.3} with FAULT_ERROR_RATE=0.5",
        v2.error_rate
    );
    assert_eq!(
        v2.degraded, v2.errors,
        "the frontend degraded each failed v2 call"
    );
    let v = expect::violations(&cfg, &r);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("error rate") && v[0].contains("worst: v2"),
        "{v:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_percentiles_agree_with_an_injected_delay() {
    let port = free_port();
    let model = common::models().join("propensity-v1.onnx");
    let server = Proc::start(
        &["model-inference"],
        port,
        &[
            ("MODEL_PATH", model.display().to_string()),
            ("FAULT_DELAY", "50ms".to_owned()),
        ],
    )
    .await;
    for extra in [&["--concurrency", "8"][..], &["--rate", "100/s"][..]] {
        let mut args = vec![
            server.base.as_str(),
            "--target",
            "infer",
            "--requests",
            "300",
        ];
        args.extend_from_slice(extra);
        let r = load(&config(&args)).await;
        let l = &version(&r, "v1").latency;
        assert_eq!(r.all.errors, 0, "{}", r.render());
        // Never below the delay; above it only by the service time on a busy CI box.
        assert!(
            (50.0..80.0).contains(&l.p50_ms),
            "{extra:?}: p50 {:.2}ms with a 50ms delay\n{}",
            l.p50_ms,
            r.render()
        );
        assert!(l.max_ms >= l.p99_ms && l.p99_ms >= l.p50_ms);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_load_in_json_binary_and_grpc_reaches_the_model_without_errors() {
    let port = free_port();
    let grpc_port = free_port();
    let model = common::models().join("propensity-v2.onnx");
    let server = Proc::start(
        &["model-inference"],
        port,
        &[
            ("MODEL_PATH", model.display().to_string()),
            ("MODEL_VERSION", "v2".to_owned()),
            ("GRPC_LISTEN", format!("127.0.0.1:{grpc_port}")),
        ],
    )
    .await;
    let grpc_base = format!("http://127.0.0.1:{grpc_port}");
    let stats = format!("{}/v2/models/propensity/stats", server.base);
    let inferred = |s: &serde_json::Value| s["model_stats"][0]["inference_count"].as_u64().unwrap();
    let mut served = 0;
    // One row per request, then `--rows 8`: eight users' rows in each,
    // which the model counts as eight inferences in one success.
    for (rows, requests) in [(1u64, 400u64), (8, 100)] {
        for (protocol, base) in [
            ("http-json", &server.base),
            ("http-binary", &server.base),
            ("grpc", &grpc_base),
        ] {
            let case = format!("{protocol}, {rows} rows per request");
            let before = inferred(&test_support::http::fetch_json(&stats).await);
            let (rows_arg, requests_arg) = (rows.to_string(), requests.to_string());
            let args = [
                base.as_str(),
                "--target",
                "infer",
                "--protocol",
                protocol,
                "--rows",
                &rows_arg,
                "--requests",
                &requests_arg,
                "-c",
                "8",
            ];
            let r = load(&config(&args)).await;
            assert_eq!(r.all.errors, 0, "{case}: {}", r.render());
            assert_eq!(
                version(&r, "v2").requests,
                requests,
                "{case}: {}",
                r.render()
            );
            // The model counted every one as a success: none was refused, none lost.
            served += requests;
            let s = test_support::http::fetch_json(&stats).await;
            let st = &s["model_stats"][0]["inference_stats"];
            assert_eq!(st["success"]["count"], served, "{case}: {s}");
            assert_eq!(st["fail"]["count"], 0, "{case}: {s}");
            assert_eq!(inferred(&s) - before, requests * rows, "{case}: {s}");
        }
    }
}
