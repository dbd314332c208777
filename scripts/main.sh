#!/usr/bin/env bash
# The main job: on a fresh machine, install, build, fetch SmolLM2 and run
# the default refusal analysis on CPU with the shipped prompt pairs
# (data/refusal_pairs.json): baseline behaviour and refusal rates, the
# patching sweep, the refusal direction, refusal with it ablated and added.
# The model is SmolLM2 with the refusal adapter this project trained
# (data/adapters/smollm2-refusal: the base model barely refuses); --base
# runs the base model alone. Refusal rates are sampled (temperature 0.7,
# top-p 0.9, 4 continuations per prompt, with 95% intervals over prompts).
# Writes
# runs/refusal/{report.html, results.json, report.txt, *.npy, direction.npy,
# direction.json}, and the abliterated model (the adapter merged, the
# direction projected out of the weights; an F16 GGUF for llama.cpp or
# Ollama) as runs/refusal/smollm2-abliterated.f16.gguf; other arguments go
# to refusal-analysis (and win).
#   bash scripts/main.sh [--base] [refusal-analysis options]
set -euo pipefail
cd "$(dirname "$0")/.."
adapter=(--adapter data/adapters/smollm2-refusal)
if [ "${1:-}" = --base ]; then
  adapter=()
  shift
fi
bash scripts/install-deps.sh
bash scripts/build.sh build
bash scripts/fetch-model.sh
mkdir -p runs
./build/patchbay refusal-analysis --model models/SmolLM2-135M-Instruct.Q4_1.gguf "${adapter[@]}" \
  --pairs data/refusal_pairs.json --out runs/refusal --overwrite \
  --temperature 0.7 --top-p 0.9 --samples 4 "$@"
./build/patchbay export --model models/SmolLM2-135M-Instruct.Q4_1.gguf "${adapter[@]}" \
  --direction runs/refusal/direction.npy --out runs/refusal/smollm2-abliterated.f16.gguf --outtype f16 \
  --overwrite --no-progress --verify
echo "open runs/refusal/report.html in a browser"
