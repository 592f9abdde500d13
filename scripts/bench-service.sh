#!/usr/bin/env bash
# Service benchmark on loopback: single-row OIP infer requests against a release
# build of `mlmesh model-inference`, with wrk (Debian: apt-get install wrk) at
# several concurrencies. Prints a markdown table with throughput, latency
# percentiles and the server's CPU time per request (from /proc).
#
# By default the service is pinned to CPU 1 with one runtime thread and one
# inference worker (a pod with a 1-CPU limit) and wrk to CPU 0, so neither
# preempts the other; MODE=shared lets both float over all CPUs instead.
#
#   scripts/bench-service.sh [v1|v2] [seconds per step]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-v1}
secs=${2:-10}
port=${BENCH_PORT:-18180}
concurrencies=${CONCURRENCIES:-"1 8 64 256"}
mode=${MODE:-pinned}

command -v wrk >/dev/null || { echo "bench-service.sh: needs wrk (apt-get install -y wrk)" >&2; exit 1; }
cargo build --release -p mlmesh >&2
bin=target/release/mlmesh
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT

server_pin=() load_pin=() server_args=()
if [ "$mode" = pinned ]; then
    command -v taskset >/dev/null || { echo "bench-service.sh: needs taskset (util-linux) or MODE=shared" >&2; exit 1; }
    [ "$(nproc)" -ge 2 ] || { echo "bench-service.sh: pinned mode needs 2 CPUs; use MODE=shared" >&2; exit 1; }
    server_pin=(taskset -c 1) load_pin=(taskset -c 0) server_args=(--workers 1)
    export TOKIO_WORKER_THREADS=1
fi
echo "mode: $mode, model $version, ${secs}s per step" >&2
RUST_LOG=warn "${server_pin[@]}" "$bin" model-inference --listen "127.0.0.1:$port" --drain-delay 0s \
    --model-path "models/propensity-$version.onnx" --model-version "$version" "${server_args[@]}" &
pid=$!
unset TOKIO_WORKER_THREADS
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

# One real customer row (user 42) from the committed reference inputs.
row=$(python3 -c 'import json; print(json.dumps(json.load(open("models/reference_outputs.json"))["inputs"][3]))')
cat > "$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs":[{"name":"features","shape":[1,85],"datatype":"FP32","data":$row}]}'
LUA
url="http://127.0.0.1:$port/v2/models/propensity/infer"
"${load_pin[@]}" wrk -t1 -c8 -d2s -s "$tmp/post.lua" "$url" >/dev/null # warm-up

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
echo "| concurrency | req/s | p50 | p90 | p99 | non-2xx | server CPU µs/req |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for c in $concurrencies; do
    threads=$((c < 2 || ${#load_pin[@]} > 0 ? 1 : 2))
    before=$(cpu_ticks)
    "${load_pin[@]}" wrk -t"$threads" -c"$c" -d"${secs}s" --latency -s "$tmp/post.lua" "$url" > "$tmp/out.txt"
    after=$(cpu_ticks)
    reqs=$(awk '/requests in/ {print $1}' "$tmp/out.txt")
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$tmp/out.txt")
    p() { awk -v q="$1" '$1 == q {print $2}' "$tmp/out.txt"; }
    non2xx=$(awk '/Non-2xx/ {print $5}' "$tmp/out.txt"); non2xx=${non2xx:-0}
    cpu_us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    echo "| $c | $rps | $(p 50%) | $(p 90%) | $(p 99%) | $non2xx | $cpu_us |"
done
