#!/usr/bin/env bash
# Installs what building, testing and the main job need on a fresh Debian
# machine (run as root): compilers, CMake, OpenBLAS, jansson, cmocka, PCRE2, utf8proc, OpenMPI,
# Slurm and munge (slurm-wlm 22.05: tests/test_slurm.sh runs a local single-node
# cluster, scripts/slurm/local-cluster.sh), clang-format (14 on Debian 12: scripts/check-style.sh), and a Python venv
# inside the repo (.venv, git-ignored) for pip downloads, with lizard (pinned;
# the function-length check of scripts/check-style.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config libopenblas-openmp-dev libjansson-dev libcmocka-dev libpcre2-dev libutf8proc-dev
          python3 python3-venv unzip ca-certificates chromium fonts-dejavu-core
          libopenmpi-dev openmpi-bin slurm-wlm munge clang-format)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/pip ]; then
  python3 -m venv .venv
fi
# lizard, pinned so the function-length check reads the same everywhere
LIZARD_VERSION=1.24.3
if [ "$(.venv/bin/lizard --version 2>/dev/null)" != "$LIZARD_VERSION" ]; then
  .venv/bin/pip install -q --disable-pip-version-check "lizard==$LIZARD_VERSION"
fi
# numpy and pytest for the Python package (python/) and its tests, and a
# setuptools that builds wheels by itself (pip install ./python), pinned
NUMPY_VERSION=2.4.6
PYTEST_VERSION=9.2.0
SETUPTOOLS_VERSION=84.2.1
if ! .venv/bin/python -c "import numpy, pytest, setuptools, sys
sys.exit(numpy.__version__ != '$NUMPY_VERSION' or pytest.__version__ != '$PYTEST_VERSION'
         or setuptools.__version__ != '$SETUPTOOLS_VERSION')" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check "numpy==$NUMPY_VERSION" "pytest==$PYTEST_VERSION" \
    "setuptools==$SETUPTOOLS_VERSION"
fi
