#!/usr/bin/env bash
# The body of the sweep templates (sweep-1node.sbatch, sweep-multinode.sbatch,
# sweep-cpu.sbatch): they differ only in what their #SBATCH lines ask for and
# all run this, so there is one job script to keep right.
#   sbatch scripts/slurm/TEMPLATE MODEL SPEC OUT [more sweep options]
# (submitted from the repository root, or with PATCHBAY_SLURM_DIR set).
#
# srun starts one rank per task; --mpi=pmix (SRUN_MPI) is the srun plugin that
# connects OpenMPI 4.1's ranks (Debian's slurm-wlm 22.05; its pmi2 plugin
# does not: MPI_Init fails). --signal=B:USR1@120 asks Slurm to send SIGUSR1
# to this script 120 s before the time limit or a preemption; the trap
# forwards it to srun, which forwards it to the ranks: they finish their
# current batch, write OUT.checkpoint and exit with 3. The job then requeues
# itself (bounded by MAX_RESTARTS) and --resume picks up the rows that are
# still missing.
set -uo pipefail
MODEL=${1:?usage: sbatch TEMPLATE MODEL SPEC OUT [sweep options]}
SPEC=${2:?usage: sbatch TEMPLATE MODEL SPEC OUT [sweep options]}
OUT=${3:?usage: sbatch TEMPLATE MODEL SPEC OUT [sweep options]}
shift 3
MAX_RESTARTS=${MAX_RESTARTS:-5}
PATCHBAY=${PATCHBAY:-./build/patchbay}
SRUN_MPI=${SRUN_MPI:-pmix}
# Slurm 22.05's srun does not take --cpus-per-task from the job: say it, or
# each rank may be bound to one core
[ -z "${SLURM_CPUS_PER_TASK:-}" ] || export SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-$SLURM_CPUS_PER_TASK}

# The trap is in place before srun starts: a warning that comes early is
# not the default action (the end of this script).
pid=
warned=0
# shellcheck disable=SC2317 # called by the trap
on_warning() {
  echo "patchbay: preemption warning, asking the ranks to checkpoint"
  warned=1
  interrupted=1
  [ -z "$pid" ] || kill -USR1 "$pid"
}
trap on_warning USR1
srun --mpi="$SRUN_MPI" --kill-on-bad-exit=1 "$PATCHBAY" sweep --model "$MODEL" --spec "$SPEC" --out "$OUT" \
  --resume --no-progress "$@" &
pid=$!
[ "$warned" -eq 0 ] || kill -USR1 "$pid"
# wait returns early when the trap fires: wait again for the ranks to finish
# their batch (bash keeps srun's status once it has ended)
while :; do
  interrupted=0
  wait "$pid"
  status=$?
  [ "$interrupted" -eq 1 ] || break
done
if [ "$status" -eq 3 ]; then
  restarts=${SLURM_RESTART_COUNT:-0}
  if [ "$restarts" -lt "$MAX_RESTARTS" ]; then
    echo "patchbay: checkpoint written; requeue $((restarts + 1)) of $MAX_RESTARTS"
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "patchbay: checkpoint written but $MAX_RESTARTS restarts are used up; resubmit to continue" >&2
  fi
fi
exit "$status"
