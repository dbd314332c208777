#!/usr/bin/env bash
# Installs what building, testing and the main job need on a fresh Debian
# machine (run as root): compilers, CMake, OpenBLAS, jansson, cmocka, PCRE2, OpenMPI,
# and a Python venv inside the repo (.venv, git-ignored) for pip downloads.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config libopenblas-openmp-dev libjansson-dev libcmocka-dev libpcre2-dev
          python3 python3-venv unzip ca-certificates chromium fonts-dejavu-core
          libopenmpi-dev openmpi-bin)
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
