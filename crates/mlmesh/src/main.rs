//! `mlmesh <service>`: the one binary of the mlmesh stack. Wiring only; each
//! service lives in its own library crate.

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_kit::ServerArgs;
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
    /// Serve one ONNX model over the Open Inference Protocol (KServe V2 REST).
    ModelInference {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::ModelInference { server, model } => run_model_inference(server, model).await,
    }
}

async fn run_model_inference(server: ServerArgs, model: ModelArgs) -> anyhow::Result<()> {
    let telemetry =
        Telemetry::init("model-inference", server.log_format).context("starting telemetry")?;
    let (svc, state) =
        model_inference::build(&model, server).context("starting model-inference")?;
    let served = svc
        .serve(
            model_inference::router(state.clone()),
            model_inference::probes(state),
        )
        .await
        .context("serving model-inference");
    telemetry.shutdown();
    served
}
