#!/usr/bin/env bash
# Matrices kept as the file stores them (--dtype file: quantised blocks
# decoded inside each projection) beside the same file dequantised to f32 at
# load, in one invocation on the same machine: weights' memory, the peak
# resident set, and sweep rows/s of each, then the ratio.
#
#   bench/file_dtype.sh [MODEL.gguf] [T]
#
# Default: SmolLM2-135M-Instruct Q4_1 (models/, scripts/fetch-model.sh) and
# the project's default sweep on T = 24 seeded tokens (bench_sweep
# --default-sweep). Needs build/ (scripts/build.sh). Run it on a quiet
# machine: OpenMP threads spin.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
T=${2:-24}
[ -x build/bench_sweep ] || bash scripts/build.sh build >/dev/null
[ -f "$model" ] || bash scripts/fetch-model.sh
declare -A rate
for dtype in f32 file; do
  echo "== --dtype $dtype"
  out=$( { /usr/bin/time -f 'PEAK_RSS_KB %M' ./build/bench_sweep "$model" --default-sweep "$T" --dtype "$dtype"; } 2>&1 )
  echo "$out" | grep -E 'rows/s|weights|PEAK_RSS_KB|RESULT' || true
  rate[$dtype]=$(echo "$out" | sed -n 's/^RESULT engine_rows_per_s=\([0-9.]*\).*/\1/p')
done
python3 - "${rate[file]}" "${rate[f32]}" <<'PY'
import sys
kept, wide = map(float, sys.argv[1:3])
print(f"RESULT file_over_f32_rows_per_s={kept / wide:.3f}")
PY
