#!/usr/bin/env bash
# Overload benchmark: how much good work `mlmesh model-inference` still does
# when offered more than it can serve. First its closed-loop peak (c=64),
# then open-loop steps at multiples of that peak. The generator keeps a fixed
# pool of connections (--max-in-flight), so the figures are the server's, not
# thousands of the generator's own sockets; requests it cannot start on time
# wait in the generator and their latency counts from the schedule.
#
# Pinned as in bench-service.sh: the service on CPU 1 (one runtime thread,
# one inference worker, the given queue), the generator on CPU 0.
#
#   scripts/bench-overload.sh [seconds per step] [multiples...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true
multiples=${*:-"1 2 3 5"}
port=${BENCH_PORT:-18190}
queue=${QUEUE_CAPACITY:-64}
in_flight=${MAX_IN_FLIGHT:-256}

command -v taskset >/dev/null || { echo "bench-overload.sh: needs taskset (util-linux)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench-overload.sh: needs 2 CPUs" >&2; exit 1; }
cargo build --release -p mlmesh -p loadtest >&2
bin=target/release/mlmesh
load=target/release/mlmesh-loadtest
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT

RUST_LOG=error TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin" model-inference --listen "127.0.0.1:$port" \
    --drain-delay 0s --model-path models/propensity-v1.onnx --workers 1 --queue-capacity "$queue" &
pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
url="http://127.0.0.1:$port"
run() { taskset -c 0 "$load" "$url" --target infer --threads 1 --duration "${secs}s" --quiet --json "$tmp/r.json" "$@" >/dev/null; }
run -c 8 >/dev/null # warm-up

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
row() { # label, ticks
    python3 - "$tmp/r.json" "$2" "$hz" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); ticks, hz, label = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
a, secs = r["all"], r["elapsed_secs"]
ok = a["statuses"].get("200", 0); shed = a["statuses"].get("429", 0)
other = r["requests"] - ok - shed
l = a["latency"]
ms = lambda v: f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"
print(f"| {label} | {r['requests'] / secs:,.0f} | **{ok / secs:,.0f}** | {100 * shed / max(r['requests'], 1):.1f}% | {other} "
      f"| {ms(l['p50_ms'])} | {ms(l['p99_ms'])} | {ticks / hz * 1e6 / max(r['requests'], 1):.1f} |")
print(ok / secs, file=open(sys.argv[1] + ".ok", "w"))
PY
}
echo "queue $queue, generator pool $in_flight connections, ${secs}s per step" >&2
echo "| load | answered/s | goodput (200/s) | shed (429) | other | p50 | p99 | server CPU µs/req |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
before=$(cpu_ticks); run -c 64; after=$(cpu_ticks)
row "closed, c=64 (peak)" $((after - before))
peak=$(cat "$tmp/r.json.ok")
for m in $multiples; do
    rate=$(python3 -c "print(int($peak * $m))")
    before=$(cpu_ticks); run --rate "$rate" --max-in-flight "$in_flight"; after=$(cpu_ticks)
    row "open, ${m}x peak ($rate/s)" $((after - before))
done
