//! Running a page's local blocks: the stack a `lab-up` block names, each
//! `lab` block with bash against it, its output held to the `expect` block.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{self, Stack, repo};
use super::markdown::{Block, blocks};
use super::page_text;

/// How long one block may run (a whole load test with feedback included).
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// The four ports `mlmesh up` takes, consecutive as its defaults are, so
/// that `MLMESH_PORT` alone tells `mlmesh analyze` where they are.
pub fn consecutive_ports() -> u16 {
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
pub fn rewrite_ports(text: &str, base: u16) -> String {
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
pub fn workdir(page: &str) -> PathBuf {
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
pub fn bin_dir() -> PathBuf {
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
pub fn run_block(body: &str, dir: &Path, port: u16) -> (i32, String) {
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
    for var in common::INHERITED_CONFIG {
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
pub fn missing_lines(expected: &str, printed: &str) -> Vec<String> {
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
pub fn up_args(block: &Block) -> Vec<String> {
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
pub static ONE_STACK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn one_stack() -> std::sync::MutexGuard<'static, ()> {
    ONE_STACK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs every local block of `page` in order; returns how many ran.
pub fn run_page(page: &str) -> usize {
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
