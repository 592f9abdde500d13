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

#[path = "labs/commands.rs"]
mod commands;
mod common;
#[path = "labs/markdown.rs"]
mod markdown;
#[path = "labs/run.rs"]
mod run;

use std::collections::BTreeSet;
use std::process::Command;

use commands::{
    KUBECTL_TWO_WORD, ROUTING_EXPERIMENTS, command_lines, command_problems, ends_command,
};
use common::{Stack, repo};
use markdown::{anchors, blocks, slug};
use run::{bin_dir, missing_lines, one_stack, run_page};

const LABS: &str = "docs/labs";

/// The lab pages, one per exercise, in the order the index lists them.
const PAGES: &[&str] = &[
    "kiali-buggy-canary.md",
    "course-assignment.md",
    "service-mesh-lab.md",
    "microservices-tutorial.md",
    "deployment-patterns.md",
];

fn page_text(page: &str) -> String {
    let path = repo().join(LABS).join(page);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
