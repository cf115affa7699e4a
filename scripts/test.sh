#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, runs every ctest (unit, multi-rank under
# mpirun, end-to-end). GPU tests skip visibly where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
cd "${BUILD_DIR:-build}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --output-on-failure -j "$(nproc)" --timeout 900 "$@"
