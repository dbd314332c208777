#!/usr/bin/env bash
# Every test: installs what it needs, fetches SmolLM2 (for the tests that
# compare against transformers' reference on it), builds the Release
# configuration (with CUDA compiled and linked when nvcc is present; GPU
# tests skip without a device) and an ASan+UBSan configuration, and runs
# CTest on both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-model.sh
bash scripts/build.sh build
bash scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DPB_SANITIZE=ON -DPB_CUDA=OFF
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
status=0
echo "== tests: Release build ==" >&2
(cd build && ctest --output-on-failure -j 1) || status=1
echo "== tests: ASan + UBSan build ==" >&2
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j 1) || status=1
exit $status
