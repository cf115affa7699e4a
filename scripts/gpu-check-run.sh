#!/usr/bin/env bash
# The one-call GPU check, on the device machine (prepared by scripts/gpu-check.sh; bench/gpu/README.md).
# Stages, in order, each under its own time limit (together under the device call's 10-minute limit):
#   1. golden    the golden sets end to end through the CUDA engine (exact and fast precision),
#                graph replay, sub-steps, device sampling; `deepshard generate --device cuda` vs cpu;
#                the kernel tests
#   2. engine    a generated model with DeepSeek-V3's layer dimensions (2 layers: dense + 64-expert
#                MoE): upload GB/s, prefill and decode tokens/s at batch 1 / 32 / 128, fast and exact
#   3. kernels   GEMM paths and MLA decode benchmarks against the measured ceilings
#   4. ops       every CUDA op against its CPU twin at DeepSeek-V3's shapes
#   5. (DS_GPU_FULL=1) nccl: NCCL on the engine's stream; sanitizer: compute-sanitizer memcheck
# Output: $OUT/gpu-check.log (everything, then a summary table), $OUT/bench-*.txt.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
START=$(date +%s)
W=${TMPDIR:-/tmp}/deepshard-gpucheck
rm -rf "$W"
mkdir -p "$W"
echo "deepshard GPU check: $(date -u) on $(hostname)"
if ! tar -xJf "$ROOT/.gpucheck/stage.tar.xz" -C "$W"; then
  echo "FATAL: cannot unpack .gpucheck/stage.tar.xz (was scripts/gpu-check.sh run, and .gpucheck carried?)"
  exit 1
fi
head -2 "$W/manifest.txt"

# The CUDA libraries of this machine: the toolkit and the PyTorch environment's nvidia wheels.
find_lib() {
  local name=$1 d
  for d in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) \
           /opt/torch/.venv/lib /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/nvidia/lib64 \
           /usr/lib/x86_64-linux-gnu; do
    [ -d "$d" ] || continue
    local hit
    hit=$(find -L "$d" -maxdepth 6 -name "$name" 2>/dev/null | head -1)
    if [ -n "$hit" ]; then dirname "$hit"; return 0; fi
  done
  return 1
}
LIBDIRS=""
for lib in 'libcublasLt.so.13*' 'libcublas.so.13*' 'libnccl.so.2*'; do
  if dir=$(find_lib "$lib"); then
    echo "found $lib in $dir"
    case ":$LIBDIRS:" in *":$dir:"*) ;; *) LIBDIRS="$LIBDIRS:$dir" ;; esac
  else
    echo "WARNING: $lib not found on this machine"
  fi
done
export LD_LIBRARY_PATH="$W/lib$LIBDIRS:${LD_LIBRARY_PATH:-}"
export DS_SOURCE_DIR=$ROOT
B=$W/bin
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | head -3

SUMMARY=()
stage() {  # stage NAME LIMIT_SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  echo
  echo "=================== [$name] (limit ${limit}s): $*"
  local t0 rc
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@"
  rc=$?
  local dt=$(($(date +%s) - t0))
  local verdict=ok
  [ $rc -eq 0 ] || verdict="FAILED rc=$rc"
  [ $rc -eq 124 ] && verdict="TIMEOUT after ${limit}s"
  echo "=================== [$name] $verdict in ${dt}s"
  SUMMARY+=("$(printf '%-10s %-22s %4ss' "$name" "$verdict" "$dt")")
}

# The order puts what is quick and decides correctness first, and the long op table last, so a
# short device budget still returns the golden verdicts and the engine figures.
# 1. The golden sets end to end.
stage golden 80 "$B/golden_cuda_test" --gtest_brief=1
generate_cmp() {
  local rc=0 set cpu gpu
  for set in tiny-bf16 small-fp8; do
    local args=(generate --model "$ROOT/testdata/golden/$set" --tokens 0,5,9,17,33 --max-tokens 12 --json)
    cpu=$("$B/deepshard" "${args[@]}" --device cpu --numerics exact 2>/dev/null | grep -o '"generated_tokens":\[[^]]*\]')
    for prec in exact fast; do
      gpu=$("$B/deepshard" "${args[@]}" --device cuda --numerics $prec 2>/dev/null | grep -o '"generated_tokens":\[[^]]*\]')
      echo "$set cpu        $cpu"
      echo "$set cuda $prec $gpu"
      if [ "$prec" = exact ] && [ "$cpu" != "$gpu" ]; then echo "MISMATCH ($set, exact)"; rc=1; fi
      [ -n "$gpu" ] || rc=1
    done
  done
  return $rc
}
export -f generate_cmp
export B ROOT
# The same fast-precision golden cases with the tensor-core MLA kernel (opt-in until this passes).
stage golden-tc 60 env DS_CUDA_MLA_TC=1 "$B/golden_cuda_test" --gtest_brief=1 --gtest_filter='*fast*'
stage generate 25 bash -c generate_cmp
stage kernels 30 bash -c "$B/kernels_cuda_test --gtest_brief=1 && $B/mla_attention_cuda_test --gtest_brief=1"

# 2. End to end on DeepSeek-V3's layer dimensions: 1 dense + 1 MoE layer of 64 experts (a quarter of
#    the real 256: what one GPU holds of a layer under EP-4; ~3.7 GB, made in well under a minute).
MODEL=$W/ds-v3-2layer
stage make-model 60 "$B/deepshard" make-model --preset small --dtype fp8 --seed 1 --out "$MODEL" \
  --set hidden_size=7168 --set num_hidden_layers=2 --set first_k_dense_replace=1 --set num_attention_heads=128 \
  --set q_lora_rank=1536 --set kv_lora_rank=512 --set qk_nope_head_dim=128 --set qk_rope_head_dim=64 \
  --set v_head_dim=128 --set intermediate_size=18432 --set moe_intermediate_size=2048 --set n_routed_experts=64 \
  --set n_group=8 --set topk_group=4 --set num_experts_per_tok=8 --set n_shared_experts=1 \
  --set routed_scaling_factor=2.5 --set max_position_embeddings=163840
if [ -f "$MODEL/config.json" ]; then
  du -sh "$MODEL"
  stage engine-fast 70 bash -c "$B/engine_bench --model $MODEL --device cuda --numerics fast --batches 1,32,128 \
    --prefill 512 --decode 16 --reps 2 --kv-mb 4096 | tee $OUT/bench-engine.txt"
  stage engine-fast-tc 70 bash -c "DS_CUDA_MLA_TC=1 $B/engine_bench --model $MODEL --device cuda --numerics fast \
    --batches 1,32,128 --prefill 512 --decode 16 --reps 2 --kv-mb 4096 | tee $OUT/bench-engine-tc.txt"
  stage engine-exact 40 bash -c "$B/engine_bench --model $MODEL --device cuda --numerics exact --batches 1,32 \
    --prefill 512 --decode 8 --reps 1 --kv-mb 4096 | tee $OUT/bench-engine-exact.txt"
fi
rm -rf "$MODEL"

# 3. Kernel benchmarks.
stage kernels-bench 50 bash -c "$B/gpu_kernels_bench | tee $OUT/bench-kernels.txt"

# 4. Every op vs its CPU twin at DeepSeek-V3's shapes (the table lines start with [op]); the CPU
#    references of the full-size MLA / MoE ops are slow, so this stage gets the longest limit.
stage ops ${DS_OPS_LIMIT:-110} "$B/backend_ops_test" --gtest_brief=1

# 5. NCCL on the compute stream and compute-sanitizer: only on request (DS_GPU_FULL=1; both were clean
#    on the first check and take a minute of device time together).
if [ "${DS_GPU_FULL:-0}" = 1 ]; then
  [ -x "$B/nccl_device_test" ] && stage nccl 20 "$B/nccl_device_test" --gtest_brief=1
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  if [ -n "$SAN" ]; then
    stage sanitizer 60 env DS_BACKEND_OPS_QUICK=1 "$SAN" --tool memcheck --leak-check no --error-exitcode 3 \
      "$B/backend_ops_test" --gtest_brief=1
  fi
fi

echo
echo "=================== summary ($(($(date +%s) - START))s total)"
for line in "${SUMMARY[@]}"; do echo "$line"; done
grep -h '^\[op\].*FAIL' "$OUT/gpu-check.log" | head -20
