#!/usr/bin/env bash
# Serving benchmark end to end: makes a random-weight model, plans it, starts deepshard-coordinator
# and an mpirun shard job on localhost, runs serve_bench's concurrency sweep against the HTTP API,
# stops everything and says where the JSON and the plot went.
#
# Usage: bench/serve/run_serve_bench.sh [BUILD_DIR]        (BUILD_DIR needs -DDEEPSHARD_BENCH=ON)
# Knobs (environment): PRESET=tiny DTYPE=bf16 LAYOUT=pp=2,tp=1 CONCURRENCY=1,2,4,8,16,32 ROUNDS=8
#   PROMPT_LEN=64 OUTPUT_LEN=64 OUT=bench/serve/results KEEP=1 (keep the temp dir with the logs)
# Default layout: pp=2,tp=1, i.e. two ranks for the two cores of the dev VM. It keeps the pipeline
# path (two step batches in flight, hidden states sent between stages) without oversubscribing the
# CPUs that the coordinator and the load generator also need; pp=2,tp=2 works too (LAYOUT=...).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
PRESET=${PRESET:-tiny}
DTYPE=${DTYPE:-bf16}
LAYOUT=${LAYOUT:-pp=2,tp=1}
CONCURRENCY=${CONCURRENCY:-1,2,4,8,16,32}
ROUNDS=${ROUNDS:-8}
PROMPT_LEN=${PROMPT_LEN:-64}
OUTPUT_LEN=${OUTPUT_LEN:-64}
OUT=${OUT:-bench/serve/results}

for b in deepshard deepshard-coordinator deepshard-shard serve_bench; do
  [ -x "$BUILD/bin/$b" ] || { echo "missing $BUILD/bin/$b (configure with -DDEEPSHARD_BENCH=ON and build it)" >&2; exit 1; }
done
pp=$(sed -n 's/.*pp=\([0-9]*\).*/\1/p' <<<"$LAYOUT"); tp=$(sed -n 's/.*tp=\([0-9]*\).*/\1/p' <<<"$LAYOUT")
NP=${NP:-$(( ${pp:-1} * ${tp:-1} ))}

WORK=$(mktemp -d /tmp/ds_serve_bench.XXXXXX)
COORD_PID= SHARD_PID=
cleanup() {
  # Only the processes this script started, by PID; mpirun takes its ranks down with it.
  [ -n "$SHARD_PID" ] && kill "$SHARD_PID" 2>/dev/null && wait "$SHARD_PID" 2>/dev/null || true
  [ -n "$COORD_PID" ] && kill "$COORD_PID" 2>/dev/null && wait "$COORD_PID" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

echo "== model: $PRESET $DTYPE, layout $LAYOUT ($NP ranks), work dir $WORK"
"$BUILD/bin/deepshard" make-model --preset "$PRESET" --dtype "$DTYPE" --seed 1 --out "$WORK/model" > "$WORK/make-model.log" 2>&1
"$BUILD/bin/deepshard" plan --model "$WORK/model" --layout "$LAYOUT" --kv-budget-mb 512 --out "$WORK/plan.json" > "$WORK/plan.log"
VOCAB=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$WORK/model/config.json")

"$BUILD/bin/deepshard-coordinator" --model "$WORK/model" --plan "$WORK/plan.json" --http 127.0.0.1:0 \
  --thrift '' --control 127.0.0.1:0 --ports-file "$WORK/ports.json" > "$WORK/coordinator.log" 2>&1 &
COORD_PID=$!
for _ in $(seq 300); do [ -s "$WORK/ports.json" ] && break; sleep 0.1; done
[ -s "$WORK/ports.json" ] || { echo "coordinator did not start:" >&2; cat "$WORK/coordinator.log" >&2; exit 1; }
CONTROL=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['control'])" "$WORK/ports.json")
HTTP=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['http'])" "$WORK/ports.json")
# The shard job proves it belongs to this coordinator with the secret the coordinator wrote.
DS_CONTROL_SECRET_FILE=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['control_secret_file'])" "$WORK/ports.json")
export DS_CONTROL_SECRET_FILE

OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np "$NP" --allow-run-as-root --oversubscribe \
  --bind-to none --mca btl self,vader,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
  -x DS_CONTROL_SECRET_FILE "$BUILD/bin/deepshard-shard" --model "$WORK/model" --plan "$WORK/plan.json" --coordinator "127.0.0.1:$CONTROL" \
  > "$WORK/shard.log" 2>&1 &
SHARD_PID=$!
echo "== waiting for the shard job to register (coordinator :$HTTP)"
for _ in $(seq 600); do
  [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/health")" = 200 ] && break
  kill -0 "$SHARD_PID" 2>/dev/null || { echo "the shard job exited:" >&2; tail -30 "$WORK/shard.log" >&2; exit 1; }
  sleep 0.5
done
[ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/health")" = 200 ] || { echo "no shard job after 300 s" >&2; exit 1; }

mkdir -p "$OUT"
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load: $(cut -d' ' -f1-3 /proc/loadavg)"
set -x
"$BUILD/bin/serve_bench" --ports-file "$WORK/ports.json" --vocab "$VOCAB" --concurrency "$CONCURRENCY" \
  --rounds "$ROUNDS" --prompt-len "$PROMPT_LEN" --output-len "$OUTPUT_LEN" \
  --out-json "$OUT/serve_$PRESET.json" --plot "$OUT/serve_$PRESET"
{ set +x; } 2>/dev/null
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== results: $OUT/serve_$PRESET.json  plot: $OUT/serve_$PRESET.png (gnuplot script $OUT/serve_$PRESET.gp)"
