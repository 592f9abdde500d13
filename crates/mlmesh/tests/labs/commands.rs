//! What a command block names, checked without running it: repository
//! paths, the flags of mlmesh, mlmesh-loadtest and up.sh, the variables
//! `--set` and `kubectl set env` give each service.

use std::collections::BTreeSet;

use super::common::{self, documented_env, help, repo};

/// Top-level directories of the repository a command may name.
pub const REPO_DIRS: &[&str] = &[
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
pub const ROUTING_EXPERIMENTS: &[&str] = &[
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
pub fn command_lines(body: &str) -> Vec<Vec<String>> {
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
pub fn ends_command(word: &str) -> bool {
    ["|", "&&", "||", "&", ";", ">", "2>&1"].contains(&word)
}

/// Whether `help` (whitespace-joined `--help` output) documents `flag`.
pub fn documents(help: &str, flag: &str) -> bool {
    help.split_whitespace()
        .map(|w| w.trim_matches(|c: char| ",[]".contains(c)))
        .any(|w| {
            w == flag || w.starts_with(&format!("{flag}=")) || w.starts_with(&format!("{flag}<"))
        })
}

/// Env names `mlmesh <sub>` reads: its flags' and the runtime's.
fn service_env(sub: &[&str]) -> BTreeSet<String> {
    let mut env = documented_env(sub);
    env.extend(common::RUNTIME_ENV.iter().map(|s| (*s).to_owned()));
    env
}

/// Env names a Deployment's container reads, by Deployment name.
pub fn deployment_env(deploy: &str) -> BTreeSet<String> {
    service_env(match deploy {
        "frontend" => &["frontend"],
        "feature-store" => &["feature-store"],
        "model-inference-v1" | "model-inference-v2" | "model-inference" => &["model-inference"],
        "verdict" => &["analyze", "serve"],
        other => panic!("set env on a Deployment mlmesh does not have: {other}"),
    })
}

/// `mlmesh up --set SERVICE.VAR=…`: the service's subcommand.
pub fn up_service(service: &str) -> &'static [&'static str] {
    match service {
        "frontend" => &["frontend"],
        "feature-store" => &["feature-store"],
        "v1" | "v2" => &["model-inference"],
        other => panic!("--set names no service of mlmesh up: {other}"),
    }
}

/// Problems with the files, flags and settings `words` (one command line) names.
pub fn command_problems(words: &[String], loadtest_help: &str, up_sh: &str) -> Vec<String> {
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
                            if !service_env(up_service(service)).contains(var) {
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

/// `kubectl` subcommands of two words the pages use; any other is one word.
pub const KUBECTL_TWO_WORD: &[&str] = &[
    "set env",
    "rollout status",
    "create secret",
    "create namespace",
];
