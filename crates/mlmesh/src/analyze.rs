//! `mlmesh analyze`: reads the experiment's counters, asks the `experiment`
//! crate for a verdict, prints it, writes the reports, and exits with the
//! verdict's code. Wiring only.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use experiment::source::{Prometheus, Scrape, Source, SourceArgs};
use experiment::{Analysis, Plan, Report, Snapshot, Verdict, render};

use crate::up::{DEFAULT_PORT, V1_OFFSET, V2_OFFSET};

/// `mlmesh analyze [serve]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AnalyzeCmd {
    #[command(subcommand)]
    pub action: Option<AnalyzeAction>,
    #[command(flatten)]
    pub args: AnalyzeArgs,
}

#[derive(Debug, Subcommand)]
pub enum AnalyzeAction {
    /// Serve the verdict over HTTP for Argo Rollouts, Flagger and curl:
    /// GET /v1/verdict?baseline=v1&candidate=v2[&window=10m][&status=ok]
    /// answers the JSON report; 200 promote/continue, 409 rollback, 422
    /// invalid, 502 when the source cannot be read (retry); with status=ok
    /// every verdict is a 200.
    Serve {
        #[command(flatten)]
        server: mesh_kit::ServerArgs,
        #[command(flatten)]
        verdict: verdict::VerdictArgs,
    },
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit codes: 0 promote, 1 rollback, 3 continue, 4 invalid, 2 usage or source error.\n\
Without --window the figures are the counters' totals since the services started; with it, Prometheus takes \
increase() over the window and --scrape the change since analyze's first reading."
)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// The version in production (the `model_version` / `version` label).
    #[arg(long, default_value = "v1")]
    pub baseline: String,

    /// The version under test.
    #[arg(long, default_value = "v2")]
    pub candidate: String,

    /// Judge only this much of the recent past, e.g. 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub window: Option<Duration>,

    /// The experiment plan (YAML) [default: the built-in caravan-offer plan,
    /// experiments/caravan-offer.yaml].
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,

    /// Look again every --interval until the verdict is not `continue`.
    #[arg(long)]
    pub watch: bool,

    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// With --watch: give up (verdict `continue`) after this long.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_duration: Duration,

    /// Per request to a source.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Write the report as JSON (schema mlmesh.analyze/v1).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write the experiment write-up as Markdown.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,

    /// Write a self-contained HTML report.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// The experiment event log (Redis, stream mlmesh:events:v1): adds the
    /// shadow section, the live and the shadow prediction of each request
    /// side by side. May carry a password: never printed.
    #[arg(long, env = "EVENT_LOG_URL", hide_env_values = true)]
    pub event_log_url: Option<String>,

    /// The frontend's offer threshold (DECISION_THRESHOLD), for the shadow
    /// section's decisions.
    #[arg(long, default_value_t = frontend::config::DEFAULT_THRESHOLD)]
    pub threshold: f64,
}

/// Runs the analysis; any error is a usage or source error (exit 2).
pub async fn run(args: AnalyzeArgs) -> ExitCode {
    match analyze(args).await {
        Ok(verdict) => ExitCode::from(verdict.exit_code()),
        Err(e) => {
            eprintln!("mlmesh analyze: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn analyze(args: AnalyzeArgs) -> anyhow::Result<Verdict> {
    if args.baseline == args.candidate {
        anyhow::bail!("--baseline and --candidate are both {}", args.baseline);
    }
    if args.interval.is_zero() {
        anyhow::bail!("--interval must be more than 0");
    }
    let plan = Plan::load_or_default(args.plan.as_deref())?;
    match &args.source.prometheus {
        Some(url) => {
            let source = Prometheus::new(url, args.window, args.timeout);
            // increase() over the window already is the delta.
            looks(&args, plan, &source, false).await
        }
        None => {
            let (frontend, models) = scrape_urls(&args.source);
            let source = Scrape::new(&frontend, &models, args.timeout);
            looks(&args, plan, &source, args.window.is_some()).await
        }
    }
}

/// The services to scrape: as given, or as `mlmesh up` runs them on its
/// frontend port `up_port` (`MLMESH_PORT`, so a moved stack is found the
/// same way it was started).
pub fn scrape_urls(args: &SourceArgs) -> (String, Vec<String>) {
    let port = args.up_port.unwrap_or(DEFAULT_PORT);
    let local = |offset: u16| format!("http://127.0.0.1:{}", port.saturating_add(offset));
    let frontend = args.frontend_url.clone().unwrap_or_else(|| local(0));
    let models = if args.model_urls.is_empty() {
        vec![local(V1_OFFSET), local(V2_OFFSET)]
    } else {
        args.model_urls.clone()
    };
    (frontend, models)
}

/// `mlmesh analyze serve`'s source, from its flags.
pub fn verdict_source(args: &SourceArgs) -> verdict::SourceConfig {
    match &args.prometheus {
        Some(url) => verdict::SourceConfig::Prometheus(url.clone()),
        None => {
            let (frontend, models) = scrape_urls(args);
            verdict::SourceConfig::Scrape { frontend, models }
        }
    }
}

async fn looks<S: Source + Sync>(
    args: &AnalyzeArgs,
    plan: Plan,
    source: &S,
    deltas: bool,
) -> anyhow::Result<Verdict> {
    let window = match (args.window, deltas) {
        (None, _) => "the counters since the services started".to_owned(),
        (Some(w), false) => format!("the last {}", humantime::format_duration(w)),
        (Some(w), true) => format!(
            "the change since analyze started (at least {})",
            humantime::format_duration(w)
        ),
    };
    let color = std::io::stdout().is_terminal();
    let mut analysis = Analysis::new(
        plan,
        &args.baseline,
        &args.candidate,
        &source.describe(),
        &window,
    );
    let first = if deltas {
        let first = source.snapshot().await?;
        let w = args.window.unwrap_or_default();
        eprintln!(
            "read the counters; waiting {} for the window",
            humantime::format_duration(w)
        );
        tokio::time::sleep(w).await;
        Some(first)
    } else {
        None
    };
    let event_log = match &args.event_log_url {
        Some(url) => Some(
            rustis::client::Client::connect(url.as_str())
                .await
                // Not the URL: it may carry a password.
                .map_err(|e| anyhow::anyhow!("connecting to the event log: {e}"))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let mut report: Report;
    loop {
        let now = source.snapshot().await?;
        let snap: Snapshot = match &first {
            Some(f) => now.minus(f)?,
            None => now,
        };
        let logged = match &event_log {
            Some(client) => Some(read_events(client, args).await?),
            None => None,
        };
        // The log counts each user once across every frontend replica.
        let exact_users = logged
            .as_deref()
            .and_then(experiment::snapshot::Users::from_exposures);
        let mut snap = snap;
        if let Some(users) = &exact_users {
            snap.users = users.clone();
        }
        report = analysis.look(&snap);
        report.data.users_from_event_log = exact_users.is_some();
        if let Some(events) = &logged {
            report.shadow = experiment::shadow::compare(
                events,
                &args.baseline,
                &args.candidate,
                args.threshold,
            );
        }
        write_outputs(args, &report)?;
        if !args.watch {
            break;
        }
        println!("{}", render::look_line(&report, color));
        if report.verdict != Verdict::Continue
            || started.elapsed() + args.interval > args.max_duration
        {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if args.watch {
        println!();
    }
    print!("{}", render::text(&report, color));
    Ok(report.verdict)
}

/// The event log's events, over the window when one is set.
async fn read_events(
    client: &rustis::client::Client,
    args: &AnalyzeArgs,
) -> anyhow::Result<Vec<events::Event>> {
    let since = args
        .window
        .map(|w| mesh_kit::clock::unix_now_ms() - i64::try_from(w.as_millis()).unwrap_or(i64::MAX));
    // From the window's start only: a --watch re-reads at every look.
    let entries = events::read_stream(client, since, 10_000)
        .await
        .map_err(|e| anyhow::anyhow!("reading the event log: {e}"))?;
    let mut undecodable = 0;
    let events: Vec<events::Event> = entries
        .into_iter()
        .filter_map(|(_, e)| e.map_err(|_| undecodable += 1).ok())
        .filter(|e| since.is_none_or(|s| e.time_ms() >= s))
        .collect();
    if undecodable > 0 {
        eprintln!(
            "mlmesh analyze: {undecodable} event-log entries did not decode and were left out"
        );
    }
    Ok(events)
}

fn write_outputs(args: &AnalyzeArgs, report: &Report) -> anyhow::Result<()> {
    let write = |path: &PathBuf, body: String| {
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))
    };
    if let Some(p) = &args.json {
        write(
            p,
            serde_json::to_string_pretty(report).context("encoding the report")? + "\n",
        )?;
    }
    if let Some(p) = &args.markdown {
        write(p, render::markdown(report))?;
    }
    if let Some(p) = &args.html {
        write(p, render::html(report))?;
    }
    Ok(())
}
