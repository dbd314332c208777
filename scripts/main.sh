#!/usr/bin/env bash
# The main job: on a fresh machine, install, build, fetch SmolLM2 and run
# the default refusal analysis on CPU with the shipped prompt pairs
# (data/refusal_pairs.json): baseline behaviour and refusal rates, the
# patching sweep, the refusal direction, refusal with it ablated and added.
# Writes runs/refusal/{report.html, results.json, report.txt, *.npy,
# direction.npy, direction.json}; extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build
bash scripts/fetch-model.sh
mkdir -p runs
./build/patchbay refusal-analysis --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
  --pairs data/refusal_pairs.json --out runs/refusal --overwrite "$@"
echo "open runs/refusal/report.html in a browser"
