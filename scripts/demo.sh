#!/usr/bin/env bash
# The main job on a built-in default: install, build, generate a random-weight model in the
# published DeepSeek-V3 layout (FP8, sharded, with the real tokenizer), inspect it, and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BIN=${BUILD_DIR:-build}/bin
MODEL=${DS_DEMO_MODEL:-out/demo-small-fp8}
if [ ! -f "$MODEL/config.json" ]; then
  "$BIN/deepshard" make-model --preset small --dtype fp8 --seed 1 --tokenizer testdata/tokenizer --out "$MODEL"
fi
"$BIN/deepshard" inspect --model "$MODEL"
"$BIN/deepshard" generate --model "$MODEL" --chat --prompt "What is DeepSeek-V3?" --max-tokens 24 --temperature 0.6 --seed 7
