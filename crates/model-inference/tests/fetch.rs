//! The model download (`--model-download-url`) against a real HTTP server
//! on loopback: verified download then serving, the cache, a digest
//! mismatch, a 404, a flaky server, a server slower than the deadline, and a
//! file past the size limit.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use common::*;
use mesh_kit::ServerArgs;
use model_inference::fetch::{self, FetchError, FetchSpec};

/// The registry: `/model.onnx` serves v2's file; `/missing` is a 404;
/// `/flaky` answers 503 twice, then the file; `/slow` takes 30 s.
struct Registry {
    served: test_support::serve::Served,
    hits: Arc<AtomicUsize>,
    bytes: Arc<Vec<u8>>,
}

impl Registry {
    async fn start() -> Self {
        let bytes = Arc::new(std::fs::read(model_path("v2")).unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let flaky = Arc::new(AtomicUsize::new(0));
        let (b1, b2, b3) = (bytes.clone(), bytes.clone(), bytes.clone());
        let (h1, h2, h3, h4) = (hits.clone(), hits.clone(), hits.clone(), hits.clone());
        let app = Router::new()
            .route(
                "/model.onnx",
                get(move || async move {
                    h1.fetch_add(1, Ordering::SeqCst);
                    b1.to_vec()
                }),
            )
            .route(
                "/missing",
                get(move || async move {
                    h2.fetch_add(1, Ordering::SeqCst);
                    StatusCode::NOT_FOUND
                }),
            )
            .route(
                "/flaky",
                get(move || async move {
                    h3.fetch_add(1, Ordering::SeqCst);
                    if flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(StatusCode::SERVICE_UNAVAILABLE)
                    } else {
                        Ok(b2.to_vec())
                    }
                }),
            )
            .route(
                "/slow",
                get(move || async move {
                    h4.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    b3.to_vec()
                }),
            );
        Self {
            served: test_support::serve::serve(app).await,
            hits,
            bytes,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn sha256(&self) -> String {
        fetch::sha256_hex(&self.bytes)
    }

    fn spec(&self, path: &str, dest: PathBuf) -> FetchSpec {
        FetchSpec {
            url: self.served.url(path),
            sha256: self.sha256(),
            dest,
            timeout: Duration::from_secs(20),
            max_bytes: 256 << 20,
            attempts: fetch::DOWNLOAD_ATTEMPTS,
        }
    }
}

fn cache_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlmesh-fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Nothing but the cache file (when `want` says so) is left in `dir`.
fn assert_leftovers(dir: &std::path::Path, want: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, want, "files left in {}", dir.display());
}

#[tokio::test]
async fn a_verified_download_is_served_and_then_cached() {
    let registry = Registry::start().await;
    let dir = cache_dir("ok");
    let dest = dir.join("model.onnx");
    let spec = registry.spec("/model.onnx", dest.clone());
    assert!(fetch::fetch(&spec).await.expect("downloads"), "downloaded");
    assert_eq!(std::fs::read(&dest).unwrap(), *registry.bytes);
    assert_eq!(registry.hits(), 1);
    assert_leftovers(&dir, &["model.onnx"]);

    // A restarted container finds the pinned model in its emptyDir.
    assert!(!fetch::fetch(&spec).await.unwrap(), "served from the cache");
    assert_eq!(registry.hits(), 1, "no second download");

    // The downloaded file is what the service serves: v2's reference scores.
    let mut args = model_args("v2");
    args.model_path = dest.clone();
    let app = TestApp::spawn(args, ServerArgs::for_tests()).await;
    let reference = reference();
    let p = probabilities(&app.infer(&reference.inputs[..1]).await)[0];
    let want = reference.outputs["v2"].probability[0];
    assert!((p - want).abs() < 1e-5, "{p} vs onnxruntime {want}");

    // A cache holding something else (a stale model) is replaced.
    std::fs::write(&dest, b"an older model").unwrap();
    assert!(fetch::fetch(&spec).await.unwrap(), "downloaded again");
    assert_eq!(registry.hits(), 2);
    assert_eq!(std::fs::read(&dest).unwrap(), *registry.bytes);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_digest_mismatch_names_the_url_and_both_digests_and_leaves_nothing() {
    let registry = Registry::start().await;
    let dir = cache_dir("digest");
    let mut spec = registry.spec("/model.onnx", dir.join("model.onnx"));
    spec.sha256 = "0".repeat(64);
    let err = fetch::fetch(&spec).await.unwrap_err();
    assert!(matches!(err, FetchError::Digest { .. }), "{err:?}");
    let msg = err.to_string();
    for part in [
        &registry.served.url("/model.onnx"),
        &"0".repeat(64),
        &registry.sha256(),
    ] {
        assert!(msg.contains(part.as_str()), "{msg} lacks {part}");
    }
    assert_eq!(registry.hits(), 1, "a wrong file is not fetched again");
    assert_leftovers(&dir, &[]);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_404_fails_at_once_and_a_flaky_server_is_retried() {
    let registry = Registry::start().await;
    let dir = cache_dir("status");
    let err = fetch::fetch(&registry.spec("/missing", dir.join("model.onnx")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert_eq!(registry.hits(), 1, "a 404 is not retried");
    assert_leftovers(&dir, &[]);

    let dest = dir.join("model.onnx");
    assert!(
        fetch::fetch(&registry.spec("/flaky", dest.clone()))
            .await
            .unwrap()
    );
    assert_eq!(registry.hits(), 1 + 3, "two 503s, then the file");
    assert_eq!(std::fs::read(&dest).unwrap(), *registry.bytes);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_server_slower_than_the_deadline_times_out() {
    let registry = Registry::start().await;
    let dir = cache_dir("slow");
    let mut spec = registry.spec("/slow", dir.join("model.onnx"));
    spec.timeout = Duration::from_millis(600);
    let err = fetch::fetch(&spec).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().contains("--model-download-timeout"),
        "{err}"
    );
    assert_leftovers(&dir, &[]);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_file_past_the_size_limit_is_refused() {
    let registry = Registry::start().await;
    let dir = cache_dir("large");
    let mut spec = registry.spec("/model.onnx", dir.join("model.onnx"));
    spec.max_bytes = registry.bytes.len() as u64 - 1;
    let err = fetch::fetch(&spec).await.unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("--model-max-bytes"), "{err}");
    assert_eq!(registry.hits(), 1, "too large is not retried");
    assert_leftovers(&dir, &[]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_egress_lab_pins_the_committed_model() {
    let readme = std::fs::read_to_string(models_dir().join("../istio/README.md")).unwrap();
    let pinned: String = readme
        .split("MODEL_SHA256=")
        .nth(1)
        .expect("istio/README.md pins MODEL_SHA256")
        .chars()
        .take(64)
        .collect();
    let committed = fetch::sha256_hex(&std::fs::read(model_path("v2")).unwrap());
    assert_eq!(
        pinned, committed,
        "istio/README.md's MODEL_SHA256 is not models/propensity-v2.onnx's: update it"
    );
}
