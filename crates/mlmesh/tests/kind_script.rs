//! `k8s/kind/up.sh`'s own logic, run for real with stand-ins for the tools
//! it drives (no kind, kubectl or Istio here): each stand-in logs how it was
//! called and answers as a fresh or an existing cluster would. What is
//! checked is the script's decisions — the traps a re-run or a busy port
//! used to fall into — not the cluster's behaviour.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::repo;

struct Sandbox {
    dir: PathBuf,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Sandbox {
    /// Stand-ins for docker, kind, kubectl, curl and istioctl. `existing`:
    /// the cluster, namespace and an applied experiment already exist.
    fn new(name: &str, existing: bool, buildx: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("mlmesh-kind-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("bin");
        let istio = dir.join("istio");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(istio.join("bin")).unwrap();
        std::fs::create_dir_all(istio.join("samples/addons")).unwrap();
        for addon in ["prometheus", "grafana", "jaeger", "kiali"] {
            std::fs::write(istio.join(format!("samples/addons/{addon}.yaml")), "").unwrap();
        }
        let log = dir.join("calls.log");
        let exists = if existing { "0" } else { "1" };
        let log_line = format!("echo \"$(basename \"$0\") $*\" >> '{}'", log.display());
        script(
            &bin.join("docker"),
            &format!(
                "{log_line}\ncase \"$1 $2\" in\n  'buildx version') exit {};;\n  'port '*) echo 127.0.0.1:9080;;\nesac\nexit 0",
                if buildx { 0 } else { 1 }
            ),
        );
        script(
            &bin.join("kind"),
            &format!(
                "{log_line}\ncase \"$1 $2\" in\n  'get clusters') {};;\n  'create cluster') cat > '{}';;\nesac\nexit 0",
                if existing { "echo mlmesh" } else { "true" },
                dir.join("cluster-config.yaml").display()
            ),
        );
        // `kubectl get namespace mlmesh` / `get virtualservice ...` answer
        // as the cluster is; everything else succeeds.
        script(
            &bin.join("kubectl"),
            &format!(
                "{log_line}\nfor a in \"$@\"; do [[ $a == get ]] && exit {exists}; done\nexit 0"
            ),
        );
        script(&bin.join("curl"), &format!("{log_line}\necho '{{}}'"));
        script(&istio.join("bin/istioctl"), &log_line);
        Self { dir }
    }

    fn run(&self, port: u16) -> Output {
        self.run_with(port, &[])
    }

    fn run_with(&self, port: u16, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap()
        );
        Command::new("bash")
            .arg(repo().join("k8s/kind/up.sh"))
            .args(args)
            .env("PATH", path)
            .env("ISTIO_DIR", self.dir.join("istio"))
            .env("MLMESH_PORT", port.to_string())
            .env_remove("CLUSTER_NAME")
            .output()
            .unwrap()
    }

    /// Runs up.sh, which must succeed; returns its stdout and the calls.
    fn run_ok(&self, port: u16) -> (String, Vec<String>) {
        self.run_ok_with(port, &[])
    }

    fn run_ok_with(&self, port: u16, args: &[&str]) -> (String, Vec<String>) {
        let out = self.run_with(port, args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (stdout, self.calls())
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn free_port() -> u16 {
    test_support::redis_server::free_port()
}

fn has(calls: &[String], needle: &str) -> bool {
    calls.iter().any(|c| c.contains(needle))
}

#[test]
fn a_first_run_creates_the_cluster_on_the_chosen_port_and_applies_the_baseline() {
    let sb = Sandbox::new("first", false, true);
    let port = free_port();
    let (stdout, calls) = sb.run_ok(port);
    let config = std::fs::read_to_string(sb.dir.join("cluster-config.yaml")).unwrap();
    assert!(config.contains(&format!("hostPort: {port}")), "{config}");
    assert!(config.contains("containerPort: 30080"));
    // kind#3795: no attestation that `kind load` cannot import.
    assert!(
        has(
            &calls,
            "docker buildx build --load --provenance=false --sbom=false"
        ),
        "{calls:#?}"
    );
    assert!(has(&calls, "kind load docker-image mlmesh:"));
    assert!(has(&calls, "istio/baseline/"), "{calls:#?}");
    assert!(!has(&calls, "rollout restart"), "nothing to restart yet");
    assert!(has(&calls, "delete job seed"));
    assert!(has(&calls, "k8s/addons/grafana"));
    // A random decision key, made before the workloads that read it.
    let create = calls
        .iter()
        .position(|c| c.contains("create secret generic frontend-decision-key --from-file=key="))
        .unwrap_or_else(|| panic!("no decision key Secret: {calls:#?}"));
    let apply = calls
        .iter()
        .position(|c| c.contains("apply -k") && c.contains("k8s/base"))
        .unwrap();
    assert!(create < apply, "{calls:#?}");
    assert!(has(
        &calls,
        &format!("curl -fsS http://localhost:{port}/predict")
    ));
    assert!(stdout.contains(&format!("mlmesh is up on http://localhost:{port}/")));
}

#[test]
fn a_rerun_reloads_the_image_into_running_pods_and_keeps_the_users_experiment() {
    let sb = Sandbox::new("rerun", true, true);
    let (_, calls) = sb.run_ok(free_port());
    assert!(!has(&calls, "kind create"), "{calls:#?}");
    assert!(
        !has(&calls, "create secret"),
        "the existing decision key is kept: {calls:#?}"
    );
    assert!(
        !has(&calls, "istio/baseline/"),
        "re-applied the baseline: {calls:#?}"
    );
    assert!(
        has(&calls, "rollout restart deployment/feature-store"),
        "{calls:#?}"
    );
    // The immutable Job is replaced, not re-applied over.
    let delete = calls
        .iter()
        .position(|c| c.contains("delete job seed"))
        .unwrap();
    let apply = calls
        .iter()
        .position(|c| c.contains("apply -k") && c.contains("k8s/base"))
        .unwrap();
    assert!(delete < apply);
    // The existing cluster's own port is the one checked.
    assert!(
        has(&calls, "curl -fsS http://localhost:9080/predict"),
        "{calls:#?}"
    );
}

#[test]
fn without_buildx_the_classic_builder_is_used() {
    let sb = Sandbox::new("classic", false, false);
    let (_, calls) = sb.run_ok(free_port());
    assert!(has(&calls, "docker build -f"), "{calls:#?}");
    assert!(
        !has(&calls, "--provenance"),
        "the classic builder has no such flag"
    );
}

#[test]
fn a_busy_port_is_named_up_front() {
    let sb = Sandbox::new("busy", false, true);
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = sb.run(port);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("port {port}")), "{stderr}");
    assert!(stderr.contains("MLMESH_PORT="), "{stderr}");
    assert!(
        !has(&sb.calls(), "kind create"),
        "stopped before creating anything"
    );
}

/// The position of the first call containing every needle.
fn position(calls: &[String], needles: &[&str]) -> usize {
    calls
        .iter()
        .position(|c| needles.iter().all(|n| c.contains(n)))
        .unwrap_or_else(|| panic!("no call with {needles:?}: {calls:#?}"))
}

#[test]
fn the_istio_api_mode_stays_the_default_and_installs_no_gateway_api() {
    let sb = Sandbox::new("istio-api", false, true);
    let (stdout, calls) = sb.run_ok(free_port());
    assert!(has(&calls, "k8s/kind/istio-operator.yaml"), "{calls:#?}");
    assert!(!has(&calls, "gateway-api"), "{calls:#?}");
    assert!(has(&calls, "istio/gateway.yaml") && has(&calls, "istio/destination-rules.yaml"));
    assert!(has(&calls, "get virtualservice model-inference"));
    assert!(stdout.contains("sidecar, Istio API"), "{stdout}");
}

#[test]
fn gateway_api_mode_installs_the_pinned_crds_first_and_routes_with_httproutes() {
    let sb = Sandbox::new("gateway-api", false, true);
    let (stdout, calls) = sb.run_ok_with(free_port(), &["--api", "gateway"]);
    let crds = position(
        &calls,
        &[
            "apply --server-side -f",
            "gateway-api/releases/download/v1.6.1/standard-install.yaml",
        ],
    );
    let istio = position(&calls, &["istioctl", "istio-operator-gateway-api.yaml"]);
    assert!(crds < istio, "the CRDs come before istiod: {calls:#?}");
    let base = position(&calls, &["apply -k", "k8s/base"]);
    assert!(position(&calls, &["create secret generic frontend-decision-key"]) < base);
    assert!(has(&calls, "istio/gateway-api/gateway.yaml"));
    assert!(has(&calls, "get httproute model-inference"));
    assert!(has(&calls, "istio/gateway-api/baseline/"), "{calls:#?}");
    assert!(
        !has(&calls, "istio/gateway.yaml") && !has(&calls, "istio/baseline/"),
        "no Istio API routes beside the HTTPRoutes: {calls:#?}"
    );
    assert!(has(
        &calls,
        "wait --for=condition=programmed gateway/mlmesh-gateway"
    ));
    assert!(!has(&calls, "gateway/waypoint") && !has(&calls, "patch deployment prometheus"));
    assert!(stdout.contains("sidecar, Gateway API"), "{stdout}");
}

#[test]
fn ambient_mode_applies_the_overlay_a_waypoint_and_enrols_prometheus() {
    let sb = Sandbox::new("ambient", false, true);
    let (stdout, calls) = sb.run_ok_with(free_port(), &["--ambient"]);
    assert!(has(&calls, "standard-install.yaml"), "{calls:#?}");
    assert!(has(&calls, "istio-operator-ambient.yaml"));
    let overlay = position(&calls, &["apply -k", "k8s/overlays/ambient"]);
    assert!(position(&calls, &["create secret generic frontend-decision-key"]) < overlay);
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("apply -k") && c.ends_with("k8s/base")),
        "the overlay, not the base: {calls:#?}"
    );
    assert!(has(&calls, "istio/gateway-api/baseline/"));
    assert!(has(&calls, "patch deployment prometheus"));
    assert!(has(&calls, "istio.io/dataplane-mode\":\"ambient"));
    assert!(has(
        &calls,
        "wait --for=condition=programmed gateway/waypoint"
    ));
    assert!(stdout.contains("ambient"), "{stdout}");
}

#[test]
fn existing_gateway_api_crds_are_left_alone() {
    let sb = Sandbox::new("crds-there", true, true);
    let (_, calls) = sb.run_ok_with(free_port(), &["--api=gateway"]);
    assert!(has(&calls, "get crd gateways.gateway.networking.k8s.io"));
    assert!(!has(&calls, "standard-install.yaml"), "{calls:#?}");
    assert!(
        !has(&calls, "istio/gateway-api/baseline/"),
        "the user's HTTPRoute is kept: {calls:#?}"
    );
}

#[test]
fn impossible_modes_are_refused_before_anything_is_created() {
    for args in [
        &["--ambient", "--api", "istio"][..],
        &["--api", "envoy"][..],
        &["--api"][..],
        &["--sidecar"][..],
    ] {
        let sb = Sandbox::new("bad-mode", false, true);
        let out = sb.run_with(free_port(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("k8s/kind/up.sh:"), "{args:?}: {stderr}");
        assert!(sb.calls().is_empty(), "{args:?}: {:#?}", sb.calls());
    }
}
