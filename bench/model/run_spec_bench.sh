#!/usr/bin/env bash
# MTP speculative decoding, with vs without: makes a random-weight model with an MTP module
# (`make-model --set num_nextn_predict_layers=1`, by default `--mtp-init mirror` so drafts
# approximate the main model the way a trained MTP head does; MTP_INIT=random shows the cost of
# useless drafts), then for each setting (off, --draft-tokens 1..K) starts deepshard-coordinator +
# an mpirun shard job, runs the same greedy requests one at a time (decode at batch 1, where
# speculation pays) and CONCURRENCY at once, and prints tokens/s, acceptance and tokens per verify
# step from /metrics. Checks that every setting returns the same tokens.
#
# Usage: bench/model/run_spec_bench.sh [BUILD_DIR]
# Knobs (environment): PRESET=tiny DTYPE=bf16 LAYERS=1 LAYOUT=pp=1,tp=1 DRAFTS=1,2,3 REQUESTS=6
#   CONCURRENCY=4 PROMPT_LEN=32 OUTPUT_LEN=64 MTP_INIT=mirror KEEP=1 (keep the temp dir with the logs)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
PRESET=${PRESET:-tiny}
DTYPE=${DTYPE:-bf16}
LAYERS=${LAYERS:-1}
LAYOUT=${LAYOUT:-pp=1,tp=1}
DRAFTS=${DRAFTS:-1,2,3}
REQUESTS=${REQUESTS:-6}
CONCURRENCY=${CONCURRENCY:-4}
PROMPT_LEN=${PROMPT_LEN:-32}
OUTPUT_LEN=${OUTPUT_LEN:-64}
MTP_INIT=${MTP_INIT:-mirror}

for b in deepshard deepshard-coordinator deepshard-shard; do
  [ -x "$BUILD/bin/$b" ] || { echo "missing $BUILD/bin/$b" >&2; exit 1; }
done
pp=$(sed -n 's/.*pp=\([0-9]*\).*/\1/p' <<<"$LAYOUT"); tp=$(sed -n 's/.*tp=\([0-9]*\).*/\1/p' <<<"$LAYOUT")
NP=$(( ${pp:-1} * ${tp:-1} ))

WORK=$(mktemp -d /tmp/ds_spec_bench.XXXXXX)
COORD_PID= SHARD_PID=
stop() {
  # Only the processes this script started, by PID; mpirun takes its ranks down with it.
  [ -n "$SHARD_PID" ] && kill "$SHARD_PID" 2>/dev/null && wait "$SHARD_PID" 2>/dev/null || true
  [ -n "$COORD_PID" ] && kill "$COORD_PID" 2>/dev/null && wait "$COORD_PID" 2>/dev/null || true
  SHARD_PID= COORD_PID=
}
cleanup() {
  stop
  if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

echo "== model: $PRESET $DTYPE, $LAYERS layer(s) + MTP ($MTP_INIT), layout $LAYOUT ($NP ranks), work dir $WORK"
"$BUILD/bin/deepshard" make-model --preset "$PRESET" --dtype "$DTYPE" --seed 1 --set "num_hidden_layers=$LAYERS" \
  --set first_k_dense_replace=0 --set num_nextn_predict_layers=1 --mtp-init "$MTP_INIT" --out "$WORK/model" \
  > "$WORK/make-model.log" 2>&1
"$BUILD/bin/deepshard" plan --model "$WORK/model" --layout "$LAYOUT" --out "$WORK/plan.json" > "$WORK/plan.log"
VOCAB=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$WORK/model/config.json")

# run_setting NAME [coordinator flags...]: one cluster, the requests, a JSON line in $WORK/NAME.json.
run_setting() {
  local name=$1; shift
  rm -f "$WORK/ports.json"
  "$BUILD/bin/deepshard-coordinator" --model "$WORK/model" --plan "$WORK/plan.json" --name m --http 127.0.0.1:0 \
    --thrift '' --control 127.0.0.1:0 --ports-file "$WORK/ports.json" "$@" > "$WORK/coordinator-$name.log" 2>&1 &
  COORD_PID=$!
  for _ in $(seq 300); do [ -s "$WORK/ports.json" ] && break; sleep 0.1; done
  [ -s "$WORK/ports.json" ] || { echo "coordinator did not start:" >&2; cat "$WORK/coordinator-$name.log" >&2; exit 1; }
  local control http
  control=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['control'])" "$WORK/ports.json")
  http=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['http'])" "$WORK/ports.json")
  DS_CONTROL_SECRET_FILE=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['control_secret_file'])" "$WORK/ports.json")
  export DS_CONTROL_SECRET_FILE
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np "$NP" --allow-run-as-root --oversubscribe \
    --bind-to none --mca btl self,vader,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
    -x DS_CONTROL_SECRET_FILE "$BUILD/bin/deepshard-shard" --model "$WORK/model" --plan "$WORK/plan.json" \
    --coordinator "127.0.0.1:$control" > "$WORK/shard-$name.log" 2>&1 &
  SHARD_PID=$!
  for _ in $(seq 600); do
    [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/health")" = 200 ] && break
    kill -0 "$SHARD_PID" 2>/dev/null || { echo "the shard job exited:" >&2; tail -30 "$WORK/shard-$name.log" >&2; exit 1; }
    sleep 0.5
  done
  python3 - "$http" "$name" "$VOCAB" "$REQUESTS" "$CONCURRENCY" "$PROMPT_LEN" "$OUTPUT_LEN" > "$WORK/$name.json" <<'EOF'
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
port, name, vocab, n, conc, plen, olen = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
def prompt(seed):
    x, p = (2654435761 * (seed + 1)) & 0xffffffff, []
    for _ in range(plen):
        x = (x * 1664525 + 1013904223) & 0xffffffff
        p.append(3 + (x >> 8) % (vocab - 3))
    return p
def complete(seed):
    body = json.dumps({"model": "m", "prompt": prompt(seed), "max_tokens": olen, "ignore_eos": True,
                       "temperature": 0, "return_token_ids": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["choices"][0]["token_ids"]
def metric(text, key):
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[1])
    return 0.0
complete(999)  # warm up (page the weights in)
t0 = time.time(); serial = [complete(i) for i in range(n)]; t_serial = time.time() - t0
t0 = time.time()
with ThreadPoolExecutor(conc) as ex:
    batched = list(ex.map(complete, range(100, 100 + n)))
t_batched = time.time() - t0
m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
d, a, s = (metric(m, k) for k in ("deepshard_spec_draft_tokens_total", "deepshard_spec_accepted_tokens_total",
                                  "deepshard_spec_verify_steps_total"))
# Time the shard job itself spent per generated token (its step times), less exposed to the HTTP and
# coordinator overhead and to load from other processes than wall-clock tokens/s.
job_s, gen = metric(m, "deepshard_shard_step_seconds_sum"), metric(m, "deepshard_generation_tokens_total")
print(json.dumps({"name": name, "serial_tok_s": n * olen / t_serial, "batched_tok_s": n * olen / t_batched,
                  "drafts": d, "accepted": a, "verify_steps": s, "acceptance": a / d if d else 0,
                  "tokens_per_step": 1 + a / s if s else 1, "job_ms_per_token": 1000 * job_s / gen if gen else 0,
                  "tokens": serial + batched}))
EOF
  stop
}

run_setting off
IFS=, read -ra KS <<<"$DRAFTS"
for k in "${KS[@]}"; do run_setting "k$k" --speculative mtp --draft-tokens "$k"; done

echo "== machine: $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$WORK" off "${KS[@]/#/k}" <<'EOF'
import json, sys
work, names = sys.argv[1], sys.argv[2:]
rows = [json.load(open(f"{work}/{n}.json")) for n in names]
base = rows[0]
print(f"{'setting':8} {'batch-1 tok/s':>14} {'x':>6} {'batch tok/s':>12} {'x':>6} {'acceptance':>11} {'tok/step':>9} "
      f"{'job ms/tok':>11}")
for r in rows:
    print(f"{r['name']:8} {r['serial_tok_s']:14.1f} {r['serial_tok_s'] / base['serial_tok_s']:6.2f} "
          f"{r['batched_tok_s']:12.1f} {r['batched_tok_s'] / base['batched_tok_s']:6.2f} "
          f"{100 * r['acceptance']:10.1f}% {r['tokens_per_step']:9.2f} {r['job_ms_per_token']:11.3f}")
same = all(r["tokens"] == base["tokens"] for r in rows)
print("outputs identical across settings:", same)
sys.exit(0 if same else 1)
EOF
