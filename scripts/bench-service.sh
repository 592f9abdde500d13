#!/usr/bin/env bash
# Service benchmark on loopback: single-row OIP infer requests against a release
# build of `mlmesh model-inference`, driven by `mlmesh-loadtest --target infer`
# (each request one held-out customer's 85 features) at several concurrencies.
# Prints a markdown table with throughput, latency percentiles and the
# server's CPU time per request (from /proc).
#
# By default the service is pinned to CPU 1 with one runtime thread and one
# inference worker (a pod with a 1-CPU limit) and wrk to CPU 0, so neither
# preempts the other (load on one core is enough: mlmesh-loadtest drives
# ~90k req/s per core); MODE=shared lets both float over all CPUs instead.
#
# EVENT_LOG=on also starts a redis-server (on the load generator's CPU) and
# has the service write its experiment event log there, to measure what the
# log costs the service.
#
# PROTOCOLS="http-json http-binary grpc" runs every concurrency once per
# protocol, alternating (the load tool's --protocol; gRPC on its own port,
# its requests as streams over GRPC_CONNECTIONS connections, default 1, as
# a gRPC channel or an Envoy upstream pool sends them), so the ratios
# between protocols come from one run on one machine state.
#
# ROWS=8 sends that many customers' rows in each request (the load tool's
# --rows; default 1), where the encodings differ most; rows/s is then
# req/s times ROWS.
#
#   scripts/bench-service.sh [v1|v2] [seconds per step]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-v1}
secs=${2:-10}
port=${BENCH_PORT:-18180}
concurrencies=${CONCURRENCIES:-"1 8 64 256"}
mode=${MODE:-pinned}
protocols=${PROTOCOLS:-http-json}
grpc_port=$((port + 2))
rows=${ROWS:-1}

cargo build --release -p mlmesh -p loadtest >&2
bin=target/release/mlmesh
load=target/release/mlmesh-loadtest
tmp=$(mktemp -d)
redis_pid=
trap 'kill "$pid" $redis_pid 2>/dev/null || true; rm -rf "$tmp"' EXIT

server_pin=() load_pin=() server_args=()
if [ "$mode" = pinned ]; then
    command -v taskset >/dev/null || { echo "bench-service.sh: needs taskset (util-linux) or MODE=shared" >&2; exit 1; }
    [ "$(nproc)" -ge 2 ] || { echo "bench-service.sh: pinned mode needs 2 CPUs; use MODE=shared" >&2; exit 1; }
    server_pin=(taskset -c 1) load_pin=(taskset -c 0) server_args=(--workers 1)
    export TOKIO_WORKER_THREADS=1
fi
event_log=()
if [ "${EVENT_LOG:-off}" = on ]; then
    redis_port=$((port + 1))
    "${load_pin[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
    redis_pid=$!
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    event_log=(--event-log-url "redis://127.0.0.1:$redis_port")
fi
echo "mode: $mode, model $version, ${secs}s per step, event log ${EVENT_LOG:-off}" >&2
RUST_LOG=warn "${server_pin[@]}" "$bin" model-inference --listen "127.0.0.1:$port" --drain-delay 0s \
    --model-path "models/propensity-$version.onnx" --model-version "$version" --grpc-listen "127.0.0.1:$grpc_port" \
    "${server_args[@]}" "${event_log[@]}" &
pid=$!
unset TOKIO_WORKER_THREADS
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

url="http://127.0.0.1:$port"
"${load_pin[@]}" "$load" "$url" --target infer --duration 2s -c 8 --quiet >/dev/null # warm-up

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
threads=$(( ${#load_pin[@]} > 0 ? 1 : $(nproc) ))
echo "| protocol | concurrency | rows/req | req/s | rows/s | p50 | p90 | p99 | p99.9 | errors | server CPU µs/req |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $concurrencies; do
  for protocol in $protocols; do
    target_url=$url
    [ "$protocol" = grpc ] && target_url="http://127.0.0.1:$grpc_port"
    before=$(cpu_ticks)
    "${load_pin[@]}" "$load" "$target_url" --target infer --protocol "$protocol" \
        --grpc-connections "${GRPC_CONNECTIONS:-1}" --threads "$threads" -c "$c" --rows "$rows" \
        --duration "${secs}s" --quiet --json "$tmp/r.json" >/dev/null
    after=$(cpu_ticks)
    python3 - "$tmp/r.json" $((after - before)) "$hz" "$c" "$protocol" "$rows" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); ticks, hz, c, protocol = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = int(sys.argv[6])
l = r["all"]["latency"]
ms = lambda v: f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"
print(f"| {protocol} | {c} | {rows} | {r['throughput_rps']:,.0f} | {r['throughput_rps'] * rows:,.0f} | {ms(l['p50_ms'])} | {ms(l['p90_ms'])} | {ms(l['p99_ms'])} "
      f"| {ms(l['p999_ms'])} | {r['all']['errors']} | {ticks / hz * 1e6 / r['requests']:.1f} |")
PY
  done
done
if [ -n "$redis_pid" ]; then
    curl -fs "$url/metrics" | grep -E '^mlmesh_events_(written|dropped)_total' >&2
fi
