#!/usr/bin/env bash
# Configures and builds one configuration.
#   scripts/build.sh [BUILD_DIR] [extra cmake args...]
# Default: build/ (Release, CUDA when nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPB_WERROR=ON "$@" >"$dir.configure.log" 2>&1 ||
  { cat "$dir.configure.log" >&2; exit 1; }
cmake --build "$dir" -j "$(bash scripts/cores.sh)"
