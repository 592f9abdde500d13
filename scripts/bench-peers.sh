#!/usr/bin/env bash
# Peers in one run: `mlmesh model-inference`, MLServer and KServe's Python
# model server, each serving the same ONNX file (the peers with onnxruntime,
# through the custom runtimes in scripts/peers/), each pinned to CPU 1 as
# one process, driven by `mlmesh-loadtest --target infer` from CPU 0 with
# single-row requests (one held-out customer each) at one concurrency, over
# every protocol each server speaks: REST JSON, REST binary tensors (Triton's
# extension: mlmesh and KServe), gRPC (all three). Prints a markdown table:
# throughput, latency, errors, the server's CPU per request, and mlmesh's
# throughput as a multiple of each peer's on the same protocol.
#
# The peers come from PyPI into a venv (PEERS_VENV, default
# target/peers-venv; versions pinned below). Bench-only: nothing of it ships.
#
#   scripts/bench-peers.sh [v1|v2] [seconds per step]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-v1}
secs=${2:-10}
c=${CONCURRENCY:-64}
port=${BENCH_PORT:-18200}
venv=${PEERS_VENV:-target/peers-venv}
model="$PWD/models/propensity-$version.onnx"
peers="$PWD/scripts/peers"

command -v taskset >/dev/null || { echo "bench-peers.sh: needs taskset (util-linux)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench-peers.sh: needs 2 CPUs" >&2; exit 1; }
cargo build --release -p mlmesh -p loadtest >&2
bin=target/release/mlmesh
load=target/release/mlmesh-loadtest
if [ ! -x "$venv/bin/mlserver" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q mlserver==1.7.1 kserve==0.16.0 onnxruntime==1.32.0 numpy >&2
fi

tmp=$(mktemp -d)
pid=
trap 'stop_server; rm -rf "$tmp"' EXIT
hz=$(getconf CLK_TCK)
http="http://127.0.0.1:$port"
grpc="http://127.0.0.1:$((port + 1))"

stop_server() {
    [ -n "$pid" ] || return 0
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
}
wait_ready() { # name
    for _ in $(seq 600); do
        curl -fs "$http/v2/health/ready" >/dev/null 2>&1 && return
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench-peers.sh: $1 did not turn ready (its log: $tmp/$1.log)" >&2
    cat "$tmp/$1.log" >&2
    exit 1
}
# CPU ticks of the server and every process under it (MLServer and KServe
# may fork helpers), all pinned to CPU 1.
cpu_ticks() {
    local all=$pid frontier=$pid next
    while next=$(for p in $frontier; do pgrep -P "$p" || true; done) && [ -n "$next" ]; do
        all="$all $next"
        frontier=$next
    done
    for p in $all; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}'
}

start() { # name
    case $1 in
    mlmesh)
        RUST_LOG=error TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin" model-inference \
            --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$((port + 1))" --drain-delay 0s \
            --model-path "$model" --model-version "$version" --workers 1 >"$tmp/mlmesh.log" 2>&1 &
        ;;
    mlserver)
        mkdir -p "$tmp/repo/propensity"
        cat >"$tmp/repo/settings.json" <<EOF
{"http_port": $port, "grpc_port": $((port + 1)), "metrics_port": $((port + 2)), "parallel_workers": 0, "debug": false}
EOF
        cat >"$tmp/repo/propensity/model-settings.json" <<EOF
{"name": "propensity", "implementation": "mlserver_onnx.OnnxModel",
 "parameters": {"uri": "$model", "version": "$version"},
 "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 85]}],
 "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]}
EOF
        PYTHONPATH="$peers" taskset -c 1 "$venv/bin/mlserver" start "$tmp/repo" >"$tmp/mlserver.log" 2>&1 &
        ;;
    kserve)
        taskset -c 1 "$venv/bin/python" "$peers/kserve_onnx.py" --model_path "$model" --model_name propensity \
            --http_port "$port" --grpc_port "$((port + 1))" --workers 1 \
            --enable_latency_logging false >"$tmp/kserve.log" 2>&1 &
        ;;
    esac
    pid=$!
    wait_ready "$1"
}

step() { # server, protocol
    local target=$http
    [ "$2" = grpc ] && target=$grpc
    # Warm-up: connections, the peers' lazy imports and JIT-less first calls.
    taskset -c 0 "$load" "$target" --target infer --protocol "$2" --threads 1 -c 8 --duration 2s --quiet >/dev/null || true
    local before after
    rm -f "$tmp/r.json"
    before=$(cpu_ticks)
    taskset -c 0 "$load" "$target" --target infer --protocol "$2" --threads 1 -c "$c" \
        --duration "${secs}s" --quiet --json "$tmp/r.json" >/dev/null || true
    after=$(cpu_ticks)
    # A run the load tool could not do (it said why on stderr) is a row of its own.
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" $((after - before)) "$(tr -d '\n' <"$tmp/r.json" 2>/dev/null || echo null)" >>"$tmp/rows"
}

echo "model $version, c=$c, ${secs}s per step; every server pinned to CPU 1, the load tool to CPU 0" >&2
for server in mlmesh mlserver kserve; do
    start "$server"
    case $server in
    mlserver) protocols="http-json grpc" ;; # MLServer has no binary tensor extension
    *) protocols="http-json http-binary grpc" ;;
    esac
    for protocol in $protocols; do step "$server" "$protocol"; done
    stop_server
done

python3 - "$tmp/rows" "$hz" <<'PY'
import json, sys
hz = int(sys.argv[2])
rows = []
for line in open(sys.argv[1]):
    server, protocol, ticks, r = line.rstrip("\n").split("\t", 3)
    rows.append((server, protocol, int(ticks), json.loads(r)))
good = lambda r: r["all"]["statuses"].get("200", r["all"]["statuses"].get("Ok", 0)) / r["elapsed_secs"]
ours = {p: good(r) for s, p, _, r in rows if s == "mlmesh" and r}
ms = lambda v: f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"
print("| server | protocol | ok req/s | p50 | p99 | errors | server CPU µs/req | mlmesh ÷ this |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for server, protocol, ticks, r in rows:
    if not r:
        print(f"| {server} | {protocol} | failed (see above) | | | | | |")
        continue
    a, g = r["all"], good(r)
    ratio = "—" if server == "mlmesh" else (f"**{ours[protocol] / g:.1f}x**" if g and protocol in ours else "?")
    print(f"| {server} | {protocol} | {g:,.0f} | {ms(a['latency']['p50_ms'])} | {ms(a['latency']['p99_ms'])} "
          f"| {a['errors']} | {ticks / hz * 1e6 / max(r['requests'], 1):.0f} | {ratio} |")
PY
