#!/usr/bin/env bash
# Checkpoints and output safety of `patchbay sweep` (issue 12, failures 2-6),
# each case a fault done to the built tool:
#   3. --checkpoint in a missing folder or a read-only place: refused at once
#      (exit 2), before the model loads, naming the place; nothing created.
#   6. a second SIGTERM while the first one's checkpoint is due: ignored, the
#      checkpoint is written, exit 3, and --resume ends equal to an
#      uninterrupted run.
#   4. a kill -9 while the results were written left NAME.tmp.PID files (and a
#      committed partial set): --resume (what the Slurm templates run) removes
#      the dead process's temporaries and finishes; a live process's
#      temporary file is left alone and the directory refused.
#   5. --overwrite under a file size limit (a nearly full disk): the old
#      outputs stay byte for byte, no temporary file is left, the finished
#      rows are kept in a checkpoint that is named; --resume then writes the
#      results without running a row. 5b: the same on a really full tiny
#      tmpfs (ENOSPC), where mount is allowed (root); skipped, saying so,
#      elsewhere.
#   2. (with SmolLM2 under models/) the model changed past its first MiB
#      between the interruption and --resume: refused, naming the model and
#      the checkpoint, exit 1, the checkpoint kept byte for byte.
# Every run uses the reference backend (a row's value does not depend on its
# batch), so resumed results must equal uninterrupted ones byte for byte.
# Nothing waits a fixed time: signals go once the job says it holds
# (PB_TEST_STALL=hold) or is seen stopped (/proc/PID/stat); every wait is
# bounded by 60 s x PB_TEST_TIMEOUT_SCALE (README, Testing).
set -euo pipefail
build=${PB_BUILD_DIR:-build}
fixtures=${PB_FIXTURES:-tests/fixtures}
source_dir=${PB_SOURCE_DIR:-.}
cli=$build/patchbay
[ -x "$cli" ] || { echo "skipping: $cli is not built"; exit 77; }
export OMP_NUM_THREADS=1
scale=${PB_TEST_TIMEOUT_SCALE:-1}
ticks=$((60 * scale * 20)) # 0.05 s each
tmp=$(mktemp -d /tmp/pb_safety_XXXXXX)
pids=()
mounted="" mounted_ok=""
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -z "$mounted" ] || umount "$mounted" || true
  chmod -R u+w "$tmp"; rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

# Spec: 8 pairs of 16 tokens, three site families: results.json (~60 kB) is
# far larger than the checkpoint (~6 kB), which case 5 relies on.
spec_of() { # spec_of FILE Z_POSITIONS
  local pairs="" sep="" p t ids bad
  for p in $(seq 0 7); do
    ids="" bad=""
    for t in $(seq 0 15); do
      ids+="${ids:+, }$((3 + (p * 31 + t * 17) % 117))"
      bad+="${bad:+, }$((3 + (p * 31 + t * 17 + (t == 5 ? 7 : 0)) % 117))"
    done
    pairs+="$sep{\"clean\": {\"ids\": [$ids]}, \"corrupted\": {\"ids\": [$bad]}}"
    sep=", "
  done
  cat >"$1" <<EOF
{"mode": "denoising", "pairs": [$pairs],
 "sites": [{"component": "resid_pre", "layers": "all", "positions": "each"},
           {"component": "mlp_out", "layers": "all", "positions": "each"},
           {"component": "z", "layers": "all", "heads": "all", "positions": "$2"}],
 "metric": {"kind": "logit_diff", "positive": {"ids": [18]}, "negative": {"ids": [53]}}}
EOF
}
spec_of "$tmp/spec.json" last
spec_of "$tmp/other.json" each
sweep=("$cli" sweep --model "$fixtures/tiny_gqa/model.gguf" --spec "$tmp/spec.json" --backend reference
  --threads 1 --max-memory 2M --no-progress)

# wait_line PID ERR PATTERN: until the job's stderr has a line matching PATTERN.
wait_line() {
  for _ in $(seq "$ticks"); do
    grep -q "$3" "$2" && return
    kill -0 "$1" 2>/dev/null || { cat "$2"; fail "the job ended before '$3'"; }
    sleep 0.05
  done
  cat "$2"; fail "no '$3' in $2"
}
wait_stopped() {
  for _ in $(seq "$ticks"); do
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = T ] && return
    sleep 0.05
  done
  fail "process $1 never stopped"
}
run() { # run NAME ARGS...: runs the command; its status in rc, stderr in $tmp/NAME.err
  local name=$1; shift
  set +e; "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; rc=$?; set -e
}
expect_rc() { [ "$rc" = "$1" ] || { cat "$tmp/$2.err"; fail "$2: exit $rc, expected $1"; }; }
expect_err() { grep -qF -- "$2" "$tmp/$1.err" || { cat "$tmp/$1.err"; fail "$1: stderr lacks '$2'"; }; }
no_temps() { ! ls -a "$@" 2>/dev/null | grep -q '\.tmp\.' || fail "temporary files left in $*: $(ls -a "$@")"; }

# The uninterrupted reference.
run ref "${sweep[@]}" --out "$tmp/ref"
expect_rc 0 ref
[ ! -e "$tmp/ref.checkpoint" ] && [ ! -e "$tmp/ref.checkpoint.model-hash" ] || fail "ref: checkpoint files left"

# ---- 3: a checkpoint place that cannot take the file -------------------------
run missing "${sweep[@]}" --out "$tmp/o3" --checkpoint "$tmp/missing/run.checkpoint"
expect_rc 2 missing
expect_err missing "folder $tmp/missing: No such file or directory"
if [ "$(id -u)" = 0 ]; then ro=/proc; else mkdir "$tmp/ro" && chmod 555 "$tmp/ro" && ro=$tmp/ro; fi
run readonly "${sweep[@]}" --out "$tmp/o3" --checkpoint "$ro/run.checkpoint"
expect_rc 2 readonly
expect_err readonly "cannot create a file in $ro"
[ ! -e "$tmp/o3" ] || fail "case 3 created the output directory"
grep -q "rows executed" "$tmp/missing.err" "$tmp/readonly.err" && fail "case 3 ran rows"
# an --out that cannot be made is refused before any row too (a write probe:
# root passes access() on /proc), and a run that fails leaves neither a
# checkpoint nor its model-hash cache
run outro "${sweep[@]}" --out "$ro/out" --checkpoint "$tmp/o3b.checkpoint"
expect_rc 1 outro
expect_err outro "cannot create output directory $ro/out"
grep -q "rows executed" "$tmp/outro.err" && fail "an --out that cannot be made ran rows"
run tiny "${sweep[@]}" --out "$tmp/o3c" --max-memory 1K
expect_rc 1 tiny
expect_err tiny "sweep failed"
[ ! -e "$tmp/o3c" ] && [ ! -e "$tmp/o3c.checkpoint" ] && [ ! -e "$tmp/o3c.checkpoint.model-hash" ] ||
  fail "a failed run left files: $(ls "$tmp")"

# ---- 6: two SIGTERMs in a row ------------------------------------------------
# The job holds in its share until the first SIGTERM, then stops itself just
# before writing the checkpoint (PB_TEST_STALL=...,0:finish): the second
# SIGTERM is pending when it continues, as one sent during the write would be.
PB_TEST_STALL=hold,0:finish "${sweep[@]}" --out "$tmp/o6" 2>"$tmp/o6.err" &
job=$!; pids+=("$job")
wait_line "$job" "$tmp/o6.err" "holds in its share"
kill -TERM "$job"
wait_stopped "$job"
kill -TERM "$job"
kill -CONT "$job"
set +e; wait "$job"; rc=$?; set -e
expect_rc 3 o6
expect_err o6 "checkpoint written to $tmp/o6.checkpoint"
[ -s "$tmp/o6.checkpoint" ] && [ -s "$tmp/o6.checkpoint.model-hash" ] || fail "o6: no checkpoint or hash cache"
[ ! -e "$tmp/o6" ] || fail "o6: the interrupted run wrote its output directory"
cp "$tmp/o6.checkpoint" "$tmp/o4.checkpoint"
cp "$tmp/o6.checkpoint.model-hash" "$tmp/o4.checkpoint.model-hash"
run resume6 "${sweep[@]}" --out "$tmp/o6" --resume
expect_rc 0 resume6
cmp "$tmp/o6/results.json" "$tmp/ref/results.json" || fail "o6: resumed results differ from the uninterrupted run"
[ ! -e "$tmp/o6.checkpoint" ] && [ ! -e "$tmp/o6.checkpoint.model-hash" ] || fail "o6: checkpoint files left"

# ---- 4: leftovers of a kill -9 while the results were written -----------------
sh -c 'exit 0' & dead=$!; wait "$dead" # a pid with no process
mkdir "$tmp/o4"
cp "$tmp/ref/z.npy" "$tmp/o4/z.npy" # renamed into place before the kill
echo partial >"$tmp/o4/results.json.tmp.$dead"
echo partial >"$tmp/o4/resid_pre.npy.tmp.$dead"
echo partial >"$tmp/o4.checkpoint.tmp.$dead"
echo partial >"$tmp/o4/report.txt.tmp.$$" # a live process's: not ours to remove
run live "${sweep[@]}" --out "$tmp/o4" --resume
expect_rc 1 live
expect_err live "removed 3 temporary files"
expect_err live "$tmp/o4 is not empty"
[ -e "$tmp/o4/report.txt.tmp.$$" ] || fail "o4: a live process's temporary file was removed"
rm "$tmp/o4/report.txt.tmp.$$"
run resume4 "${sweep[@]}" --out "$tmp/o4" --resume
expect_rc 0 resume4
expect_err resume4 "holds part of a sweep's outputs (no results.json)"
cmp "$tmp/o4/results.json" "$tmp/ref/results.json" || fail "o4: resumed results differ from the uninterrupted run"
no_temps "$tmp/o4" "$tmp"

# ---- 5: --overwrite on a nearly full disk ------------------------------------
other=("${sweep[@]}"); other[5]=$tmp/other.json # the earlier results: another spec
run old "${other[@]}" --out "$tmp/o5"
expect_rc 0 old
cp -r "$tmp/o5" "$tmp/o5.old" # for case 5b
(cd "$tmp/o5" && md5sum -- * >"$tmp/o5.md5")
# 20 KiB per file (ulimit -f counts KiB in bash): the checkpoint fits, the
# new results.json does not. The tool ignores SIGXFSZ, so writes fail with EFBIG.
set +e; (ulimit -f 20; exec "${sweep[@]}" --out "$tmp/o5" --overwrite) >/dev/null 2>"$tmp/full.err"; rc=$?; set -e
expect_rc 1 full
expect_err full "results.json failed: File too large"
expect_err full "finished rows are kept in the checkpoint $tmp/o5.checkpoint"
(cd "$tmp/o5" && md5sum --quiet -c "$tmp/o5.md5") || fail "o5: the old outputs changed"
[ "$(ls "$tmp/o5" | wc -l)" = "$(wc -l <"$tmp/o5.md5")" ] || fail "o5: files added: $(ls "$tmp/o5")"
no_temps "$tmp/o5" "$tmp"
[ -s "$tmp/o5.checkpoint" ] || fail "o5: no checkpoint kept"
[ "$(stat -c %s "$tmp/ref/results.json")" -gt 20480 ] && [ "$(stat -c %s "$tmp/o5.checkpoint")" -le 20480 ] ||
  fail "o5: the sizes case 5 relies on changed: results.json $(stat -c %s "$tmp/ref/results.json") B"
run resume5 "${sweep[@]}" --out "$tmp/o5" --overwrite --resume
expect_rc 0 resume5
expect_err resume5 "rows executed in this run: 0 "
cmp "$tmp/o5/results.json" "$tmp/ref/results.json" || fail "o5: results differ from the uninterrupted run"

# ---- 5b: the same on a file system that is really full ------------------------
# A tmpfs holding the old set with 40 KiB to spare: the new set's small files
# fit, its results.json (~60 kB) does not; once they are removed again the
# checkpoint (~6 kB) fits. Mounting needs root and a container that allows it.
if [ "$(id -u)" = 0 ] && mkdir "$tmp/full" && mount -t tmpfs -o size=4m tmpfs "$tmp/full" 2>/dev/null; then
  mounted=$tmp/full
  cp -r "$tmp/o5.old" "$tmp/full/o"
  used=$(df -k --output=used "$tmp/full" | tail -1 | tr -d ' ')
  mount -o remount,size=$((used + 40))k "$tmp/full"
  run enospc "${sweep[@]}" --out "$tmp/full/o" --overwrite
  expect_rc 1 enospc
  expect_err enospc "No space left on device"
  expect_err enospc "finished rows are kept in the checkpoint $tmp/full/o.checkpoint"
  (cd "$tmp/full/o" && md5sum --quiet -c "$tmp/o5.md5") || fail "5b: the old outputs changed"
  no_temps "$tmp/full/o" "$tmp/full"
  mount -o remount,size=4m "$tmp/full"
  run resume5b "${sweep[@]}" --out "$tmp/full/o" --overwrite --resume
  expect_rc 0 resume5b
  cmp "$tmp/full/o/results.json" "$tmp/ref/results.json" || fail "5b: results differ from the uninterrupted run"
  umount "$tmp/full" && mounted="" && mounted_ok=1
else
  echo "case 5b skipped: cannot mount a tmpfs here (needs root and a container that allows mount); case 5's file size limit covers the same path"
fi

# ---- 2: the model changed past its first MiB before --resume -----------------
smollm2=$source_dir/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -r "$smollm2" ]; then
  echo "case 2 skipped: no $smollm2 (scripts/fetch-model.sh); test_checkpoint covers the fingerprint itself"
  echo "PASS (cases 3, 6, 4, 5${mounted_ok:+, 5b})"
  exit 0
fi
cp "$smollm2" "$tmp/m.gguf"
cat >"$tmp/small.json" <<'EOF'
{"mode": "denoising",
 "pairs": [{"clean": {"ids": [1, 504, 3458, 282, 4649, 314]}, "corrupted": {"ids": [1, 504, 3458, 282, 7042, 314]}}],
 "sites": [{"component": "resid_pre", "layers": "all", "positions": "each"}],
 "metric": {"kind": "logit_diff", "positive": {"ids": [7042]}, "negative": {"ids": [4649]}}}
EOF
small=("$cli" sweep --model "$tmp/m.gguf" --spec "$tmp/small.json" --threads 1 --max-memory 1M --no-progress)
PB_TEST_STALL=hold "${small[@]}" --out "$tmp/o2" 2>"$tmp/o2.err" &
job=$!; pids+=("$job")
wait_line "$job" "$tmp/o2.err" "holds in its share"
kill -TERM "$job"
set +e; wait "$job"; rc=$?; set -e
expect_rc 3 o2
cp "$tmp/o2.checkpoint" "$tmp/o2.kept"
size=$(stat -c %s "$tmp/m.gguf")
# One bit in the middle of the tensor data (a re-downloaded model differs there).
byte=$(od -An -tu1 -j $((size / 2)) -N1 "$tmp/m.gguf" | tr -d ' ')
printf "\\$(printf '%03o' $((byte ^ 1)))" | dd of="$tmp/m.gguf" bs=1 seek=$((size / 2)) conv=notrunc status=none
[ "$(od -An -tu1 -j $((size / 2)) -N1 "$tmp/m.gguf" | tr -d ' ')" = $((byte ^ 1)) ] || fail "o2: the model byte did not change"
run changed "${small[@]}" --out "$tmp/o2" --resume
expect_rc 1 changed
expect_err changed "checkpoint $tmp/o2.checkpoint was written for other weights: $tmp/m.gguf, with the adapters"
expect_err changed "the checkpoint is kept"
cmp "$tmp/o2.checkpoint" "$tmp/o2.kept" || fail "o2: the checkpoint changed"
[ ! -e "$tmp/o2" ] || fail "o2: a refused resume wrote results"
echo "PASS (cases 3, 6, 4, 5${mounted_ok:+, 5b}, 2)"
