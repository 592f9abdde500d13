# shellcheck shell=bash
# What the chain benchmarks share, sourced after `cd` to the repository:
# the release binaries (MLMESH_BIN runs another build of mlmesh), a scratch
# directory, the pids to stop on exit, and a readiness wait.

cargo build --release -p mlmesh -p loadtest >&2
# shellcheck disable=SC2034 # bin and load are the sourcing script's
bin=${MLMESH_BIN:-$PWD/target/release/mlmesh}
# shellcheck disable=SC2034
load=$PWD/target/release/mlmesh-loadtest
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# wait_ready URL [seconds]: until URL/readyz answers 200 (default 30 s).
wait_ready() {
    local tries=$((${2:-30} * 10))
    for _ in $(seq "$tries"); do curl -fs "$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "$(basename "$0"): $1 never turned ready" >&2
    exit 1
}
