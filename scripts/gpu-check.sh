#!/usr/bin/env bash
# Prepares the one-call GPU check (bench/gpu/README.md): builds the GPU tests and benchmarks here (CUDA
# on, one architecture, ccache), stages the binaries and the shared libraries they need into the
# git-ignored folder .gpucheck/ (one xz tarball + manifest), checks that the tree that travels to the
# device machine stays under its 64 MiB limit, and prints the single device `run` to make.
#
# Usage: scripts/gpu-check.sh [--no-build] [--arch 90a]
#   BUILD_DIR (default build-gpucheck) holds the build. The device runs scripts/gpu-check-run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD_DIR:-build-gpucheck}
ARCH=90a
DO_BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) DO_BUILD=0 ;;
    --arch) ARCH=$2; shift ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
STAGE=.gpucheck
LIMIT=$((64 * 1024 * 1024))
# What runs on the device machine, and the tools that stage makes.
TARGETS=(backend_ops_test kernels_cuda_test mla_attention_cuda_test golden_cuda_test gpu_kernels_bench engine_bench
         deepshard)
# nccl_device_test runs only with DS_GPU_FULL=1 (gpu-check-run.sh); staged only then, since the stage and the
# tracked tree together must fit the 64 MiB a device call carries.
if [ "${DS_GPU_FULL:-0}" = 1 ]; then TARGETS+=(nccl_device_test); fi
# Libraries the device machine provides (its driver, and the PyTorch environment's CUDA wheels):
# never staged, found there by scripts/gpu-check-run.sh.
DEVICE_LIBS='^(libcuda\.so|libcublas\.so|libcublasLt\.so|libnccl\.so|libnvidia-)'
# The C runtime and friends every Linux has.
SYSTEM_LIBS='^(libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|ld-linux-x86-64\.so|linux-vdso\.so|libgcc_s\.so|libstdc\+\+\.so|libresolv\.so|libutil\.so)'

if [ "$DO_BUILD" = 1 ]; then
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    # Static libstdc++/libgcc: the device image's C++ runtime may differ from this machine's.
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDEEPSHARD_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DDEEPSHARD_TESTS=ON -DDEEPSHARD_BENCH=ON \
      -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc"
  fi
  ninja -C "$BUILD" -j"$(nproc)" "${TARGETS[@]}"
fi

rm -rf "$STAGE"
mkdir -p "$STAGE/pkg/bin" "$STAGE/pkg/lib"
for t in "${TARGETS[@]}"; do
  src=""
  for d in "$BUILD/tests" "$BUILD/bin"; do
    [ -x "$d/$t" ] && src="$d/$t" && break
  done
  [ -n "$src" ] || { echo "gpu-check: $t was not built (in $BUILD/tests or $BUILD/bin)" >&2; exit 1; }
  cp "$src" "$STAGE/pkg/bin/$t"
  strip --strip-unneeded "$STAGE/pkg/bin/$t"
done
# The shared-library closure of the binaries, minus the system's and the device's own.
declare -A seen=()
queue=("$STAGE"/pkg/bin/*)
while [ ${#queue[@]} -gt 0 ]; do
  f=${queue[0]}
  queue=("${queue[@]:1}")
  while read -r name path; do
    [ -n "$name" ] || continue
    if [[ "$name" =~ $SYSTEM_LIBS || "$name" =~ $DEVICE_LIBS ]]; then continue; fi
    [ -n "${seen[$name]:-}" ] && continue
    seen[$name]=1
    if [ -z "$path" ] || [ ! -f "$path" ]; then
      echo "gpu-check: $f needs $name, which is not found here" >&2
      exit 1
    fi
    cp -L "$path" "$STAGE/pkg/lib/$name"
    strip --strip-unneeded "$STAGE/pkg/lib/$name" 2>/dev/null || true
    queue+=("$STAGE/pkg/lib/$name")
  done < <(ldd "$f" | awk '/=>/ {print $1, $3} !/=>/ && /^\s*\// {n=$1; sub(".*/", "", n); print n, $1}')
done
# Manifest: every staged file with its size and sha256, and what the device must provide.
{
  echo "# deepshard GPU check stage: $(git rev-parse --short HEAD) $(date -u +%Y-%m-%dT%H:%M:%SZ) arch sm_$ARCH"
  echo "# from the device machine: libcuda.so.1 (driver), libcublas.so.13, libcublasLt.so.13, libnccl.so.2"
  (cd "$STAGE/pkg" && find bin lib -type f | sort | while read -r p; do
     printf '%s %s %s\n' "$p" "$(stat -c %s "$p")" "$(sha256sum "$p" | cut -d' ' -f1)"
   done)
} > "$STAGE/manifest.txt"
cp "$STAGE/manifest.txt" "$STAGE/pkg/manifest.txt"
tar -C "$STAGE/pkg" -cf - . | xz -T0 -9e > "$STAGE/stage.tar.xz"
rm -rf "$STAGE/pkg"

# The tree that travels: tracked files + untracked files git does not ignore + the carried folder.
tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
staged=$(du -sb "$STAGE" | cut -f1)
total=$((tracked + untracked + staged))
awk -v s="$staged" -v t="$tracked" -v u="$untracked" -v n="$(grep -vc '^#' "$STAGE/manifest.txt")" 'BEGIN {
  m = 1048576
  printf "gpu-check: stage %.1f MiB (%d files) + tracked tree %.1f MiB + untracked %.1f MiB = %.1f MiB of the 64 MiB limit\n",
         s / m, n, t / m, u / m, (s + t + u) / m }'
if [ "$total" -ge "$LIMIT" ]; then
  echo "gpu-check: over the 64 MiB the device call carries; trim the stage or the tree" >&2
  exit 1
fi
cat <<EOF

The device check is ready. Make this one call of the device tool (on one H200; about 6 minutes, at most 10):

  run(command="bash scripts/gpu-check-run.sh", carry=[".gpucheck"], timeout_s=600)

It writes \$OUT/gpu-check.log (every stage's output and a summary table) and \$OUT/*.json (benchmarks).
EOF
