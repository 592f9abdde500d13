//! `mlmesh up`: the whole stack on loopback, one process per service (as in
//! compose and Kubernetes, so traces show real hops between services), with
//! each child's logs prefixed by its name, and a clean stop on Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Address every service listens on.
    #[arg(long, env = "MLMESH_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// The frontend's port; the other services take the next three
    /// (feature store, model v1, model v2) unless given explicitly.
    #[arg(long, env = "MLMESH_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    #[arg(long)]
    pub feature_store_port: Option<u16>,
    #[arg(long)]
    pub model_v1_port: Option<u16>,
    #[arg(long)]
    pub model_v2_port: Option<u16>,

    /// Percent of users in the candidate cohort (served by v2).
    #[arg(long, env = "CANARY_PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub canary_percent: u8,

    /// Also mirror every live inference call to v2 (shadow traffic).
    #[arg(long)]
    pub shadow: bool,

    /// How the frontend calls the models. With `grpc` each model also
    /// listens for gRPC, on its REST port + 1000 (9082 and 9083 by default,
    /// as in compose).
    #[arg(long, env = "MODEL_PROTOCOL", value_enum, default_value_t = frontend::config::DEFAULT_MODEL_PROTOCOL)]
    pub model_protocol: oip::Protocol,

    /// Use this Redis for features (seeded first) instead of the embedded
    /// store, and for the experiment event log (stream mlmesh:events:v1) of
    /// the frontend and both models.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Where propensity-v1.onnx, propensity-v2.onnx and customers.csv live.
    #[arg(long, env = "MLMESH_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,

    /// Extra environment for one service, e.g. `--set v2.FAULT_ERROR_RATE=0.5`
    /// or `--set frontend.DECISION_THRESHOLD=0.2`. Services: frontend,
    /// feature-store, v1, v2. Repeatable.
    #[arg(long = "set", value_name = "SERVICE.VAR=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String, String)>,
}

/// The frontend's port; the feature store, v1 and v2 follow it at these offsets.
pub const DEFAULT_PORT: u16 = 8080;
pub const FEATURE_STORE_OFFSET: u16 = 1;
pub const V1_OFFSET: u16 = 2;
pub const V2_OFFSET: u16 = 3;
/// With `--model-protocol grpc`, a model's gRPC port is its REST port + this.
pub const GRPC_OFFSET: u16 = 1000;

const SERVICES: [&str; 4] = ["frontend", "feature-store", "v1", "v2"];

fn parse_set(s: &str) -> Result<(String, String, String), String> {
    let (target, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected SERVICE.VAR=VALUE"))?;
    let (service, var) = target
        .split_once('.')
        .ok_or_else(|| format!("`{s}`: expected SERVICE.VAR=VALUE"))?;
    if !SERVICES.contains(&service) {
        return Err(format!(
            "`{service}` is not a service; use one of {}",
            SERVICES.join(", ")
        ));
    }
    if var.is_empty() {
        return Err(format!("`{s}`: the variable name is empty"));
    }
    Ok((service.to_owned(), var.to_owned(), value.to_owned()))
}

struct Running {
    name: &'static str,
    child: Child,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the mlmesh binary")?;
    let file = |name: &str| {
        let p = args.models_dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            bail!(
                "{} not found: run `mlmesh up` from the repository root or pass --models-dir",
                p.display()
            )
        }
    };
    let (v1_model, v2_model, seed) = (
        file("propensity-v1.onnx")?,
        file("propensity-v2.onnx")?,
        file("customers.csv")?,
    );
    let addr = |port: Option<u16>, offset: u16| -> anyhow::Result<SocketAddr> {
        let port = match port {
            Some(p) => p,
            None => args
                .port
                .checked_add(offset)
                .context("--port is too high to fit the other services above it")?,
        };
        Ok(SocketAddr::new(args.host, port))
    };
    let frontend_addr = addr(Some(args.port), 0)?;
    let fs_addr = addr(args.feature_store_port, FEATURE_STORE_OFFSET)?;
    let v1_addr = addr(args.model_v1_port, V1_OFFSET)?;
    let v2_addr = addr(args.model_v2_port, V2_OFFSET)?;
    let url = |a: SocketAddr| format!("http://{a}");
    let grpc = args.model_protocol == oip::Protocol::Grpc;
    let grpc_addr = |a: SocketAddr| -> anyhow::Result<Option<SocketAddr>> {
        if !grpc {
            return Ok(None);
        }
        let port = a
            .port()
            .checked_add(GRPC_OFFSET)
            .context("a model's port is too high for its gRPC port (REST port + 1000)")?;
        Ok(Some(SocketAddr::new(a.ip(), port)))
    };
    let (v1_grpc, v2_grpc) = (grpc_addr(v1_addr)?, grpc_addr(v2_addr)?);
    // Said up front and by name: otherwise a busy port surfaces as one
    // child's bind error in the middle of the others' startup logs.
    let mut ports = vec![
        ("frontend", frontend_addr),
        ("feature store", fs_addr),
        ("model v1", v1_addr),
        ("model v2", v2_addr),
    ];
    ports.extend(v1_grpc.map(|a| ("model v1 (gRPC)", a)));
    ports.extend(v2_grpc.map(|a| ("model v2 (gRPC)", a)));
    for (name, a) in ports {
        if let Err(e) = std::net::TcpListener::bind(a) {
            bail!(
                "port {} on {} (for the {name}) is not free: {e}. Is docker compose, the kind \
                 cluster or another `mlmesh up` running? Pick other ports with --port / MLMESH_PORT \
                 (the others follow it) or --feature-store-port, --model-v1-port, --model-v2-port",
                a.port(),
                a.ip()
            );
        }
    }

    if let Some(redis) = &args.redis_url {
        // The URL through the environment, not argv: a password in it would
        // be visible to every user in `ps`.
        let status = Command::new(&exe)
            .args(["feature-store", "seed", "--file"])
            .arg(&seed)
            .env("REDIS_URL", redis)
            .status()
            .await
            .context("running the seed job")?;
        if !status.success() {
            bail!(
                "seeding {} failed ({status}); is Redis running there?",
                mesh_kit::config::redact_url(redis)
            );
        }
    }

    let mut running: Vec<Running> = Vec::new();
    let result = async {
        let mut fs = service(&exe, "feature-store", fs_addr);
        fs.env("SEED_FILE", &seed);
        match &args.redis_url {
            // A restarted Redis is seeded again by the feature store itself.
            Some(r) => fs.env("REDIS_URL", r).env("RESEED", "true"),
            None => fs.env_remove("REDIS_URL"),
        };
        running.push(spawn("feature-store", fs, &args)?);
        for (name, model, addr, grpc_at, version) in [
            ("v1", &v1_model, v1_addr, v1_grpc, "v1"),
            ("v2", &v2_model, v2_addr, v2_grpc, "v2"),
        ] {
            let mut m = service(&exe, "model-inference", addr);
            // Both models on one host cannot share gRPC's default :9000:
            // each gets its own port when the frontend speaks gRPC, none
            // otherwise.
            let listen = grpc_at.map_or_else(|| "off".to_owned(), |a| a.to_string());
            m.env("MODEL_PATH", model)
                .env("MODEL_VERSION", version)
                .env("GRPC_LISTEN", listen);
            event_log(&mut m, &args);
            running.push(spawn(name, m, &args)?);
        }
        // The frontend degrades while upstreams start, so wait for them first.
        for (i, addr) in [fs_addr, v1_addr, v2_addr].into_iter().enumerate() {
            wait_ready(&mut running[i], addr).await?;
        }
        let mut fe = service(&exe, "frontend", frontend_addr);
        fe.env("ROUTING_MODE", "direct")
            .env("FEATURE_STORE_URL", url(fs_addr))
            .env("MODEL_V1_URL", url(v1_addr))
            .env("MODEL_V2_URL", url(v2_addr))
            .env("MODEL_PROTOCOL", args.model_protocol.as_str())
            .env("CANARY_PERCENT", args.canary_percent.to_string())
            .env("DECISION_KEY", frontend::decision::random_key_hex());
        for (var, at) in [
            ("MODEL_V1_GRPC_URL", v1_grpc),
            ("MODEL_V2_GRPC_URL", v2_grpc),
        ] {
            match at {
                Some(a) => fe.env(var, url(a)),
                None => fe.env_remove(var),
            };
        }
        fe.env_remove("SHADOW_GRPC_URL");
        if args.shadow {
            fe.env("SHADOW_URL", url(v2_addr));
            if let Some(a) = v2_grpc {
                fe.env("SHADOW_GRPC_URL", url(a));
            }
        } else {
            fe.env_remove("SHADOW_URL");
        }
        event_log(&mut fe, &args);
        running.push(spawn("frontend", fe, &args)?);
        let last = running.len() - 1;
        wait_ready(&mut running[last], frontend_addr).await?;
        print_banner(&args, frontend_addr, fs_addr, v1_addr, v2_addr);
        Ok::<_, anyhow::Error>(())
    }
    .await;

    let outcome = match result {
        Err(e) => Err(e),
        Ok(()) => {
            tokio::select! {
                () = mesh_kit::server::shutdown_signal() => {
                    eprintln!("[mlmesh up] stopping...");
                    Ok(())
                }
                (name, status) = first_exit(&mut running) => {
                    Err(anyhow::anyhow!("{name} exited unexpectedly ({status}); stopping the stack"))
                }
            }
        }
    };
    stop_all(&mut running).await;
    outcome
}

/// With `--redis-url`, the service logs its experiment events there (in
/// the environment: the URL may carry a password).
fn event_log(cmd: &mut Command, args: &UpArgs) {
    if let Some(r) = &args.redis_url {
        cmd.env("EVENT_LOG_URL", r);
    }
}

/// A child process for one service: its subcommand and address.
fn service(exe: &PathBuf, subcommand: &str, addr: SocketAddr) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg(subcommand)
        .arg("--listen")
        .arg(addr.to_string())
        // Nothing routes around a local process, so there is nothing to drain for.
        .env("DRAIN_DELAY", "0s")
        // Each service names itself; one inherited name would merge them in Jaeger.
        .env_remove("OTEL_SERVICE_NAME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // One runtime thread per service, as each pod runs under k8s/base's
    // 1-CPU limit: four services sharing a laptop's cores then hand work
    // between a quarter of the threads, and a decision costs 8–20% less CPU
    // (BENCHMARKS.md, "The decision chain"). Tokio reads this variable; the
    // user's own value, or a `--set`, wins.
    if std::env::var_os(WORKER_THREADS_ENV).is_none() {
        cmd.env(WORKER_THREADS_ENV, "1");
    }
    cmd
}

/// Tokio's documented override of its runtime's thread count.
const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// Starts a service; the user's `--set`s are applied last, so they win over
/// every default `up` chose (a lab can point the frontend anywhere).
fn spawn(name: &'static str, mut cmd: Command, args: &UpArgs) -> anyhow::Result<Running> {
    for (service, var, value) in &args.sets {
        if service == name {
            cmd.env(var, value);
        }
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(prefix_lines(name, out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(prefix_lines(name, err));
    }
    Ok(Running { name, child })
}

async fn prefix_lines(name: &'static str, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{name:>13}] {line}");
    }
}

async fn wait_ready(r: &mut Running, addr: SocketAddr) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = r.child.try_wait()? {
            bail!(
                "{} exited during startup ({status}); see its log lines above",
                r.name
            );
        }
        if let Ok(res) = client
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            && res.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} did not become ready at {url} within 120s", r.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn first_exit(running: &mut [Running]) -> (&'static str, ExitStatus) {
    loop {
        for r in running.iter_mut() {
            if let Ok(Some(status)) = r.child.try_wait() {
                return (r.name, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to each service (they drain and flush traces), SIGKILL if one hangs.
async fn stop_all(running: &mut [Running]) {
    for r in running.iter() {
        if let Some(pid) = r.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for r in running.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(15), r.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("[mlmesh up] {} did not stop within 15s; killing it", r.name);
                let _ = r.child.kill().await;
            }
        }
    }
}

fn print_banner(args: &UpArgs, fe: SocketAddr, fs: SocketAddr, v1: SocketAddr, v2: SocketAddr) {
    let store = match &args.redis_url {
        Some(r) => format!(
            "Redis at {} (with the event log, stream {})",
            mesh_kit::config::redact_url(r),
            events::STREAM_KEY
        ),
        None => "embedded store, seeded".to_owned(),
    };
    println!(
        r#"
mlmesh is up: direct routing, {canary}% canary on v2, shadow {shadow}, features from {store},
models called over {protocol}

  app (frontend)   http://{fe}/
  feature-store    http://{fs}/v1/features/42
  model v1         http://{v1}/v2/models/propensity
  model v2         http://{v2}/v2/models/propensity
  metrics          http://{fe}/metrics (and on every service)

Try:
  curl "http://{fe}/predict?user_id=42"
  curl -H "x-user-group: beta" "http://{fe}/predict?user_id=42"
  for i in $(seq 1 200); do curl -s "http://{fe}/predict?user_id=$i" -o /dev/null -w '%header{{x-model-version}}\n'; done | sort | uniq -c

Ctrl-C stops everything.
"#,
        canary = args.canary_percent,
        shadow = if args.shadow { "on" } else { "off" },
        protocol = args.model_protocol,
    );
}
