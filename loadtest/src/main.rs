//! `mlmesh-loadtest`: wiring only (see the library for the load and report).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use loadtest::{Config, Target, expect, run, users};

// The tool shares the machine with what it measures: glibc malloc was a
// tenth of its instructions per request (BENCHMARKS.md, "Load generator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mlmesh-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cfg = Config::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cfg.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    let users = match cfg.target {
        Target::Get => Vec::from([users::User {
            id: "-".into(),
            purchased: false,
            beta: false,
            features: Vec::new(),
        }]),
        _ => users::load(&cfg.users_file, cfg.all_users, cfg.beta_share, cfg.seed).context(
            "loading simulated users (run from the repository root or pass --users-file)",
        )?,
    };
    let report = rt.block_on(run::run(&cfg, users))?;
    print!("{}", report.render());
    if let Some(path) = &cfg.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = expect::violations(&cfg, &report);
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failed {
            println!("FAILED: {f}");
        }
        Ok(ExitCode::from(1))
    }
}
