#!/usr/bin/env bash
# Deletes the kind cluster that up.sh created (and everything in it).
set -euo pipefail
cluster="${CLUSTER_NAME:-mlmesh}"
command -v kind >/dev/null 2>&1 || { echo "k8s/kind/down.sh: kind is not installed" >&2; exit 1; }
kind delete cluster --name "$cluster"
