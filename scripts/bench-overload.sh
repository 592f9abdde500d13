#!/usr/bin/env bash
# Overload benchmark: how much good work `mlmesh model-inference` still does
# when offered more than it can serve. For each admission wait (0: shed a
# request that finds the queue full at once; 50ms: the default, let it wait
# that long for a place) first the closed-loop peak (c=64), then open-loop
# steps at multiples of that peak. Goodput is given against both peaks: the
# closed-loop one, and the open-loop one (the most served of an open offer at
# or below 1x), which has the same arrival process as the overload steps.
#
# The generator is the client a mesh puts in front of the app: a fixed pool
# of connections (--max-in-flight, Envoy's circuit breaker) and a request due
# while every connection is busy is not sent but counted (--overflow drop, as
# Envoy answers 503 UO at once). So the latencies are the server's, and what
# the server does with its excess (refuse it at once, or hold it briefly and
# so slow the pool down) decides its goodput.
#
# Pinned as in bench-service.sh: the service on CPU 1 (one runtime thread,
# one inference worker, the given queue), the generator on CPU 0.
#
#   scripts/bench-overload.sh [seconds per step] [multiples...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true
multiples=${*:-"0.5 0.75 1 2 3 5"}
port=${BENCH_PORT:-18190}
queue=${QUEUE_CAPACITY:-64}
in_flight=${MAX_IN_FLIGHT:-256}
waits=${ADMISSION_WAITS:-"0ms 50ms"}
overflow=${OVERFLOW:-drop} # or wait: a client that queues its excess (wrk2)

command -v taskset >/dev/null || { echo "bench-overload.sh: needs taskset (util-linux)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench-overload.sh: needs 2 CPUs" >&2; exit 1; }
cargo build --release -p mlmesh -p loadtest >&2
bin=${MLMESH_BIN:-target/release/mlmesh} # another build, e.g. to compare before and after
load=${LOADTEST_BIN:-target/release/mlmesh-loadtest} # the same for the generator
tmp=$(mktemp -d)
pid=
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
url="http://127.0.0.1:$port"
hz=$(getconf CLK_TCK)

start_server() { # admission wait
    RUST_LOG=error TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin" model-inference --listen "127.0.0.1:$port" \
        --drain-delay 0s --model-path models/propensity-v1.onnx --workers 1 \
        --queue-capacity "$queue" --admission-wait "$1" &
    pid=$!
    for _ in $(seq 100); do curl -fs "$url/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
    echo "bench-overload.sh: the server did not turn ready" >&2
    exit 1
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
run() { taskset -c 0 "$load" "$url" --target infer --threads 1 --duration "${secs}s" --quiet --json "$tmp/r.json" "$@" >/dev/null; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
keep() { # label, server CPU ticks: one result for the table
    printf '%s\t%s\t%s\n' "$1" "$2" "$(tr -d '\n' < "$tmp/r.json")" >> "$tmp/rows"
}
table() { # prints the rows kept since the last call, then forgets them
    python3 - "$tmp/rows" "$hz" <<'PY'
import json, sys
rows = [l.rstrip("\n").split("\t", 2) for l in open(sys.argv[1])]
hz = int(sys.argv[2])
res = [(label, int(ticks), json.loads(r)) for label, ticks, r in rows]
good = lambda r: r["all"]["statuses"].get("200", 0) / r["elapsed_secs"]
closed = good(res[0][2])
# The open-loop peak: the most the server served of an open-loop offer at
# or below the closed-loop peak (same arrival process as the overload rows).
open_peak = max(good(r) for label, _, r in res[1:] if float(label.split("x")[0].split()[-1]) <= 1)
ms = lambda v: f"{v * 1000:.0f} µs" if v < 1 else f"{v:.1f} ms"
for label, ticks, r in res:
    a, secs = r["all"], r["elapsed_secs"]
    ok = a["statuses"].get("200", 0); shed = a["statuses"].get("429", 0)
    sent, dropped = r["requests"], r.get("overflow", 0)
    other = sent - ok - shed
    l = a["ok_latency"]
    g = ok / secs
    print(f"| {label} | {sent / secs:,.0f} | **{g:,.0f}** | {100 * g / closed:.0f}% | {100 * g / open_peak:.0f}% "
          f"| {100 * shed / max(sent, 1):.1f}% | {100 * dropped / max(sent + dropped, 1):.1f}% | {other} "
          f"| {ms(l['p50_ms'])} | {ms(l['p99_ms'])} | {ticks / hz * 1e6 / max(sent, 1):.1f} |")
PY
    : > "$tmp/rows"
}

echo "queue $queue, generator pool $in_flight connections (--overflow $overflow), ${secs}s per step" >&2
echo "| admission wait, load | sent/s | goodput (200/s) | of closed peak | of open peak | shed (429) | not sent (pool full) | other | p50 of 200s | p99 of 200s | server CPU µs/answer |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
: > "$tmp/rows"
for wait in $waits; do
    start_server "$wait"
    run -c 8 # warm-up
    before=$(cpu_ticks); run -c 64; after=$(cpu_ticks)
    keep "$wait, closed c=64 (peak)" $((after - before))
    peak=$(python3 -c "import json; r = json.load(open('$tmp/r.json')); print(r['all']['statuses'].get('200', 0) / r['elapsed_secs'])")
    for m in $multiples; do
        rate=$(python3 -c "print(int($peak * $m))")
        before=$(cpu_ticks); run --rate "$rate" --max-in-flight "$in_flight" --overflow "$overflow"; after=$(cpu_ticks)
        keep "$wait, open ${m}x ($rate/s)" $((after - before))
    done
    stop_server
    table
done
