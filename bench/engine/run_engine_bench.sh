#!/usr/bin/env bash
# Generates the small and medium presets in FP8 and BF16 (once, under out/bench/) and runs
# engine_bench on each: prefill and decode tokens/s at batch 1 and 8 beside a STREAM triad.
# Usage: bench/engine/run_engine_bench.sh [BUILD_DIR]   (results: out/bench/engine-*.txt)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
mkdir -p out/bench
for preset in small medium; do
  for dtype in fp8 bf16; do
    dir=out/bench/$preset-$dtype
    [ -f "$dir/config.json" ] || "$BUILD/bin/deepshard" make-model --preset "$preset" --dtype "$dtype" --seed 1 --out "$dir"
    echo "=== $preset $dtype"
    "$BUILD/bin/engine_bench" --model "$dir" --batches 1,8 --prefill 128 --decode 8 --reps 3 | tee "out/bench/engine-$preset-$dtype.txt"
  done
done
