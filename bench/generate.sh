#!/usr/bin/env bash
# The generation benchmark in one invocation: the engine's batched greedy
# decoding of 64 chat-templated prompts (bench_generate, which also times
# them one at a time) and transformers' generate on the same token ids
# (scripts/bench_torch_generate.py), then the ratio of their tokens/s.
#
#   bench/generate.sh [N] [MAX_NEW]      (defaults 64 and 32)
#
# Needs build/ (scripts/build.sh), models/ (scripts/fetch-model.sh) and,
# for the transformers side, torch, transformers and gguf in .venv
# (PB_PYTHON overrides the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
n=${1:-64}
max_new=${2:-32}
python=${PB_PYTHON:-.venv/bin/python}
ids=$(mktemp --suffix=.json)
trap 'rm -f "$ids"' EXIT
[ -x build/bench_generate ] || bash scripts/build.sh build >/dev/null
[ -f "$model" ] || bash scripts/fetch-model.sh
echo "== engine (CPU backend, $(nproc) cores)"
engine=$(./build/bench_generate --model "$model" --n "$n" --max-new "$max_new" --ids-out "$ids" |
  tee /dev/stderr | sed -n 's/^RESULT engine_tokens_per_s=\([0-9.]*\).*/\1/p')
if ! "$python" -c "import torch, transformers, gguf" 2>/dev/null; then
  echo "== transformers: skipped (torch, transformers and gguf are not installed for $python)"
  exit 0
fi
echo "== transformers generate (fp32, the GGUF dequantised, one batch)"
torch_rate=$("$python" scripts/bench_torch_generate.py "$model" "$ids" |
  tee /dev/stderr | sed -n 's/^RESULT torch_tokens_per_s=\([0-9.]*\).*/\1/p')
python3 -c "print(f'ratio engine / transformers: {float(\"$engine\") / float(\"$torch_rate\"):.2f}x')"
