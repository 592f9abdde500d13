#!/usr/bin/env bash
# Creates a kind cluster with Istio and deploys mlmesh with the `baseline`
# experiment, then checks that http://localhost:8080 answers.
#
#   ISTIO_DIR=~/istio-1.31.0 k8s/kind/up.sh                  # sidecars, Istio API (VirtualServices)
#   ISTIO_DIR=~/istio-1.31.0 k8s/kind/up.sh --api gateway    # sidecars, Kubernetes Gateway API (HTTPRoutes)
#   ISTIO_DIR=~/istio-1.31.0 k8s/kind/up.sh --ambient        # ambient mode (ztunnel + waypoint), Gateway API
#   MLMESH_PORT=9080 ISTIO_DIR=... k8s/kind/up.sh            # if 8080 is taken
#
# Needs: docker, kind, kubectl, curl, and an Istio download (ISTIO_DIR, with
# bin/istioctl and samples/addons; 1.29 to 1.31). With --api gateway or
# --ambient it installs the Gateway API CRDs (standard channel, the release
# pinned below) when the cluster has none.
#
# Pick the mode when the cluster is created: to change it, k8s/kind/down.sh
# first (sidecars and ambient, or VirtualServices and HTTPRoutes for the same
# host, do not mix).
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
gateway_api_version="v1.6.1" # Gateway API CRDs, standard channel

usage() {
    echo "usage: k8s/kind/up.sh [--api istio|gateway] [--ambient]"
    echo "  --api istio    Istio's classic ingress gateway and VirtualServices (istio/*/; the default)"
    echo "  --api gateway  the Kubernetes Gateway API: a Gateway and HTTPRoutes (istio/gateway-api/)"
    echo "  --ambient      ambient mode (k8s/overlays/ambient): no sidecars; implies --api gateway"
}
api="" ambient=false
while (($#)); do
    case "$1" in
        --api)
            [[ $# -ge 2 ]] || { echo "k8s/kind/up.sh: --api needs a value: istio or gateway" >&2; exit 2; }
            api="$2"; shift 2 ;;
        --api=*) api="${1#--api=}"; shift ;;
        --ambient) ambient=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "k8s/kind/up.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if $ambient; then
    # Istio's ambient guides use the Gateway API only: VirtualServices on a
    # waypoint are not what ambient supports.
    if [[ "$api" == istio ]]; then
        echo "k8s/kind/up.sh: --ambient routes with the Gateway API; drop --api istio" >&2
        exit 2
    fi
    api=gateway
fi
api="${api:-istio}"
case "$api" in
    istio | gateway) ;;
    *) echo "k8s/kind/up.sh: --api is istio or gateway, not '$api'" >&2; usage >&2; exit 2 ;;
esac
if $ambient; then
    mode="ambient"
    operator="$here/istio-operator-ambient.yaml"
    kustomization="$repo/k8s/overlays/ambient"
elif [[ "$api" == gateway ]]; then
    mode="sidecar, Gateway API"
    operator="$here/istio-operator-gateway-api.yaml"
    kustomization="$repo/k8s/base"
else
    mode="sidecar, Istio API"
    operator="$here/istio-operator.yaml"
    kustomization="$repo/k8s/base"
fi

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

if [[ "$api" == gateway ]]; then
    step "Gateway API CRDs"
    if kubectl get crd gateways.gateway.networking.k8s.io >/dev/null 2>&1; then
        echo "already installed; leaving them as they are"
    else
        kubectl apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$gateway_api_version/standard-install.yaml"
    fi
fi

step "Istio ($mode; ingress on localhost:$port)"
"$ISTIO_DIR/bin/istioctl" install -y -f "$operator"

step "Addons: Prometheus, Grafana, Jaeger, Kiali"
for addon in prometheus grafana jaeger kiali; do
    kubectl apply -f "$ISTIO_DIR/samples/addons/$addon.yaml"
done
# The mlmesh dashboard (queries over the addon Prometheus' pod labels), in
# the addon's Grafana: a ConfigMap, mounted with its provider file.
kubectl apply -k "$repo/k8s/addons/grafana"
kubectl -n istio-system patch deployment grafana --patch-file "$repo/k8s/addons/grafana/grafana-patch.yaml"
if $ambient; then
    # Under STRICT mTLS (istio/security/) ztunnel refuses plaintext, and in
    # ambient the addon scrapes the pods' own port 8080 (no sidecar port
    # 15020): enrolled in ambient, it scrapes over mTLS with its identity.
    kubectl -n istio-system patch deployment prometheus --type merge \
        -p '{"spec":{"template":{"metadata":{"labels":{"istio.io/dataplane-mode":"ambient"}}}}}'
fi

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

step "mlmesh (${kustomization#"$repo/"})"
first_run=true
kubectl get namespace mlmesh >/dev/null 2>&1 && first_run=false
# A Job's pod template is immutable: the finished seed Job of an earlier run
# is deleted and applied afresh (the feature store also re-seeds by itself).
kubectl -n mlmesh delete job seed --ignore-not-found >/dev/null 2>&1 || true
# The key that signs decision ids: random, made here once per cluster and kept
# on re-runs (outstanding decision ids keep verifying); never committed. It
# goes to kubectl in a private file, not on its command line (visible in ps).
# The namespace bare; its labels (sidecar injection or ambient) come with
# the kustomization, before any pod exists.
if $first_run; then
    kubectl create namespace mlmesh
fi
if ! kubectl -n mlmesh get secret frontend-decision-key >/dev/null 2>&1; then
    keyfile="$(mktemp)"
    trap 'rm -f "$keyfile"' EXIT
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$keyfile"
    kubectl -n mlmesh create secret generic frontend-decision-key --from-file=key="$keyfile"
    rm -f "$keyfile"
fi
kubectl apply -k "$kustomization"
kubectl apply -f "$repo/istio/telemetry/"
if [[ "$api" == gateway ]]; then
    kubectl apply -f "$repo/istio/gateway-api/gateway.yaml"
    routes="istio/gateway-api" kind_of_route=httproute
else
    kubectl apply -f "$repo/istio/gateway.yaml" -f "$repo/istio/destination-rules.yaml"
    routes="istio" kind_of_route=virtualservice
fi
if ! kubectl -n mlmesh get "$kind_of_route" model-inference >/dev/null 2>&1; then
    echo "applying the baseline experiment ($routes/baseline/)"
    kubectl apply -f "$repo/$routes/baseline/"
else
    echo "leaving the experiment you applied in place (kubectl apply -f $routes/baseline/ resets it)"
fi
if ! $first_run; then
    # Same tag, new image, IfNotPresent: without a restart the pods keep the old one.
    kubectl -n mlmesh rollout restart deployment/feature-store deployment/model-inference-v1 \
        deployment/model-inference-v2 deployment/frontend
fi

step "Waiting for rollouts"
if [[ "$api" == gateway ]]; then
    # Istio deploys the gateway (and in ambient the waypoint) from the Gateway
    # resources; Programmed means its Envoy is running with the config.
    kubectl -n istio-ingress wait --for=condition=programmed gateway/mlmesh-gateway --timeout=300s
    if $ambient; then
        kubectl -n mlmesh wait --for=condition=programmed gateway/waypoint --timeout=300s
    fi
fi
for d in redis feature-store model-inference-v1 model-inference-v2 frontend; do
    kubectl -n mlmesh rollout status "deployment/$d" --timeout=300s
done
kubectl -n mlmesh wait --for=condition=complete job/seed --timeout=300s

step "Smoke test: curl http://localhost:$port/predict?user_id=42"
for attempt in $(seq 1 30); do
    if curl -fsS "http://localhost:$port/predict?user_id=42"; then
        printf '\n\nmlmesh is up on http://localhost:%s/ (%s; experiment: see kubectl -n mlmesh get %s).\n' "$port" "$mode" "$kind_of_route"
        echo "Next: the experiments in istio/README.md ($routes/...); dashboards with: $ISTIO_DIR/bin/istioctl dashboard grafana|jaeger|kiali"
        echo "(Grafana: folder mlmesh, dashboard \"mlmesh experiment (Kubernetes)\")"
        exit 0
    fi
    echo "not answering yet (attempt $attempt/30)"
    sleep 5
done
echo "k8s/kind/up.sh: http://localhost:$port did not answer; see kubectl -n mlmesh get pods" >&2
exit 1
