#!/usr/bin/env bash
# Creates a kind cluster with Istio (demo profile) and deploys mlmesh with the
# `baseline` experiment, then checks that http://localhost:8080 answers.
#
#   ISTIO_DIR=~/istio-1.28.0 k8s/kind/up.sh
#   MLMESH_PORT=9080 ISTIO_DIR=... k8s/kind/up.sh    # if 8080 is taken
#
# Needs: docker, kind, kubectl, curl, and an Istio download (ISTIO_DIR, with
# bin/istioctl and samples/addons).
#
# Re-running it is safe: it reuses the cluster, rebuilds and reloads the
# image and restarts the pods so they run it, and leaves whatever experiment
# you applied in place (the baseline is applied only on the first run).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${CLUSTER_NAME:-mlmesh}"
image="mlmesh:0.1.0" # keep in step with k8s/base/kustomization.yaml
port="${MLMESH_PORT:-8080}"

missing=()
for cmd in docker kind kubectl curl; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [[ -z "${ISTIO_DIR:-}" || ! -x "${ISTIO_DIR}/bin/istioctl" ]]; then
    missing+=("ISTIO_DIR pointing at an Istio download (bin/istioctl, samples/addons): curl -L https://istio.io/downloadIstio | sh -")
fi
if ((${#missing[@]})); then
    echo "k8s/kind/up.sh: missing prerequisites:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi
docker info >/dev/null 2>&1 || { echo "k8s/kind/up.sh: the Docker daemon is not running" >&2; exit 1; }

step() { printf '\n== %s\n' "$*"; }

# port_busy <port>: something already listens on 127.0.0.1:<port>.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

step "kind cluster '$cluster'"
if kind get clusters | grep -qx "$cluster"; then
    echo "exists; reusing it (its ingress port was fixed when it was created)"
    port=$(docker port "${cluster}-control-plane" 30080/tcp 2>/dev/null | head -1 | sed 's/.*://') || true
    port="${port:-${MLMESH_PORT:-8080}}"
else
    # Said now, not as a failed port binding deep inside `kind create`.
    if port_busy "$port"; then
        echo "k8s/kind/up.sh: port $port on 127.0.0.1 is already in use (docker compose or \`mlmesh up\`?)." >&2
        echo "  stop that, or pick another port: MLMESH_PORT=9080 $0" >&2
        exit 1
    fi
    sed "s/hostPort: 8080/hostPort: $port/" "$here/cluster.yaml" \
        | kind create cluster --name "$cluster" --config -
fi
kubectl config use-context "kind-$cluster" >/dev/null

step "Istio (demo profile, ingress on localhost:$port)"
"$ISTIO_DIR/bin/istioctl" install -y -f "$here/istio-operator.yaml"

step "Addons: Prometheus, Grafana, Jaeger, Kiali"
for addon in prometheus grafana jaeger kiali; do
    kubectl apply -f "$ISTIO_DIR/samples/addons/$addon.yaml"
done
# The mlmesh dashboard (queries over the addon Prometheus' pod labels), in
# the addon's Grafana: a ConfigMap, mounted with its provider file.
kubectl apply -k "$repo/k8s/addons/grafana"
kubectl -n istio-system patch deployment grafana --patch-file "$repo/k8s/addons/grafana/grafana-patch.yaml"

step "Image $image"
# BuildKit adds a provenance attestation that `docker save` (under Docker's
# containerd image store, the default on Docker Engine 29 and new Docker
# Desktop installs) exports without its content, and `kind load` then aborts
# (kubernetes-sigs/kind#3795). Without buildx, the classic builder adds none.
if docker buildx version >/dev/null 2>&1; then
    docker buildx build --load --provenance=false --sbom=false \
        -f "$repo/docker/Dockerfile" -t "$image" "$repo"
else
    docker build -f "$repo/docker/Dockerfile" -t "$image" "$repo"
fi
kind load docker-image "$image" --name "$cluster"

step "mlmesh (k8s/base)"
first_run=true
kubectl get namespace mlmesh >/dev/null 2>&1 && first_run=false
# A Job's pod template is immutable: the finished seed Job of an earlier run
# is deleted and applied afresh (the feature store also re-seeds by itself).
kubectl -n mlmesh delete job seed --ignore-not-found >/dev/null 2>&1 || true
# The key that signs decision ids: random, made here once per cluster and kept
# on re-runs (outstanding decision ids keep verifying); never committed. It
# goes to kubectl in a private file, not on its command line (visible in ps).
kubectl apply -f "$repo/k8s/base/namespace.yaml"
if ! kubectl -n mlmesh get secret frontend-decision-key >/dev/null 2>&1; then
    keyfile="$(mktemp)"
    trap 'rm -f "$keyfile"' EXIT
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$keyfile"
    kubectl -n mlmesh create secret generic frontend-decision-key --from-file=key="$keyfile"
    rm -f "$keyfile"
fi
kubectl apply -k "$repo/k8s/base"
kubectl apply -f "$repo/istio/gateway.yaml" -f "$repo/istio/destination-rules.yaml"
kubectl apply -f "$repo/istio/telemetry/"
if ! kubectl -n mlmesh get virtualservice model-inference >/dev/null 2>&1; then
    echo "applying the baseline experiment"
    kubectl apply -f "$repo/istio/baseline/"
else
    echo "leaving the experiment you applied in place (kubectl apply -f istio/baseline/ resets it)"
fi
if ! $first_run; then
    # Same tag, new image, IfNotPresent: without a restart the pods keep the old one.
    kubectl -n mlmesh rollout restart deployment/feature-store deployment/model-inference-v1 \
        deployment/model-inference-v2 deployment/frontend
fi

step "Waiting for rollouts"
for d in redis feature-store model-inference-v1 model-inference-v2 frontend; do
    kubectl -n mlmesh rollout status "deployment/$d" --timeout=300s
done
kubectl -n mlmesh wait --for=condition=complete job/seed --timeout=300s

step "Smoke test: curl http://localhost:$port/predict?user_id=42"
for attempt in $(seq 1 30); do
    if curl -fsS "http://localhost:$port/predict?user_id=42"; then
        printf '\n\nmlmesh is up on http://localhost:%s/ (experiment: see kubectl -n mlmesh get virtualservice).\n' "$port"
        echo "Next: the experiments in istio/README.md; dashboards with: $ISTIO_DIR/bin/istioctl dashboard grafana|jaeger|kiali"
        echo "(Grafana: folder mlmesh, dashboard \"mlmesh experiment (Kubernetes)\")"
        exit 0
    fi
    echo "not answering yet (attempt $attempt/30)"
    sleep 5
done
echo "k8s/kind/up.sh: http://localhost:$port did not answer; see kubectl -n mlmesh get pods" >&2
exit 1
