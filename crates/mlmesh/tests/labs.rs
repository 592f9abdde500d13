//! `docs/labs/`: every local command block is run, and every cluster block
//! names only files, flags and settings that exist.
//!
//! The fence tags (docs/labs/README.md documents them for readers):
//! - ```` ```sh lab-up ```` — one `mlmesh up …` line: the stack the next
//!   blocks run against (restarted with these flags, on free ports).
//! - ```` ```sh lab ```` (or `lab exit=N`) — run with bash against that stack;
//!   it must exit 0 (or N). An ```` ```text expect ```` block right after it
//!   lists lines its output must contain, `…` standing for anything.
//! - ```` ```sh cluster ```` and ```` ```sh compose ```` — need kind or
//!   Docker images this machine cannot pull: checked, not run.
//!
//! The pages say `127.0.0.1:8080` (and 8081–8083), the ports `mlmesh up`
//! uses; the test rewrites them to the free ports it took, and sets
//! `MLMESH_PORT` so `mlmesh analyze`'s defaults follow.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, documented_env, help, repo};

const LABS: &str = "docs/labs";

/// The lab pages, one per exercise, in the order the index lists them.
const PAGES: &[&str] = &[
    "kiali-buggy-canary.md",
    "course-assignment.md",
    "service-mesh-lab.md",
    "microservices-tutorial.md",
    "deployment-patterns.md",
];

/// How long one block may run (a whole load test with feedback included).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Block {
    /// The page and the fence's line, for messages.
    at: String,
    tag: String,
    options: Vec<String>,
    body: String,
}

/// Every fenced block of `text` with a tag after its language.
fn blocks(page: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Vec<String>, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((
                        n + 1,
                        info.split_whitespace().map(str::to_owned).collect(),
                        String::new(),
                    ));
                }
            }
            Some((start, info, body)) => {
                if trimmed == "```" {
                    if info.len() >= 2 {
                        out.push(Block {
                            at: format!("{page}:{start}"),
                            tag: info[1].clone(),
                            options: info[2..].to_vec(),
                            body: std::mem::take(body),
                        });
                    }
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{page}: a code fence is never closed");
    out
}

fn page_text(page: &str) -> String {
    let path = repo().join(LABS).join(page);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The four ports `mlmesh up` takes, consecutive as its defaults are, so
/// that `MLMESH_PORT` alone tells `mlmesh analyze` where they are.
fn consecutive_ports() -> u16 {
    for _ in 0..200 {
        let base = test_support::redis_server::free_port();
        if base > 65000 {
            continue;
        }
        let free = (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no four consecutive free ports");
}

/// The pages' ports (`mlmesh up`'s defaults) moved to the test's.
fn rewrite_ports(text: &str, base: u16) -> String {
    let mut out = text.to_owned();
    for i in 0..4u16 {
        for host in ["127.0.0.1", "localhost"] {
            out = out.replace(
                &format!("{host}:{}", 8080 + i),
                &format!("127.0.0.1:{}", base + i),
            );
        }
    }
    out
}

/// Where the blocks run: a fresh directory whose entries link to the
/// repository's (so `models/`, `experiments/`, `istio/` … resolve as in a
/// checkout) while the files a block writes stay out of the repository.
fn workdir(page: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mlmesh-lab-{}-{}",
        std::process::id(),
        page.trim_end_matches(".md")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(repo()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        std::os::unix::fs::symlink(entry.path().canonicalize().unwrap(), dir.join(&name)).unwrap();
    }
    dir
}

/// The directory holding the debug `mlmesh` and `mlmesh-loadtest` binaries,
/// put first on the blocks' PATH as the pages' setup puts target/release.
fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_mlmesh"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        dir.join("mlmesh-loadtest").exists(),
        "{}/mlmesh-loadtest is missing: `cargo test --workspace` (scripts/test.sh) builds it, \
         or `cargo build -p loadtest`",
        dir.display()
    );
    dir
}

/// Runs `body` with bash (errexit, pipefail); returns its exit code and
/// everything it printed.
fn run_block(body: &str, dir: &Path, port: u16) -> (i32, String) {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out_file = dir.join(".block-output");
    let out = std::fs::File::create(&out_file).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\n{body}"))
        .current_dir(dir)
        .env("PATH", path)
        .env("MLMESH_PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "REDIS_URL",
        "CANARY_PERCENT",
        "TOKIO_WORKER_THREADS",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + BLOCK_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a block ran longer than {BLOCK_TIMEOUT:?}:\n{body}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = std::fs::read_to_string(&out_file).unwrap_or_default();
    (status.code().unwrap_or(-1), printed)
}

/// Each expected line must appear in some printed line, its `…`-separated
/// pieces in order.
fn missing_lines(expected: &str, printed: &str) -> Vec<String> {
    expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|want| {
            let pieces: Vec<&str> = want.split('…').filter(|p| !p.is_empty()).collect();
            !printed.lines().any(|line| {
                let mut rest = line;
                pieces.iter().all(|p| match rest.find(p) {
                    Some(i) => {
                        rest = &rest[i + p.len()..];
                        true
                    }
                    None => false,
                })
            })
        })
        .map(str::to_owned)
        .collect()
}

/// The flags of `mlmesh up` a `lab-up` block gives (port flags are the test's).
fn up_args(block: &Block) -> Vec<String> {
    let lines: Vec<&str> = block
        .body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [line] = lines[..] else {
        panic!("{}: a lab-up block is one `mlmesh up …` line", block.at)
    };
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    assert!(
        words.len() >= 2 && words[0] == "mlmesh" && words[1] == "up",
        "{}: a lab-up block runs `mlmesh up`, not {line:?}",
        block.at
    );
    assert!(
        !line.contains(['"', '\'', '$', '\\']),
        "{}: keep lab-up flags free of quoting: {line:?}",
        block.at
    );
    words[2..].to_vec()
}

/// One stack at a time: the pages' verdicts include a latency guardrail,
/// which six stacks sharing two cores would turn into noise.
static ONE_STACK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_stack() -> std::sync::MutexGuard<'static, ()> {
    ONE_STACK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs every local block of `page` in order; returns how many ran.
fn run_page(page: &str) -> usize {
    let _alone = one_stack();
    let text = page_text(page);
    let all = blocks(page, &text);
    let dir = workdir(page);
    let mut stack: Option<(Stack, u16)> = None;
    let mut ran = 0;
    for (i, block) in all.iter().enumerate() {
        match block.tag.as_str() {
            "lab-up" => {
                if let Some((old, _)) = stack.take() {
                    assert!(
                        old.stop().success(),
                        "{}: the previous stack did not stop cleanly",
                        block.at
                    );
                }
                let base = consecutive_ports();
                let args = up_args(block);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                println!("== {}: mlmesh up {}", block.at, args.join(" "));
                let ports = [base, base + 1, base + 2, base + 3];
                stack = Some((Stack::start(ports, &args, &[]), base));
            }
            "lab" => {
                let Some((_, base)) = &stack else {
                    panic!("{}: a lab block before any lab-up block", block.at)
                };
                let want: i32 = block
                    .options
                    .iter()
                    .find_map(|o| o.strip_prefix("exit="))
                    .map_or(0, |n| n.parse().unwrap());
                let body = rewrite_ports(&block.body, *base);
                println!("== {}:\n{}", block.at, body.trim_end());
                let (code, printed) = run_block(&body, &dir, *base);
                println!("{}", printed.trim_end());
                assert_eq!(
                    code, want,
                    "{}: exit code; it printed:\n{printed}",
                    block.at
                );
                if let Some(next) = all.get(i + 1).filter(|b| b.tag == "expect") {
                    assert!(
                        next.body.lines().any(|l| !l.trim().is_empty()),
                        "{}: an empty expect block",
                        next.at
                    );
                    let missing = missing_lines(&rewrite_ports(&next.body, *base), &printed);
                    assert!(
                        missing.is_empty(),
                        "{}: expected lines not printed: {missing:#?}\nit printed:\n{printed}",
                        block.at
                    );
                }
                ran += 1;
            }
            "expect" => assert!(
                i > 0 && all[i - 1].tag == "lab",
                "{}: an expect block follows the lab block it belongs to",
                block.at
            ),
            "cluster" | "compose" => {}
            other => panic!(
                "{}: unknown block tag {other:?} (lab-up, lab, expect, cluster, compose)",
                block.at
            ),
        }
    }
    if let Some((s, _)) = stack {
        assert!(s.stop().success(), "{page}: the stack did not stop cleanly");
    }
    let _ = std::fs::remove_dir_all(&dir);
    ran
}

macro_rules! page_runs {
    ($($test:ident => $page:literal,)*) => {$(
        #[test]
        fn $test() {
            assert!(PAGES.contains(&$page));
            let ran = run_page($page);
            assert!(ran > 0, "{}: no local block ran", $page);
            println!("{}: {ran} local blocks ran", $page);
        }
    )*};
}

page_runs! {
    kiali_lab_runs_locally => "kiali-buggy-canary.md",
    course_assignment_runs_locally => "course-assignment.md",
    service_mesh_lab_runs_locally => "service-mesh-lab.md",
    microservices_tutorial_runs_locally => "microservices-tutorial.md",
    deployment_patterns_run_locally => "deployment-patterns.md",
}

/// The index and the README's first screen lead to every page, and every
/// page in `docs/labs/` is one of them.
#[test]
fn every_lab_page_is_linked_from_the_index_and_the_readme() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let first_screen: String = readme.lines().take(40).collect::<Vec<_>>().join("\n");
    assert!(
        first_screen.contains("(docs/labs/"),
        "README.md's first screen links docs/labs/"
    );
    let index = page_text("README.md");
    for page in PAGES {
        assert!(
            index.contains(&format!("]({page})")),
            "docs/labs/README.md links {page}"
        );
        assert!(repo().join(LABS).join(page).exists(), "{page} exists");
    }
    for entry in std::fs::read_dir(repo().join(LABS)).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") && name != "README.md" {
            assert!(
                PAGES.contains(&name.as_str()),
                "docs/labs/{name} is not in PAGES: is it tested?"
            );
        }
    }
}

/// Top-level directories of the repository a command may name.
const REPO_DIRS: &[&str] = &[
    "k8s/",
    "istio/",
    "docker/",
    "experiments/",
    "models/",
    "docs/",
    "scripts/",
    "examples/",
];

/// The Istio API experiments that route model-inference, each with a
/// Gateway API twin under istio/gateway-api/.
const ROUTING_EXPERIMENTS: &[&str] = &[
    "baseline",
    "canary",
    "sticky",
    "shadow",
    "promote",
    "blue-green/blue",
    "blue-green/green",
];

/// Words of a command line, continuation lines joined, quotes and shell
/// punctuation around each word removed.
fn command_lines(body: &str) -> Vec<Vec<String>> {
    body.replace("\\\n", " ")
        .lines()
        .map(|l| l.split(" #").next().unwrap_or(""))
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| {
            l.split_whitespace()
                // `X=$(mlmesh token …)`: the command starts inside.
                .map(|w| w.rsplit("$(").next().unwrap_or(w))
                .map(|w| {
                    w.trim_matches(|c: char| "`'\"(),;".contains(c))
                        .trim_start_matches('$')
                        .to_owned()
                })
                .collect()
        })
        .collect()
}

/// A word that ends a command: what follows is another program.
fn ends_command(word: &str) -> bool {
    ["|", "&&", "||", "&", ";", ">", "2>&1"].contains(&word)
}

/// Whether `help` (whitespace-joined `--help` output) documents `flag`.
fn documents(help: &str, flag: &str) -> bool {
    help.split_whitespace()
        .map(|w| w.trim_matches(|c: char| ",[]".contains(c)))
        .any(|w| {
            w == flag || w.starts_with(&format!("{flag}=")) || w.starts_with(&format!("{flag}<"))
        })
}

/// Env names a Deployment's container reads, by Deployment name.
fn deployment_env(deploy: &str) -> BTreeSet<String> {
    let mut env = match deploy {
        "frontend" => documented_env(&["frontend"]),
        "feature-store" => documented_env(&["feature-store"]),
        "model-inference-v1" | "model-inference-v2" | "model-inference" => {
            documented_env(&["model-inference"])
        }
        "verdict" => documented_env(&["analyze", "serve"]),
        other => panic!("set env on a Deployment mlmesh does not have: {other}"),
    };
    env.extend(common::RUNTIME_ENV.iter().map(|s| (*s).to_owned()));
    env
}

/// `mlmesh up --set SERVICE.VAR=…`: the service's subcommand.
fn up_service(service: &str) -> &'static [&'static str] {
    match service {
        "frontend" => &["frontend"],
        "feature-store" => &["feature-store"],
        "v1" | "v2" => &["model-inference"],
        other => panic!("--set names no service of mlmesh up: {other}"),
    }
}

/// Problems with the files, flags and settings `words` (one command line) names.
fn command_problems(words: &[String], loadtest_help: &str, up_sh: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, word) in words.iter().enumerate() {
        // Repository paths, wherever they appear.
        let path = word.split('=').next_back().unwrap_or(word);
        if REPO_DIRS.iter().any(|d| path.starts_with(d))
            && !path.contains(['<', '*', '$'])
            && !repo().join(path).exists()
        {
            problems.push(format!("`{path}` is no file of the repository"));
        }
        let rest = &words[i + 1..];
        let command: Vec<&String> = rest.iter().take_while(|w| !ends_command(w)).collect();
        let flags = || {
            command
                .iter()
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap().to_owned())
        };
        match word.as_str() {
            "mlmesh" => {
                let Some(sub) = command.first().map(|s| s.as_str()) else {
                    continue;
                };
                let sub: Vec<&str> = match sub {
                    "analyze" if command.get(1).is_some_and(|w| *w == "serve") => {
                        vec!["analyze", "serve"]
                    }
                    "up" | "analyze" | "token" | "healthcheck" | "frontend" | "model-inference"
                    | "feature-store" => vec![sub],
                    _ => continue, // `-p mlmesh` of cargo, prose
                };
                let h = help(&sub);
                for flag in flags() {
                    if flag != "--" && !documents(&h, &flag) {
                        problems.push(format!("`mlmesh {}` has no flag {flag}", sub.join(" ")));
                    }
                }
                if sub == ["up"] {
                    for pair in command.windows(2) {
                        if pair[0] == "--set" {
                            let (service, var) = pair[1].split_once('.').unwrap_or((pair[1], ""));
                            let var = var.split('=').next().unwrap();
                            let mut known = documented_env(up_service(service));
                            known.extend(common::RUNTIME_ENV.iter().map(|s| (*s).to_owned()));
                            if !known.contains(var) {
                                problems
                                    .push(format!("`--set {}`: {service} reads no {var}", pair[1]));
                            }
                        }
                    }
                }
            }
            "mlmesh-loadtest" => {
                for flag in flags() {
                    if !documents(loadtest_help, &flag) {
                        problems.push(format!("mlmesh-loadtest has no flag {flag}"));
                    }
                }
            }
            w if w.ends_with("k8s/kind/up.sh") => {
                for flag in flags() {
                    if !up_sh.contains(&format!("{flag})")) && !up_sh.contains(&format!("{flag} |"))
                    {
                        problems.push(format!("k8s/kind/up.sh takes no {flag}"));
                    }
                }
            }
            "set" if command.first().is_some_and(|w| *w == "env") => {
                let Some(deploy) = command
                    .iter()
                    .find_map(|w| w.strip_prefix("deploy/").or(w.strip_prefix("deployment/")))
                else {
                    continue;
                };
                let known = deployment_env(deploy);
                for setting in command.iter().skip(1) {
                    let var = setting.split('=').next().unwrap().trim_end_matches('-');
                    let is_var = !var.is_empty()
                        && var
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                    if is_var
                        && (setting.contains('=') || setting.ends_with('-'))
                        && !known.contains(var)
                    {
                        problems.push(format!("deploy/{deploy} reads no {var}"));
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

/// Every block of every page (run or not) names only real files, flags of
/// the real binaries, settings the services read and real up.sh options;
/// a page that routes with an Istio API experiment also gives its Gateway
/// API twin.
#[test]
fn every_block_names_only_real_files_flags_and_settings() {
    let loadtest = Command::new(bin_dir().join("mlmesh-loadtest"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(loadtest.status.success());
    let loadtest_help = String::from_utf8(loadtest.stdout).unwrap();
    let up_sh = std::fs::read_to_string(repo().join("k8s/kind/up.sh")).unwrap();
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut tags = BTreeSet::new();
    for page in PAGES.iter().copied().chain(["README.md"]) {
        let text = page_text(page);
        for block in blocks(page, &text) {
            tags.insert(block.tag.clone());
            if block.tag == "expect" {
                continue;
            }
            for words in command_lines(&block.body) {
                checked += 1;
                for p in command_problems(&words, &loadtest_help, &up_sh) {
                    problems.push(format!("{}: {p}", block.at));
                }
            }
        }
        if page != "README.md" {
            assert!(
                text.contains("mbient mode"),
                "{page}: says where ambient mode differs"
            );
        }
        for experiment in ROUTING_EXPERIMENTS {
            let istio = format!("istio/{experiment}/");
            let gateway = format!("istio/gateway-api/{experiment}/");
            let names = |p: &str| {
                text.split_whitespace()
                    .any(|w| w.trim_matches(|c: char| "`'\"(),;:.".contains(c)) == p)
            };
            if names(&istio) && !names(&gateway) {
                problems.push(format!(
                    "{page}: applies {istio} but never its Gateway API twin {gateway}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        checked > 100,
        "only {checked} command lines checked: is the parsing broken?"
    );
    for tag in ["lab-up", "lab", "expect", "cluster"] {
        assert!(
            tags.contains(tag),
            "no {tag} block in docs/labs: is the parsing broken?"
        );
    }
}

/// The checker itself catches what it is for (a checker that passes
/// everything would make the test above pass too).
#[test]
fn the_block_checker_catches_made_up_files_flags_and_settings() {
    let loadtest_help = "--feedback --expect-share <VERSION=PCT±TOL>";
    let up_sh = "        --api)\n        --ambient) ambient=true";
    let cases = [
        ("kubectl apply -f istio/canary-typo/", "no file"),
        (
            "mlmesh analyze --verdict-please",
            "no flag --verdict-please",
        ),
        (
            "mlmesh up --set v2.FAULT_ERROR_RAT=0.5",
            "reads no FAULT_ERROR_RAT",
        ),
        (
            "mlmesh-loadtest http://localhost:8080 --feedbak",
            "no flag --feedbak",
        ),
        (
            "ISTIO_DIR=~/istio k8s/kind/up.sh --ambiant",
            "takes no --ambiant",
        ),
        (
            "kubectl -n mlmesh set env deploy/model-inference-v2 FAULT_ERROR_RATES=0.5",
            "reads no FAULT_ERROR_RATES",
        ),
        (
            "BETA=$(mlmesh token --user 42 --grup beta)",
            "no flag --grup",
        ),
    ];
    for (line, want) in cases {
        let words = &command_lines(line)[0];
        let problems = command_problems(words, loadtest_help, up_sh);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{line:?} should report {want:?}: {problems:?}"
        );
    }
    let fine = "kubectl -n mlmesh set env deploy/model-inference-v2 FAULT_ERROR_RATE=0.5 FAULT_DELAY- && mlmesh-loadtest http://x --feedback";
    assert_eq!(
        command_problems(&command_lines(fine)[0], loadtest_help, up_sh),
        Vec::<String>::new()
    );
    assert_eq!(
        missing_lines("a…c\n\n  b  ", "xaybzc\n"),
        Vec::<String>::new()
    );
    assert_eq!(missing_lines("c…a", "abc"), vec!["c…a".to_owned()]);
}

/// The tutorial's header propagation section names exactly the list the
/// services forward, and where it is defined.
#[test]
fn the_header_propagation_step_names_the_forwarded_headers() {
    let text = page_text("microservices-tutorial.md");
    assert!(
        text.contains("crates/mesh-kit/src/propagation.rs"),
        "points at the one list"
    );
    for header in mesh_kit::propagation::FORWARDED_HEADERS {
        assert!(
            text.contains(&format!("`{header}`")),
            "names the forwarded header {header}"
        );
    }
    for header in ["traceparent", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"] {
        assert!(
            text.contains(&format!("`{header}`")),
            "names the trace header {header}"
        );
    }
}

/// The report screenshot the course assignment shows is a real PNG of a
/// sensible size, beside the write-up and JSON of the same run.
#[test]
fn the_committed_report_screenshot_is_a_png() {
    let path = repo().join(LABS).join("example/report.png");
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(width >= 800 && height >= 600, "{width}x{height}");
    assert!(png.len() > 20_000, "{} bytes: a blank page?", png.len());
    assert!(page_text("course-assignment.md").contains("(example/report.png)"));
    // The same run's write-up and JSON, as `mlmesh analyze` writes them.
    let json = std::fs::read_to_string(repo().join(LABS).join("example/report.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["schema"], "mlmesh.analyze/v1");
    assert_eq!(json["verdict"], "rollback");
    let md = page_text("example/report.md");
    assert!(md.starts_with("# Experiment: caravan-offer"), "{md}");
    assert!(md.contains("**Verdict: `rollback`**"));
}

/// Every `mlmesh_*` metric a page names (in a PromQL query or a `grep`) is
/// one the running services expose, once customers have been served with
/// feedback and a shadow.
#[test]
fn every_metric_the_labs_name_is_exposed() {
    let _alone = one_stack();
    let stack = Stack::start(Stack::ports(), &["--shadow", "--canary-percent", "50"], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(common::load(&stack, &["--requests-per-user", "2"]));
    let mut names = BTreeSet::new();
    let urls = [
        stack.frontend.clone(),
        format!("http://127.0.0.1:{}", stack.feature_store_port),
        format!("http://127.0.0.1:{}", stack.v1_port),
        format!("http://127.0.0.1:{}", stack.v2_port),
    ];
    for url in urls {
        let text = runtime.block_on(async {
            let res = reqwest::get(format!("{url}/metrics")).await.unwrap();
            res.text().await.unwrap()
        });
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            names.insert(name.to_owned());
            for suffix in ["_total", "_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    names.insert(base.to_owned());
                }
            }
        }
    }
    let metric = regex::Regex::new(r"\bmlmesh_[a-z0-9_]*[a-z0-9]").unwrap();
    // Not metrics: the beta group's cookie.
    let not_metrics = ["mlmesh_group"];
    let mut named = 0;
    for page in PAGES.iter().copied().chain(["README.md"]) {
        for m in metric.find_iter(&page_text(page)) {
            let token = m.as_str();
            if not_metrics.contains(&token) {
                continue;
            }
            named += 1;
            assert!(
                names.contains(token),
                "{page} names {token}, which no service exposes"
            );
        }
    }
    assert!(named >= 10, "only {named} metric names found in docs/labs");
    drop(stack);
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (fenced code left out: a `#`
/// there is a shell comment).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// Every relative link of the lab pages leads somewhere: the file exists
/// and, with an anchor, so does the heading.
#[test]
fn every_link_in_the_labs_resolves() {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in PAGES.iter().copied().chain(["README.md"]) {
        let text = page_text(page);
        for cap in link.captures_iter(&text) {
            let target = &cap[1];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if path.is_empty() {
                repo().join(LABS).join(page)
            } else {
                repo().join(LABS).join(path)
            };
            if !file.exists() {
                broken.push(format!("{page}: {target}: no such file"));
                continue;
            }
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&file).unwrap();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{page}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
    assert!(checked >= 20, "only {checked} links checked");
    assert_eq!(
        slug(" A shadow launch, per request: `--event-log-url`"),
        "a-shadow-launch-per-request---event-log-url"
    );
}

/// `kubectl` subcommands of two words the pages use; any other is one word.
const KUBECTL_TWO_WORD: &[&str] = &[
    "set env",
    "rollout status",
    "create secret",
    "create namespace",
];

/// Every flag a page gives `kubectl` is one that kubectl subcommand (or
/// kubectl itself) has, asked of the real kubectl. Without one here the
/// test says so and passes, unless MLMESH_REQUIRE_KUBECTL=1 (CI, where
/// `.ci/run` needs kubectl anyway).
#[test]
fn every_kubectl_flag_is_real() {
    let required = std::env::var("MLMESH_REQUIRE_KUBECTL").is_ok_and(|v| v == "1");
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        assert!(
            !required,
            "MLMESH_REQUIRE_KUBECTL=1 but there is no kubectl"
        );
        println!("SKIP: no kubectl here to ask for its flags");
        return;
    }
    let kubectl_help = |sub: &[&str]| -> String {
        let out = Command::new("kubectl")
            .args(sub)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {sub:?} --help: is it a kubectl subcommand?"
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let global = String::from_utf8(
        Command::new("kubectl")
            .arg("options")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut helps: std::collections::BTreeMap<String, String> = Default::default();
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in PAGES.iter().copied().chain(["README.md"]) {
        for block in blocks(page, &page_text(page)) {
            if block.tag == "expect" {
                continue;
            }
            for words in command_lines(&block.body) {
                for (i, _) in words.iter().enumerate().filter(|(_, w)| *w == "kubectl") {
                    // The command up to its end or `--` (what follows is the pod's command).
                    let command: Vec<&str> = words[i + 1..]
                        .iter()
                        .map(String::as_str)
                        .take_while(|w| !ends_command(w) && *w != "--")
                        .collect();
                    let mut rest = command.iter().copied().peekable();
                    let mut sub = Vec::new();
                    let mut flags = Vec::new();
                    while let Some(w) = rest.next() {
                        if w.starts_with('-') {
                            flags.push(w.split('=').next().unwrap());
                            // A short flag's value is the next word: -n mlmesh, -f dir/, -c frontend.
                            if ["-n", "-f", "-c", "-l", "-o", "-k"].contains(&w) {
                                rest.next();
                            }
                        } else if sub.len() < 2 && flags.iter().all(|f| *f == "-n") {
                            sub.push(w);
                        }
                    }
                    let sub = match sub.as_slice() {
                        [a, b, ..] if KUBECTL_TWO_WORD.contains(&format!("{a} {b}").as_str()) => {
                            vec![*a, *b]
                        }
                        [a, ..] => vec![*a],
                        [] => continue,
                    };
                    let help = helps
                        .entry(sub.join(" "))
                        .or_insert_with(|| kubectl_help(&sub))
                        .clone();
                    for flag in flags {
                        checked += 1;
                        let known = if flag.starts_with("--") {
                            [&help, &global].iter().any(|h| {
                                h.contains(&format!("{flag}=")) || h.contains(&format!("{flag}:"))
                            })
                        } else {
                            [&help, &global]
                                .iter()
                                .any(|h| h.contains(&format!("{flag}, --")))
                        };
                        if !known {
                            problems.push(format!(
                                "{}: `kubectl {}` has no flag {flag}",
                                block.at,
                                sub.join(" ")
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        checked >= 40,
        "only {checked} kubectl flags checked: is the parsing broken?"
    );
    println!(
        "{checked} kubectl flags checked against kubectl's own help ({} subcommands)",
        helps.len()
    );
}
