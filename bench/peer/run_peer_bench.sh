#!/usr/bin/env bash
# deepshard's CPU engine side by side with llama.cpp (b4747) on the same weights (issue 11): builds
# the peer from the sources in shared/peers, makes the models (deepshard make-model, BF16 and FP8,
# seed 1), converts the BF16 ones to GGUF BF16 and Q8_0 with the peer's converter, then runs
# bench/peer/peer_bench.py (interleaved rounds, medians, one table of ratios with the STREAM triad).
#
# Usage: bench/peer/run_peer_bench.sh [--build DIR] [--peers DIR] [--presets small,medium]
#                                      [--rounds 3] [--threads 2] [--prefill 64,512] [--out DIR]
# The peer folder is --peers, else $DS_PEERS, else ../shared/peers or ../../shared/peers from the
# repository root. A benchmark, not a test: it says SKIP and exits 0 when the peer sources or the
# converter's Python packages (Debian python3-torch, python3-numpy, python3-sentencepiece, python3-tqdm;
# installed here when running as root with apt, or by DS_PEER_BENCH=1 scripts/install-deps.sh) are
# missing. Results: OUT/peer-table.md and OUT/peer-raw.json; a failing step prints its log's tail.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=build
PEERS=${DS_PEERS:-}
PRESETS=small,medium
ROUNDS=3
THREADS=2
PREFILL=64,512
OUT=out/peer
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --peers) PEERS=$2; shift 2 ;;
    --presets) PRESETS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --prefill) PREFILL=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "run_peer_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$PEERS" ]; then
  for d in ../shared/peers ../../shared/peers; do
    if [ -f "$d/llama.cpp-b4747-src.tar.gz" ]; then PEERS=$d; break; fi
  done
fi
if [ -z "$PEERS" ] || [ ! -f "$PEERS/llama.cpp-b4747-src.tar.gz" ] || [ ! -f "$PEERS/to_gguf.py" ]; then
  echo "SKIP: llama.cpp peer sources not found (looked in ${PEERS:-\$DS_PEERS, ../shared/peers, ../../shared/peers})"
  exit 0
fi
PY=/usr/bin/python3
PYMODS='import torch, numpy, sentencepiece, tqdm'
if ! $PY -c "$PYMODS" 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y python3-torch python3-numpy python3-sentencepiece python3-tqdm >/dev/null || true
  fi
  if ! $PY -c "$PYMODS" 2>/dev/null; then
    echo "SKIP: the GGUF converter needs Debian's python3-torch, python3-numpy, python3-sentencepiece, python3-tqdm"
    exit 0
  fi
fi
# quiet LOG CMD...: runs CMD with its output in LOG; on failure shows the log's tail and stops.
quiet() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    echo "run_peer_bench.sh: '$*' failed; the end of $log:" >&2
    tail -20 "$log" >&2
    exit 1
  fi
}
mkdir -p "$OUT" out/bench
LLAMA=$OUT/llama
if [ ! -x "$LLAMA/build/bin/llama-bench" ]; then
  echo "building llama.cpp b4747 into $LLAMA (a few minutes)"
  quiet "$OUT/build.out" bash "$PEERS/build-llama.sh" "$OUT"
fi
[ -x "$LLAMA/build/bin/llama-batched-bench" ] || quiet "$OUT/batched-build.log" ninja -C "$LLAMA/build" -j2 llama-batched-bench
quiet "$OUT/deepshard-build.log" ninja -C "$BUILD" -j2 deepshard engine_bench
for preset in ${PRESETS//,/ }; do
  for dtype in bf16 fp8; do
    dir=out/bench/$preset-$dtype
    [ -f "$dir/config.json" ] ||
      quiet "$dir.make.log" "$BUILD/bin/deepshard" make-model --preset "$preset" --dtype "$dtype" --seed 1 --out "$dir"
  done
  for t in bf16 q8_0; do
    g=$OUT/$preset-$t.gguf
    if [ ! -f "$g" ]; then
      echo "converting out/bench/$preset-bf16 to $g"
      quiet "$OUT/convert-$preset-$t.log" \
        $PY "$PEERS/to_gguf.py" --llama "$LLAMA" --ckpt "out/bench/$preset-bf16" --outfile "$g.tmp" --outtype "$t"
      mv "$g.tmp" "$g"
    fi
  done
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY bench/peer/peer_bench.py --build "$BUILD" --llama-build "$LLAMA/build" --models out/bench --gguf "$OUT" \
  --presets "$PRESETS" --rounds "$ROUNDS" --threads "$THREADS" --prefill "$PREFILL" \
  --out-md "$OUT/peer-table.md" --out-json "$OUT/peer-raw.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
