#!/usr/bin/env bash
# Peers in one run: `mlmesh model-inference`, MLServer and KServe's Python
# model server, each serving the same ONNX file (the peers with onnxruntime,
# through the custom runtimes in scripts/peers/), each pinned to CPU 1 as
# one process, driven by `mlmesh-loadtest --target infer` from CPU 0 with
# single-row requests (one held-out customer each) at one concurrency, over
# every protocol each server speaks: REST JSON, REST binary tensors (Triton's
# extension: mlmesh and KServe), gRPC (all three).
#
# This machine's speed drifts by up to 2x within minutes, so all three
# servers stay up side by side (idle but the one under load) and each
# protocol is measured in ROUNDS rounds, the servers alternated within a
# round: every ratio compares steps seconds apart, never a server measured
# before another was even started. Prints two markdown tables, every step
# and the medians over the rounds: throughput, latency, errors, the
# server's CPU per request, and mlmesh's throughput as a multiple of each
# peer's on the same protocol in the same round.
#
# The peers come from PyPI into a venv (PEERS_VENV, default
# target/peers-venv; versions pinned below). Bench-only: nothing of it ships.
#
#   [ROUNDS=3] [CONCURRENCY=64] [SERVERS="mlmesh mlserver kserve"] \
#     scripts/bench-peers.sh [v1|v2] [seconds per step]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-v1}
secs=${2:-10}
c=${CONCURRENCY:-64}
rounds=${ROUNDS:-3}
servers=${SERVERS:-mlmesh mlserver kserve}
base_port=${BENCH_PORT:-18200}
venv=${PEERS_VENV:-target/peers-venv}
model="$PWD/models/propensity-$version.onnx"
peers="$PWD/scripts/peers"

command -v taskset >/dev/null || { echo "bench-peers.sh: needs taskset (util-linux)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench-peers.sh: needs 2 CPUs" >&2; exit 1; }
cargo build --release -p mlmesh -p loadtest >&2
bin=${MLMESH_BIN:-target/release/mlmesh}
load=${LOADTEST_BIN:-target/release/mlmesh-loadtest}
if [ ! -x "$venv/bin/mlserver" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q mlserver==1.7.1 kserve==0.16.0 onnxruntime==1.32.0 numpy >&2
fi

tmp=$(mktemp -d)
declare -A pid port
stop_servers() {
    for s in "${!pid[@]}"; do
        pkill -TERM -P "${pid[$s]}" 2>/dev/null || true
        kill "${pid[$s]}" 2>/dev/null || true
        wait "${pid[$s]}" 2>/dev/null || true
    done
}
trap 'stop_servers; rm -rf "$tmp"' EXIT
hz=$(getconf CLK_TCK)

# Ports: HTTP at port[s], gRPC one above, a peer's metrics two above.
i=0
for s in $servers; do
    port[$s]=$((base_port + 10 * i))
    i=$((i + 1))
done

wait_ready() { # server
    for _ in $(seq 600); do
        curl -fs "http://127.0.0.1:${port[$1]}/v2/health/ready" >/dev/null 2>&1 && return
        kill -0 "${pid[$1]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench-peers.sh: $1 did not turn ready (its log: $tmp/$1.log)" >&2
    cat "$tmp/$1.log" >&2
    exit 1
}
# CPU ticks of a server and every process under it (MLServer and KServe
# may fork helpers), all pinned to CPU 1.
cpu_ticks() { # server
    local all=${pid[$1]} frontier=${pid[$1]} next
    while next=$(for p in $frontier; do pgrep -P "$p" || true; done) && [ -n "$next" ]; do
        all="$all $next"
        frontier=$next
    done
    for p in $all; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}'
}

start() { # server
    local p=${port[$1]}
    case $1 in
    mlmesh)
        RUST_LOG=error TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin" model-inference \
            --listen "127.0.0.1:$p" --grpc-listen "127.0.0.1:$((p + 1))" --drain-delay 0s \
            --model-path "$model" --model-version "$version" --workers 1 >"$tmp/mlmesh.log" 2>&1 &
        ;;
    mlserver)
        mkdir -p "$tmp/repo/propensity"
        cat >"$tmp/repo/settings.json" <<JSON
{"http_port": $p, "grpc_port": $((p + 1)), "metrics_port": $((p + 2)), "parallel_workers": 0, "debug": false}
JSON
        cat >"$tmp/repo/propensity/model-settings.json" <<JSON
{"name": "propensity", "implementation": "mlserver_onnx.OnnxModel",
 "parameters": {"uri": "$model", "version": "$version"},
 "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 85]}],
 "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]}
JSON
        PYTHONPATH="$peers" taskset -c 1 "$venv/bin/mlserver" start "$tmp/repo" >"$tmp/mlserver.log" 2>&1 &
        ;;
    kserve)
        taskset -c 1 "$venv/bin/python" "$peers/kserve_onnx.py" --model_path "$model" --model_name propensity \
            --http_port "$p" --grpc_port "$((p + 1))" --workers 1 \
            --enable_latency_logging false >"$tmp/kserve.log" 2>&1 &
        ;;
    *)
        echo "bench-peers.sh: unknown server $1" >&2
        exit 1
        ;;
    esac
    pid[$1]=$!
    wait_ready "$1"
}

speaks() { # server protocol: MLServer has no binary tensor extension
    [ "$1" != mlserver ] || [ "$2" != http-binary ]
}

step() { # round server protocol
    local target="http://127.0.0.1:${port[$2]}"
    [ "$3" = grpc ] && target="http://127.0.0.1:$((${port[$2]} + 1))"
    if [ "$1" = 1 ]; then
        # Warm-up: connections, the peers' lazy imports and first calls.
        taskset -c 0 "$load" "$target" --target infer --protocol "$3" --threads 1 -c 8 \
            --duration 2s --quiet >/dev/null || true
    fi
    local before after
    rm -f "$tmp/r.json"
    before=$(cpu_ticks "$2")
    taskset -c 0 "$load" "$target" --target infer --protocol "$3" --threads 1 -c "$c" \
        --duration "${secs}s" --quiet --json "$tmp/r.json" >/dev/null || true
    after=$(cpu_ticks "$2")
    # A run the load tool could not do (it said why on stderr) is a row of its own.
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" $((after - before)) \
        "$(tr -d '\n' <"$tmp/r.json" 2>/dev/null || echo null)" >>"$tmp/rows"
}

for s in $servers; do start "$s"; done
echo "model $version, c=$c, ${secs}s per step, $rounds rounds; every server pinned to CPU 1 (all up," \
    "one under load at a time), the load tool to CPU 0" >&2
for protocol in http-json http-binary grpc; do
    for r in $(seq "$rounds"); do
        for s in $servers; do
            if speaks "$s" "$protocol"; then step "$r" "$s" "$protocol"; fi
        done
    done
done

python3 - "$tmp/rows" "$hz" <<'PY'
import json, sys
from statistics import median
hz = int(sys.argv[2])
rows = []
for line in open(sys.argv[1]):
    rnd, server, protocol, ticks, r = line.rstrip("\n").split("\t", 4)
    rows.append((int(rnd), server, protocol, int(ticks), json.loads(r)))
good = lambda r: r["all"]["statuses"].get("200", r["all"]["statuses"].get("Ok", 0)) / r["elapsed_secs"]
ours = {(n, p): good(r) for n, s, p, _, r in rows if s == "mlmesh" and r}
ms = lambda v: f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"
cpu_us = lambda ticks, r: ticks / hz * 1e6 / max(r["requests"], 1)

def ratio(n, protocol, g):
    mine = ours.get((n, protocol))
    return mine / g if mine and g else None

print("Every step (the ratio: mlmesh's ok req/s in the same round and protocol ÷ this):\n")
print("| round | server | protocol | ok req/s | p50 | p99 | errors | server CPU µs/req | mlmesh ÷ this |")
print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
for n, server, protocol, ticks, r in rows:
    if not r:
        print(f"| {n} | {server} | {protocol} | failed (see above) | | | | | |")
        continue
    a, g = r["all"], good(r)
    x = None if server == "mlmesh" else ratio(n, protocol, g)
    shown = "—" if server == "mlmesh" else (f"{x:.1f}x" if x else "?")
    print(f"| {n} | {server} | {protocol} | {g:,.0f} | {ms(a['latency']['p50_ms'])} | {ms(a['latency']['p99_ms'])} "
          f"| {a['errors']} | {cpu_us(ticks, r):.0f} | {shown} |")

print("\nMedians over the rounds (the ratio: the median of the rounds' ratios, and their range):\n")
print("| server | protocol | ok req/s | p99 | server CPU µs/req | mlmesh ÷ this | range |")
print("|---|---|---:|---:|---:|---:|---:|")
for s, p in dict.fromkeys((s, p) for _, s, p, _, _ in rows):
    steps = [(n, t, r) for n, s2, p2, t, r in rows if (s2, p2) == (s, p) and r]
    if not steps:
        print(f"| {s} | {p} | failed | | | | |")
        continue
    gs = [good(r) for _, _, r in steps]
    cpu = [cpu_us(t, r) for _, t, r in steps]
    p99 = [r["all"]["latency"]["p99_ms"] for _, _, r in steps]
    xs = [x for x in (ratio(n, p, good(r)) for n, _, r in steps) if x] if s != "mlmesh" else []
    shown = f"**{median(xs):.1f}x**" if xs else "—"
    span = f"{min(xs):.1f}–{max(xs):.1f}x" if xs else ""
    print(f"| {s} | {p} | {median(gs):,.0f} | {ms(median(p99))} | {median(cpu):.0f} | {shown} | {span} |")
PY
