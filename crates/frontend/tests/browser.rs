//! The web page in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver: type a customer id, click,
//! read the decision, send feedback, join the beta group. A screenshot is
//! kept for each step under `target/tmp/browser/` as CI artefacts.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use test_support::redis_server::free_port;
use test_support::serve::serve;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artefacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn browser() -> (Client, Driver, PathBuf) {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: install Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver), or run scripts/test.sh, which says so"
        );
    }
    let port = free_port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let profile = artefacts().join(format!("profile-{port}"));
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            // The flags that keep Chromium from reaching for the network
            // (updates, sync, QUIC) on a machine without internet.
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1000,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        match builder
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return (c, driver, profile),
            // chromedriver takes a moment to listen.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot start a Chromium session: {e}"),
        }
    }
}

/// Waits for an element's text to satisfy `ok`, returning it.
async fn text_when(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = c
            .find(Locator::Css(css))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never got there; last text {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn decide(c: &Client, user: &str) {
    let input = c.find(Locator::Id("user-id")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(user).await.unwrap();
    c.find(Locator::Id("predict"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_decides_gives_feedback_and_joins_the_beta_in_a_real_browser() {
    let up = Upstreams::start().await;
    let args = up.args();
    let api = frontend(&args);
    let site = serve(frontend(&args)).await;

    // A baseline customer who gets an offer, according to the JSON API.
    let (user, expected) = {
        let mut found = None;
        for u in 1..=300 {
            let a = get(&api, &format!("/predict?user_id={u}")).await;
            if a.json["decision"] == "offer" && a.json["model_version"] == "v1" {
                found = Some((u.to_string(), a.json));
                break;
            }
        }
        found.expect("a baseline customer with an offer")
    };

    let (c, _driver, profile_dir) = browser().await;
    c.goto(&site.url("/")).await.unwrap();
    assert!(c.title().await.unwrap().starts_with("mlmesh"));

    decide(&c, &user).await;
    let decision = text_when(&c, "#decision", |t| !t.is_empty()).await;
    assert_eq!(decision, "offer");
    assert_eq!(
        text_when(&c, "#model-version", |t| !t.is_empty()).await,
        "v1"
    );
    let cohort = text_when(&c, "#cohort", |t| !t.is_empty()).await;
    assert!(cohort.starts_with("baseline"), "{cohort}");
    let score = text_when(&c, "#score", |t| !t.is_empty()).await;
    let shown: f64 = score.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        (shown - expected["score"].as_f64().unwrap()).abs() < 1e-4,
        "{score}"
    );
    let trace_id = text_when(&c, "#trace-id", |t| !t.is_empty()).await;
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    assert!(trace_id.chars().all(|ch| ch.is_ascii_hexdigit()));

    std::fs::write(
        artefacts().join("decision.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();

    c.find(Locator::Id("accept"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let status = text_when(&c, "#feedback-status", |t| !t.is_empty()).await;
    assert_eq!(status, "Recorded: accepted (model v1)");
    let metrics = reqwest::get(site.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &metrics,
            "mlmesh_frontend_outcomes",
            &[("model_version", "v1"), ("outcome", "accepted")]
        )
        .value,
        1.0
    );

    // Joining the beta group moves this customer to the candidate, and the
    // cookie keeps them there after a reload.
    c.find(Locator::Id("beta"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    decide(&c, &user).await;
    text_when(&c, "#model-version", |t| t == "v2").await;
    c.refresh().await.unwrap();
    let checked = c
        .find(Locator::Id("beta"))
        .await
        .unwrap()
        .prop("checked")
        .await
        .unwrap();
    assert_eq!(
        checked.as_deref(),
        Some("true"),
        "the beta choice survives a reload"
    );
    decide(&c, &user).await;
    let cohort = text_when(&c, "#cohort", |t| t.starts_with("candidate")).await;
    assert!(cohort.contains("beta-group"), "{cohort}");
    std::fs::write(artefacts().join("beta.png"), c.screenshot().await.unwrap()).unwrap();

    // An unknown customer is an error message, not a broken page.
    decide(&c, "999999").await;
    let error = text_when(&c, "#error", |t| !t.is_empty()).await;
    assert!(error.contains("not found"), "{error}");

    let png = c.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write(artefacts().join("unknown-customer.png"), png).unwrap();
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile_dir);
}
