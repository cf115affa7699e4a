#!/usr/bin/env bash
# Builds one libFuzzer target with clang++ (-fsanitize=fuzzer,address,undefined) straight from the
# sources it needs and runs it for a bounded time on a seed corpus from testdata/.
# Usage: run_fuzz.sh TARGET SECONDS   (TARGET: safetensors_header | config | tokenizer)
# Exit 77 (ctest SKIP) when clang++ or libFuzzer is missing; non-zero on a crash or build failure.
set -euo pipefail
target=$1
secs=${2:-20}
src=${DS_SOURCE_DIR:?DS_SOURCE_DIR not set}
work=${DS_BINARY_DIR:-/tmp}/fuzz/$target
cxx=${DS_FUZZ_CXX:-clang++}

if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "SKIP: $cxx not found; libFuzzer targets need clang"
  exit 77
fi
mkdir -p "$work"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I"$src")
probe=$work/probe.cc
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' > "$probe"
if ! "$cxx" "${flags[@]}" "$probe" -o "$work/probe" >/dev/null 2>&1; then
  echo "SKIP: $cxx cannot build libFuzzer binaries here"
  exit 77
fi

extra=()
case "$target" in
  safetensors_header)
    main=fuzz_safetensors_header.cc
    sources=(model/safetensors.cc common/dtype.cc common/status.cc) ;;
  config)
    main=fuzz_config.cc
    sources=(model/config.cc common/status.cc) ;;
  tokenizer)
    main=tokenizer_fuzz.cc
    sources=(model/tokenizer/tokenizer.cc model/tokenizer/bpe.cc model/tokenizer/regex_split.cc
             model/tokenizer/utf8.cc model/tokenizer/chat_template.cc common/status.cc)
    extra=(-DDS_FUZZ_SOURCE_DIR="\"$src\"" $(pkg-config --cflags --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)) ;;
  *) echo "unknown target $target"; exit 2 ;;
esac
bin=$work/fuzz_$target
# Rebuild only when a source it may include changed (the ASan build takes minutes on a small box).
if [ ! -x "$bin" ] || [ -n "$(find "$src/tests/fuzz" "$src/model" "$src/common" -newer "$bin" \
      \( -name '*.cc' -o -name '*.h' \) -print -quit)" ]; then
  "$cxx" "${flags[@]}" "$src/tests/fuzz/$main" "${sources[@]/#/$src/}" "${extra[@]}" -o "$bin"
fi

seeds=$work/seeds
corpus=$work/corpus
rm -rf "$seeds" "$corpus"
mkdir -p "$seeds" "$corpus" "$work/artifacts"
golden=$src/testdata/golden
if [ "$target" = safetensors_header ]; then
  i=0
  for f in "$golden"/*/*.safetensors; do
    n=$(od -An -t u8 -N8 "$f" | tr -d ' ')
    # header-JSON mode (head closing the pipe early is expected: ignore tail's SIGPIPE)
    { tail -c +9 "$f" | head -c "$n" > "$seeds/header_$i.json"; } || true
    head -c $((8 + n + 64)) "$f" > "$seeds/file_$i.bin"  # raw mode (offsets past the end)
    i=$((i + 1))
  done
  printf '{"a":{"dtype":"F8_E4M3","shape":[2,3],"data_offsets":[0,6]},"__metadata__":{"format":"pt"}}' \
    > "$seeds/small.json"
elif [ "$target" = config ]; then
  for f in "$golden"/*/config.json; do cp "$f" "$seeds/$(basename "$(dirname "$f")").json"; done
else
  # One seed per line of the expected-output cases (mixed English / Chinese / code / specials).
  split -l 1 "$src/testdata/tokenizer/cases.jsonl" "$seeds/case_"
fi

echo "fuzzing $target for ${secs}s"
"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$corpus" "$seeds"
