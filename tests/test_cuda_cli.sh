#!/usr/bin/env bash
# The command line on the GPU, end to end, against the same commands on the
# CPU: `patchbay forward --backend cuda` (logits and every hook, fp32 NMSE
# <= 1e-9), and `patchbay sweep --backend cuda --gather nccl` on one rank
# (the sweep on the GPU, its results round-tripped through a real NCCL
# all-gather) with results.json effects within 1e-4 of the CPU run's.
# Exit 77 (skipped) without a CUDA device, a CUDA build, or python3 with
# numpy. PB_TEST_CLI_BACKEND=reference dry-runs the comparisons against
# another backend (no NCCL then) on a machine without a GPU.
set -euo pipefail
build=${PB_BUILD_DIR:-build}
fixtures=${PB_FIXTURES:-tests/fixtures}
cli=$build/patchbay
[ -x "$cli" ] || { echo "skipping: $cli is not built"; exit 77; }
# the repository's venv (scripts/install-deps.sh puts numpy there), else python3
src=${PB_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
py=python3
[ -x "$src/.venv/bin/python" ] && py=$src/.venv/bin/python
command -v "$py" >/dev/null && "$py" -c "import numpy" 2>/dev/null ||
  { echo "skipping: no python3 with numpy to compare results"; exit 77; }
model=$fixtures/tiny_gqa/model.gguf
under=${PB_TEST_CLI_BACKEND:-cuda}
gather=()
[ "$under" = cuda ] && gather=(--gather nccl)
# Only "no device / no driver / no CUDA build" is a skip; any other failure
# to create the backend on a machine that has one is a failure.
if ! probe=$("$cli" info --model "$model" --backend "$under" 2>&1); then
  case $probe in
    *cudaGetDeviceCount*|*"has no CUDA backend"*) echo "skipping: no CUDA backend here: $probe"; exit 77 ;;
    *) echo "FAIL: patchbay info --backend $under: $probe"; exit 1 ;;
  esac
fi
tmp=$(mktemp -d /tmp/pb_cuda_cli_XXXXXX)
trap 'rm -rf "$tmp"' EXIT

ids=41,120,90,47,19,101,52,76,80,39,5,17,33,9
for backend in cpu "$under"; do
  "$cli" forward --model "$model" --backend $backend --ids $ids --hooks 'blocks.*' --out "$tmp/fw_$backend" \
    >/dev/null
done
"$py" - "$tmp/fw_cpu" "$tmp/fw_$under" <<'PY'
import os, sys
import numpy as np
a_dir, b_dir = sys.argv[1:3]
worst = ("", 0.0)
files = sorted(f for f in os.listdir(a_dir) if f.endswith(".npy"))
assert "logits.npy" in files and len(files) > 10, files
for f in files:
    a, b = np.load(os.path.join(a_dir, f)), np.load(os.path.join(b_dir, f))
    assert a.shape == b.shape, (f, a.shape, b.shape)
    masked = np.isneginf(a)  # attn.hook_attn_scores: -inf above the diagonal, on both backends
    assert (masked == np.isneginf(b)).all(), (f, "the -inf entries differ")
    a, b = np.where(masked, 0, a), np.where(masked, 0, b)
    nmse = float(((a.astype(np.float64) - b) ** 2).sum() / max((a.astype(np.float64) ** 2).sum(), 1e-30))
    if nmse > worst[1]:
        worst = (f, nmse)
    assert nmse <= 1e-9, (f, nmse)
print(f"[ MEASURE  ] forward --backend {sys.argv[2].rsplit('_', 1)[1]} vs cpu: {len(files)} arrays, worst NMSE {worst[1]:.2e} ({worst[0]})")
PY

spec=$fixtures/patching/tiny_gqa_denoise_logit_diff/spec.json
"$cli" sweep --model "$model" --spec "$spec" --out "$tmp/sw_cpu" --no-progress >/dev/null
"$cli" sweep --model "$model" --spec "$spec" --out "$tmp/sw_cuda" --no-progress --backend "$under" "${gather[@]}" \
  2>"$tmp/sw_cuda.log" >/dev/null || { cat "$tmp/sw_cuda.log"; exit 1; }
if [ "$under" = cuda ] && ! grep -q "over NCCL" "$tmp/sw_cuda.log"; then
  echo "FAIL: the sweep did not gather over NCCL"; cat "$tmp/sw_cuda.log"; exit 1
fi
if [ "$under" = cuda ] && ! grep -Eq "^patchbay: rank 0 \(node-local [0-9]+\) uses CUDA device [0-9]+ of [0-9]+$" "$tmp/sw_cuda.log"; then
  echo "FAIL: the sweep did not say which CUDA device it uses"; cat "$tmp/sw_cuda.log"; exit 1
fi
"$py" - "$tmp/sw_cpu/results.json" "$tmp/sw_cuda/results.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["n_rows"] == b["n_rows"] and a["n_rows_done"] == b["n_rows_done"], (a["n_rows"], b["n_rows"])
worst = 0.0
for sa, sb in zip(a["sites"], b["sites"]):
    for x, y in zip(sa["per_pair_effect"], sb["per_pair_effect"]):
        if x is None or y is None:
            assert x is None and y is None, (sa, x, y)
            continue
        worst = max(worst, abs(x - y))
assert worst <= 1e-4, worst
print(f"[ MEASURE  ] sweep on the backend under test vs cpu: {len(a['sites'])} sites, max |d effect| {worst:.2e}")
PY
