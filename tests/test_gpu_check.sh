#!/usr/bin/env bash
# The GPU check's dry run, as a bare GPU image would start it: a copy of the
# working tree as it travels (tracked and untracked-not-ignored files, no
# build folders) plus the folder scripts/gpu-prepare.sh gathers, and
# scripts/gpu-check.sh run on it. Without a GPU here, it must configure and
# build the CUDA targets against the prepared prefix alone, skip every GPU
# step with a reason, and write a valid summary.json.
#
# Asserts: exit 0; summary.json parses; configure and build "ok"; every
# gpu-labelled test skipped (none failed); each benchmark "skipped" with a
# note naming why; the outside libraries of the built programs (jansson,
# PCRE2, OpenBLAS, libgfortran, cmocka) resolve into the prefix.
# Exit 77 (skipped) without nvcc, git, apt-get or python3, on a machine with
# a GPU, or when the Debian packages cannot be downloaded (no registry
# reachable).
set -euo pipefail
src=${PB_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "skipping: no nvcc"; exit 77; }
for tool in git apt-get dpkg-deb python3; do
  command -v $tool >/dev/null || { echo "skipping: no $tool"; exit 77; }
done
# a dry run: on a GPU machine gpu-check.sh itself is the real run
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep '^GPU' >/dev/null; then
  echo "skipping: this machine has a GPU; the dry run is for machines without one"
  exit 77
fi
# it builds on its own, so one build configuration's run is enough
if "${PB_BUILD_DIR:-build}/patchbay" --version 2>/dev/null | grep -q '^sanitizers: on'; then
  echo "skipping: the dry run does not depend on this build; the Release build's ctest runs it"
  exit 77
fi
tmp=$(mktemp -d /tmp/pb_gpu_check_XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# the prepared folder: the source tree's own when it has one, else gathered now
deps=$src/.gpu-deps
if [ ! -f "$deps/MANIFEST" ]; then
  deps=$tmp/deps
  if ! bash "$src/scripts/gpu-prepare.sh" "$deps" >"$tmp/prepare.log" 2>&1; then
    cat "$tmp/prepare.log"
    grep -qiE "temporary failure|could not resolve|unable to fetch|failed to fetch" "$tmp/prepare.log" &&
      { echo "skipping: the Debian packages cannot be downloaded here"; exit 77; }
    echo "FAIL: scripts/gpu-prepare.sh failed"
    exit 1
  fi
fi

mkdir "$tmp/tree"
(cd "$src" && git ls-files -z -co --exclude-standard) | (cd "$src" && xargs -0 cp --parents -t "$tmp/tree" 2>/dev/null) ||
  true
[ -f "$tmp/tree/scripts/gpu-check.sh" ] || { echo "FAIL: the tree copy lacks scripts/gpu-check.sh"; exit 1; }

rc=0
OUT=$tmp/out PB_GPU_DEPS=$deps PB_GPU_CHECK_BUDGET=400 \
  bash "$tmp/tree/scripts/gpu-check.sh" --steps tests,prefill,sweep,stream,atp,sanitizer >"$tmp/check.log" 2>&1 || rc=$?
if [ $rc -ne 0 ]; then
  cat "$tmp/check.log"
  for log in "$tmp"/out/*.log; do echo "== $log"; tail -n 30 "$log"; done
  echo "FAIL: gpu-check.sh exited $rc"
  exit 1
fi

python3 - "$tmp/out/summary.json" <<'PY'
import json, os, re, sys
s = json.load(open(sys.argv[1]))
fail = []
steps = s["steps"]
for name in ("configure", "build"):
    if steps.get(name, {}).get("status") != "ok":
        fail.append(f"{name}: {steps.get(name)}")
t = s["tests_gpu"]
# every gpu-labelled test skips here but test_cuda_module, which needs no GPU
# (it loads the CUDA backend's module) and must pass
log = open(os.path.join(os.path.dirname(sys.argv[1]), t.get("log", "none"))).read() if t["ran"] else ""
passed = set(re.findall(r"Test +#[0-9]+: (\S+) \.+ +Passed", log))
if not t["ran"] or t["total"] == 0 or t["failed"] != 0 or passed != {"test_cuda_module"} \
        or t["skipped"] + len(passed) != t["total"]:
    fail.append(f"gpu tests: {t}, passed {sorted(passed)}")
for name in ("bench_gpu_attention", "bench_gpu_prefill", "bench_torch_prefill", "bench_gpu_sweep", "bench_torch_sweep",
             "bench_stream_q8_0", "bench_stream_bf16", "bench_gpu_atp"):
    status = steps.get(name, {}).get("status")
    if status != "skipped":
        fail.append(f"{name}: status {status}, expected skipped")
    elif not any(n.startswith(name + ": skipped: ") and len(n) > len(name) + 12 for n in s["notes"]):
        fail.append(f"{name}: skipped without a reason in notes")
if s["gpu_count"] != 0:
    fail.append("gpu_count should be 0 on a machine without a GPU")
if not s["dependencies"].startswith(("/", ".")):
    fail.append(f"dependencies: {s['dependencies']}")
print(f"[ MEASURE  ] gpu-check dry run: {s['total_seconds']} s, configure {steps['configure']['seconds']} s, "
      f"build {steps['build']['seconds']} s, {t['skipped']} of {t['total']} gpu tests skipped")
for f in fail:
    print("FAIL:", f)
sys.exit(1 if fail else 0)
PY

prefix=$tmp/tree/build-gpu/deps-prefix
# ldd's output is read whole first: `ldd | grep -q` under pipefail fails
# whenever grep quits before ldd has written everything (SIGPIPE)
ldd_cli=$(ldd "$tmp/tree/build-gpu/patchbay")
ldd_test=$(ldd "$tmp/tree/build-gpu/test_cuda_backend")
status=0
for listing in "$ldd_cli" "$ldd_test"; do
  for lib in libjansson libpcre2-8 libopenblas libgfortran libcmocka; do
    line=$(grep "$lib" <<<"$listing" || true)
    [ -n "$line" ] || continue
    case $line in
      *"=> $prefix/"*) ;;
      *) echo "FAIL: $lib resolves outside the prefix: $line"; status=1 ;;
    esac
  done
done
for lib in libjansson libpcre2-8 libopenblas libgfortran; do
  grep -q "$lib" <<<"$ldd_cli" || { echo "FAIL: patchbay does not link $lib"; status=1; }
done
grep -q libcmocka <<<"$ldd_test" || { echo "FAIL: no libcmocka in test_cuda_backend"; status=1; }
[ $status -eq 0 ] && echo "gpu-check dry run: ok; every outside library from $prefix"
exit $status
