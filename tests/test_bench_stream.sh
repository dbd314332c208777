#!/usr/bin/env bash
# bench_sweep's streamed-weights report, on the CPU, with a random model
# stored as Q8_0 in host memory (the GPU check's 70B-slice benchmark at a
# small shape): it reads layers during the sweep, each read moves one
# SmolLM2-shape layer's Q8_0 bytes (computed here from the shape: 2 d^2 +
# 2 d kv + 3 d ffn values, 34 bytes per 32), the bytes add up, and the
# extrapolation names the named shape's 30 layers. With --backend cuda and
# no device it skips (exit 77), as the GPU check's dry run expects.
set -euo pipefail
build=${PB_BUILD_DIR:-build}
bench=$build/bench_sweep
[ -x "$bench" ] || { echo "skipping: $bench is not built"; exit 77; }
export OMP_NUM_THREADS=2
fail() { echo "FAIL: $*"; exit 1; }
out=$("$bench" --random-model smollm2-135m:6:q8_0 --dtype file --weights stream --weight-memory 64MiB \
  --default-sweep 8 --threads 2) || fail "bench_sweep exited $?"
echo "$out"
line=$(grep '^{"bench": "stream"' <<<"$out") || fail "no stream line"
python3 - "$line" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
d, kv, ffn = 576, 3 * 64, 1536
layer = (2 * d * d + 2 * d * kv + 3 * d * ffn) // 32 * 34
fail = []
if s["layers_read"] <= 0: fail.append(f"no layer read: {s}")
if s["layer_bytes"] != layer: fail.append(f"layer bytes {s['layer_bytes']}, expected {layer}")
if s["bytes_streamed"] != s["layers_read"] * layer: fail.append(f"bytes {s['bytes_streamed']} != reads x layer")
if s["layers"] != 6 or s["full_layers"] != 30: fail.append(f"layers {s['layers']} of {s['full_layers']}")
if abs(s["full_seconds"] - s["seconds"] * 5) > 1e-3 * s["full_seconds"] + 1e-4: fail.append("extrapolation")
for f in fail: print("FAIL:", f)
sys.exit(1 if fail else 0)
PY
rc=0
"$bench" --random-model smollm2-135m:2:q8_0 --backend cuda --dtype file --weights stream --default-sweep 4 \
  >/dev/null 2>&1 || rc=$?
case $rc in
  0 | 77) ;; # ran on a GPU, or skipped without one
  *) fail "bench_sweep --backend cuda exited $rc" ;;
esac
echo "bench_sweep stream report: ok"
