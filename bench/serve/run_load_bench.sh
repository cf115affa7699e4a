#!/usr/bin/env bash
# Full-scale load end to end (issue 12 item 6): plans the tiny-bf16 golden model, starts
# deepshard-coordinator with a 64-stream / 1000-request bound and an mpirun shard job on localhost,
# runs load_bench (which checks and prints its pass/fail criteria), then checks that the
# coordinator still has its shard job and stops everything it started (by PID).
#
# Usage: bench/serve/run_load_bench.sh [BUILD_DIR]        (BUILD_DIR needs -DDEEPSHARD_BENCH=ON)
# Knobs (environment): LAYOUT=pp=2,tp=1 ROUNDS=2 REQUESTS=1000 OVERFLOW=200 NON_READERS=200
#   NON_READER_TOKENS=512 MAX_RUNNING=64 MAX_QUEUE=1000 RSS_PEAK_MB=256 RSS_GROWTH_MB=16
#   WRITE_TIMEOUT_MS=10000 OUT=bench/serve/results KEEP=1 (keep the temp dir with the logs)
# The golden model is used because its single-process greedy tokens are recorded
# (testdata/golden/tiny-bf16/tokens.json): every accepted request is checked against them.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
LAYOUT=${LAYOUT:-pp=2,tp=1}
ROUNDS=${ROUNDS:-2}
REQUESTS=${REQUESTS:-1000}
OVERFLOW=${OVERFLOW:-200}
NON_READERS=${NON_READERS:-200}
NON_READER_TOKENS=${NON_READER_TOKENS:-512}
MAX_RUNNING=${MAX_RUNNING:-64}
MAX_QUEUE=${MAX_QUEUE:-1000}
RSS_PEAK_MB=${RSS_PEAK_MB:-256}
RSS_GROWTH_MB=${RSS_GROWTH_MB:-16}
# A client that stops reading is cut off after this long; the default (30 s) works too, it only
# makes the non-readers' share of the run longer.
WRITE_TIMEOUT_MS=${WRITE_TIMEOUT_MS:-10000}
OUT=${OUT:-bench/serve/results}
MODEL=testdata/golden/tiny-bf16

for b in deepshard deepshard-coordinator deepshard-shard load_bench; do
  [ -x "$BUILD/bin/$b" ] || { echo "missing $BUILD/bin/$b (configure with -DDEEPSHARD_BENCH=ON and build it)" >&2; exit 1; }
done
pp=$(sed -n 's/.*pp=\([0-9]*\).*/\1/p' <<<"$LAYOUT"); tp=$(sed -n 's/.*tp=\([0-9]*\).*/\1/p' <<<"$LAYOUT")
NP=$(( ${pp:-1} * ${tp:-1} ))
# Every connection is a descriptor, in the coordinator and in load_bench.
ulimit -n "$(ulimit -Hn)"
CONNS=$(( REQUESTS + OVERFLOW + NON_READERS + 256 ))

WORK=$(mktemp -d /tmp/ds_load_bench.XXXXXX)
COORD_PID= SHARD_PID=
cleanup() {
  # Only the processes this script started, by PID; mpirun takes its ranks down with it.
  [ -n "$SHARD_PID" ] && kill "$SHARD_PID" 2>/dev/null && wait "$SHARD_PID" 2>/dev/null || true
  [ -n "$COORD_PID" ] && kill "$COORD_PID" 2>/dev/null && wait "$COORD_PID" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

echo "== model: $MODEL, layout $LAYOUT ($NP ranks), work dir $WORK"
"$BUILD/bin/deepshard" plan --model "$MODEL" --layout "$LAYOUT" --kv-budget-mb 256 --out "$WORK/plan.json" > "$WORK/plan.log"
"$BUILD/bin/deepshard-coordinator" --model "$MODEL" --plan "$WORK/plan.json" --http 127.0.0.1:0 --thrift '' \
  --control 127.0.0.1:0 --ports-file "$WORK/ports.json" --max-running "$MAX_RUNNING" --max-queue "$MAX_QUEUE" \
  --http-max-connections "$CONNS" --write-timeout-ms "$WRITE_TIMEOUT_MS" > "$WORK/coordinator.log" 2>&1 &
COORD_PID=$!
for _ in $(seq 300); do [ -s "$WORK/ports.json" ] && break; sleep 0.1; done
[ -s "$WORK/ports.json" ] || { echo "coordinator did not start:" >&2; cat "$WORK/coordinator.log" >&2; exit 1; }
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$WORK/ports.json" "$1"; }
CONTROL=$(field control); HTTP=$(field http)
DS_CONTROL_SECRET_FILE=$(field control_secret_file)
export DS_CONTROL_SECRET_FILE

OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np "$NP" --allow-run-as-root --oversubscribe \
  --bind-to none --mca btl self,vader,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
  -x DS_CONTROL_SECRET_FILE "$BUILD/bin/deepshard-shard" --model "$MODEL" --plan "$WORK/plan.json" \
  --coordinator "127.0.0.1:$CONTROL" > "$WORK/shard.log" 2>&1 &
SHARD_PID=$!
echo "== waiting for the shard job to register (coordinator :$HTTP)"
for _ in $(seq 600); do
  [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/health")" = 200 ] && break
  kill -0 "$SHARD_PID" 2>/dev/null || { echo "the shard job exited:" >&2; tail -30 "$WORK/shard.log" >&2; exit 1; }
  sleep 0.5
done
[ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/health")" = 200 ] || { echo "no shard job after 300 s" >&2; exit 1; }

mkdir -p "$OUT"
echo "== machine: $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
rc=0
set -x
"$BUILD/bin/load_bench" --ports-file "$WORK/ports.json" --reference "$MODEL/tokens.json" --rounds "$ROUNDS" \
  --requests "$REQUESTS" --overflow "$OVERFLOW" --non-readers "$NON_READERS" --non-reader-tokens "$NON_READER_TOKENS" \
  --max-queue "$MAX_QUEUE" --max-running "$MAX_RUNNING" --rss-peak-mb "$RSS_PEAK_MB" --rss-growth-mb "$RSS_GROWTH_MB" \
  --out-json "$OUT/load_tiny.json" || rc=$?
{ set +x; } 2>/dev/null
# The coordinator kept its shard job: still registered, never lost (also checked by load_bench
# through /metrics; this is the process-level view).
kill -0 "$SHARD_PID" 2>/dev/null || { echo "FAIL: the shard job exited during the load" >&2; rc=1; }
if grep -E 'shard job lost|step timeout' "$WORK/coordinator.log" >&2; then echo "FAIL: the coordinator lost its shard job" >&2; rc=1; fi
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg); results: $OUT/load_tiny.json; exit $rc"
exit $rc
