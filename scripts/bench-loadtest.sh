#!/usr/bin/env bash
# Is mlmesh-loadtest fast enough not to be the bottleneck? Drives a trivial
# endpoint (model-inference's /v2/health/live probe: no tracing, no metrics)
# with the tool on ONE core (CPU 0, one runtime thread) while the server has
# CPU 1, then does the same with wrk for comparison if it is installed.
#
#   scripts/bench-loadtest.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
port=${BENCH_PORT:-18190}
[ "$(nproc)" -ge 2 ] || { echo "bench-loadtest.sh: needs 2 CPUs" >&2; exit 1; }
cargo build --release -p mlmesh -p loadtest >&2
RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/mlmesh model-inference \
    --listen "127.0.0.1:$port" --drain-delay 0s --model-path models/propensity-v1.onnx &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
url="http://127.0.0.1:$port/v2/health/live"
for c in 32 64; do
    echo "mlmesh-loadtest, 1 core, $c connections:"
    taskset -c 0 target/release/mlmesh-loadtest "$url" --target get --threads 1 -c "$c" \
        --duration "${secs}s" --quiet | head -1
done
if command -v wrk >/dev/null; then
    echo "wrk, 1 core, 64 connections:"
    taskset -c 0 wrk -t1 -c64 -d"${secs}s" "$url" | grep -E "Requests/sec"
fi
