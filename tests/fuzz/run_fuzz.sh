#!/usr/bin/env bash
# Builds one libFuzzer target with clang++ (-fsanitize=fuzzer,address,undefined) straight from the
# sources it needs and runs it on a seed corpus: for SECONDS (the bounded run the test suite keeps),
# or for RUNS executions with `runs=N` (scripts/fuzz.sh: the >= 10^6 runs recorded in bench/RESULTS.md).
# Usage: run_fuzz.sh TARGET SECONDS|runs=N
#   TARGET: safetensors_header | config | tokenizer | tokenizer_json | http_request | thrift | control | plan
# Seeds: tests/fuzz/seeds/TARGET/ (in the repo) plus, for some targets, files derived from testdata/.
# Exit 77 (ctest SKIP) when clang++ or libFuzzer is missing; non-zero on a finding or build failure
# (the reproducer is left in BUILD/fuzz/TARGET/artifacts/).
set -euo pipefail
target=$1
budget=${2:-20}
src=${DS_SOURCE_DIR:?DS_SOURCE_DIR not set}
bindir=${DS_BINARY_DIR:-}
work=${DS_FUZZ_WORK:-${bindir:-/tmp}/fuzz}/$target
cxx=${DS_FUZZ_CXX:-clang++}

if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "SKIP: $cxx not found; libFuzzer targets need clang (scripts/install-deps.sh installs it)"
  exit 77
fi
mkdir -p "$work"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I"$src"
       -DDS_FUZZ_SOURCE_DIR="\"$src\"")
probe=$work/probe.cc
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' > "$probe"
if ! "$cxx" "${flags[@]}" "$probe" -o "$work/probe" >/dev/null 2>&1; then
  echo "SKIP: $cxx cannot build libFuzzer binaries here (libclang-rt-dev missing?)"
  exit 77
fi

pcre=$(pkg-config --cflags --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)
tokenizer_sources=(model/tokenizer/tokenizer.cc model/tokenizer/bpe.cc model/tokenizer/regex_split.cc
                   model/tokenizer/utf8.cc model/tokenizer/chat_template.cc)
includes=()
gen_sources=()
libs=()
case "$target" in
  safetensors_header)
    main=fuzz_safetensors_header.cc
    sources=(model/safetensors.cc common/dtype.cc common/status.cc) ;;
  config)
    main=fuzz_config.cc
    sources=(model/config.cc common/status.cc) ;;
  tokenizer)
    main=tokenizer_fuzz.cc
    sources=("${tokenizer_sources[@]}" common/status.cc)
    libs=($pcre) ;;
  tokenizer_json)
    main=fuzz_tokenizer_json.cc
    sources=("${tokenizer_sources[@]}" common/status.cc)
    libs=($pcre) ;;
  http_request)
    main=fuzz_http_request.cc
    sources=(coordinator/openai_api.cc coordinator/params.cc coordinator/bounded_json.cc common/request_limits.cc
             common/status.cc "${tokenizer_sources[@]}")
    libs=($pcre) ;;
  thrift)
    main=fuzz_thrift.cc
    # The generated code, from the IDL, into the fuzz work directory (the build tree may not exist).
    gen=$work/gen
    if [ ! -f "$gen/coordinator/thrift/Deepshard.cpp" ] || [ "$src/coordinator/deepshard.thrift" -nt "$gen/coordinator/thrift/Deepshard.cpp" ]; then
      mkdir -p "$gen/coordinator/thrift"
      thrift --gen cpp:no_skeleton,moveable_types -out "$gen/coordinator/thrift" "$src/coordinator/deepshard.thrift"
    fi
    includes=(-I"$gen")
    gen_sources=("$gen/coordinator/thrift/Deepshard.cpp" "$gen/coordinator/thrift/deepshard_types.cpp")
    sources=(coordinator/thrift_params.cc coordinator/params.cc common/request_limits.cc common/status.cc
             "${tokenizer_sources[@]}")
    libs=($(pkg-config --libs thrift 2>/dev/null || echo -lthrift) $pcre) ;;
  control)
    main=fuzz_control.cc
    sources=(control/protocol.cc common/request_limits.cc common/status.cc) ;;
  plan)
    main=fuzz_plan.cc
    # The two plan readers are instrumented; what they call (device names, the config, topology
    # helpers) comes from the regular build's libraries.
    if [ -z "$bindir" ] || [ ! -f "$bindir/model/libdeepshard_model.a" ]; then
      echo "SKIP: the plan target links the build's libraries; build deepshard first (DS_BINARY_DIR)"
      exit 77
    fi
    sources=(shard_node/layout.cc launch/launch_config.cc)
    # Every library of the build in one group (the linker takes only what the readers reach), so a
    # component split does not break this list; a CUDA build's model library reaches the CUDA engine.
    mapfile -t build_libs < <(find "$bindir" -name 'libdeepshard_*.a' -not -path '*/tests/*' | sort)
    cuda_libs=()
    if [ -f "$bindir/model/libdeepshard_model_cuda.a" ]; then
      cuda_home=${CUDA_HOME:-/usr/local/cuda}
      cuda_libs=(-L"$cuda_home/lib64" -Wl,-rpath,"$cuda_home/lib64" -lcudart -lcublasLt -lcublas)
    fi
    libs=(-Wl,--start-group "${build_libs[@]}" -Wl,--end-group "${cuda_libs[@]}"
          $(pkg-config --libs spdlog fmt 2>/dev/null || echo -lspdlog -lfmt) $pcre -lpthread -ldl) ;;
  *) echo "unknown target $target"; exit 2 ;;
esac
bin=$work/fuzz_$target
# Objects are shared between targets (the tokenizer's sources serve four of them) and rebuilt only
# when their source or a header they include changed: the ASan build takes minutes on a small box.
objdir=${DS_FUZZ_WORK:-${bindir:-/tmp}/fuzz}/obj
mkdir -p "$objdir"
stale() {  # object, dependency file: true when the object must be rebuilt
  [ -f "$1" ] && [ -f "$2" ] || return 0
  local f
  for f in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$2"); do
    if [ "$f" -nt "$1" ]; then return 0; fi
  done
  return 1
}
objects=()
for s in "$src/tests/fuzz/$main" "${sources[@]/#/$src/}" "${gen_sources[@]}"; do
  o=$objdir/$(echo "${s#/}" | tr '/' '_').o
  if stale "$o" "$o.d"; then
    echo "compiling $s"
    "$cxx" "${flags[@]}" "${includes[@]}" -MMD -MF "$o.d.tmp" -c "$s" -o "$o.tmp"
    mv "$o.d.tmp" "$o.d"
    mv "$o.tmp" "$o"
  fi
  objects+=("$o")
done
newest=$(ls -t "${objects[@]}" | head -n1)
if [ ! -x "$bin" ] || [ "$newest" -nt "$bin" ]; then
  "$cxx" "${flags[@]}" "${objects[@]}" "${libs[@]}" -o "$bin.tmp"
  mv "$bin.tmp" "$bin"
fi

seeds=$work/seeds
corpus=$work/corpus
rm -rf "$seeds"
mkdir -p "$seeds" "$corpus" "$work/artifacts"
if [ -d "$src/tests/fuzz/seeds/$target" ]; then cp "$src/tests/fuzz/seeds/$target"/* "$seeds/"; fi
golden=$src/testdata/golden
case "$target" in
  safetensors_header)
    i=0
    for f in "$golden"/*/*.safetensors; do
      n=$(od -An -t u8 -N8 "$f" | tr -d ' ')
      # header-JSON mode (head closing the pipe early is expected: ignore tail's SIGPIPE)
      { tail -c +9 "$f" | head -c "$n" > "$seeds/header_$i.json"; } || true
      head -c $((8 + n + 64)) "$f" > "$seeds/file_$i.bin"  # raw mode (offsets past the end)
      i=$((i + 1))
    done
    printf '{"a":{"dtype":"F8_E4M3","shape":[2,3],"data_offsets":[0,6]},"__metadata__":{"format":"pt"}}' \
      > "$seeds/small.json" ;;
  config)
    for f in "$golden"/*/config.json; do cp "$f" "$seeds/$(basename "$(dirname "$f")").json"; done ;;
  tokenizer)
    # One seed per line of the expected-output cases (mixed English / Chinese / code / specials).
    split -l 1 "$src/testdata/tokenizer/cases.jsonl" "$seeds/case_" ;;
esac

# The corpus grows across runs (kept in the work directory); -max_len keeps executions short.
max_len=65536
case "$target" in
  tokenizer_json|plan|config|control) max_len=16384 ;;
esac
if [[ "$budget" == runs=* ]]; then
  limit=(-runs="${budget#runs=}")
  echo "fuzzing $target for ${budget#runs=} executions"
  # DS_FUZZ_MAX_TIME: stop earlier after that many seconds (a shared machine's time box).
  if [ -n "${DS_FUZZ_MAX_TIME:-}" ]; then limit+=(-max_total_time="$DS_FUZZ_MAX_TIME"); fi
else
  limit=(-max_total_time="$budget")
  echo "fuzzing $target for ${budget}s"
fi
"$bin" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$corpus" "$seeds"
