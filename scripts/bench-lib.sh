# shellcheck shell=bash
# What the chain benchmarks share, sourced after `cd` to the repository:
# the release binaries (MLMESH_BIN runs another build of mlmesh, LOADTEST_BIN
# another build of the load tool), a scratch
# directory, the pids to stop on exit, and a readiness wait.

cargo build --release -p mlmesh -p loadtest >&2
# shellcheck disable=SC2034 # bin and load are the sourcing script's
bin=${MLMESH_BIN:-$PWD/target/release/mlmesh}
# shellcheck disable=SC2034
load=${LOADTEST_BIN:-$PWD/target/release/mlmesh-loadtest}
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

# pid_on PORT: the pid of whatever listens on PORT (under valgrind, valgrind's).
pid_on() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }

# start_lone_model PORT [WRAPPER...]: a lone model-inference in the background,
# with one runtime thread (the shape `mlmesh up` gives each model; a user's
# TOKIO_WORKER_THREADS wins), run through WRAPPER (e.g. valgrind) if given.
start_lone_model() {
    local port=$1
    shift
    RUST_LOG=warn TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1} "$@" "$bin" model-inference \
        --listen "127.0.0.1:$port" --grpc-listen off --drain-delay 0s \
        --model-path models/propensity-v1.onnx --model-version v1 &
}
