#!/usr/bin/env bash
# Fuzzes every libFuzzer target (tests/fuzz) for RUNS executions each (default 10^6) with clang++
# -fsanitize=fuzzer,address,undefined, in a build directory of its own (FUZZ_DIR, default build-fuzz;
# the plan target links the regular build's libraries from BUILD_DIR, default build). Prints one
# line per target (executions, seconds, executions/s, corpus size, verdict) and exits non-zero if
# any target found something (the reproducer is in FUZZ_DIR/TARGET/artifacts/, the log in
# FUZZ_DIR/TARGET.log). Results are recorded in bench/RESULTS.md.
# Usage: scripts/fuzz.sh [TARGET...]      env: RUNS=1000000 FUZZ_DIR=build-fuzz BUILD_DIR=build
#   MAX_SECONDS=S stops each target after S seconds even if RUNS were not reached (the table says
#   how many ran).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-1000000}
fuzz_dir=$(realpath -m "${FUZZ_DIR:-build-fuzz}")
build_dir=$(realpath -m "${BUILD_DIR:-build}")
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors_header config tokenizer tokenizer_json http_request thrift control plan)
fi
mkdir -p "$fuzz_dir"
failed=0
printf '%-20s %12s %8s %10s %8s  %s\n' target executions seconds exec/s corpus verdict
for t in "${targets[@]}"; do
  log=$fuzz_dir/$t.log
  DS_SOURCE_DIR=$PWD DS_BINARY_DIR=$build_dir DS_FUZZ_WORK=$fuzz_dir DS_FUZZ_MAX_TIME=${MAX_SECONDS:-} \
    bash tests/fuzz/run_fuzz.sh "$t" "runs=$runs" >"$log" 2>&1
  rc=$?
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n1)
  n=$(echo "$done_line" | awk '{print $2}')
  s=$(echo "$done_line" | awk '{print $5}')
  rate=$(grep -E 'stat::average_exec_per_sec' "$log" | tail -n1 | awk '{print $2}')
  corpus=$(find "$fuzz_dir/$t/corpus" -type f 2>/dev/null | wc -l)
  case $rc in
    0) verdict=ok ;;
    77) verdict="skipped ($(grep -m1 SKIP "$log"))" ;;
    *) verdict="FINDING or build failure (rc=$rc, see $log)"; failed=1 ;;
  esac
  printf '%-20s %12s %8s %10s %8s  %s\n' "$t" "${n:--}" "${s:--}" "${rate:--}" "$corpus" "$verdict"
done
exit $failed
