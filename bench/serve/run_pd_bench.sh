#!/usr/bin/env bash
# Prefill/decode disaggregation vs aggregated serving, end to end in one run: makes a random-weight
# model, starts deepshard-coordinator with --prefill-control and a decode job, runs serve_bench's
# sweep (streaming /v1/completions, TTFT and ITL per token) with the decode job alone (aggregated),
# then starts a prefill job (--kv-listen) and runs the same sweep again (disaggregated: prompts are
# prefilled by the prefill job and their KV fetched by the decode job over UCX). Prints both tables
# and the ratios; JSON per mode in $OUT.
#
# Usage: bench/serve/run_pd_bench.sh [BUILD_DIR]        (BUILD_DIR needs -DDEEPSHARD_BENCH=ON)
# Knobs (environment): PRESET=tiny DTYPE=bf16 DECODE_LAYOUT=tp=1 PREFILL_LAYOUT=tp=1 CONCURRENCY=1,4
#   ROUNDS=4 PROMPT_LEN=512 OUTPUT_LEN=64 OUT=bench/serve/results KEEP=1 (keep the logs)
# On one machine both jobs share its cores: what disaggregation buys on a cluster (prefills never
# sharing a step, or a GPU, with decodes) shows here only as far as the two jobs' processes run on
# different cores. Quote ratios from the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
PRESET=${PRESET:-tiny}
DTYPE=${DTYPE:-bf16}
DECODE_LAYOUT=${DECODE_LAYOUT:-tp=1}
PREFILL_LAYOUT=${PREFILL_LAYOUT:-tp=1}
CONCURRENCY=${CONCURRENCY:-1,4}
ROUNDS=${ROUNDS:-4}
PROMPT_LEN=${PROMPT_LEN:-512}
OUTPUT_LEN=${OUTPUT_LEN:-64}
OUT=${OUT:-bench/serve/results}

for b in deepshard deepshard-coordinator deepshard-shard serve_bench; do
  [ -x "$BUILD/bin/$b" ] || { echo "missing $BUILD/bin/$b (configure with -DDEEPSHARD_BENCH=ON and build it)" >&2; exit 1; }
done
ranks() { local pp tp; pp=$(sed -n 's/.*pp=\([0-9]*\).*/\1/p' <<<"$1"); tp=$(sed -n 's/.*tp=\([0-9]*\).*/\1/p' <<<"$1"); echo $(( ${pp:-1} * ${tp:-1} )); }

WORK=$(mktemp -d /tmp/ds_pd_bench.XXXXXX)
COORD_PID= DECODE_PID= PREFILL_PID=
cleanup() {
  # Only the processes this script started, by PID; mpirun takes its ranks down with it.
  for p in "$PREFILL_PID" "$DECODE_PID" "$COORD_PID"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
json_field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
metric() { curl -s -m 5 "http://127.0.0.1:$HTTP/metrics" | awk -v n="$1" '$1 == n {print $2}'; }

echo "== model: $PRESET $DTYPE; decode job $DECODE_LAYOUT, prefill job $PREFILL_LAYOUT; work dir $WORK"
"$BUILD/bin/deepshard" make-model --preset "$PRESET" --dtype "$DTYPE" --seed 1 --out "$WORK/model" > "$WORK/make-model.log" 2>&1
"$BUILD/bin/deepshard" plan --model "$WORK/model" --layout "$DECODE_LAYOUT" --kv-budget-mb 512 --out "$WORK/decode.json" > "$WORK/plan.log"
"$BUILD/bin/deepshard" plan --model "$WORK/model" --layout "$PREFILL_LAYOUT" --kv-budget-mb 512 --out "$WORK/prefill.json" >> "$WORK/plan.log"
VOCAB=$(json_field "$WORK/model/config.json" vocab_size)

# The prefix cache stays off: serve_bench's prompts are random, and every mode must compute (or
# fetch) every prompt.
"$BUILD/bin/deepshard-coordinator" --model "$WORK/model" --plan "$WORK/decode.json" --http 127.0.0.1:0 \
  --thrift '' --control 127.0.0.1:0 --prefill-control 127.0.0.1:0 --prefill-plan "$WORK/prefill.json" \
  --no-prefix-cache --ports-file "$WORK/ports.json" > "$WORK/coordinator.log" 2>&1 &
COORD_PID=$!
for _ in $(seq 300); do [ -s "$WORK/ports.json" ] && break; sleep 0.1; done
[ -s "$WORK/ports.json" ] || { echo "coordinator did not start:" >&2; cat "$WORK/coordinator.log" >&2; exit 1; }
HTTP=$(json_field "$WORK/ports.json" http)
DS_CONTROL_SECRET_FILE=$(json_field "$WORK/ports.json" control_secret_file)
export DS_CONTROL_SECRET_FILE
job() {  # job PLAN PORT NP LOG [ARGS...]
  local plan=$1 port=$2 np=$3 log=$4; shift 4
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np "$np" --allow-run-as-root --oversubscribe \
    --bind-to none --mca btl self,vader,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
    -x DS_CONTROL_SECRET_FILE "$BUILD/bin/deepshard-shard" --model "$WORK/model" --plan "$plan" \
    --coordinator "127.0.0.1:$port" "$@" > "$log" 2>&1 &
}
job "$WORK/decode.json" "$(json_field "$WORK/ports.json" control)" "$(ranks "$DECODE_LAYOUT")" "$WORK/decode.log"
DECODE_PID=$!
for _ in $(seq 600); do [ "$(metric deepshard_shard_job_up)" = 1 ] && break; sleep 0.5; done
[ "$(metric deepshard_shard_job_up)" = 1 ] || { echo "no decode job after 300 s" >&2; tail -20 "$WORK/decode.log" >&2; exit 1; }

mkdir -p "$OUT"
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load: $(cut -d' ' -f1-3 /proc/loadavg)"
sweep() {
  "$BUILD/bin/serve_bench" --ports-file "$WORK/ports.json" --vocab "$VOCAB" --concurrency "$CONCURRENCY" \
    --rounds "$ROUNDS" --prompt-len "$PROMPT_LEN" --output-len "$OUTPUT_LEN" --out-json "$OUT/pd_${PRESET}_$1.json"
}
echo "== aggregated: the decode job alone"
sweep aggregated
job "$WORK/prefill.json" "$(json_field "$WORK/ports.json" prefill_control)" "$(ranks "$PREFILL_LAYOUT")" "$WORK/prefill.log" \
  --kv-listen 127.0.0.1
PREFILL_PID=$!
for _ in $(seq 600); do [ "$(metric deepshard_prefill_job_up)" = 1 ] && break; sleep 0.5; done
[ "$(metric deepshard_prefill_job_up)" = 1 ] || { echo "no prefill job after 300 s" >&2; tail -20 "$WORK/prefill.log" >&2; exit 1; }
echo "== disaggregated: prompts prefilled by the prefill job, KV fetched over UCX"
sweep disaggregated
echo "== hand-offs $(metric deepshard_pd_handoffs_total), imported positions $(metric deepshard_kv_imported_tokens_total), failed imports $(metric deepshard_kv_import_failures_total)"
python3 - "$OUT/pd_${PRESET}_aggregated.json" "$OUT/pd_${PRESET}_disaggregated.json" <<'PY'
import json, sys
agg, dis = (json.load(open(p)) for p in sys.argv[1:3])
def rows(j):
    return {r["concurrency"]: r for r in (j["levels"] if isinstance(j, dict) and "levels" in j else j)}
a, d = rows(agg), rows(dis)
print("conc | TTFT p50 agg / disagg (ms) | ITL p50 agg / disagg (ms) | ITL p99 agg / disagg | tok/s agg / disagg")
for c in sorted(a):
    if c not in d: continue
    x, y = a[c], d[c]
    print(f"{c:4} | {x['ttft_ms']['p50']:8.1f} / {y['ttft_ms']['p50']:8.1f} | {x['itl_ms']['p50']:7.2f} / {y['itl_ms']['p50']:7.2f}"
          f" | {x['itl_ms']['p99']:7.2f} / {y['itl_ms']['p99']:7.2f} | {x['output_tokens_per_s']:7.1f} / {y['output_tokens_per_s']:7.1f}")
PY
