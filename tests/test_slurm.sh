#!/usr/bin/env bash
# The sweep template under a real Slurm: a single-node cluster on this machine
# (scripts/slurm/local-cluster.sh: munged, slurmctld, slurmd) runs
# scripts/slurm/sweep-cpu.sbatch with 2 tasks (srun --mpi=pmix), twice; the
# job is preempted mid-sweep, once the way Slurm warns it (SIGUSR1 to the
# batch script, as --signal=B:USR1 does: it checkpoints and requeues itself)
# and once by `scontrol requeue` (SIGTERM to every process, Slurm requeues);
# each time it resumes from the checkpoint with the rows it had done, runs
# each row once, and ends with outputs byte-identical
# to an uninterrupted one-rank run (the reference backend computes every row
# on its own, so how rows are split over ranks and runs changes no bit).
# Nothing waits a fixed time: the preemption is sent once both ranks hold in
# their shares after their first rows (PB_TEST_STALL=hold, first run only),
# and every wait is for a line in the job's log or a job state.
# PB_TEST_TIMEOUT_SCALE (default 1) multiplies every limit (README, Testing).
# Exit 77 (skipped, saying why) without root, slurm-wlm, munge, python3 or an
# MPI build of patchbay, or when the local Slurm does not start. Every daemon
# is stopped at the end, pass or fail, or by a guard if the test is killed.
set -euo pipefail
build=${PB_BUILD_DIR:-build}
fixtures=${PB_FIXTURES:-tests/fixtures}
src=${PB_SOURCE_DIR:-.}
skip() { echo "skipping: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (the local Slurm runs its jobs as SlurmUser=root)"
for b in slurmctld slurmd sbatch scontrol scancel munged mungekey; do
  command -v "$b" >/dev/null || skip "no $b (apt-get install slurm-wlm munge; scripts/install-deps.sh)"
done
command -v python3 >/dev/null || skip "no python3 (picks the cluster's free ports)"
[ -x "$build/patchbay" ] || skip "$build/patchbay is not built"
# (not grep -q: under pipefail, ldd cut short by SIGPIPE would fail the pipeline)
ldd "$build/patchbay" | grep libmpi >/dev/null || skip "$build/patchbay was built without MPI"
src=$(cd "$src" && pwd -P)
cli=$(cd "$build" && pwd -P)/patchbay
model=$(cd "$fixtures/tiny_gqa" && pwd -P)/model.gguf
scale=${PB_TEST_TIMEOUT_SCALE:-1}
limit() { python3 -c "import math,sys; print(math.ceil(float(sys.argv[1]) * float(sys.argv[2])))" "$1" "$scale"; }
# Its own limits add up to less than CTest's (600 s, scaled alike): the
# cluster's start (3 waits of 30 s), and per case 60 s for the ranks to hold
# and 180 s for the job to end, so it fails with its own message first.

# munged wants every folder above its socket reachable by everyone
tmp=$(mktemp -d /tmp/pb_slurm_XXXXXX)
chmod 755 "$tmp"
cluster=$tmp/cluster
stop_all() {
  bash "$src/scripts/slurm/local-cluster.sh" stop "$cluster" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
# The daemons outlive a test killed outright (CTest's timeout): a guard in
# its own session stops them once this script is gone, however it ended.
# shellcheck disable=SC2016 # expanded by the guard's shell
setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; bash "$2" stop "$3"; rm -rf "$4"' \
  guard $$ "$src/scripts/slurm/local-cluster.sh" "$cluster" "$tmp" </dev/null >/dev/null 2>&1 &
guard=$!
cleanup() {
  kill "$guard" 2>/dev/null || true
  stop_all
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
if ! PB_SLURM_START_TIMEOUT=$(limit 30) bash "$src/scripts/slurm/local-cluster.sh" start "$cluster" >"$tmp/start.log" 2>&1; then
  cat "$tmp/start.log"
  skip "the local Slurm did not start (above)"
fi
cat "$tmp/start.log"
# shellcheck source=/dev/null
. "$cluster/env"

fail() {
  echo "FAIL: $*"
  echo "--- the job's log"; cat "$log" 2>/dev/null || true
  scontrol show job "$job" 2>/dev/null || true
  for f in slurmctld slurmd; do echo "--- the end of $f.log"; tail -n 20 "$cluster/log/$f.log" || true; done
  exit 1
}

python3 - "$tmp/spec.json" <<'PY'
import json, random, sys
rng = random.Random(12)
pairs = []
for _ in range(12):
    clean = [rng.randrange(3, 120) for _ in range(32)]
    corrupted = list(clean)
    corrupted[4] = 3 + (clean[4] + 11) % 117
    pairs.append({"clean": {"ids": clean}, "corrupted": {"ids": corrupted}})
json.dump({"mode": "denoising", "pairs": pairs,
           "sites": [{"component": "resid_pre", "layers": "all", "positions": "each"},
                     {"component": "attn_out", "layers": "all", "positions": "each"}],
           "metric": {"kind": "logit_diff", "positive": {"ids": [21]}, "negative": {"ids": [40]}}},
          open(sys.argv[1], "w"))
PY
# Small batches, so that a share has many; the reference backend, so that
# the results do not depend on which rows share a batch.
opts=(--threads 1 --max-memory 2M --backend reference)
export OMP_NUM_THREADS=1

# The uninterrupted run: one rank, no Slurm.
"$cli" sweep --model "$model" --spec "$tmp/spec.json" --out "$tmp/ref" --no-progress "${opts[@]}" \
  >/dev/null 2>"$tmp/ref.err" || { cat "$tmp/ref.err"; echo "FAIL: the uninterrupted sweep failed"; exit 1; }
executed() { sed -n 's/^patchbay: rows executed in this run: \([0-9]*\) .*/\1/p' "$1"; }
total=$(executed "$tmp/ref.err")
[ -n "$total" ] || { cat "$tmp/ref.err"; echo "FAIL: no executed-row count"; exit 1; }

# The ranks of the first run hold in their shares after their first rows,
# until the preemption; the requeued run (SLURM_RESTART_COUNT 1) does not.
cat >"$tmp/patchbay" <<EOF
#!/bin/sh
[ "\${SLURM_RESTART_COUNT:-0}" != 0 ] || export PB_TEST_STALL=hold
exec "$cli" "\$@"
EOF
chmod +x "$tmp/patchbay"

state() { scontrol show job -o "$job" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
field() { scontrol show job -o "$job" 2>/dev/null | sed -n "s/.* $1=\\([^ ]*\\).*/\\1/p"; }
ended() {
  case $1 in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE) return 0 ;; esac
  return 1
}
lines() {
  local c
  c=$(grep -c -- "$1" "$log" 2>/dev/null) || true
  echo "${c:-0}"
}
# wait_lines N PATTERN SECONDS: until the job's log has N lines with PATTERN
wait_lines() {
  local end=$((SECONDS + $(limit "$3")))
  while [ "$SECONDS" -le "$end" ]; do
    [ "$(lines "$2")" -ge "$1" ] && return
    ! ended "$(state)" || fail "the job ended ($(state)) before $1 lines '$2'"
    sleep 0.1
  done
  fail "no $1 lines '$2' in the job's log within $(limit "$3") s"
}

# preempt NAME HOW: submits the template (from the repository root, as it
# says), preempts the job once both ranks hold in their shares, and checks
# that it resumed from its checkpoint and ended as the uninterrupted run.
# HOW: warning (SIGUSR1 to the batch script, as --signal=B:USR1@120 sends it
# before the time limit or a preemption: the script forwards it, the ranks
# checkpoint, the script requeues the job) or requeue (scontrol requeue, as
# a preemption with PreemptMode=REQUEUE: Slurm sends SIGTERM to every
# process of the job, the ranks checkpoint within KillWait, Slurm requeues).
preempt() {
  local name=$1 how=$2 s k n before after
  log=$tmp/$name.log
  out=$tmp/$name
  job=$(cd "$src" && PATCHBAY=$tmp/patchbay MAX_RESTARTS=2 sbatch --parsable --output="$log" \
    scripts/slurm/sweep-cpu.sbatch "$model" "$tmp/spec.json" "$out" "${opts[@]}")
  job=${job%%;*}
  echo "== $name: job $job"
  wait_lines 2 "holds in its share" 60
  grep -q "^patchbay: 2 ranks;" "$log" || fail "the two tasks did not join one MPI job (srun --mpi=pmix)"
  if [ "$how" = warning ]; then scancel --signal=USR1 --batch "$job"; else scontrol requeue "$job"; fi

  # The job checkpoints, is requeued, waits out the requeue delay
  # (cred_expire, local-cluster.sh) and runs again.
  local end=$((SECONDS + $(limit 180)))
  while [ "$SECONDS" -le "$end" ]; do
    s=$(state)
    ! ended "$s" || break
    sleep 0.1
  done
  [ "$s" = COMPLETED ] || fail "the job is $s, not COMPLETED"
  [ "$(field Restarts)" = 1 ] || fail "the job ran $(field Restarts) restarts, not 1"
  [ "$(field ExitCode)" = 0:0 ] || fail "the job's exit code is $(field ExitCode)"
  grep "^patchbay: \(preemption\|interrupted\|checkpoint written\|resuming\|rows executed\)\|DUE TO JOB REQUEUE" "$log"

  if [ "$how" = warning ]; then
    grep -q "^patchbay: preemption warning" "$log" || fail "the batch script did not take the warning"
    grep -q "^patchbay: checkpoint written; requeue 1 of 2" "$log" || fail "the job did not requeue itself"
  else
    grep -q "CANCELLED AT .* DUE TO JOB REQUEUE" "$log" || fail "Slurm did not say it requeued the job"
    ! grep -q "^patchbay: \(preemption warning\|checkpoint written; requeue\)" "$log" ||
      fail "the batch script, not Slurm, requeued the job"
  fi
  read -r k n <<<"$(sed -n 's/^patchbay: interrupted: \([0-9]*\) of \([0-9]*\) rows done.*/\1 \2/p' "$log")" || true
  if [ -z "${k:-}" ] || [ "$k" -le 0 ] || [ "$k" -ge "$n" ]; then fail "not interrupted mid-sweep"; fi
  grep -q "^patchbay: resuming from $out.checkpoint: $k of $n rows already done" "$log" ||
    fail "the requeued job did not resume with the $k rows done"
  [ "$(lines "^patchbay: 2 ranks;")" -eq 2 ] || fail "a run was not one MPI job of 2 ranks"
  read -r before after <<<"$(executed "$log" | tr '\n' ' ')" || true
  [ -n "${after:-}" ] || fail "not two executed-row counts (one per run)"
  echo "rows executed: $before before the preemption + $after after = $((before + after)) (uninterrupted: $total)"
  [ $((before + after)) -eq "$total" ] || fail "rows executed twice or dropped"
  [ ! -e "$out.checkpoint" ] || fail "the finished checkpoint was left behind"

  # The outputs, byte for byte: results.json, reports and every .npy.
  (cd "$out" && ls) >"$out.files"
  cmp -s "$tmp/ref.files" "$out.files" || fail "other output files: $(tr '\n' ' ' <"$out.files")"
  while read -r f; do
    cmp "$tmp/ref/$f" "$out/$f" || fail "$f differs from the uninterrupted run's"
  done <"$tmp/ref.files"
  echo "outputs byte-identical to the uninterrupted run: $(tr '\n' ' ' <"$tmp/ref.files")"
}
(cd "$tmp/ref" && ls) >"$tmp/ref.files"
log=/dev/null
job=
preempt warned warning
preempt requeued requeue
echo "ok"
