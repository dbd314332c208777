#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (tests/fuzz/,
# README "Fuzzing"): configures and builds build-fuzz/ (clang, libFuzzer,
# ASan + UBSan), gathers seed corpora from tests/fixtures
# (tests/fuzz/make_seeds.py), replays tests/fuzz/regressions/<harness>/,
# then fuzzes each harness for PB_FUZZ_SECONDS (default 2) seconds and
# prints executions, exec/s and coverage per harness and in total. Fails
# when any harness crashes or a sanitizer reports (the input is left in
# build-fuzz/fuzz/artifacts/). Without clang or libFuzzer it says so and
# exits 0.
#   scripts/fuzz.sh [HARNESS[:SECONDS]...]   e.g. scripts/fuzz.sh gguf npy:30
# Environment: PB_FUZZ_SECONDS (per harness), PB_FUZZ_ARGS (more libFuzzer
# flags, e.g. "-runs=1000000" for a long run), PB_FUZZ_CC (default clang),
# PB_FUZZ_NO_BUILD=1 (reuse build-fuzz/ as it is), PB_FUZZ_JOBS (harnesses
# fuzzed at once, one process each; default the number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

harnesses=(gguf gguf_vocab model_gguf safetensors safetensors_index model_hf hf_config npy tokenizer_json tokenize
           chat_template sweep_spec checkpoint)
[ $# -gt 0 ] && harnesses=("$@")
seconds=${PB_FUZZ_SECONDS:-2}
cores=$(bash scripts/cores.sh)
cc=${PB_FUZZ_CC:-clang}
dir=build-fuzz
work=$dir/fuzz

# Dictionary files of each harness (tests/fuzz/dict/), concatenated.
dicts_of() {
  case $1 in
    gguf | gguf_vocab | model_gguf) echo gguf ;;
    safetensors | safetensors_index) echo json safetensors ;;
    model_hf) echo json hf_config safetensors model_hf ;;
    hf_config) echo json hf_config ;;
    npy) echo npy ;;
    tokenizer_json) echo json tokenizer ;;
    tokenize) echo tokenizer ;;
    chat_template) echo chat_template ;;
    sweep_spec) echo json sweep_spec ;;
    checkpoint) echo checkpoint ;;
    *) echo "fuzz.sh: unknown harness '$1' (known: ${harnesses[*]})" >&2; return 1 ;;
  esac
}

probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return d && n ? 0 : 0; }' >"$probe/p.c"
if ! command -v "$cc" >/dev/null 2>&1 ||
  ! "$cc" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >"$probe/log" 2>&1; then
  echo "fuzz.sh: SKIPPED: $cc with libFuzzer (-fsanitize=fuzzer) is not available (Debian: clang and" \
    "libclang-rt-dev)" >&2
  exit 0
fi

if [ "${PB_FUZZ_NO_BUILD:-0}" != 1 ]; then
  start=$(date +%s%N)
  cmake -S . -B "$dir" -DCMAKE_C_COMPILER="$cc" -DPB_FUZZ=ON -DPB_CUDA=OFF -DPB_MPI=OFF -DPB_WERROR=ON \
    -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS_DEBUG="-O1 -g" >"$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log" >&2; exit 1; }
  cmake --build "$dir" --target fuzz_all -j "$cores" >"$dir.build.log" 2>&1 ||
    { tail -50 "$dir.build.log" >&2; exit 1; }
  end=$(date +%s%N)
  echo "fuzz.sh: build $(awk -v ns=$((end - start)) 'BEGIN { printf "%.1f", ns / 1e9 }') s" >&2
fi

fuzz_start=$(date +%s%N)
export PB_FIXTURES=$PWD/tests/fixtures OMP_NUM_THREADS=1
rm -rf "$work/seeds"
rm -f "$work"/logs/*.row
mkdir -p "$work/seeds" "$work/corpus" "$work/artifacts" "$work/logs" "$work/dict"
python3 tests/fuzz/make_seeds.py tests/fixtures "$work/seeds"
mkdir -p "$work/seeds/checkpoint"
PB_FUZZ_WRITE_SEED="$work/seeds/checkpoint/seed" "$dir/tests/fuzz/fuzz_checkpoint" >/dev/null 2>&1

# fuzz_one SPEC: replays HARNESS's regressions, then fuzzes it; leaves its
# table row in $work/logs/HARNESS.row (and its status, 0 or not, first).
fuzz_one() {
  local spec=$1 h secs bin log dict names inputs rc=0 regressions execs rate cov ft result corpus
  h=${spec%%:*}
  secs=$seconds
  [[ $spec == *:* ]] && secs=${spec#*:}
  bin=$dir/tests/fuzz/fuzz_$h
  log=$work/logs/$h.log
  dict=$work/dict/$h.dict
  names=$(dicts_of "$h")
  (for d in $names; do cat "tests/fuzz/dict/$d.dict"; done) >"$dict"
  mkdir -p "$work/corpus/$h"
  inputs=("$work/corpus/$h" "$work/seeds/$h")
  # Every input that once crashed a harness runs first, on its own.
  regressions=(tests/fuzz/regressions/"$h"/*)
  if [ -e "${regressions[0]}" ]; then
    "$bin" "${regressions[@]}" >"$work/logs/$h.regressions.log" 2>&1 || rc=$?
    inputs+=("tests/fuzz/regressions/$h")
  fi
  if [ $rc -eq 0 ]; then
    # shellcheck disable=SC2086 # PB_FUZZ_ARGS is a list of flags
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 -dict="$dict" \
      -artifact_prefix="$work/artifacts/$h-" ${PB_FUZZ_ARGS:-} "${inputs[@]}" >"$log" 2>&1 || rc=$?
  else
    log=$work/logs/$h.regressions.log
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(sed -n 's/.*cov: \([0-9]*\) .*/\1/p' "$log" | tail -1)
  ft=$(sed -n 's/.* ft: \([0-9]*\) .*/\1/p' "$log" | tail -1)
  result=ok
  [ $rc -eq 0 ] || result="FAILED ($rc): $log"
  corpus=$(find "$work/corpus/$h" -type f | wc -l)
  {
    echo "$rc ${execs:-0}"
    printf '%-18s %10s %9s %6s %7s %7s  %s\n' "$h" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$corpus" "$result"
    [ $rc -eq 0 ] || grep -E 'ERROR|SUMMARY|Test unit written|runtime error|ParseDictionaryFile' "$log" | head -5 || true
  } >"$work/logs/$h.row"
}

# PB_FUZZ_JOBS harnesses at a time (default: the number of cores; each
# fuzzes on one), the table in the harnesses' order.
at_once=${PB_FUZZ_JOBS:-$cores}
for spec in "${harnesses[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$at_once" ]; do wait -n || true; done
  fuzz_one "$spec" &
done
wait
failed=()
total=0
printf '%-18s %10s %9s %6s %7s %7s  %s\n' harness executions exec/s cov ft corpus result >&2
for spec in "${harnesses[@]}"; do
  h=${spec%%:*}
  row=$work/logs/$h.row
  if [ ! -f "$row" ]; then
    echo "$h: no result (the harness's run ended before writing one)" >&2
    failed+=("$h")
    continue
  fi
  read -r rc execs <"$row"
  tail -n +2 "$row" >&2
  [ "$rc" -eq 0 ] || failed+=("$h")
  total=$((total + execs))
done
printf '%-18s %10s\n' total "$total" >&2
fuzz_end=$(date +%s%N)
echo "fuzz.sh: seeds, replay and fuzzing $(awk -v ns=$((fuzz_end - fuzz_start)) 'BEGIN { printf "%.1f", ns / 1e9 }') s" \
  "(${#harnesses[@]} harnesses)" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes or sanitizer reports in: ${failed[*]} (inputs in $work/artifacts/)" >&2
  exit 1
fi
