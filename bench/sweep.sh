#!/usr/bin/env bash
# The sweep benchmark in one invocation: the engine (bench_sweep) and the
# one-forward-per-site PyTorch loop (scripts/bench_torch_sweep.py) on the
# same model, spec and machine, then the ratio of their rows/s.
#
#   bench/sweep.sh [SPEC.json]
#
# Default spec: the project's default sweep (resid_pre, attn_out, mlp_out at
# every layer and position; z for every head of every layer at the last
# position) on the first chat-templated SmolLM2 pair of
# tests/fixtures/patching/smollm2_denoise. Needs build/ (scripts/build.sh),
# models/ (scripts/fetch-model.sh) and, for the PyTorch side, torch and
# transformers in .venv (pip install torch transformers gguf accelerate).
set -euo pipefail
cd "$(dirname "$0")/.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
spec=${1:-}
if [ -z "$spec" ]; then
  spec=$(mktemp --suffix=.json)
  trap 'rm -f "$spec"' EXIT
  python3 - "$spec" <<'PY'
import json, sys
s = json.load(open("tests/fixtures/patching/smollm2_denoise/spec.json"))
s["pairs"] = s["pairs"][:1]
s["sites"] = [{"component": c, "layers": "all", "positions": "each"} for c in ("resid_pre", "attn_out", "mlp_out")]
s["sites"].append({"component": "z", "layers": "all", "heads": "all", "positions": "last"})
json.dump(s, open(sys.argv[1], "w"))
PY
fi
[ -x build/bench_sweep ] || bash scripts/build.sh build >/dev/null
[ -f "$model" ] || bash scripts/fetch-model.sh
echo "== engine (CPU backend, $(nproc) cores)"
engine=$(./build/bench_sweep "$model" "$spec" | tee /dev/stderr | sed -n 's/^RESULT engine_rows_per_s=\([0-9.]*\).*/\1/p')
echo "== engine, rows that are exactly zero by construction run too"
./build/bench_sweep "$model" "$spec" --all-rows | grep -E "rows/s|rate|ratio"
if ! .venv/bin/python -c "import torch, transformers" 2>/dev/null; then
  echo "== pytorch loop: skipped (torch and transformers are not installed in .venv)"
  exit 0
fi
echo "== pytorch loop (transformers, forward hooks, one forward per row)"
torch_rate=$(.venv/bin/python scripts/bench_torch_sweep.py "$model" "$spec" --rows 120 | tee /dev/stderr |
  sed -n 's/^RESULT torch_rows_per_s=\([0-9.]*\).*/\1/p')
python3 -c "print(f'ratio             engine / pytorch rows/s = {$engine / $torch_rate:.1f}x')"
