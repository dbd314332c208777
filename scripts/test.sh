#!/usr/bin/env bash
# Every test: installs what it needs, fetches SmolLM2 (for the tests that
# compare against transformers' reference on it), builds the Release
# configuration (with CUDA compiled and linked when nvcc is present; GPU
# tests skip without a device) and an ASan+UBSan configuration, runs the
# style checks (scripts/check-style.sh), CTest on both builds, the Python
# package's tests (installed from python/ into .venv) and a short
# run of every libFuzzer harness (scripts/fuzz.sh). Each CTest suite runs
# PB_TEST_JOBS tests at once (default: the number of cores; the shell tests
# that drive jobs mostly wait, and overlap the others), with OpenMP threads
# that sleep instead of spinning when they wait (OMP_WAIT_POLICY=passive,
# unless set), since two tests share the cores. Ends with
# the seconds each stage took ("== stage seconds ==" lines), so a change can
# say how much CI time it adds. Fails when any stage fails; the style check
# and the suites all run even when an earlier one of them failed.
set -euo pipefail
cd "$(dirname "$0")/.."

stage_names=()
stage_seconds=()
stage_results=()
print_stages() {
  [ ${#stage_names[@]} -gt 0 ] || return 0
  echo "== stage seconds ==" >&2
  for i in "${!stage_names[@]}"; do
    printf '== %-28s %8s  %s\n' "${stage_names[$i]}" "${stage_seconds[$i]}" "${stage_results[$i]}" >&2
  done
}
trap print_stages EXIT
# stage NAME COMMAND...: runs COMMAND, records its wall time; returns its status.
stage() {
  local name=$1 start end rc=0
  shift
  start=$(date +%s%N)
  "$@" || rc=$?
  end=$(date +%s%N)
  stage_names+=("$name")
  stage_seconds+=("$(awk -v ns=$((end - start)) 'BEGIN { printf "%.1f", ns / 1e9 }')")
  stage_results+=("$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")")
  return $rc
}

stage "install deps" bash scripts/install-deps.sh
stage "fetch model" bash scripts/fetch-model.sh
stage "fetch Gemma 3 270M" bash scripts/fetch-model.sh gemma3-270m
stage "fetch vocabularies" bash scripts/fetch-model.sh vocab
stage "configure+build Release" bash scripts/build.sh build
stage "configure+build ASan" bash scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DPB_SANITIZE=ON -DPB_CUDA=OFF
cores=$(bash scripts/cores.sh)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$cores}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
jobs=${PB_TEST_JOBS:-$cores}
status=0
echo "== style check ==" >&2
stage "style check" bash scripts/check-style.sh || status=1
echo "== tests: Release build ==" >&2
release_suite() { (cd build && ctest --output-on-failure -j "$jobs"); }
stage "ctest Release" release_suite || status=1
echo "== tests: Python package (pip install ./python, pytest) ==" >&2
python_suite() {
  # the Release build's libpatchbay.so goes into the package; its patchbay tool is the reference
  PB_BUILD_DIR=$PWD/build .venv/bin/pip install -q --disable-pip-version-check --no-build-isolation ./python &&
    PB_BUILD_DIR=$PWD/build .venv/bin/python -m pytest -q -p no:cacheprovider python/tests
}
stage "python package" python_suite || status=1
echo "== tests: ASan + UBSan build ==" >&2
asan_suite() {
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --output-on-failure -j "$jobs")
}
stage "ctest ASan + UBSan" asan_suite || status=1
echo "== fuzz smoke (libFuzzer, 2 s per harness) ==" >&2
stage "fuzz smoke" bash scripts/fuzz.sh || status=1
exit $status
