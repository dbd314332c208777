#!/usr/bin/env bash
# Gathers, on this machine (where apt works), everything outside CUDA that
# scripts/gpu-check.sh needs to build patchbay on a bare GPU image (CUDA,
# CMake and python3 there; no apt, no network, none of our -dev packages):
#
#   DIR/debs/*.deb        Debian packages from `apt-get download`: OpenBLAS
#                         (OpenMP build) + libgfortran5 + libquadmath0,
#                         jansson, cmocka, PCRE2, utf8proc, runtime and -dev. gpu-check
#                         unpacks them with `dpkg -x` into a prefix in its
#                         build folder, never into /.
#   DIR/nccl/include/     nccl.h from this machine's CUDA toolkit, for an
#                         image whose NCCL is only the Python wheel's library
#   DIR/MANIFEST          package versions, sizes, sha256 and the highest
#                         GLIBC_ symbol version each library needs
#
#   scripts/gpu-prepare.sh [DIR]     (default: .gpu-deps, git-ignored)
#
# Prints the folder that must travel with the working tree and the command
# to run on the GPU machine. Refuses (exit 1) when the folder would exceed
# PB_GPU_DEPS_MAX_MIB (15).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpu-deps}
MAX_MIB=${PB_GPU_DEPS_MAX_MIB:-15}
PACKAGES=(libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0
          libjansson4 libjansson-dev libcmocka0 libcmocka-dev libpcre2-8-0 libpcre2-dev
          libutf8proc2 libutf8proc-dev)

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    { echo "gpu-prepare: needs apt-get and dpkg-deb (a Debian machine)" >&2; exit 1; }

rm -rf "$DIR.new"
mkdir -p "$DIR.new/debs" "$DIR.new/nccl/include"
# apt-get download writes as the _apt user where it can; a folder it may
# not enter only earns a warning, so it runs in a world-writable temp dir.
stage=$(mktemp -d)
trap 'rm -rf "$stage" "$DIR.new"' EXIT
chmod 755 "$stage"
if ! (cd "$stage" && apt-get download -q "${PACKAGES[@]}" >"$stage/apt.log" 2>&1); then
    # package lists never fetched on a fresh machine: once more after an update
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$stage" && apt-get download -q "${PACKAGES[@]}" >"$stage/apt.log" 2>&1) ||
        { cat "$stage/apt.log" >&2; echo "gpu-prepare: apt-get download failed" >&2; exit 1; }
fi
mv "$stage"/*.deb "$DIR.new/debs/"

nccl_header=""
for candidate in "${CUDA_HOME:-/usr/local/cuda}/include/nccl.h" /usr/local/cuda/include/nccl.h \
    /usr/include/nccl.h /usr/local/include/nccl.h; do
    if [ -f "$candidate" ]; then nccl_header=$candidate; break; fi
done
if [ -n "$nccl_header" ]; then
    cp "$nccl_header" "$DIR.new/nccl/include/nccl.h"
else
    echo "gpu-prepare: no nccl.h on this machine; the GPU image must bring its own" >&2
fi

# The highest GLIBC_ symbol version a shared object asks for.
glibc_needed() {
    readelf -V --wide "$1" 2>/dev/null | grep -oE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' |
        sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1
}
unpacked="$stage/unpacked"
{
    echo "# patchbay GPU build dependencies, gathered $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/gpu-prepare.sh"
    echo "# on $(. /etc/os-release && echo "$PRETTY_NAME"), glibc $(ldd --version | head -n 1 | awk '{print $NF}')"
    echo "# package version bytes sha256"
    for deb in "$DIR.new"/debs/*.deb; do
        printf '%s %s %s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" \
            "$(stat -c %s "$deb")" "$(sha256sum "$deb" | cut -c 1-64)"
        dpkg-deb -x "$deb" "$unpacked"
    done
    echo "# shared object: highest GLIBC_ version needed"
    find "$unpacked" \( -name '*.so' -o -name '*.so.*' \) -type f | sort | while read -r lib; do
        printf '%s GLIBC_%s\n' "${lib#"$unpacked"/}" "$(glibc_needed "$lib")"
    done
    [ -n "$nccl_header" ] && echo "nccl.h from $nccl_header ($(sed -n 's/^#define NCCL_VERSION_CODE *//p' "$nccl_header"))"
} >"$DIR.new/MANIFEST"

size_kib=$(du -sk "$DIR.new" | cut -f 1)
if [ "$size_kib" -gt $((MAX_MIB * 1024)) ]; then
    echo "gpu-prepare: $DIR would hold $((size_kib / 1024)) MiB, over the $MAX_MIB MiB allowed" >&2
    exit 1
fi
rm -rf "$DIR"
mv "$DIR.new" "$DIR"
trap 'rm -rf "$stage"' EXIT

cat <<EOF
gpu-prepare: $DIR holds $((size_kib / 1024)) MiB ($(ls "$DIR"/debs | wc -l) packages; see $DIR/MANIFEST).
  highest GLIBC_ needed: $(grep -oE 'GLIBC_[0-9.]+$' "$DIR/MANIFEST" | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n | tail -n 1)
On the GPU machine, with the folder $DIR carried beside the working tree:
  bash scripts/gpu-check.sh               # unpack, build (sm_90), GPU tests, benchmarks; results in \$OUT
  bash scripts/gpu-check.sh --no-build    # an immediate rerun on the same machine, without compiling
EOF
