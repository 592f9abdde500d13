#!/usr/bin/env bash
# bench-chain.sh's question answered in instructions instead of CPU time:
# every process of a release `mlmesh up` runs under valgrind's callgrind,
# which counts the instructions each one executes while `mlmesh-loadtest`
# drives decisions; then a lone `mlmesh model-inference` the same way with
# single-row JSON infer requests. Instruction counts do not move with the
# machine's load (CPU times here move by up to 2x between runs), so a change
# of a few percent shows; what they cannot show is time spent waiting for
# memory or in the kernel (not counted), so bench-chain.sh stays the
# figure of record and this one is for A/B of a change.
#
#   scripts/bench-chain-instructions.sh [seconds]
#
# CONCURRENCY (default 16, both runs), MLMESH_BIN (another build), BENCH_PORT,
# CALLGRIND_DIR (keep each process's profile there, named after its service,
# for `callgrind_annotate --inclusive=yes DIR/frontend.out`).
# Needs valgrind (Debian: valgrind). Everything runs ~50x slower under it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
c=${CONCURRENCY:-16}
port=${BENCH_PORT:-18580}
command -v valgrind >/dev/null || { echo "bench-chain-instructions.sh: needs valgrind" >&2; exit 1; }

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
out=${CALLGRIND_DIR:-$tmp}
mkdir -p "$out"
# Instructions counted since the zeroing: dump (each process is dumped
# once, into cg.<pid>.1), then read the dump's total.
dumped() {
    callgrind_control -d "$1" >/dev/null
    awk '/^summary:/ {print $2}' "$out/cg.$1.1"
}
# keep PID NAME: with CALLGRIND_DIR, the dump under its service's name.
keep() { [ -z "${CALLGRIND_DIR:-}" ] || mv "$out/cg.$1.1" "$out/$2.out"; }
requests() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['requests'])" "$1"; }

RUST_LOG=warn valgrind --tool=callgrind --trace-children=yes \
    --callgrind-out-file="$out/cg.%p" "$bin" up --port "$port" >"$tmp/up.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$port" 150
procs=()
for i in 0 1 2 3; do procs+=("$(pid_on $((port + i)))"); done
"$load" "http://127.0.0.1:$port" -c "$c" --duration 5s --quiet >/dev/null # warm-up
for p in "${procs[@]}"; do callgrind_control -z "$p" >/dev/null; done
"$load" "http://127.0.0.1:$port" -c "$c" --duration "${secs}s" --quiet --json "$tmp/chain.json" >/dev/null
chain=()
names=(frontend feature-store v1 v2)
for i in 0 1 2 3; do
    chain+=("$(dumped "${procs[$i]}")")
    keep "${procs[$i]}" "${names[$i]}"
done
decisions=$(requests "$tmp/chain.json")
kill -INT "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true

lone_port=$((port + 10))
start_lone_model "$lone_port" valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" >"$tmp/lone.log" 2>&1
pids+=($!)
wait_ready "http://127.0.0.1:$lone_port" 150
lone_pid=$(pid_on "$lone_port")
"$load" "http://127.0.0.1:$lone_port" --target infer -c "$c" --duration 5s --quiet >/dev/null
callgrind_control -z "$lone_pid" >/dev/null
"$load" "http://127.0.0.1:$lone_port" --target infer -c "$c" --duration "${secs}s" --quiet \
    --json "$tmp/lone.json" >/dev/null
lone=$(dumped "$lone_pid")
keep "$lone_pid" lone-model
infers=$(requests "$tmp/lone.json")

python3 - "$decisions" "$infers" "$lone" "${chain[@]}" <<'PY'
import sys
decisions, infers, lone = (int(x) for x in sys.argv[1:4])
per = [int(x) / decisions / 1000 for x in sys.argv[4:8]]
lone_k = lone / infers / 1000
total = sum(per)
print("| decisions | frontend kIr | feature store kIr | v1 kIr | v2 kIr | chain kIr/decision | lone model kIr/infer | ratio |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
print(f"| {decisions:,} | {per[0]:.0f} | {per[1]:.0f} | {per[2]:.0f} | {per[3]:.0f} | **{total:.0f}** "
      f"| {lone_k:.0f} | **{total / lone_k:.2f}x** |")
PY
