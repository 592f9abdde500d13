#!/usr/bin/env bash
# Creates a kind cluster with Istio (demo profile) and deploys mlmesh with the
# `baseline` experiment, then checks that http://localhost:8080 answers.
#
#   ISTIO_DIR=~/istio-1.28.0 k8s/kind/up.sh
#
# Needs: docker, kind, kubectl, curl, and an Istio download (ISTIO_DIR, with
# bin/istioctl and samples/addons). Re-running it is safe.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${CLUSTER_NAME:-mlmesh}"
image="mlmesh:0.1.0" # keep in step with k8s/base/kustomization.yaml

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

step "kind cluster '$cluster'"
if kind get clusters | grep -qx "$cluster"; then
    echo "exists; reusing it"
else
    kind create cluster --name "$cluster" --config "$here/cluster.yaml"
fi
kubectl config use-context "kind-$cluster" >/dev/null

step "Istio (demo profile, ingress on localhost:8080)"
"$ISTIO_DIR/bin/istioctl" install -y -f "$here/istio-operator.yaml"

step "Addons: Prometheus, Grafana, Jaeger, Kiali"
for addon in prometheus grafana jaeger kiali; do
    kubectl apply -f "$ISTIO_DIR/samples/addons/$addon.yaml"
done

step "Image $image"
docker build -f "$repo/docker/Dockerfile" -t "$image" "$repo"
kind load docker-image "$image" --name "$cluster"

step "mlmesh (k8s/base) and the baseline experiment"
kubectl apply -k "$repo/k8s/base"
kubectl apply -f "$repo/istio/gateway.yaml" -f "$repo/istio/destination-rules.yaml"
kubectl apply -f "$repo/istio/telemetry/"
kubectl apply -f "$repo/istio/baseline/"

step "Waiting for rollouts"
for d in redis feature-store model-inference-v1 model-inference-v2 frontend; do
    kubectl -n mlmesh rollout status "deployment/$d" --timeout=300s
done
kubectl -n mlmesh wait --for=condition=complete job/seed --timeout=300s

step "Smoke test: curl http://localhost:8080/predict?user_id=42"
for attempt in $(seq 1 30); do
    if curl -fsS "http://localhost:8080/predict?user_id=42"; then
        printf '\n\nmlmesh is up on http://localhost:8080/ (experiment: baseline).\n'
        echo "Next: the experiments in istio/README.md; dashboards with: $ISTIO_DIR/bin/istioctl dashboard grafana|jaeger|kiali"
        exit 0
    fi
    echo "not answering yet (attempt $attempt/30)"
    sleep 5
done
echo "k8s/kind/up.sh: http://localhost:8080 did not answer; see kubectl -n mlmesh get pods" >&2
exit 1
