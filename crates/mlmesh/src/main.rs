//! `mlmesh <service>`: the one binary of the mlmesh stack, and `mlmesh up`,
//! the whole stack locally. Wiring only; each service lives in its own
//! library crate.

mod analyze;
mod token;
mod up;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use feature_store::{SeedArgs, StoreArgs};
use frontend::FrontendArgs;
use mesh_kit::ServerArgs;
use mesh_kit::config::LogFormat;
use mesh_kit::telemetry::Telemetry;
use model_inference::ModelArgs;

// glibc malloc was ~12% of a loaded model-inference profile (small JSON and
// header allocations per request); mimalloc removes most of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "mlmesh",
    version,
    about = "An ML workload for learning and experimenting with a service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack locally: feature store, model v1 and v2, and the
    /// frontend on 127.0.0.1:8080 with a 10% canary. Ctrl-C stops it.
    Up(up::UpArgs),
    /// Decide an experiment from its metrics: promote, rollback, continue or
    /// invalid, with sequential statistics (read from the stack's /metrics or
    /// from Prometheus).
    Analyze(analyze::AnalyzeCmd),
    /// Mint an end-user JWT for the ingress gateway's RequestAuthentication
    /// (istio/auth/), or print a key's JWKS.
    Token(token::TokenArgs),
    /// Serve the web page and JSON API: sticky cohorts, features, the
    /// cohort's model, an offer decision, and feedback.
    Frontend {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        frontend: FrontendArgs,
    },
    /// Exit 0 if URL answers 2xx in time, 1 otherwise: container health checks
    /// without curl or a shell in the image.
    Healthcheck {
        /// e.g. http://127.0.0.1:8080/readyz
        url: String,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Serve one ONNX model over the Open Inference Protocol (KServe V2 REST).
    ModelInference {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Serve customers' features from Redis (--redis-url) or an embedded store;
    /// `feature-store seed` loads the seed rows into Redis.
    FeatureStore(FeatureStoreCmd),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct FeatureStoreCmd {
    #[command(subcommand)]
    action: Option<FeatureStoreAction>,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum FeatureStoreAction {
    /// Bulk-load the seed rows into Redis (pipelined, idempotent).
    Seed {
        #[command(flatten)]
        args: SeedArgs,
        /// After seeding successfully, ask the Istio sidecar to exit
        /// (POST 127.0.0.1:15020/quitquitquit), so a Kubernetes Job completes.
        #[arg(long, env = "QUIT_ISTIO_PROXY")]
        quit_istio_proxy: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        // Its own exit codes: the verdict's, or 2 for usage and source errors.
        Command::Analyze(analyze::AnalyzeCmd { action: None, args }) => {
            return Ok(analyze::run(args).await);
        }
        Command::Analyze(analyze::AnalyzeCmd {
            action: Some(analyze::AnalyzeAction::Serve { server, verdict }),
            ..
        }) => run_verdict(server, verdict).await?,
        Command::Up(args) => up::run(args).await?,
        Command::Token(args) => token::run(args)?,
        Command::Healthcheck { url, timeout } => healthcheck(&url, timeout).await?,
        Command::Frontend { server, frontend } => run_frontend(server, frontend).await?,
        Command::ModelInference { server, model } => run_model_inference(server, model).await?,
        Command::FeatureStore(FeatureStoreCmd {
            action:
                Some(FeatureStoreAction::Seed {
                    args,
                    quit_istio_proxy,
                }),
            ..
        }) => {
            run_seed(args).await?;
            if quit_istio_proxy {
                quit_istio_proxy_sidecar().await;
            }
        }
        Command::FeatureStore(FeatureStoreCmd {
            action: None,
            server,
            store,
        }) => run_feature_store(server, store).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one service with telemetry installed around it; spans are flushed
/// however the service ends, startup failures included.
async fn with_telemetry<F>(
    name: &str,
    format: LogFormat,
    run: impl FnOnce() -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let telemetry = Telemetry::init(name, format).context("starting telemetry")?;
    let result = run().await;
    telemetry.shutdown();
    result
}

async fn run_model_inference(server: ServerArgs, model: ModelArgs) -> anyhow::Result<()> {
    with_telemetry("model-inference", server.log_format, || async move {
        if let Some(spec) = model.fetch_spec() {
            model_inference::fetch::fetch(&spec)
                .await
                .context("fetching the model")?;
        }
        let (svc, state) =
            model_inference::build(&model, server).context("starting model-inference")?;
        let grpc = model.grpc_listen.addr().map(|addr| {
            (
                addr,
                model_inference::grpc::routes(state.clone()),
                model_inference::grpc::probes(state.clone()),
            )
        });
        svc.serve_with_grpc(
            model_inference::router(state.clone()),
            model_inference::probes(state),
            grpc,
        )
        .await
        .context("serving model-inference")
    })
    .await
}

async fn run_feature_store(server: ServerArgs, store: StoreArgs) -> anyhow::Result<()> {
    with_telemetry("feature-store", server.log_format, || async move {
        let (svc, state) = feature_store::build(&store, server)
            .await
            .context("starting feature-store")?;
        // The feature store has no protocol-specific probes: /healthz and /readyz suffice.
        svc.serve(feature_store::router(state), axum::Router::new())
            .await
            .context("serving feature-store")
    })
    .await
}

async fn run_frontend(server: ServerArgs, args: FrontendArgs) -> anyhow::Result<()> {
    with_telemetry("frontend", server.log_format, || async move {
        let (svc, state) = frontend::build(&args, server).context("starting frontend")?;
        svc.serve(frontend::router(state), axum::Router::new())
            .await
            .context("serving frontend")
    })
    .await
}

async fn run_verdict(server: ServerArgs, args: verdict::VerdictArgs) -> anyhow::Result<()> {
    with_telemetry("verdict", server.log_format, || async move {
        let source = analyze::verdict_source(&args.source);
        let (svc, state) =
            verdict::build(&args, source, server).context("starting the verdict service")?;
        svc.serve(verdict::router(state), axum::Router::new())
            .await
            .context("serving the verdict")
    })
    .await
}

async fn healthcheck(url: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    let res = reqwest::Client::new()
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = res.status();
    if status.is_success() {
        return Ok(());
    }
    // The body says who refused: Envoy's `RBAC: access denied`, or the
    // service's own JSON error. Bounded: this runs as a probe.
    let body = res.text().await.unwrap_or_default();
    let reason: String = body.trim().chars().take(200).collect();
    anyhow::bail!("GET {url}: {status}: {reason}")
}

/// Best effort: without a sidecar (compose, `mlmesh up`) there is nothing to stop.
async fn quit_istio_proxy_sidecar() {
    let url = "http://127.0.0.1:15020/quitquitquit";
    match reqwest::Client::new()
        .post(url)
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) => println!("asked the Istio sidecar to exit: {}", r.status()),
        Err(e) => println!("no Istio sidecar to stop at {url}: {e}"),
    }
}

async fn run_seed(args: SeedArgs) -> anyhow::Result<()> {
    let report = feature_store::seed(&args).await.with_context(|| {
        format!(
            "seeding {} from {}",
            mesh_kit::config::redact_url(&args.redis_url),
            args.seed_file.display()
        )
    })?;
    println!(
        "seeded {} entities ({} features each) from {} into {} under {}",
        report.entities,
        report.features,
        args.seed_file.display(),
        mesh_kit::config::redact_url(&args.redis_url),
        feature_store::store::KEY_PREFIX
    );
    Ok(())
}
