#!/usr/bin/env bash
# One decode step of a pp=2 x tp=2 shard job on the small preset, split into compute and each kind
# of communication, beside the same batch in one process (bench/shard/step_bench.cc).
# Usage: bench/shard/run_step_bench.sh [BUILD_DIR] [BATCHES]   (results: out/bench/step-*.json)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
BATCHES=${2:-"1 8"}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p out/bench
dir=out/bench/small-fp8
[ -f "$dir/config.json" ] || "$BUILD/bin/deepshard" make-model --preset small --dtype fp8 --seed 1 --out "$dir"
"$BUILD/bin/deepshard" plan --model "$dir" --layout pp=2,tp=2 --out out/bench/small-pp2tp2.json >/dev/null
# 4 ranks on this 2-core VM: one compute thread per rank (DS_NUM_THREADS=1); ranks still share cores.
for b in $BATCHES; do
  echo "=== batch $b"
  timeout 900 mpirun -np 4 --oversubscribe --bind-to none --mca btl self,vader,tcp --mca btl_tcp_if_include lo \
    --mca oob_tcp_if_include lo -x DS_NUM_THREADS=1 \
    "$BUILD/bin/step_bench" --model "$dir" --plan out/bench/small-pp2tp2.json --batch "$b" --prompt 32 \
    --steps 12 --reps 3 --warmup 2 --json-out "out/bench/step-pp2tp2-b$b.json"
done
