#!/usr/bin/env bash
# The main job: on a fresh machine, install, build, fetch SmolLM2 and run a
# chat-templated prompt (token ids in data/smollm2_prompt_ids.txt) through
# the CPU engine, printing the greedy continuation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build
bash scripts/fetch-model.sh
./build/patchbay generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
  --ids-file data/smollm2_prompt_ids.txt --max-new-tokens 32 "$@"
