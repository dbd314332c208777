#!/usr/bin/env bash
# Streamed weights (--weights stream: each layer read from the GGUF into one
# of two slots as the sweep reaches it) beside resident weights, in one
# invocation on the same machine: sweep rows/s, wall time and the peak
# anonymous and file-backed resident set (RssAnon, RssFile: the GGUF is
# mmap'd, so file pages count apart) of each, the ratio streamed / resident,
# and a check that both give the same effects.
#
#   bench/stream.sh [MODEL.gguf] [T]
#
# Default: a random Llama-3-8B-shape model cut to 8 layers, Q8_0 (2.8 GiB;
# written by scripts/make_random_gguf.py when missing, to $PB_STREAM_MODEL or
# models/bench/llama3-8b-8l-q8_0.gguf), and the project's default sweep on
# T = 16 seeded random token ids (bench_sweep --default-sweep: resid_pre,
# attn_out, mlp_out at every layer and position, z of every head at the last
# position). Both runs use --dtype file and --max-memory 1GiB of batch
# activations (the CPU's default, pinned: on a GPU a streamed sweep's
# default is what its plan leaves); the streamed one --weight-memory 1GiB.
# The same sweep is then written out as a spec and run by `patchbay sweep`
# both ways, and the heatmaps compared (max |d|, expected 0). Needs build/ (scripts/build.sh) and
# .venv with numpy and gguf (BUILD=DIR for another build folder). Run it on a
# quiet machine: OpenMP threads spin.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-${PB_STREAM_MODEL:-models/bench/llama3-8b-8l-q8_0.gguf}}
T=${2:-16}
build=${BUILD:-build}
[ -x "$build/bench_sweep" ] || bash scripts/build.sh "$build" >/dev/null
if [ ! -f "$model" ]; then
  mkdir -p "$(dirname "$model")"
  .venv/bin/python scripts/make_random_gguf.py --out "$model" --layers 8 --type q8_0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# sampled "$@": runs the command with its output in $tmp/out, polling
# /proc/PID/status every 50 ms; sets peak_anon, peak_file, peak_rss (KiB), wall (s).
sampled() {
  local t0 pid k v _ seen
  t0=$EPOCHREALTIME
  "$@" >"$tmp/out" 2>&1 &
  pid=$!
  peak_anon=0 peak_file=0 peak_rss=0
  while :; do
    seen=0
    while read -r k v _; do
      case $k in
        VmRSS:) seen=1 peak_rss=$((v > peak_rss ? v : peak_rss)) ;;
        RssAnon:) peak_anon=$((v > peak_anon ? v : peak_anon)) ;;
        RssFile:) peak_file=$((v > peak_file ? v : peak_file)) ;;
      esac
    done < <(cat "/proc/$pid/status" 2>/dev/null)
    [ "$seen" = 1 ] || break # gone, or a zombie (no VmRSS)
    sleep 0.05
  done
  wait "$pid" || { cat "$tmp/out" >&2; return 1; }
  wall=$(awk "BEGIN {print $EPOCHREALTIME - $t0}")
}

declare -A rate
stream=(--weights stream --weight-memory 1GiB --max-memory 1GiB)
for mode in resident stream; do
  echo "== --weights $mode"
  opts=(--weights resident --max-memory 1GiB)
  [ "$mode" = stream ] && opts=("${stream[@]}")
  sampled "$build/bench_sweep" "$model" --default-sweep "$T" --dtype file "${opts[@]}"
  grep -E '^(weights|engine (sweep|rows/s|batches))|RESULT' "$tmp/out"
  printf 'PEAK_ANON_MIB %d\nPEAK_FILE_MIB %d\nPEAK_RSS_MIB %d\nWALL_S %.1f\n' \
    $((peak_anon / 1024)) $((peak_file / 1024)) $((peak_rss / 1024)) "$wall"
  rate[$mode]=$(sed -n 's/^RESULT engine_rows_per_s=\([0-9.]*\).*/\1/p' "$tmp/out")
done

# The same default sweep as a spec (bench_sweep's splitmix ids), run by patchbay sweep both ways.
vocab=$(.venv/bin/python -c 'import gguf,sys; r=gguf.GGUFReader(sys.argv[1]); print(next(int(t.shape[1]) for t in r.tensors if t.name=="token_embd.weight"))' "$model")
.venv/bin/python - "$T" "$vocab" >"$tmp/spec.json" <<'PY'
import json, sys
T, vocab = map(int, sys.argv[1:3])
M, state = (1 << 64) - 1, 2024
def splitmix():
    global state
    state = (state + 0x9E3779B97F4A7C15) & M
    x = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
    return x ^ (x >> 31)
clean = [splitmix() % vocab for _ in range(T)]
corrupted = [(i + 101) % vocab if t in (T // 3, T // 2) else i for t, i in enumerate(clean)]
pos, neg = splitmix() % vocab, splitmix() % vocab
every = {"layers": "all", "positions": "each"}
print(json.dumps({"mode": "denoising", "pairs": [{"clean": {"ids": clean}, "corrupted": {"ids": corrupted}}],
                  "sites": [dict(component=c, **every) for c in ("resid_pre", "attn_out", "mlp_out")]
                  + [{"component": "z", "layers": "all", "heads": "all", "positions": "last"}],
                  "metric": {"kind": "logit_diff", "positive": [pos], "negative": [neg]}}))
PY
for mode in resident stream; do
  opts=(--weights resident --max-memory 1GiB)
  [ "$mode" = stream ] && opts=("${stream[@]}")
  sampled "$build/patchbay" sweep --model "$model" --spec "$tmp/spec.json" --out "$tmp/$mode" --dtype file \
    "${opts[@]}" --no-progress
  printf 'patchbay sweep --weights %s: %.1f s\n' "$mode" "$wall"
done
.venv/bin/python - "$tmp/resident" "$tmp/stream" <<'PY'
import glob, os, sys
import numpy as np
a, b = sys.argv[1:3]
names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(a, "*.npy")))
d, same_nan = 0.0, True
for n in names:
    x, y = np.load(os.path.join(a, n)), np.load(os.path.join(b, n))
    same_nan &= bool(np.array_equal(np.isnan(x), np.isnan(y)))
    d = max(d, float(np.nanmax(np.abs(x - y), initial=0)))
print(f"EQUAL_CHECK {len(names)} heatmaps, max |d| = {d:g}, NaN cells equal: {same_nan}")
PY
python3 -c 'import sys; print(f"RESULT stream_over_resident_rows_per_s={float(sys.argv[1]) / float(sys.argv[2]):.3f}")' \
  "${rate[stream]}" "${rate[resident]}"
