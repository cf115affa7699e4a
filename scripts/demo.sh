#!/usr/bin/env bash
# The main job on a built-in default: install, build, generate a random-weight model in the
# published DeepSeek-V3 layout (FP8, sharded, with the real tokenizer), inspect it, run it in one
# process, then run the whole service on this host with deepshard-launch (coordinator + a 4-rank
# shard job, pp=2 x tp=2), ask it one question over HTTP and one over Thrift, print both answers and
# shut it down with SIGTERM. Exits 0 only if every step worked. Each step prints a numbered heading.
# The model has random weights: its answers are noise by design (the numerics are checked against the
# reference implementation's logits by the tests, not by reading the text).
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
step() { printf '\n==> [%s/7] %s\n' "$1" "$2"; }
step 1 "install packages and build (scripts/build.sh; about 15 min on 2 cores the first time, seconds after)"
bash scripts/build.sh
BUILD=${BUILD_DIR:-build}
BIN=$BUILD/bin
MODEL=${DS_DEMO_MODEL:-out/demo-small-fp8}
LAYOUT=${DS_DEMO_LAYOUT:-pp=2,tp=2}
step 2 "make a random-weight model in the DeepSeek-V3 layout: $MODEL (deepshard make-model)"
if [ ! -f "$MODEL/config.json" ]; then
  "$BIN/deepshard" make-model --preset small --dtype fp8 --seed 1 --tokenizer testdata/tokenizer --out "$MODEL"
else
  echo "demo: $MODEL exists; reusing it (delete it to make a new one)"
fi
step 3 "inspect it: what the checkpoint holds, validated against its config (deepshard inspect)"
"$BIN/deepshard" inspect --model "$MODEL"
step 4 "generate in one process (deepshard generate); random weights, so the text is noise"
"$BIN/deepshard" generate --model "$MODEL" --chat --prompt "What is DeepSeek-V3?" --max-tokens 24 --temperature 0.6 --seed 7

# --- The cluster on localhost: deepshard-launch starts the coordinator and `mpirun deepshard-shard`.
RUN=$(mktemp -d /tmp/deepshard-demo.XXXXXX)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
step 5 "plan $LAYOUT on this host: stages, memory and KV per rank, predicted speed (deepshard plan)"
# The KV budget in the plan is what each rank commits at start: sized for 8 sequences per rank (the
# demo asks one question at a time) rather than the default 256, which would take most of this host's RAM.
"$BIN/deepshard" plan --model "$MODEL" --layout "$LAYOUT" --max-batch-per-rank 8 --out "$RUN/plan.json"
step 6 "serve it: deepshard-launch starts the coordinator and a 4-rank mpirun shard job; one HTTP and one Thrift request"
"$BIN/deepshard-launch" --model "$MODEL" --plan "$RUN/plan.json" --run-dir "$RUN/run" \
  --http 127.0.0.1:0 --thrift 127.0.0.1:0 >"$RUN/launch.log" 2>&1 &
LAUNCHER=$!
stop_launcher() {  # SIGTERM, bounded wait; the exit status of the launcher
  kill -TERM "$LAUNCHER" 2>/dev/null || return 0
  for _ in $(seq 600); do kill -0 "$LAUNCHER" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$LAUNCHER" 2>/dev/null; then
    echo "demo: deepshard-launch did not stop within 60 s; killing it" >&2
    kill -KILL "$LAUNCHER" 2>/dev/null || true
  fi
  local rc=0
  wait "$LAUNCHER" || rc=$?
  LAUNCHER=""
  return $rc
}
fail() {
  echo "demo: $*" >&2
  tail -30 "$RUN/launch.log" >&2 || true
  exit 1
}
trap '[ -n "${LAUNCHER:-}" ] && stop_launcher; rm -rf "$RUN"' EXIT

for _ in $(seq 600); do [ -s "$RUN/run/ports.json" ] && break; kill -0 "$LAUNCHER" 2>/dev/null || break; sleep 0.1; done
[ -s "$RUN/run/ports.json" ] || fail "the coordinator did not come up"
port() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$RUN/run/ports.json" "$1"; }
HTTP=$(port http)
THRIFT=$(port thrift)
echo "demo: coordinator on http :$HTTP thrift :$THRIFT; waiting for the shard job to register"
healthy=0
for _ in $(seq 600); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$HTTP/health" || true)" = 200 ]; then
    healthy=1
    break
  fi
  kill -0 "$LAUNCHER" 2>/dev/null || break
  sleep 0.5
done
[ "$healthy" = 1 ] || fail "the service never became healthy"

NAME=$(curl -sS --max-time 10 "http://127.0.0.1:$HTTP/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])') \
  || fail "GET /v1/models failed"
echo "demo: HTTP POST /v1/chat/completions (model $NAME)"
ANSWER=$(curl -sS --fail --max-time 300 -H 'Content-Type: application/json' \
  -d '{"model": "'"$NAME"'", "messages": [{"role": "user", "content": "What is DeepSeek-V3?"}], "max_tokens": 24, "temperature": 0}' \
  "http://127.0.0.1:$HTTP/v1/chat/completions") || fail "HTTP request failed"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("HTTP answer:", repr(r["choices"][0]["message"]["content"]), "| usage:", r.get("usage"))' "$ANSWER" \
  || fail "bad HTTP answer: $ANSWER"

echo "demo: Thrift Generate (C++ example client)"
if [ -x "$BIN/deepshard-thrift-client" ]; then
  THRIFT_ANSWER=$("$BIN/deepshard-thrift-client" --server "127.0.0.1:$THRIFT" --prompt "Hello, who are you?" --max-tokens 24) \
    || fail "Thrift request failed"
else
  THRIFT_ANSWER=$(/usr/bin/python3 coordinator/examples/thrift_client.py --gen "$BUILD/gen/py" --server "127.0.0.1:$THRIFT" \
    --prompt "Hello, who are you?" --max-tokens 24) || fail "Thrift request failed"
fi
echo "Thrift answer: $THRIFT_ANSWER"
python3 -c 'import json,sys; r=json.loads(sys.argv[1][sys.argv[1].index("{"):]); assert r["tokens"], "no tokens"' "$THRIFT_ANSWER" \
  || fail "bad Thrift answer"

step 7 "stop: SIGTERM to deepshard-launch (the coordinator drains, then the shard job stops)"
stop_launcher || fail "deepshard-launch did not shut down cleanly"
cat <<EOF

demo: done in $((SECONDS - T0)) s. Every step worked; the answers above are noise because the weights are
random (the tests check the numerics against the reference implementation's logits instead).
What to try next:
  $BIN/deepshard plan --model configs/deepseek-v3-671b.json --cluster 2x8xH100-80G   # the real model on a cluster
  $BIN/deepshard generate --model $MODEL --prompt "Hello" --json                     # ids, timings
  echo "Hello, world" | $BIN/deepshard tokenize --model $MODEL                       # the real tokenizer
  bash scripts/test.sh                                                               # every test (~10 min after the build)
  launch/README.md: deepshard-launch across hosts and under Slurm; README.md: the HTTP and Thrift APIs
EOF
