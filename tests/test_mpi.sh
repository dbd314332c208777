#!/usr/bin/env bash
# Sweeps over MPI ranks on the CPU: -np 2 and -np 3 give the one-rank
# results; a rank killed mid-sweep (SIGKILL) fails the job; a rank stopped
# (SIGSTOP) mid-sweep, in start-up, in the final gather, or rank 0 stopped
# before writing the results, ends the job with a message naming the rank
# within --rank-timeout + the stated margin of the stop; a preemption signal
# mid-sweep (SIGUSR1 to mpirun, or SIGTERM to every rank as srun and scancel
# deliver it) exits 3 with a checkpoint, and --resume on 1, 2 or 3 ranks
# gives the uninterrupted results with no row executed twice.
# Nothing waits a fixed time for the job to get somewhere: signals are sent
# once rank 0's progress line shows rows done, and stall times are taken when
# the stopped rank is seen stopped, so the test passes on a loaded machine.
# Nor does it race the sweep: where a job must still be running when
# something happens to it, every rank holds in its share after its first
# rows (PB_TEST_STALL=hold, host/cli/main.c) until a stop signal, so the
# test passes on a machine of any speed.
# PB_TEST_TIMEOUT_SCALE (default 1) multiplies every limit (README, Testing).
# Exit 77 (skipped) without mpirun, python3, or an MPI build of patchbay.
set -euo pipefail
build=${PB_BUILD_DIR:-build}
fixtures=${PB_FIXTURES:-tests/fixtures}
cli=$build/patchbay
command -v mpirun >/dev/null || { echo "skipping: no mpirun (apt-get install openmpi-bin libopenmpi-dev)"; exit 77; }
command -v python3 >/dev/null || { echo "skipping: no python3 to compare results"; exit 77; }
[ -x "$cli" ] || { echo "skipping: $cli is not built"; exit 77; }
ldd "$cli" | grep libmpi >/dev/null || { echo "skipping: $cli was built without MPI"; exit 77; }
# A sanitizer build runs one stuck-rank case (the watchdog's paths), not
# the other five: each waits out the rank timeout for the same code, which
# the Release build's run checks in full.
sanitized=0
"$cli" --version | grep -q '^sanitizers: on' && sanitized=1
export OMP_NUM_THREADS=1
# OpenMPI's own allocations at MPI_Init (many from plugins it has unloaded by
# exit, so no suppression can name them) are not ours to report: leak checks
# (ASan builds) stay on for the single-rank runs only.
mpi=(env "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" mpirun --allow-run-as-root --oversubscribe)
scale=${PB_TEST_TIMEOUT_SCALE:-1}
limit() { python3 -c "import math,sys; print(math.ceil(float(sys.argv[1]) * float(sys.argv[2])))" "$1" "$scale"; }
# Stuck-rank cases: the watchdog names a rank silent for rank_timeout; the job
# must be over within rank_timeout + margin of the stop (README: the watchdog
# looks every 0.1 s, the rest is mpirun ending the other ranks). The timeout
# scales too: on a loaded machine a live rank's heartbeats can be late by
# seconds (measured: 3 s once at load 13 on 2 cores), and it must not be
# taken for a stuck one.
rank_timeout=$(limit 5)
margin=$(limit 5)
bound=$((rank_timeout + margin))
tmp=$(mktemp -d /tmp/pb_mpi_XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

python3 - "$tmp/spec.json" <<'PY'
import json, random, sys
random.seed(7)
pairs = []
for _ in range(24):
    ids = [random.randrange(3, 120) for _ in range(48)]
    bad = list(ids); bad[5] = 3 + (ids[5] + 7) % 117
    pairs.append({"clean": {"ids": ids}, "corrupted": {"ids": bad}})
json.dump({"mode": "denoising", "pairs": pairs,
           "sites": [{"component": "resid_pre", "layers": "all", "positions": "each"},
                     {"component": "mlp_out", "layers": "all", "positions": "each"},
                     {"component": "z", "layers": "all", "heads": "all", "positions": "last"}],
           "metric": {"kind": "logit_diff", "positive": {"ids": [18]}, "negative": {"ids": [53]}}},
          open(sys.argv[1], "w"))
PY
common=(sweep --model "$fixtures/tiny_gqa/model.gguf" --spec "$tmp/spec.json" --threads 1 --max-memory 2M --no-progress)

# Kill and signal tests need a run long enough to interrupt: 8x the pairs
# (every signal waits for rank 0's progress line, a tenth of the rows, so
# most of the run is left when it lands).
python3 - "$tmp/spec.json" "$tmp/big.json" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1])); spec["pairs"] = spec["pairs"] * 8
json.dump(spec, open(sys.argv[2], "w"))
PY
big=(sweep --model "$fixtures/tiny_gqa/model.gguf" --spec "$tmp/big.json" --threads 1 --max-memory 2M --no-progress)
watched=(sweep --model "$fixtures/tiny_gqa/model.gguf" --spec "$tmp/big.json" --threads 1 --max-memory 2M)
# Waits for the job (at most 90 s, scaled); kills it (and fails) past that.
wait_job() {
  local job=$1
  for _ in $(seq $(($(limit 90) * 10))); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$job" 2>/dev/null; then kill -9 "$job"; echo "FAIL: the job hung"; exit 1; fi
  set +e; wait "$job"; rc=$?; set -e
}
# rank_pid JOB K: the pid of rank K of mpirun JOB, once it exists.
rank_pid() {
  local job=$1 k=$2
  for _ in $(seq $(($(limit 60) * 20))); do
    for p in $(pgrep -P "$job" -x patchbay); do
      tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -x "OMPI_COMM_WORLD_RANK=$k" >/dev/null && { echo "$p"; return; }
    done
    kill -0 "$job" 2>/dev/null || break
    sleep 0.05
  done
  echo "FAIL: rank $k of job $job never appeared" >&2; exit 1
}
# wait_rows JOB ERR: until rank 0's progress (stderr ERR) shows rows done.
wait_rows() { wait_line "$1" "$2" '^sweep \['; }
# wait_line JOB ERR PATTERN: until the job's stderr ERR has a line matching PATTERN.
wait_line() {
  local job=$1 err=$2 pattern=$3
  for _ in $(seq $(($(limit 60) * 20))); do
    grep -q "$pattern" "$err" && return
    kill -0 "$job" 2>/dev/null || { echo "FAIL: the job ended before '$pattern'"; cat "$err"; exit 1; }
    sleep 0.05
  done
  echo "FAIL: no '$pattern' in $err"; cat "$err"; exit 1
}
# wait_stopped PID: until PID is stopped (state T); prints when, in seconds.
wait_stopped() {
  for _ in $(seq $(($(limit 60) * 100))); do
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = T ] && { echo "$EPOCHREALTIME"; return; }
    sleep 0.01
  done
  echo "FAIL: rank $1 never stopped" >&2; exit 1
}
since() { python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$1"; }
within() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$1" "$2"; }

# compare A B: raw metrics (baselines, patched values) within the CPU backend's
# batch tolerance (tests/tolerances.h: PB_TOL_INVARIANT_CPU, OpenBLAS blocking
# depends on what else is in a batch); counts exactly.
compare() {
  python3 - "$1" "$2" <<'PY'
import json, math, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for k in ("n_rows", "n_rows_done", "n_rows_executed", "n_sites", "n_pairs_used"):
    assert a[k] == b[k], (k, a[k], b[k])
def close(x, y, tol):
    return (x is None and y is None) or abs(x - y) <= tol * (1 + abs(x))
worst = 0.0
for pa, pb in zip(a["pairs"], b["pairs"]):
    for k in ("base", "source", "clean", "corrupted"):
        if k in pa:
            assert close(pa[k], pb[k], 1e-5), (k, pa[k], pb[k])
assert len(a["sites"]) == len(b["sites"])
for sa, sb in zip(a["sites"], b["sites"]):
    for x, y in zip(sa["per_pair_patched"], sb["per_pair_patched"]):
        assert close(x, y, 1e-5), (sa, x, y)
        if x is not None: worst = max(worst, abs(x - y))
print(f"results equal one rank: {len(a['sites'])} sites, rows executed {b['n_rows_executed']}, "
      f"max |patched difference| {worst:.3g}")
PY
}

"$cli" "${common[@]}" --out "$tmp/one" >/dev/null 2>"$tmp/one.err"
for n in 2 3; do
  if ! timeout "$(limit 300)" "${mpi[@]}" -np $n "$cli" "${common[@]}" --out "$tmp/np$n" >/dev/null 2>"$tmp/np$n.err"; then
    echo "FAIL: mpirun -np $n sweep failed:"; cat "$tmp/np$n.err"; exit 1
  fi
  grep "load balance" "$tmp/np$n.err"
  compare "$tmp/one/results.json" "$tmp/np$n/results.json"
done

# Attribution patching (AtP*) over 3 ranks: each pair's passes run on one
# rank (pb_sweep_partition cuts estimates at pairs); the estimates equal
# one rank's.
python3 - "$tmp/spec.json" "$tmp/atp.json" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1])); spec["pairs"] = spec["pairs"][:5]
json.dump(spec, open(sys.argv[2], "w"))
PY
atp=(attribute --method 'atp*' --model "$fixtures/tiny_gqa/model.gguf" --spec "$tmp/atp.json" --threads 1 --no-progress)
"$cli" "${atp[@]}" --out "$tmp/atp1" >/dev/null 2>"$tmp/atp1.err"
if ! timeout "$(limit 300)" "${mpi[@]}" -np 3 "$cli" "${atp[@]}" --out "$tmp/atp3" >/dev/null 2>"$tmp/atp3.err"; then
  echo "FAIL: mpirun -np 3 attribute failed:"; cat "$tmp/atp3.err"; exit 1
fi
compare "$tmp/atp1/results.json" "$tmp/atp3/results.json"

# A rank killed by SIGKILL mid-sweep: mpirun aborts the job. The ranks hold
# in their shares, so the job cannot have ended before the kill.
if [ $sanitized = 0 ]; then
  PB_TEST_STALL=hold "${mpi[@]}" -x PB_TEST_STALL -np 2 "$cli" "${watched[@]}" --rank-timeout $rank_timeout \
    --out "$tmp/killed" >/dev/null 2>"$tmp/killed.err" &
  job=$!; pids+=($job)
  victim=$(rank_pid $job 1)
  wait_rows $job "$tmp/killed.err"
  start=$EPOCHREALTIME
  kill -9 "$victim" 2>/dev/null || true
  wait_job $job
  elapsed=$(since "$start")
  echo "killed rank: job exit $rc ${elapsed}s after the kill"
  tail -n 5 "$tmp/killed.err"
  [ "$rc" -ne 0 ] || { echo "FAIL: the job succeeded with a killed rank"; exit 1; }
  grep -q "rank" "$tmp/killed.err" || { echo "FAIL: no message naming the rank"; exit 1; }
  within "$elapsed" "$bound" || { echo "FAIL: took ${elapsed}s (bound ${bound}s)"; exit 1; }
  [ ! -e "$tmp/killed/results.json" ] || { echo "FAIL: results written by a failed job"; exit 1; }
else
  echo "killed rank: skipped in a sanitizer build"
fi

# expect_named NAME RANK PATTERN START [RESULTS]: the stuck-rank job NAME
# (already waited for) failed within the bound of START, naming RANK with
# PATTERN, and wrote no results unless RESULTS is "maybe".
expect_named() {
  local name=$1 rank=$2 pattern=$3 start=$4 results=${5:-no} elapsed
  elapsed=$(since "$start")
  echo "$name: job exit $rc ${elapsed}s after rank $rank stopped (bound: timeout $rank_timeout + margin $margin s)"
  grep "aborting the job" "$tmp/$name.err" | head -n 2
  [ "$rc" -ne 0 ] || { echo "FAIL: the job succeeded with a stuck rank"; exit 1; }
  grep -q "$pattern" "$tmp/$name.err" || { echo "FAIL: rank $rank is not named ('$pattern')"; cat "$tmp/$name.err"; exit 1; }
  within "$elapsed" "$bound" || { echo "FAIL: took ${elapsed}s (bound ${bound}s)"; exit 1; }
  [ "$results" = maybe ] || [ ! -e "$tmp/$name/results.json" ] || { echo "FAIL: results written by a failed job"; exit 1; }
}

# A stuck rank (SIGSTOP) mid-sweep: named within the bound while rank 0 is
# still in its own share (the watchdog, not the gather, notices it). Both
# ranks hold in their shares, as shares of any length would, so how fast the
# machine runs rows does not matter.
PB_TEST_STALL=hold "${mpi[@]}" -x PB_TEST_STALL -np 2 "$cli" "${watched[@]}" --rank-timeout $rank_timeout \
  --out "$tmp/stuck" >/dev/null 2>"$tmp/stuck.err" &
job=$!; pids+=($job)
victim=$(rank_pid $job 1); pids+=($victim)
wait_line $job "$tmp/stuck.err" "rank 1 holds in its share"
kill -STOP "$victim"
start=$(wait_stopped "$victim")
wait_job $job
kill -9 "$victim" 2>/dev/null || true
expect_named stuck 1 "rank 1 is dead or stuck" "$start"
grep -q "rank 0 of 2, while running its share of the sweep: no heartbeat from rank 1" "$tmp/stuck.err" ||
  { echo "FAIL: rank 1 was not named while rank 0 still ran its share"; exit 1; }
grep -q "last heard while running its share of the sweep: rank 1" "$tmp/stuck.err" ||
  { echo "FAIL: rank 1 was not last heard in its share (the stage it was stopped in)"; exit 1; }

# stall NAME RANK STAGE PATTERN [RESULTS]: rank RANK stops itself at STAGE
# (PB_TEST_STALL, host/cli/main.c); the job must end naming it.
stall() {
  local name=$1 rank=$2 stage=$3 pattern=$4 results=${5:-no} victim start
  [ $sanitized = 0 ] || { echo "$name: skipped in a sanitizer build"; return; }
  PB_TEST_STALL=$rank:$stage "${mpi[@]}" -x PB_TEST_STALL -np 2 "$cli" "${big[@]}" --rank-timeout $rank_timeout \
    --out "$tmp/$name" >/dev/null 2>"$tmp/$name.err" &
  job=$!; pids+=($job)
  victim=$(rank_pid $job "$rank"); pids+=($victim)
  start=$(wait_stopped "$victim")
  wait_job $job
  kill -9 "$victim" 2>/dev/null || true
  expect_named "$name" "$rank" "$pattern" "$start" "$results"
}
stall stall_start 1 start "rank 1 never reached it"
stall stall_exchange 1 exchange "last heard while starting (loading the model, planning its share): rank 1 is dead or stuck"
stall stall_gather 1 gather "rank 1 is dead or stuck"
# Rank 0 stopped with every rank's results in hand: mpirun's teardown
# continues it (SIGCONT, then SIGTERM, which a sweep takes as "checkpoint",
# and SIGKILL a second later), so on a slow machine it may still write them.
stall stall_finish 0 finish "rank 0 is dead or stuck" maybe

# Preemption. OpenMPI 4.1's mpirun forwards SIGUSR1/SIGUSR2 to the ranks
# (ess_base_forward_signals), but not SIGTERM, which it refuses to forward: on
# SIGTERM it ends the job itself (SIGTERM to the ranks, SIGKILL after
# odls_base_sigkill_timeout = 1 s) and exits 1. So: SIGUSR1 to mpirun, and
# SIGTERM straight to every rank (what srun and scancel do).
"$cli" "${big[@]}" --out "$tmp/big1" >/dev/null 2>"$tmp/big1.err"
executed() { sed -n 's/^patchbay: rows executed in this run: \([0-9]*\) .*/\1/p' "$1"; }
total=$(executed "$tmp/big1.err")
[ -n "$total" ] || { echo "FAIL: no executed-row count"; cat "$tmp/big1.err"; exit 1; }
# interrupt NAME SIGNAL TARGET: TARGET is mpirun or ranks; expects exit 3 and a checkpoint.
interrupt() {
  local name=$1 sig=$2 target=$3
  # The ranks hold in their shares until the signal, so it lands mid-sweep
  # on every rank however fast the machine runs rows.
  PB_TEST_STALL=hold "${mpi[@]}" -x PB_TEST_STALL -np 2 "$cli" "${watched[@]}" --out "$tmp/$name" >/dev/null \
    2>"$tmp/$name.err" &
  job=$!; pids+=($job)
  # rows done on rank 0 means every rank passed MPI_Init, after its handlers
  wait_rows $job "$tmp/$name.err"
  if [ "$target" = mpirun ]; then kill -"$sig" "$job"
  else for p in $(pgrep -P $job -x patchbay); do kill -"$sig" "$p"; done; fi
  wait_job $job
  echo "SIG$sig to $target: job exit $rc; $(grep 'interrupted:' "$tmp/$name.err" || true)"
  [ "$rc" -eq 3 ] || { echo "FAIL: expected exit 3"; cat "$tmp/$name.err"; exit 1; }
  [ -s "$tmp/$name.checkpoint" ] || { echo "FAIL: no checkpoint"; exit 1; }
  [ ! -e "$tmp/$name/results.json" ] || { echo "FAIL: results written by an interrupted job"; exit 1; }
}
# resume NAME INTERRUPTED N: --resume on N ranks (1: no mpirun) from a copy of
# INTERRUPTED's checkpoint; results equal the uninterrupted run and the rows
# executed before and after the signal add up to its count.
resume() {
  local name=$1 from=$2 n=$3 launch=()
  cp "$tmp/$from.checkpoint" "$tmp/$name.checkpoint"
  [ "$n" -gt 1 ] && launch=("${mpi[@]}" -np "$n")
  if ! timeout "$(limit 300)" "${launch[@]}" "$cli" "${big[@]}" --resume --out "$tmp/$name" >/dev/null 2>"$tmp/$name.err"; then
    echo "FAIL: --resume on $n ranks failed:"; cat "$tmp/$name.err"; exit 1
  fi
  [ ! -e "$tmp/$name.checkpoint" ] || { echo "FAIL: the finished checkpoint was left behind"; exit 1; }
  local before after
  before=$(executed "$tmp/$from.err"); after=$(executed "$tmp/$name.err")
  echo "resumed on $n ranks: $before rows executed before the signal + $after after = $((before + after)) (uninterrupted: $total)"
  [ "$before" -gt 0 ] && [ "$after" -gt 0 ] || { echo "FAIL: the signal did not land mid-sweep"; exit 1; }
  [ $((before + after)) -eq "$total" ] || { echo "FAIL: rows executed twice or dropped"; exit 1; }
  compare "$tmp/big1/results.json" "$tmp/$name/results.json"
}
interrupt usr1 USR1 mpirun
resume usr1_np3 usr1 3
resume usr1_np1 usr1 1
interrupt term TERM ranks
resume term_np2 term 2
echo "ok"
