//! docker/ checked against the binary it packages, since no Docker engine
//! runs here: every environment variable compose sets is one the service's
//! subcommand reads, every health check calls the binary where the image puts
//! it, every URL names a compose service on its real port, and the
//! Dockerfile copies files that exist and runs as a numeric non-root user.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{RUNTIME_ENV, documented_env, repo};
use serde_yaml_ng::Value;

fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("docker/compose.yaml")).unwrap();
    let mut v: Value = serde_yaml_ng::from_str(&text).expect("compose.yaml parses");
    v.apply_merge().expect("merge keys resolve");
    v
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `${VAR:-default}` → `default`, as compose resolves it with VAR unset.
fn resolve_default(s: &str) -> String {
    let re = regex::Regex::new(r"\$\{[A-Z0-9_]+:-([^}]*)\}").unwrap();
    re.replace_all(s, "$1").into_owned()
}

#[test]
fn every_mlmesh_service_gets_only_env_it_reads_and_a_working_health_check() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let names: BTreeSet<String> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    let mut checked = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if svc["image"].as_str() != Some("mlmesh:local") {
            continue;
        }
        checked += 1;
        assert_eq!(
            svc["build"]["dockerfile"].as_str(),
            Some("docker/Dockerfile"),
            "{name}"
        );
        let command = str_list(&svc["command"]);
        let sub: Vec<&str> = command.iter().map(String::as_str).collect();
        let known = documented_env(&sub);
        assert!(
            !known.is_empty(),
            "{name}: `mlmesh {sub:?}` documents no env"
        );
        let env = svc["environment"].as_mapping().cloned().unwrap_or_default();
        for (k, v) in &env {
            let k = k.as_str().unwrap();
            assert!(
                known.contains(k) || RUNTIME_ENV.contains(&k),
                "{name}: {k} is not read by `mlmesh {}` (it reads {known:?})",
                sub.join(" ")
            );
            // URLs must name a compose service on the port the image listens on.
            let value = resolve_default(v.as_str().unwrap_or_default());
            if let Some(rest) = value
                .strip_prefix("http://")
                .or_else(|| value.strip_prefix("redis://"))
            {
                let host = rest.split([':', '/']).next().unwrap();
                assert!(
                    names.contains(host),
                    "{name}: {k}={value}: no service {host}"
                );
                let port = rest.split(':').nth(1).map(|p| p.trim_end_matches('/'));
                let expected = match host {
                    "redis" => "6379",
                    "jaeger" => "4318",
                    _ => "8080",
                };
                assert_eq!(port, Some(expected), "{name}: {k}={value}");
            }
        }
        if sub == ["feature-store", "seed"] {
            assert_eq!(
                svc["restart"].as_str(),
                Some("no"),
                "the seed job runs once"
            );
            continue;
        }
        // Long-running: published on 8080 inside (model-inference also on
        // its gRPC default, 9000), health-checked by the binary itself.
        let ports = str_list(&svc["ports"]);
        let inside: Vec<&str> = ports.iter().filter_map(|p| p.rsplit(':').next()).collect();
        let want: &[&str] = if sub == ["model-inference"] {
            &["8080", "9000"]
        } else {
            &["8080"]
        };
        assert_eq!(inside, want, "{name}: ports {ports:?}");
        let check = str_list(&svc["healthcheck"]["test"]);
        assert_eq!(
            check,
            [
                "CMD",
                "/usr/local/bin/mlmesh",
                "healthcheck",
                "http://127.0.0.1:8080/readyz"
            ],
            "{name}"
        );
        assert!(svc["restart"].as_str().is_some(), "{name}: restart policy");
        assert!(
            env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{name}: traces go to Jaeger"
        );
    }
    assert_eq!(checked, 5, "seed, feature-store, two models, frontend");
    assert!(dockerfile.contains("COPY --from=builder /usr/local/bin/mlmesh /usr/local/bin/mlmesh"));
    assert!(dockerfile.contains("LISTEN_ADDR=0.0.0.0:8080"));
}

#[test]
fn every_service_has_a_health_check_and_dependencies_that_exist() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if name != "seed" {
            assert!(
                svc["healthcheck"]["test"].is_sequence(),
                "{name}: no health check"
            );
        }
        if let Some(deps) = svc["depends_on"].as_mapping() {
            for (dep, cond) in deps {
                let dep = dep.as_str().unwrap();
                assert!(names.contains(dep), "{name} depends on unknown {dep}");
                let cond = cond["condition"].as_str().unwrap();
                assert!(
                    [
                        "service_started",
                        "service_healthy",
                        "service_completed_successfully"
                    ]
                    .contains(&cond),
                    "{name} -> {dep}: {cond}"
                );
                if cond == "service_healthy" {
                    assert!(
                        services[dep]["healthcheck"].is_mapping(),
                        "{dep} has no health check"
                    );
                }
                edges.entry(name).or_default().push(dep);
            }
        }
    }
    // No cycles: compose would refuse to start.
    fn visit<'a>(n: &'a str, e: &BTreeMap<&'a str, Vec<&'a str>>, path: &mut Vec<&'a str>) {
        assert!(!path.contains(&n), "dependency cycle: {path:?} -> {n}");
        path.push(n);
        for d in e.get(n).into_iter().flatten() {
            visit(d, e, path);
        }
        path.pop();
    }
    for n in &names {
        visit(n, &edges, &mut Vec::new());
    }
    assert_eq!(
        services["feature-store"]["depends_on"]["seed"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
}

#[test]
fn the_dockerfile_pins_bases_runs_non_root_and_copies_real_files() {
    let text = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    for line in text.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).unwrap();
        let is_stage = ["chef", "planner", "builder"].contains(&image);
        assert!(
            is_stage || (image.contains(':') && !image.ends_with(":latest")),
            "unpinned base image: {line}"
        );
    }
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    for id in user.trim().split(':') {
        let id: u32 = id.parse().expect("numeric user and group");
        assert!(
            id != 0 && id != 1337,
            "USER {user}: not root, not Istio's 1337"
        );
    }
    for line in text.lines().filter(|l| l.starts_with("COPY models/")) {
        for src in line
            .split_whitespace()
            .skip(1)
            .filter(|s| s.starts_with("models/"))
        {
            assert!(repo().join(src).is_file(), "COPY of missing {src}");
        }
    }
    let known: BTreeSet<String> = [
        documented_env(&["model-inference"]),
        documented_env(&["feature-store"]),
        documented_env(&["up"]),
    ]
    .into_iter()
    .flatten()
    .collect();
    let env_block: String = text
        .split("ENV ")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("EXPOSE"))
        .collect();
    for kv in env_block.split_whitespace().filter(|s| s.contains('=')) {
        let k = kv.split('=').next().unwrap();
        assert!(
            known.contains(k),
            "Dockerfile ENV {k} is read by no subcommand"
        );
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

#[test]
fn prometheus_and_grafana_point_at_compose_services() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let prom: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("docker/prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let mut targets = BTreeSet::new();
    for job in prom["scrape_configs"].as_sequence().unwrap() {
        for sc in job["static_configs"].as_sequence().unwrap() {
            for t in str_list(&sc["targets"]) {
                let (host, port) = t.split_once(':').unwrap();
                assert!(
                    services.contains_key(host),
                    "scrape target {t}: no such service"
                );
                assert_eq!(port, "8080", "{t}");
                targets.insert(host.to_owned());
            }
        }
    }
    let expected: BTreeSet<String> = [
        "frontend",
        "feature-store",
        "model-inference-v1",
        "model-inference-v2",
    ]
    .map(String::from)
    .into();
    assert_eq!(targets, expected, "every mlmesh service is scraped");

    let ds: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            repo().join("docker/grafana/provisioning/datasources/datasources.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let urls: BTreeMap<&str, &str> = ds["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| (d["uid"].as_str().unwrap(), d["url"].as_str().unwrap()))
        .collect();
    assert_eq!(urls["prometheus"], "http://prometheus:9090");
    assert_eq!(urls["jaeger"], "http://jaeger:16686");
    let mounts = str_list(&services["grafana"]["volumes"]);
    assert!(mounts.contains(&"./grafana/dashboards:/var/lib/grafana/dashboards:ro".to_owned()));
    let provider: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            repo().join("docker/grafana/provisioning/dashboards/dashboards.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
    // Exemplars in Grafana need Prometheus to keep them.
    let prom_cmd = str_list(&services["prometheus"]["command"]);
    assert!(prom_cmd.contains(&"--enable-feature=exemplar-storage".to_owned()));
}
