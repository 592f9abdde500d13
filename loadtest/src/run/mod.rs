//! The load loop: closed (N in flight) or open (a fixed start rate, latency
//! from each request's scheduled start), over keep-alive HTTP/1 connections.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Uri};
use mesh_kit::client::Connections;

use frontend::cohort::BETA_GROUP;

use crate::config::{Config, Overflow, Protocol, Target};
use crate::stats::{Report, Shard};
use crate::users::User;

mod call;
mod infer;

use call::Plan;
use infer::{MAX_PREBUILT_VALUES, fp32_request, grpc_clients, input_name, oip_body};

/// Shards of the figures, so that workers seldom wait for each other's lock.
const SHARDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("base URL {0:?} is not an absolute http:// URL")]
    BaseUrl(String),
    /// A worker panicked: its requests are missing from the figures, so the
    /// run is reported as failed rather than as a smaller, wrong result.
    #[error("{0} load worker(s) panicked: {1}; the figures would be incomplete")]
    WorkerPanicked(usize, String),
    #[error("minting a demo token: {0}")]
    Token(#[from] identity::IdentityError),
    #[error("user id {0:?} cannot go in a URL query or header as it is")]
    UserId(String),
    #[error("reading the model's metadata at {url}: {detail}")]
    Metadata { url: String, detail: String },
}

/// How long a simulated user's demo token lives: longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// One `Authorization: Bearer` value per user, minted on all cores (an
/// RSA signature each, a few milliseconds) before the clock starts.
fn demo_tokens(users: &[User]) -> Result<Vec<http::HeaderValue>, RunError> {
    let minter = identity::Minter::demo();
    let now = mesh_kit::clock::unix_now();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = users.len().div_ceil(threads).max(1);
    let minted: Vec<Result<Vec<http::HeaderValue>, identity::IdentityError>> =
        std::thread::scope(|s| {
            let handles: Vec<_> = users
                .chunks(chunk)
                .map(|part| {
                    let minter = &minter;
                    s.spawn(move || {
                        part.iter()
                            .map(|u| {
                                let group = u.beta.then_some(BETA_GROUP);
                                let token = minter.mint(&u.id, group, TOKEN_TTL, now)?;
                                Ok(http::HeaderValue::from_str(&format!("Bearer {token}"))
                                    .expect("a JWT is header-safe base64url"))
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("minting does not panic"))
                .collect()
        });
    let mut all = Vec::with_capacity(users.len());
    for part in minted {
        all.extend(part?);
    }
    Ok(all)
}

/// The panic message of a failed task, for the report.
fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// Runs the load described by `cfg` against `users` and reports what happened.
pub async fn run(cfg: &Config, users: Vec<User>) -> Result<Report, RunError> {
    let base = cfg.base_url.trim_end_matches('/').to_owned();
    let uri: Uri = base
        .parse()
        .map_err(|_| RunError::BaseUrl(cfg.base_url.clone()))?;
    // Open loop: up to --max-in-flight connections are busy at once, and all
    // of them must stay pooled. Fewer idle places (the closed loop's count)
    // close the excess on every lull and reopen it on the next burst: a new
    // TCP connection per request, paid by the server, not a fixed pool.
    let connections = match cfg.rate {
        Some(_) => cfg.max_in_flight,
        None => cfg.connections(),
    };
    let bad_base = || RunError::BaseUrl(cfg.base_url.clone());
    let conns = Connections::new(&uri)
        .ok_or_else(bad_base)?
        .max_idle(connections.max(64));
    let get_uri = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") => Uri::from_static("/"),
        Some(p) => p.parse().map_err(|_| bad_base())?,
    };
    let per_user = u64::from(cfg.requests_per_user);
    let limit = match (cfg.requests, cfg.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        // By default every user makes their requests once.
        (None, None) => Some(users.len() as u64 * per_user),
    };
    let (mut bodies, mut grpc, mut grpc_requests) = (Vec::new(), Vec::new(), Vec::new());
    let rows = cfg.rows as usize;
    // Requests are encoded before the clock starts, one per user; with many
    // rows each, only as many as MAX_PREBUILT_VALUES allows (users then
    // share them), so `--rows 4096` cannot hold gigabytes of bodies.
    let width = users.first().map_or(1, |u| u.features.len().max(1));
    let distinct = users.len().min(MAX_PREBUILT_VALUES / (rows * width)).max(1);
    match (cfg.target, cfg.protocol) {
        (Target::Infer, Protocol::Grpc) => {
            let (clients, input) =
                grpc_clients(&base, &cfg.model_name, cfg.grpc_connections as usize).await?;
            grpc = clients;
            grpc_requests = (0..distinct)
                .map(|u| fp32_request(&users, u, rows, &input).grpc(&cfg.model_name))
                .collect();
        }
        (Target::Infer, protocol) => {
            let input = input_name(&conns, &base, &cfg.model_name).await?;
            bodies = (0..distinct)
                .map(|u| oip_body(fp32_request(&users, u, rows, &input), protocol))
                .collect();
        }
        _ => {}
    }
    let tokens = if cfg.demo_tokens && cfg.target == Target::Frontend {
        demo_tokens(&users)?
    } else {
        Vec::new()
    };
    let plan = Arc::new(Plan {
        target: cfg.target,
        infer_uri: conns
            .uri(&format!("/v2/models/{}/infer", cfg.model_name))
            .map_err(|_| bad_base())?,
        get_uri,
        predict: if cfg.target == Target::Frontend {
            predict_requests(&conns, &users)?
        } else {
            Vec::new()
        },
        conns,
        headers: cfg.headers.clone(),
        tokens,
        bodies,
        grpc,
        grpc_requests,
        per_user,
        timeout: cfg.timeout,
        feedback: cfg.feedback && cfg.target == Target::Frontend,
        limit,
        until: cfg.duration.map(|d| Instant::now() + d),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        overflow: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        users,
    });
    let beta_users = plan.users.iter().filter(|u| u.beta).count();
    let progress = (!cfg.quiet).then(|| tokio::spawn(report_progress(Arc::clone(&plan), limit)));

    let started = Instant::now();
    let load = match cfg.rate {
        None => {
            let workers: Vec<_> = (0..connections)
                .map(|_| {
                    let plan = Arc::clone(&plan);
                    tokio::spawn(async move {
                        while let Some(i) = plan.claim() {
                            plan.execute(i, Instant::now()).await;
                        }
                    })
                })
                .collect();
            let mut panics = Vec::new();
            for w in workers {
                if let Err(e) = w.await {
                    panics.push(panic_text(e));
                }
            }
            if !panics.is_empty() {
                plan.stop.store(true, Ordering::Relaxed);
                return Err(RunError::WorkerPanicked(
                    panics.len(),
                    panics.swap_remove(0),
                ));
            }
            format!("closed ({connections} connections)")
        }
        Some(rate) => {
            if let Err((n, first)) = open_loop(&plan, rate, cfg.max_in_flight, cfg.overflow).await {
                plan.stop.store(true, Ordering::Relaxed);
                return Err(RunError::WorkerPanicked(n, first));
            }
            format!("open ({rate} req/s)")
        }
    };
    let elapsed = started.elapsed();
    plan.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let ids: Vec<String> = plan.users.iter().map(|u| u.id.clone()).collect();
    let target = format!("{:?}", cfg.target).to_lowercase();
    let mut report = Report::build(
        &base,
        &target,
        load,
        elapsed,
        &plan.merged(),
        &ids,
        beta_users,
    );
    report.overflow = plan.overflow.load(Ordering::Relaxed);
    Ok(report)
}

/// Each user's `/predict` URI and `x-user-id` value.
fn predict_requests(
    conns: &Connections,
    users: &[User],
) -> Result<Vec<(Uri, HeaderValue)>, RunError> {
    users
        .iter()
        .map(|u| {
            let bad = || RunError::UserId(u.id.clone());
            let uri = conns
                .uri(&format!("/predict?user_id={}", u.id))
                .map_err(|_| bad())?;
            Ok((uri, HeaderValue::from_str(&u.id).map_err(|_| bad())?))
        })
        .collect()
}

/// Starts request `i` at `start + i / rate`, whatever earlier requests are
/// doing. Errs with the number of panicked tasks and the first message.
/// At most `max_in_flight` at once; past it a request waits for a slot (the
/// wait shows up as latency) or is dropped and counted, as `overflow` says.
async fn open_loop(
    plan: &Arc<Plan>,
    rate: f64,
    max_in_flight: usize,
    overflow: Overflow,
) -> Result<(), (usize, String)> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut panics = Vec::new();
    while let Some(i) = plan.claim() {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let slot = match overflow {
            Overflow::Wait => Arc::clone(&slots).acquire_owned().await.ok(),
            Overflow::Drop => match Arc::clone(&slots).try_acquire_owned() {
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    plan.overflow.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                slot => slot.ok(),
            },
        };
        let Some(permit) = slot else {
            break;
        };
        let plan = Arc::clone(plan);
        tasks.spawn(async move {
            plan.execute(i, scheduled).await;
            drop(permit);
        });
        // Reap finished tasks so the set does not grow with the run.
        while let Some(done) = tasks.try_join_next() {
            note_panic(done, &mut panics);
        }
    }
    while let Some(done) = tasks.join_next().await {
        note_panic(done, &mut panics);
    }
    match panics.len() {
        0 => Ok(()),
        n => Err((n, panics.swap_remove(0))),
    }
}

fn note_panic(done: Result<(), tokio::task::JoinError>, panics: &mut Vec<String>) {
    if let Err(e) = done {
        panics.push(panic_text(e));
    }
}

/// A progress bar on a terminal; a plain line every 5 s otherwise (CI logs).
async fn report_progress(plan: Arc<Plan>, limit: Option<u64>) {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = match limit {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(every).await;
        let finished = plan.stop.load(Ordering::Relaxed);
        let done = plan.done.load(Ordering::Relaxed);
        let errors = plan.errors.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
        last = (Instant::now(), done);
        let line = format!(
            "{rate:.0} req/s, errors {errors}, p99 so far {:.2}ms",
            plan.p99_so_far_ms()
        );
        match &bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(line);
            }
            None if !finished => eprintln!(
                "[{:>5.1}s] {done} requests, {line}",
                started.elapsed().as_secs_f64()
            ),
            None => {}
        }
        if finished {
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            return;
        }
    }
}

#[cfg(test)]
mod panic_tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_message() {
        let mut panics = Vec::new();
        let failed = tokio::spawn(async { panic!("worker exploded at request 7") }).await;
        note_panic(failed, &mut panics);
        note_panic(tokio::spawn(async {}).await, &mut panics);
        assert_eq!(panics, vec!["worker exploded at request 7".to_owned()]);
        let owned = tokio::spawn(async { panic!("{}", String::from("formatted")) }).await;
        assert_eq!(panic_text(owned.unwrap_err()), "formatted");
        let e = RunError::WorkerPanicked(3, "boom".into()).to_string();
        assert!(e.contains("3 load worker(s) panicked: boom"), "{e}");
    }
}
