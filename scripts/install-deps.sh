#!/usr/bin/env bash
# Installs what hir's builds, tests, benchmarks and trainer need from Debian's packages; does nothing when all of it
# is present. The CUDA toolkit (nvcc, CCCL) is expected at /usr/local/cuda and is not installed here.
set -euo pipefail
pkgs=(cmake ninja-build g++ libeigen3-dev doctest-dev libbenchmark-dev libopenblas-dev libcli11-dev
      nlohmann-json3-dev python3-torch gnuplot-nox)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "hir: installing missing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
