//! Running the real `mlmesh` binary: single services and whole `mlmesh up`
//! stacks on free loopback ports, stopped with real signals.
#![allow(dead_code)] // each test binary uses a different subset

pub mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use test_support::redis_server::free_port;

/// The repository root, where `models/`, `docker/`, `k8s/` and `istio/` are.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn models() -> PathBuf {
    repo().join("models")
}

/// The developer's own OTLP endpoint and service config, which a test's
/// processes must not inherit.
pub const INHERITED_CONFIG: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "REDIS_URL",
    "CANARY_PERCENT",
    "LISTEN_ADDR",
    "TOKIO_WORKER_THREADS",
];

/// The binary under test, with no inherited OTLP endpoint or service config.
pub fn mlmesh() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlmesh"));
    for var in INHERITED_CONFIG {
        cmd.env_remove(var);
    }
    // model-inference's gRPC default (:9000) would collide between tests
    // running at once; other subcommands do not read it.
    cmd.env("GRPC_LISTEN", "127.0.0.1:0");
    cmd
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

pub fn sigterm(child: &Child) {
    signal(child, "TERM");
}

pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "mlmesh did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mlmesh <args> --help`, with line wrapping undone so `[env: X=]` and
/// flag names are never split. Run once per `args` and kept: the manifest
/// checks ask for the same few subcommands thousands of times.
pub fn help(args: &[&str]) -> String {
    static SEEN: std::sync::Mutex<BTreeMap<Vec<String>, String>> =
        std::sync::Mutex::new(BTreeMap::new());
    let key: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    if let Some(h) = SEEN.lock().unwrap().get(&key) {
        return h.clone();
    }
    let out = mlmesh().args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "mlmesh {args:?} --help");
    let h = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    SEEN.lock().unwrap().insert(key, h.clone());
    h
}

/// Env names `mlmesh <args> --help` documents.
pub fn documented_env(args: &[&str]) -> BTreeSet<String> {
    help(args)
        .split("[env: ")
        .skip(1)
        .map(|s| s.split(['=', ']']).next().unwrap().to_owned())
        .collect()
}

/// Read by the OpenTelemetry SDK, tracing or tokio, not by clap.
pub const RUNTIME_ENV: &[&str] = &[
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
    // The runtime's thread count (`mlmesh up` and compose set 1).
    "TOKIO_WORKER_THREADS",
];

/// Polls `/readyz` until it answers 200 (panics after `within`).
pub async fn wait_ready(base: &str, within: Duration) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One service process; SIGKILLed on drop if still running.
pub struct Proc {
    pub child: Child,
    pub base: String,
}

impl Proc {
    /// `mlmesh <args...> --listen 127.0.0.1:<port>` with `env`, ready.
    pub async fn start(args: &[&str], port: u16, env: &[(&str, String)]) -> Self {
        let mut cmd = mlmesh();
        cmd.args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("DRAIN_DELAY", "0s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn mlmesh");
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base, Duration::from_secs(60)).await;
        Self { child, base }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mlmesh up` flags for a candidate that fails half its calls, on half
/// the customers: what a verdict must roll back.
pub const FAILING_CANDIDATE: &[&str] =
    &["--canary-percent", "50", "--set", "v2.FAULT_ERROR_RATE=0.5"];

/// A whole `mlmesh up` stack on four free ports.
pub struct Stack {
    pub child: Child,
    /// Everything `mlmesh up` printed on stdout so far.
    pub stdout: std::sync::Arc<std::sync::Mutex<String>>,
    pub frontend: String,
    pub feature_store_port: u16,
    pub v1_port: u16,
    pub v2_port: u16,
}

impl Stack {
    pub fn ports() -> [u16; 4] {
        let mut ports = [0u16; 4];
        for i in 0..4 {
            // free_port can hand out the same port twice; the stack needs four distinct ones.
            ports[i] = loop {
                let p = free_port();
                if !ports[..i].contains(&p) {
                    break p;
                }
            };
        }
        ports
    }

    /// `mlmesh up` with `args` (after the port flags) and `env`; waits for the banner.
    pub fn start(ports: [u16; 4], args: &[&str], env: &[(&str, String)]) -> Self {
        let [fe, fs, v1, v2] = ports;
        let mut cmd = mlmesh();
        cmd.current_dir(models().join(".."))
            .args(["up", "--port", &fe.to_string()])
            .args(["--feature-store-port", &fs.to_string()])
            .args(["--model-v1-port", &v1.to_string()])
            .args(["--model-v2-port", &v2.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn mlmesh up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let keep = printed.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut all = keep.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
                drop(all);
                if !sent && line.starts_with("mlmesh is up") {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("mlmesh up prints its banner once everything is ready");
        assert!(banner.contains("direct routing"), "{banner}");
        Self {
            child,
            stdout: printed,
            frontend: format!("http://127.0.0.1:{fe}"),
            feature_store_port: fs,
            v1_port: v1,
            v2_port: v2,
        }
    }

    /// Ctrl-C, as a person stops it; returns how `mlmesh up` exited.
    pub fn stop(mut self) -> ExitStatus {
        signal(&self.child, "INT");
        wait_exit(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(&self.child, "TERM");
            let _ = wait_exit(&mut self.child, Duration::from_secs(30));
        }
    }
}

/// Customers through `stack`'s frontend with feedback, as the load tool
/// runs them (`args` are its flags); prints and returns its report.
pub async fn load(stack: &Stack, args: &[&str]) -> loadtest::Report {
    use clap::Parser as _;
    let mut argv = vec!["mlmesh-loadtest", stack.frontend.as_str(), "--feedback"];
    argv.extend_from_slice(args);
    let mut cfg = loadtest::Config::try_parse_from(argv).unwrap();
    cfg.users_file = models().join("customers.csv");
    cfg.quiet = true;
    let users =
        loadtest::users::load(&cfg.users_file, cfg.all_users, cfg.beta_share, cfg.seed).unwrap();
    let r = loadtest::run::run(&cfg, users).await.unwrap();
    println!("{}", r.render());
    r
}

impl Stack {
    /// `--scrape` arguments of `mlmesh analyze` (and `analyze serve`) for this stack.
    pub fn scrape_args(&self) -> Vec<String> {
        vec![
            "--scrape".into(),
            "--frontend-url".into(),
            self.frontend.clone(),
            "--model-url".into(),
            format!("http://127.0.0.1:{}", self.v1_port),
            "--model-url".into(),
            format!("http://127.0.0.1:{}", self.v2_port),
        ]
    }
}

/// Argo's condition language (expr), for the forms the template uses:
/// `result.<field> == "<text>"` or `!=`, joined by `||` and `&&` (`&&`
/// binding tighter). Anything else fails the test, so a template that
/// outgrows this is noticed.
pub fn argo_condition(expr: &str, result: &serde_json::Value) -> bool {
    expr.split("||").any(|any| {
        any.split("&&").all(|term| {
            let term = term.trim();
            let (lhs, rhs, equal) = if let Some((l, r)) = term.split_once("==") {
                (l, r, true)
            } else if let Some((l, r)) = term.split_once("!=") {
                (l, r, false)
            } else {
                panic!("unsupported condition {term:?}")
            };
            let field = lhs
                .trim()
                .strip_prefix("result.")
                .unwrap_or_else(|| panic!("{term:?}"));
            let want = rhs
                .trim()
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'));
            let want = want.unwrap_or_else(|| panic!("{term:?}: compare with a string"));
            (result[field].as_str() == Some(want)) == equal
        })
    })
}
