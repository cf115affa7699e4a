#!/usr/bin/env bash
# Installs every Debian package deepshard needs to build, test and run. Safe to run twice:
# apt-get skips what is present, and `apt-get update` runs only when the package lists are stale.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build ccache pkg-config git
  clang
  libgtest-dev libgmock-dev
  libpcre2-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev
  openmpi-bin libopenmpi-dev libucx-dev ucx-utils
  libboost-dev libboost-system-dev libboost-program-options-dev
  libssl-dev openssl
  libthrift-dev thrift-compiler libevent-dev python3-thrift
  libhwloc-dev hwloc libibverbs-dev ibverbs-utils
  python3 python3-numpy
  iproute2 iptables procps psmisc curl
  gnuplot-nox
  prometheus
  # libFuzzer + ASan/UBSan for the fuzz targets (tests/fuzz/run_fuzz.sh, scripts/fuzz.sh)
  clang libclang-rt-14-dev
  munge slurmd slurmctld slurm-client
)
# The openai npm client test needs node and npm; install Debian's only where none is on PATH
# (some images ship their own node, whose npm conflicts with Debian's package).
if ! command -v npm >/dev/null 2>&1; then PKGS+=(nodejs npm); fi
# bench/peer (llama.cpp side by side; a benchmark, not needed to build or test): the GGUF converter's
# Python packages. Large (torch), so only on request: DS_PEER_BENCH=1 scripts/install-deps.sh
if [ "${DS_PEER_BENCH:-0}" = 1 ]; then PKGS+=(python3-torch python3-sentencepiece python3-tqdm); fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Refresh the lists only if they are older than a day or absent.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
  $SUDO apt-get update -q
fi
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
