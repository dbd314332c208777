#!/usr/bin/env bash
# The one GPU check for a lent GPU machine (a bare image: CUDA, CMake, python3
# with torch; no apt, no network, none of our -dev packages).
#
#   scripts/gpu-check.sh [--no-build] [--steps LIST]
#
# 1. deps: unpacks what scripts/gpu-prepare.sh gathered (.gpu-deps/, carried
#    beside the tree; PB_GPU_DEPS names another folder) with dpkg -x into
#    BUILD/deps-prefix, never into /; finds NCCL in the CUDA toolkit or in
#    the Python wheel nvidia-nccl-cu13 (which ships libnccl.so.2 only). A
#    machine that has our -dev packages builds without the folder.
# 2. configure + build: for the card's architecture (sm_90 on an H200),
#    Ninja when there is one, no MPI, only the targets the steps run; the
#    libraries come from the prefix alone (rpath). --no-build reuses an
#    earlier build in BUILD (an immediate rerun on the same machine).
# 3. steps in order of value, each under its own cap inside an overall
#    budget (PB_GPU_CHECK_BUDGET seconds, default 450): the gpu-labelled
#    tests, the streamed 70B-slice sweeps (Q8_0, bf16), attribution
#    patching (AtP, AtP*) against the exact sweep with every row forced,
#    compute-sanitizer (memcheck, racecheck) over the backend test, the
#    prefill benchmark and its PyTorch twin, the sweep benchmark and its
#    PyTorch loop, then the CPU suite if time is left. --steps (comma-separated:
#    tests,stream,atp,sanitizer,prefill,sweep,cpu) runs a subset.
#
# Every log goes to $OUT (default ./gpu-out), and $OUT/summary.json (card,
# CUDA versions, where each library came from, test counts, step timings,
# every benchmark figure) is rewritten after every step, so a run cut short
# still returns what it measured. A step that exits 77 is "skipped" (no CUDA
# device, no torch): without a GPU the same script is a dry run (CI runs it,
# tests/test_gpu_check.sh). Exit status: 0 when every step passed (benchmark
# skips allowed where they make sense), 1 otherwise; benchmark figures never
# decide it.
set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
NO_BUILD=0
STEPS=tests,stream,atp,sanitizer,prefill,sweep,cpu
while [ $# -gt 0 ]; do
    case $1 in
    --no-build) NO_BUILD=1 ;;
    --steps) STEPS=${2:?--steps needs a list}; shift ;;
    -h | --help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
want() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
BUILD=${PB_GPU_BUILD_DIR:-$ROOT/build-gpu}
DEPS=${PB_GPU_DEPS:-$ROOT/.gpu-deps}
BUDGET=${PB_GPU_CHECK_BUDGET:-450}
JOBS=$(bash scripts/cores.sh 2>/dev/null || echo 4)
START=$(date +%s)
# Nothing here should touch the network; make sure Python tools called by
# tests do not try either.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

NOTES=()
note() { NOTES+=("$1"); echo "gpu-check: $1" >&2; }

json_escape() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/}
    s=${s//$'\t'/ }
    printf '"%s"' "$s"
}

# JSON list of strings from the arguments.
json_list() {
    local first=1 item
    printf '['
    for item in "$@"; do
        [ $first -eq 1 ] || printf ', '
        first=0
        json_escape "$item"
    done
    printf ']'
}

now_ms() { date +%s%3N; }
remaining() { echo $((BUDGET - ($(date +%s) - START))); }

# run_step NAME CAP_SECONDS COMMAND...: runs COMMAND with its output in
# $OUT/NAME.log under min(CAP, budget left - 20 s); records status and time.
declare -A STEP_STATUS STEP_SECONDS
STEP_ORDER=()
run_step() {
    local name=$1 cap=$2
    shift 2
    STEP_ORDER+=("$name")
    local left=$(($(remaining) - 20))
    local limit=$cap
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 5 ]; then
        STEP_STATUS[$name]=skipped_no_time
        STEP_SECONDS[$name]=0
        note "$name: skipped, the time budget is spent"
        write_summary
        return 1
    fi
    local command_text="$*"
    echo "gpu-check: $name (limit ${limit}s): ${command_text:0:100}" >&2
    local t0 t1 rc
    t0=$(now_ms)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    t1=$(now_ms)
    STEP_SECONDS[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1000 }')
    if [ $rc -eq 0 ]; then
        STEP_STATUS[$name]=ok
    elif [ $rc -eq 77 ]; then
        STEP_STATUS[$name]=skipped
        note "$name: skipped: $(grep -m 1 -o 'skipping: .*' "$OUT/$name.log" | cut -c 11- | head -c 300)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        STEP_STATUS[$name]=timeout
        note "$name: timed out after ${limit}s (see $name.log)"
    else
        STEP_STATUS[$name]="failed_rc_$rc"
        note "$name: exit status $rc (see $name.log)"
    fi
    write_summary
    return $rc
}

skip_step() {
    STEP_ORDER+=("$1")
    STEP_STATUS[$1]=$2
    STEP_SECONDS[$1]=0
    write_summary
}

# json_line LOG BENCH: the bench's one-line JSON result from its log, or
# nothing. Checked with python3 when there is one, so summary.json stays valid.
json_line() {
    local line
    line=$(grep -m 1 "^{\"bench\": \"$2\"" "$1" 2>/dev/null) || return 0
    case $line in *'}') ;; *) return 0 ;; esac
    if command -v python3 >/dev/null 2>&1; then
        # parse_constant: NaN and Infinity are not JSON, though Python reads them
        python3 -c 'import json, sys; json.loads(sys.argv[1], parse_constant=lambda c: 1 / 0)' "$line" \
            2>/dev/null || return 0
    fi
    printf '%s' "$line"
}
# json_number JSON KEY: a numeric field of a flat JSON object, or "null".
json_number() {
    local v
    v=$(printf '%s' "$1" | sed -n "s/.*\"$2\": *\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" | head -n 1)
    printf '%s' "${v:-null}"
}


tests_json() {
    local name=$1 log="$OUT/$1.log" counts names=()
    if [ ! -f "$log" ]; then
        printf '{"ran": false}'
        return
    fi
    counts=$(ctest_counts "$log")
    read -r total passed failed skipped <<<"$counts"
    while IFS= read -r line; do [ -n "$line" ] && names+=("$line"); done < <(ctest_failed_names "$log")
    # the GPU tests that skipped, with the reason they printed
    local skip_reasons=()
    while IFS= read -r line; do [ -n "$line" ] && skip_reasons+=("$line"); done < <(grep -oE 'skipping: .*' "$log" | sort -u)
    printf '{"ran": true, "log": "%s.log", "total": %s, "passed": %s, "failed": %s, "skipped": %s, "failed_names": %s, "skip_messages": %s}' \
        "$name" "$total" "$passed" "$failed" "$skipped" "$(json_list ${names[@]+"${names[@]}"})" \
        "$(json_list ${skip_reasons[@]+"${skip_reasons[@]}"})"
}

# The prefill figures side by side, the ratios the issue's targets are
# about, and each bench's own JSON line; null where a bench did not run.
benchmarks_json() {
    local pb_tps pb_tflops ceiling ratio gemm_fraction torch_tps torch_tflops speedup meets_ceiling faster
    pb_tps=$(json_number "$PREFILL_JSON" tokens_per_s)
    pb_tflops=$(json_number "$PREFILL_JSON" tflops)
    ceiling=$(json_number "$PREFILL_JSON" ceiling_tflops)
    ratio=$(json_number "$PREFILL_JSON" ratio_vs_ceiling)
    gemm_fraction=$(json_number "$PREFILL_JSON" gemm_time_fraction)
    torch_tps=$(json_number "$TORCH_JSON" tokens_per_s)
    torch_tflops=$(json_number "$TORCH_JSON" tflops)
    speedup=null meets_ceiling=null faster=null
    if [ "$pb_tps" != null ] && [ "$torch_tps" != null ]; then
        speedup=$(awk -v a="$pb_tps" -v b="$torch_tps" 'BEGIN { printf "%.4f", (b > 0 ? a / b : 0) }')
        faster=$(awk -v s="$speedup" 'BEGIN { print (s > 1 ? "true" : "false") }')
    fi
    [ "$ratio" != null ] && meets_ceiling=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.6 ? "true" : "false") }')
    printf '{\n    "prefill": {\n'
    printf '      "card": %s,\n' "$(json_escape "$CARD")"
    printf '      "model": %s, "layers_chosen": %s, "layers_chosen_because": %s,\n' \
        "$(json_escape "$PREFILL_MODEL")" "$PREFILL_LAYERS" "$(json_escape "$PREFILL_WHY")"
    printf '      "seqs": %s, "seq_len": %s, "logits": "all",\n' "$PREFILL_SEQS" "$PREFILL_SEQ_LEN"
    printf '      "patchbay_tokens_per_s": %s, "patchbay_tflops": %s,\n' "$pb_tps" "$pb_tflops"
    printf '      "cublas_ceiling_tflops": %s, "ratio_vs_ceiling": %s, "gemm_time_fraction": %s,\n' \
        "$ceiling" "$ratio" "$gemm_fraction"
    printf '      "pytorch_tokens_per_s": %s, "pytorch_tflops": %s, "speedup_vs_pytorch": %s,\n' \
        "$torch_tps" "$torch_tflops" "$speedup"
    printf '      "target_ratio_vs_ceiling_ge_0.6": %s, "target_faster_than_pytorch": %s,\n' "$meets_ceiling" "$faster"
    printf '      "patchbay": %s,\n' "${PREFILL_JSON:-null}"
    printf '      "pytorch": %s\n' "${TORCH_JSON:-null}"
    printf '    },\n'
    local sweep_rps torch_rps sweep_speedup=null
    sweep_rps=$(json_number "$SWEEP_JSON" rows_per_s)
    torch_rps=$(json_number "$TORCH_SWEEP_JSON" rows_per_s)
    if [ "$sweep_rps" != null ] && [ "$torch_rps" != null ]; then
        sweep_speedup=$(awk -v a="$sweep_rps" -v b="$torch_rps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    fi
    printf '    "sweep": {"patchbay_rows_per_s": %s, "pytorch_rows_per_s": %s, "speedup_vs_pytorch": %s,\n' \
        "$sweep_rps" "$torch_rps" "$sweep_speedup"
    printf '      "ratio_vs_ceiling": %s, "naive_over_executed": %s,\n' \
        "$(json_number "$SWEEP_JSON" ratio_vs_ceiling)" "$(json_number "$SWEEP_JSON" naive_over_executed)"
    printf '      "patchbay": %s,\n' "${SWEEP_JSON:-null}"
    printf '      "pytorch": %s},\n' "${TORCH_SWEEP_JSON:-null}"
    printf '    "stream": {"q8_0": {"sweep": %s, "stream": %s},\n' "${STREAM_Q8_SWEEP_JSON:-null}" "${STREAM_Q8_JSON:-null}"
    printf '      "bf16": {"sweep": %s, "stream": %s}},\n' "${STREAM_BF16_SWEEP_JSON:-null}" "${STREAM_BF16_JSON:-null}"
    printf '    "atp": {"exact_all_rows": %s, "atp": %s,\n' "${ATP_SWEEP_JSON:-null}" "${ATP_JSON:-null}"
    printf '      "atp_star": %s, "flops": %s},\n' "${ATP_STAR_JSON:-null}" "${ATP_FLOPS_JSON:-null}"
    printf '    "attention": %s\n' "${ATTENTION_JSON:-null}"
    printf '  }'
}

# write_summary: summary.json as things stand (ok, every step so far, the
# figures measured so far); called after every step, written to a temporary
# name and renamed, so a run cut short leaves a whole file.
write_summary() {
    local OK=true FINAL_NOTE="" step first log gpu_passed gpu_failed
    OK=true
    for step in ${STEP_ORDER[@]+"${STEP_ORDER[@]}"}; do
        case ${STEP_STATUS[$step]} in
        ok | reused_earlier_build | skipped_no_sanitizer_or_gpu) ;;
        # a benchmark that skips (exit 77: no device, no torch; the sweep bench
        # not written yet) does not fail the check, except patchbay's own
        # prefill bench on a machine that has a GPU
        skipped)
            if [ "$step" = bench_gpu_prefill ] && [ "$GPU_COUNT" -gt 0 ]; then
                OK=false
                FINAL_NOTE="bench_gpu_prefill skipped although nvidia-smi lists $GPU_COUNT GPU(s)"
            fi
            ;;
        *) OK=false ;;
        esac
    done
    # GPU tests that all skipped on a GPU machine mean the check proved nothing.
    if [ -f "$OUT/ctest_gpu.log" ]; then
        read -r _ gpu_passed gpu_failed _ <<<"$(ctest_counts "$OUT/ctest_gpu.log")"
        if [ "$gpu_failed" -gt 0 ]; then OK=false; fi
        if [ "$GPU_COUNT" -gt 0 ] && [ "$gpu_passed" -eq 0 ]; then
            OK=false
            FINAL_NOTE="no gpu-labelled test passed although nvidia-smi lists $GPU_COUNT GPU(s)"
        fi
    fi
    {
        printf '{\n'
        printf '  "script": "scripts/gpu-check.sh",\n'
        printf '  "ok": %s,\n' "$OK"
        printf '  "started_utc": %s,\n' "$(json_escape "$(date -u -d "@$START" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo "$START")")"
        printf '  "total_seconds": %s,\n' "$(($(date +%s) - START))"
        printf '  "card": %s,\n' "$(json_escape "$CARD")"
        printf '  "gpu_count": %s,\n' "$GPU_COUNT"
        printf '  "compute_capability": %s,\n' "$(json_escape "$COMPUTE_CAP")"
        printf '  "gpu_memory": %s,\n' "$(json_escape "$GPU_MEMORY")"
        printf '  "driver_version": %s,\n' "$(json_escape "$DRIVER")"
        printf '  "driver_cuda_version": %s,\n' "$(json_escape "$DRIVER_CUDA")"
        printf '  "nvcc_version": %s,\n' "$(json_escape "$NVCC_VERSION")"
        printf '  "cmake_version": %s,\n' "$(json_escape "$CMAKE_VERSION")"
        printf '  "build_dir": %s,\n' "$(json_escape "$BUILD")"
        printf '  "dependencies": %s,\n' "$(json_escape "$DEPS_SOURCE")"
        printf '  "nccl": %s,\n' "$(json_escape "$NCCL_SOURCE: ${NCCL_LIB:-none}, header ${NCCL_INC:-none}")"
        printf '  "libraries": %s,\n' "$(json_list ${LIBRARIES[@]+"${LIBRARIES[@]}"})"
        printf '  "steps": {'
        first=1
        for step in ${STEP_ORDER[@]+"${STEP_ORDER[@]}"}; do
            [ $first -eq 1 ] || printf ','
            first=0
            log=null
            [ -f "$OUT/$step.log" ] && log="\"$step.log\""
            printf '\n    "%s": {"status": %s, "seconds": %s, "log": %s}' "$step" \
                "$(json_escape "${STEP_STATUS[$step]}")" "${STEP_SECONDS[$step]}" "$log"
        done
        printf '\n  },\n'
        printf '  "tests_gpu": %s,\n' "$(tests_json ctest_gpu)"
        printf '  "tests_all": %s,\n' "$(tests_json ctest_all)"
        printf '  "benchmarks": %s,\n' "$(benchmarks_json)"
        printf '  "notes": %s\n' "$(json_list ${NOTES[@]+"${NOTES[@]}"} ${FINAL_NOTE:+"$FINAL_NOTE"})"
        printf '}\n'
    } >"$OUT/summary.json.tmp" && mv "$OUT/summary.json.tmp" "$OUT/summary.json"
    SUMMARY_OK=$OK
}

ATTENTION_JSON="" PREFILL_JSON="" TORCH_JSON="" SWEEP_JSON="" TORCH_SWEEP_JSON=""
ATP_SWEEP_JSON="" ATP_JSON="" ATP_STAR_JSON="" ATP_FLOPS_JSON=""
STREAM_Q8_JSON="" STREAM_Q8_SWEEP_JSON="" STREAM_BF16_JSON="" STREAM_BF16_SWEEP_JSON=""
PREFILL_MODEL=unset PREFILL_LAYERS=0 PREFILL_WHY="not run" PREFILL_SEQS=${PB_PREFILL_SEQS:-8} PREFILL_SEQ_LEN=${PB_PREFILL_SEQ_LEN:-1024}
CARD=unknown DRIVER=unknown COMPUTE_CAP=unknown GPU_MEMORY=unknown DRIVER_CUDA=unknown GPU_COUNT=0
NVCC_VERSION=unknown CMAKE_VERSION=unknown NCCL_LIB="" NCCL_INC="" NCCL_SOURCE=none DEPS_SOURCE=unknown
LIBRARIES=()
SUMMARY_OK=false

# ---- the machine ------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    nvidia-smi -q >"$OUT/nvidia-smi-q.txt" 2>&1
    query=$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>/dev/null)
    if [ -n "$query" ]; then
        GPU_COUNT=$(printf '%s\n' "$query" | grep -c .)
        first=$(printf '%s\n' "$query" | head -n 1)
        IFS=',' read -r CARD DRIVER COMPUTE_CAP GPU_MEMORY <<<"$first"
        CARD=$(echo "$CARD" | sed 's/^ *//; s/ *$//')
        DRIVER=$(echo "$DRIVER" | sed 's/^ *//; s/ *$//')
        COMPUTE_CAP=$(echo "$COMPUTE_CAP" | sed 's/^ *//; s/ *$//')
        GPU_MEMORY=$(echo "$GPU_MEMORY" | sed 's/^ *//; s/ *$//')
    fi
    DRIVER_CUDA=$(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' "$OUT/nvidia-smi.txt" | head -n 1)
    [ -n "$DRIVER_CUDA" ] || DRIVER_CUDA=unknown
else
    note "nvidia-smi not found: no NVIDIA driver on this machine, GPU tests will skip"
fi

NVCC=$(command -v nvcc || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || true)
if [ -n "$NVCC" ]; then
    "$NVCC" --version >"$OUT/nvcc-version.txt" 2>&1
    NVCC_VERSION=$(sed -n 's/.*release [0-9.]*, V\([0-9.]*\).*/\1/p' "$OUT/nvcc-version.txt" | head -n 1)
    [ -n "$NVCC_VERSION" ] || NVCC_VERSION=unknown
else
    note "nvcc not found on PATH or in /usr/local/cuda/bin: the CUDA backend cannot be built"
fi
CMAKE_VERSION=$(cmake --version 2>/dev/null | head -n 1 | awk '{print $3}')
[ -n "$CMAKE_VERSION" ] || { CMAKE_VERSION=missing; note "cmake not found"; }
uname -a >"$OUT/uname.txt" 2>&1
if command -v git >/dev/null 2>&1 && git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
    { git -C "$ROOT" rev-parse HEAD; git -C "$ROOT" status --short; } >"$OUT/git-state.txt" 2>&1
fi

# ---- dependencies: the carried prefix, NCCL ------------------------------------
# Libraries from .gpu-deps are unpacked into BUILD/deps-prefix (again only
# when the folder's MANIFEST changed). Without the folder the build uses the
# machine's own -dev packages, as on a developer's machine or in CI.
PREFIX=""
DEPS_SOURCE="system -dev packages"
unpack_deb() {
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$1" "$2"
    else
        # no dpkg: a .deb is an ar archive holding data.tar.*
        local tmp member
        tmp=$(mktemp -d) && (cd "$tmp" && ar x "$1") || return 1
        member=$(ls "$tmp"/data.tar.* | head -n 1)
        tar -xf "$member" -C "$2"
        rm -rf "$tmp"
    fi
}
if [ -d "$DEPS/debs" ]; then
    DEPS=$(cd "$DEPS" && pwd)
    PREFIX=$BUILD/deps-prefix
    DEPS_SOURCE="$DEPS (unpacked into $PREFIX)"
    mkdir -p "$BUILD"
    if ! cmp -s "$DEPS/MANIFEST" "$PREFIX/MANIFEST" 2>/dev/null; then
        rm -rf "$PREFIX"
        mkdir -p "$PREFIX"
        for deb in "$DEPS"/debs/*.deb; do
            unpack_deb "$deb" "$PREFIX" || note "could not unpack $(basename "$deb")"
        done
        cp "$DEPS/MANIFEST" "$PREFIX/MANIFEST"
    fi
    machine_glibc=$(ldd --version 2>/dev/null | head -n 1 | awk '{print $NF}')
    needed_glibc=$(grep -oE 'GLIBC_[0-9.]+$' "$DEPS/MANIFEST" | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n | tail -n 1)
    if [ -n "$machine_glibc" ] && [ -n "$needed_glibc" ] &&
        [ "$(printf '%s\n%s\n' "$needed_glibc" "$machine_glibc" | sort -t. -k1,1n -k2,2n | tail -n 1)" != "$machine_glibc" ]; then
        note "the carried libraries need glibc $needed_glibc, this machine has $machine_glibc"
    fi
else
    note "no $DEPS/debs (scripts/gpu-prepare.sh makes it): building against this machine's own -dev packages"
fi

# NCCL: the toolkit's, the system's, else the Python wheel's (lib/libnccl.so.2
# and maybe no header: then the header gpu-prepare.sh carried).
CUDA_ROOT=$(dirname "$(dirname "${NVCC:-/usr/local/cuda/bin/nvcc}")")
NCCL_LIB="" NCCL_INC="" NCCL_SOURCE=none
for dir in "$CUDA_ROOT/lib64" "$CUDA_ROOT/lib" "$CUDA_ROOT/targets/x86_64-linux/lib" /usr/lib/x86_64-linux-gnu /usr/local/lib; do
    for name in libnccl.so libnccl.so.2; do
        if [ -z "$NCCL_LIB" ] && [ -e "$dir/$name" ]; then NCCL_LIB=$dir/$name NCCL_SOURCE="toolkit/system"; fi
    done
done
if [ -z "$NCCL_LIB" ] && command -v python3 >/dev/null 2>&1; then
    wheel=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)
    if [ -n "$wheel" ] && [ -e "$wheel/lib/libnccl.so.2" ]; then
        NCCL_LIB=$wheel/lib/libnccl.so.2 NCCL_SOURCE="python wheel nvidia-nccl ($wheel)"
        [ -f "$wheel/include/nccl.h" ] && NCCL_INC=$wheel/include
    fi
fi
for dir in "$CUDA_ROOT/include" /usr/include /usr/local/include "$DEPS/nccl/include"; do
    if [ -z "$NCCL_INC" ] && [ -f "$dir/nccl.h" ]; then NCCL_INC=$dir; fi
done
[ -n "$NCCL_LIB" ] || note "no libnccl found (toolkit, system or the nvidia-nccl wheel): configure will fail"
[ -n "$NCCL_INC" ] || note "no nccl.h found: configure will fail"

# ---- configure, build -----------------------------------------------------------
arch=$(echo "$COMPUTE_CAP" | tr -d '.')
case $arch in '' | *[!0-9]*) arch=90 ;; esac
GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
CMAKE_ARGS=("${GENERATOR[@]}" -DPB_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" -DPB_MPI=OFF
    -DPB_DEPS_PREFIX="$PREFIX")
[ -n "$NVCC" ] && CMAKE_ARGS+=(-DCMAKE_CUDA_COMPILER="$NVCC")
[ -n "$NCCL_LIB" ] && CMAKE_ARGS+=(-DNCCL_LIBRARY="$NCCL_LIB")
[ -n "$NCCL_INC" ] && CMAKE_ARGS+=(-DNCCL_INCLUDE_DIR="$NCCL_INC")
# what the GPU steps run; the CPU suite builds the rest when it gets its turn
GPU_TARGETS=(test_cuda_module test_cuda_backend test_cuda_metric test_cuda_model test_cuda_sweep test_cuda_grad patchbay_cli
    bench_gpu_attention bench_gpu_prefill bench_sweep)
CONFIGURE_OK=0
BUILD_OK=0
if [ $NO_BUILD -eq 1 ] && [ -f "$BUILD/CMakeCache.txt" ]; then
    CONFIGURE_OK=1 BUILD_OK=1
    skip_step configure reused_earlier_build
    skip_step build reused_earlier_build
else
    [ $NO_BUILD -eq 1 ] && note "--no-build: no earlier build in $BUILD, building"
    run_step configure 90 cmake -S "$ROOT" -B "$BUILD" "${CMAKE_ARGS[@]}" && CONFIGURE_OK=1
    if [ $CONFIGURE_OK -eq 1 ]; then
        run_step build 240 cmake --build "$BUILD" -j "$JOBS" --target "${GPU_TARGETS[@]}" && BUILD_OK=1
    else
        skip_step build skipped_configure_failed
    fi
fi
# where each outside library of the command line and of the CUDA backend's
# module (loaded on first use, host/backend/cuda_module.h) resolves: the
# prefix, or not
LIBRARIES=()
if [ -x "$BUILD/patchbay" ]; then
    while read -r name _ path _; do
        case $name in libjansson* | libcmocka* | libpcre2* | libutf8proc* | libopenblas* | libgfortran* | libquadmath* | libnccl* | libcublas* | libcudart*)
            LIBRARIES+=("$name => $path") ;;
        esac
    done < <(ldd "$BUILD/patchbay" "$BUILD/libpatchbay_cuda.so" 2>/dev/null | sort -u)
    [ -f "$BUILD/libpatchbay_cuda.so" ] || note "no libpatchbay_cuda.so in $BUILD: the CUDA backend cannot load"
    write_summary
fi

# ctest_counts LOG: "total passed failed skipped" from a ctest log.
ctest_counts() {
    local log=$1 total passed failed skipped
    passed=$(grep -cE 'Test +#[0-9]+: .* Passed' "$log" 2>/dev/null)
    skipped=$(grep -cE '\*\*\*Skipped|Not Run \(Disabled\)' "$log" 2>/dev/null)
    failed=$(grep -cE '\*\*\*(Failed|Timeout|Exception)|\*\*\*Not Run$|Not Run +[0-9.]+ sec|Child aborted' "$log" 2>/dev/null)
    total=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -n 1)
    [ -n "$total" ] || total=$((passed + failed + skipped))
    echo "${total:-0} ${passed:-0} ${failed:-0} ${skipped:-0}"
}
ctest_failed_names() {
    sed -n '/The following tests FAILED:/,$p' "$1" 2>/dev/null |
        sed -n 's/^[[:space:]]*[0-9]* - \([^ ]*\).*/\1/p'
}

run_tests() {
    local name=$1 cap=$2
    shift 2
    if [ $CONFIGURE_OK -eq 0 ]; then
        skip_step "$name" skipped_configure_failed
        return
    fi
    [ $BUILD_OK -eq 1 ] || note "$name: running against a partial build (build step did not pass)"
    run_step "$name" "$cap" ctest --test-dir "$BUILD" --output-on-failure --timeout 120 "$@"
}

# ---- the steps, in order of value ----------------------------------------------------
# -V keeps the GPU test's own output (per-op NMSE lines, skip reasons) in the log.
if want tests; then
    run_tests ctest_gpu 150 -L gpu -V
fi

# What the open issues still lack comes first: the streamed 70B slice (17),
# attribution patching and the sanitizers over every kernel, the backward
# ones included (18); the prefill and sweep benchmarks, measured on an H200
# on 2026-12-04 (README), after them.
if want stream; then
    # Issue 17's GPU benchmark: a Llama-3-70B-shape slice (16 of its 80
    # layers; random weights generated in host memory as Q8_0 and as bf16,
    # pinned there) swept with every layer streamed to the device as the
    # sweep reaches it (the default sweep on 4 pairs, T = 16, batches of up
    # to 16 GiB: the pairs' caches built together, two reads of the layers
    # for all four, and their rows sharing waves).
    # bench_sweep prints rows/s, TFLOP/s against the cuBLAS ceiling at the
    # engine's shapes (fp32 for Q8_0, decoded on the device; bf16 tensor
    # cores), the bytes streamed and their rate against the measured pinned
    # host-to-device copy rate, and the whole 80-layer model extrapolated
    # per layer read.
    if [ -x "$BUILD/bench_sweep" ]; then
        run_step bench_stream_q8_0 150 "$BUILD/bench_sweep" --random-model llama3-70b:16:q8_0 --backend cuda \
            --dtype file --weights stream --weight-memory 16GiB --max-memory 16GiB --default-sweep 16 --pairs 4
        run_step bench_stream_bf16 150 "$BUILD/bench_sweep" --random-model llama3-70b:16:bf16 --backend cuda \
            --dtype bf16 --weights stream --weight-memory 16GiB --max-memory 16GiB --default-sweep 16 --pairs 4
    else
        skip_step bench_stream_q8_0 skipped_not_built
        skip_step bench_stream_bf16 skipped_not_built
    fi
    STREAM_Q8_JSON=$(json_line "$OUT/bench_stream_q8_0.log" stream)
    STREAM_Q8_SWEEP_JSON=$(json_line "$OUT/bench_stream_q8_0.log" gpu_sweep)
    STREAM_BF16_JSON=$(json_line "$OUT/bench_stream_bf16.log" stream)
    STREAM_BF16_SWEEP_JSON=$(json_line "$OUT/bench_stream_bf16.log" gpu_sweep)
fi

if want atp; then
    # Issue 18's GPU benchmark: the default sweep (T = 64) at the llama3-8b
    # shape (8 of its layers) in bf16, every row forced (--all-rows), then AtP and AtP* (both
    # corrections) on the same spec: their seconds beside the exact sweep's,
    # and the same ratios from FLOP counts. The backward runs on the device
    # (cuda/backward.cu, cuBLAS for the weight products).
    # 8 layers (PB_ATP_LAYERS): the ratios hold per layer, and a random
    # model's host-side generation stays short
    ATP_LAYERS=${PB_ATP_LAYERS:-8}
    case $ATP_LAYERS in '' | 0 | *[!0-9]*) ATP_LAYERS=8 ;; esac
    if [ -x "$BUILD/bench_sweep" ]; then
        run_step bench_gpu_atp 120 "$BUILD/bench_sweep" --random-model "llama3-8b:$ATP_LAYERS" \
            --backend cuda --dtype bf16 --default-sweep 64 --all-rows --vs-atp
    else
        skip_step bench_gpu_atp skipped_not_built
    fi
    ATP_SWEEP_JSON=$(json_line "$OUT/bench_gpu_atp.log" gpu_sweep)
    ATP_JSON=$(json_line "$OUT/bench_gpu_atp.log" atp)
    ATP_STAR_JSON=$(json_line "$OUT/bench_gpu_atp.log" 'atp\*')
    ATP_FLOPS_JSON=$(json_line "$OUT/bench_gpu_atp.log" atp_flops)
fi

# ---- compute-sanitizer over the backend test: out-of-bounds accesses and races ----
if want sanitizer; then
    SANITIZER=$(command -v compute-sanitizer || ls "$CUDA_ROOT"/bin/compute-sanitizer 2>/dev/null || true)
    if [ -z "$SANITIZER" ] || [ ! -x "$BUILD/test_cuda_backend" ] || [ "$GPU_COUNT" -eq 0 ]; then
        skip_step sanitizer_memcheck skipped_no_sanitizer_or_gpu
    else
        # the backend test's ops one by one (no whole models: memcheck slows kernels 10-100x)
        run_step sanitizer_memcheck 120 "$SANITIZER" --tool memcheck --report-api-errors no --error-exitcode 3 \
            "$BUILD/test_cuda_backend"
        run_step sanitizer_racecheck 90 "$SANITIZER" --tool racecheck --error-exitcode 3 \
            "$BUILD/test_cuda_backend"
    fi
    # the debug mode that synchronises after every launch must give the same results
    if [ -x "$BUILD/test_cuda_sweep" ] && [ "$GPU_COUNT" -gt 0 ]; then
        run_step debug_sync_sweep 60 env PB_CUDA_SYNC=1 PB_FIXTURES="$ROOT/tests/fixtures" PB_SOURCE_DIR="$ROOT" \
            "$BUILD/test_cuda_sweep"
    fi
fi

# Attention alone (both kernels forced, prefill and sweep shapes): seconds,
# and it says where the prefill's non-GEMM time goes.
if want prefill; then
    if [ -x "$BUILD/bench_gpu_attention" ]; then
        run_step bench_gpu_attention 60 "$BUILD/bench_gpu_attention"
    else
        skip_step bench_gpu_attention skipped_not_built
    fi
    ATTENTION_JSON=$(json_line "$OUT/bench_gpu_attention.log" gpu_attention)
    # ---- benchmarks -------------------------------------------------------------------
    # Prefill at the llama3-8b shape: a batch of PREFILL_SEQS x PREFILL_SEQ_LEN
    # tokens (8 x 1024 = 8192), bf16 weights, logits of every position (what
    # transformers computes by default), patchbay beside the cuBLAS GEMMs at
    # the same shapes (timed in the same run, inside bench_gpu_prefill) and
    # beside PyTorch eager on the same GPU. The layer count is the full 32 when
    # the card's free memory and the time left allow, fewer otherwise (the
    # bench's --fit-layers cuts further if its own estimate says so); the
    # PyTorch run uses the layer count the engine actually ran.
    PREFILL_LAYERS=${PB_PREFILL_LAYERS:-32}
    PREFILL_WHY="as asked"
    [ "$PREFILL_LAYERS" -eq 32 ] && PREFILL_WHY="full model"
    if [ "$GPU_COUNT" -gt 0 ]; then
        # patchbay needs ~10 GiB besides the layers (embedding + unembedding,
        # workspace, 4.2 GB of fp32 logits) and ~0.56 GiB per layer (weights +
        # fp32 KV cache) at 8192 tokens; PyTorch needs less.
        free_mib=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits -i 0 2>/dev/null | head -n 1 | tr -dc '0-9')
        if [ -n "$free_mib" ]; then
            fit=$(awk -v f="$free_mib" 'BEGIN { n = int((f / 1024 - 10) / 0.56); print (n < 1 ? 1 : (n > 32 ? 32 : n)) }')
            if [ "$fit" -lt "$PREFILL_LAYERS" ]; then
                PREFILL_LAYERS=$fit
                PREFILL_WHY="$free_mib MiB free on the card"
            fi
        fi
    fi
    # Weight generation on the host dominates patchbay's bench (~0.5 s a layer
    # with 16 cores, plus ~8 s for the embeddings: ~40 s in all at 32 layers);
    # the PyTorch one is mostly imports and init (~30-60 s). Both at 32 layers
    # want ~100 s of the budget, plus its 20 s reserve.
    left=$(remaining)
    if [ "$left" -lt 110 ] && [ "$PREFILL_LAYERS" -gt 4 ]; then
        PREFILL_LAYERS=4
        PREFILL_WHY="only ${left}s of the budget left"
    elif [ "$left" -lt 180 ] && [ "$PREFILL_LAYERS" -gt 16 ]; then
        PREFILL_LAYERS=16
        PREFILL_WHY="only ${left}s of the budget left"
    fi
    PREFILL_MODEL="llama3-8b:$PREFILL_LAYERS"
    if [ "$PREFILL_LAYERS" -ne 32 ]; then
        note "prefill benchmark: $PREFILL_MODEL instead of the full 32 layers ($PREFILL_WHY)"
    else
        echo "gpu-check: prefill benchmark on $PREFILL_MODEL ($PREFILL_WHY), $PREFILL_SEQS x $PREFILL_SEQ_LEN tokens" >&2
    fi

    if [ -x "$BUILD/bench_gpu_prefill" ]; then
        run_step bench_gpu_prefill 200 "$BUILD/bench_gpu_prefill" --model-name "$PREFILL_MODEL" --seqs "$PREFILL_SEQS" \
            --seq-len "$PREFILL_SEQ_LEN" --dtype bf16 --repeats 3 --logits all --fit-layers
    else
        skip_step bench_gpu_prefill skipped_not_built
    fi
    PREFILL_JSON=$(json_line "$OUT/bench_gpu_prefill.log" gpu_prefill)
    TORCH_LAYERS=$PREFILL_LAYERS
    if [ -n "$PREFILL_JSON" ]; then
        TORCH_LAYERS=$(json_number "$PREFILL_JSON" layers)
        case $TORCH_LAYERS in '' | null | *[!0-9]*) TORCH_LAYERS=$PREFILL_LAYERS ;; esac
    fi
    PYTHON=${PB_PYTHON:-python3}
    if command -v "$PYTHON" >/dev/null 2>&1; then
        run_step bench_torch_prefill 150 "$PYTHON" "$ROOT/scripts/bench_torch_prefill.py" --layers "$TORCH_LAYERS" \
            --seqs "$PREFILL_SEQS" --seq-len "$PREFILL_SEQ_LEN" --repeats 3 --logits all
    else
        skip_step bench_torch_prefill skipped
        note "bench_torch_prefill: skipped: no $PYTHON on this machine"
    fi
    TORCH_JSON=$(json_line "$OUT/bench_torch_prefill.log" torch_prefill)
fi

if want sweep; then
    # The default sweep (resid_pre, attn_out, mlp_out at every layer and
    # position; z for every head at the last position) on one pair of T = 64
    # random ids at the llama3-8b shape (bf16, the prefill's layer count):
    # bench_sweep --backend cuda prints rows/s, TFLOP/s of the FLOPs executed,
    # the cuBLAS ceiling at the engine's batch height, and the naive FLOPs; the
    # PyTorch loop (transformers + forward hooks, one forward per row, sampled
    # rows) runs on the same GPU.
    SWEEP_LAYERS=$TORCH_LAYERS
    case $SWEEP_LAYERS in '' | null | *[!0-9]*) SWEEP_LAYERS=$PREFILL_LAYERS ;; esac
    if [ -x "$BUILD/bench_sweep" ]; then
        run_step bench_gpu_sweep 150 "$BUILD/bench_sweep" --random-model "llama3-8b:$SWEEP_LAYERS" --backend cuda \
            --dtype bf16 --default-sweep 64
    else
        skip_step bench_gpu_sweep skipped_not_built
    fi
    SWEEP_JSON=$(json_line "$OUT/bench_gpu_sweep.log" gpu_sweep)
    if command -v "$PYTHON" >/dev/null 2>&1; then
        run_step bench_torch_sweep 120 "$PYTHON" "$ROOT/scripts/bench_torch_sweep_gpu.py" --shape llama3-8b \
            --layers "$SWEEP_LAYERS" --T 64 --rows 200 --dtype bf16
    else
        skip_step bench_torch_sweep skipped
    fi
    TORCH_SWEEP_JSON=$(json_line "$OUT/bench_torch_sweep.log" torch_sweep)
fi

# ---- the rest of the suite (CPU tests; CI runs them too) ---------------------------
if want cpu && [ $CONFIGURE_OK -eq 1 ]; then
    run_step build_rest 120 cmake --build "$BUILD" -j "$JOBS"
    run_tests ctest_all 150 -LE 'gpu|checked' # checked: the GPU harnesses' CPU stand-in, run for real above
fi

write_summary
echo "gpu-check: summary in $OUT/summary.json (ok=$SUMMARY_OK, $(($(date +%s) - START)) s)" >&2
cat "$OUT/summary.json"
[ "$SUMMARY_OK" = true ]
