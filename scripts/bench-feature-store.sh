#!/usr/bin/env bash
# feature-store against local Redis, next to redis-benchmark doing the raw
# HGETALLs on the same Redis in the same run. Needs redis-server and
# redis-benchmark (Debian: redis-server, redis-tools) and oha (cargo install oha).
#
#   scripts/bench-feature-store.sh [seconds per step]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rport=${BENCH_REDIS_PORT:-16479}
sport=${BENCH_PORT:-18184}
for t in redis-server redis-benchmark oha python3; do
    command -v "$t" >/dev/null || { echo "bench-feature-store.sh: needs $t" >&2; exit 1; }
done
cargo build --release -p mlmesh >&2
bin=target/release/mlmesh
tmp=$(mktemp -d)
cleanup() { kill "${spid:-}" "${rpid:-}" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
rpid=$!
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
"$bin" feature-store seed --redis-url "redis://127.0.0.1:$rport" >&2
RUST_LOG=warn "$bin" feature-store --redis-url "redis://127.0.0.1:$rport" --listen "127.0.0.1:$sport" --drain-delay 0s &
spid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$sport/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

key=mlmesh:fs:v1:42
raw() { redis-benchmark -p "$rport" -c 50 -q "$@" HGETALL "$key" | tr '\r' '\n' | awk -F': ' '/requests per second/ {split($2, a, " "); print a[1]}' | tail -n 1; }
raw_single=$(raw -n 200000)
raw_entities=$(raw -n 2000000 -P 100)

ids=$(python3 -c 'import json; print(json.dumps({"entity_ids": [str(i * 53 % 5822 + 1) for i in range(100)]}))')
oha_json() { oha --no-tui --output-format json -z "${secs}s" "$@"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
url="http://127.0.0.1:$sport"
oha_json -c 50 "$url/v1/features/42" > "$tmp/single.json"
oha_json -c 16 -m POST -H 'content-type: application/json' -d "$ids" "$url/v1/features:batch" > "$tmp/batch.json"
oha_json -c 50 -q 5000 --latency-correction "$url/v1/features/42" > "$tmp/rate.json"

svc_single=$(field 'round(d["summary"]["requestsPerSec"])' < "$tmp/single.json")
svc_batch_rps=$(field 'round(d["summary"]["requestsPerSec"])' < "$tmp/batch.json")
svc_entities=$((svc_batch_rps * 100))
p99() { field 'round(d["latencyPercentiles"]["p99"] * 1000, 3)' < "$1"; }
# Share of answers that were HTTP 200 (oha's successRate ignores the status).
ok() { field 'round(100 * d["statusCodeDistribution"].get("200", 0) / max(1, sum(d["statusCodeDistribution"].values())), 2)' < "$1"; }

printf '| what | raw Redis (redis-benchmark) | through feature-store | raw / service |\n|---|---:|---:|---:|\n'
printf '| single lookups/s (50 connections) | %.0f | %s (p99 %s ms, %s%% ok) | %.2fx |\n' \
    "$raw_single" "$svc_single" "$(p99 "$tmp/single.json")" "$(ok "$tmp/single.json")" "$(python3 -c "print($raw_single / $svc_single)")"
printf '| entities/s in batches of 100 | %.0f (pipeline 100) | %s (%s req/s, p99 %s ms, %s%% ok) | %.2fx |\n' \
    "$raw_entities" "$svc_entities" "$svc_batch_rps" "$(p99 "$tmp/batch.json")" "$(ok "$tmp/batch.json")" "$(python3 -c "print($raw_entities / $svc_entities)")"
printf '\nsingle lookups at a fixed 5,000 req/s (latency-corrected): p50 %s ms, p99 %s ms, %s%% ok, achieved %s req/s\n' \
    "$(field 'round(d["latencyPercentiles"]["p50"] * 1000, 3)' < "$tmp/rate.json")" "$(p99 "$tmp/rate.json")" "$(ok "$tmp/rate.json")" \
    "$(field 'round(d["summary"]["requestsPerSec"])' < "$tmp/rate.json")"
