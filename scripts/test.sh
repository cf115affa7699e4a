#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, runs every ctest (unit, multi-rank under
# mpirun, end-to-end), then lists the skipped tests with their reasons (GPU tests skip with "no GPU"
# where there is none). Takes about 5 minutes on 2 cores after the build (the build: about 15 cold,
# 1-2 with a warm ccache). Arguments go to ctest (e.g. -R golden, -L package).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD=${BUILD_DIR:-build}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rc=0
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" --timeout 900 "$@" || rc=$?
python3 scripts/ctest_skips.py "$BUILD" || true
exit $rc
