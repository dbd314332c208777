#!/usr/bin/env bash
# patchbay plan from the command line: a plan that fits prints its waves
# and the options that run it, and those options make patchbay sweep run
# with streamed weights, saying the same waves, to the same results as a
# resident sweep; a memory too small is refused with the numbers (exit 1);
# a missing spec is a usage error (exit 2). The numbers themselves are
# checked in test_plan.c.
set -euo pipefail
build=${PB_BUILD_DIR:-build}
fixtures=${PB_FIXTURES:-tests/fixtures}
cli=$build/patchbay
[ -x "$cli" ] || { echo "skipping: $cli is not built"; exit 77; }
export OMP_NUM_THREADS=1
tmp=$(mktemp -d /tmp/pb_plan_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
model=$fixtures/tiny_gqa/model.q8_0.gguf
spec=$fixtures/patching/tiny_gqa_denoise_logit_diff/spec.json

"$cli" plan --model "$model" --dtype file --spec "$spec" --weights stream --device-memory 64MiB >"$tmp/plan.txt" \
  || fail "plan exited $?"
cat "$tmp/plan.txt"
grep -q '^waves  *[0-9]' "$tmp/plan.txt" || fail "no waves line"
options=$(sed -n 's/^run it with  *//p' "$tmp/plan.txt")
case "$options" in *"--weights stream --weight-memory "*) ;; *) fail "run options: $options" ;; esac
# shellcheck disable=SC2086  # the printed options are words
"$cli" sweep --model "$model" --dtype file --spec "$spec" $options --out "$tmp/streamed" \
  >/dev/null 2>"$tmp/err" || { cat "$tmp/err"; fail "sweep with the plan's options"; }
# the sweep says the same plan: its waves and rows per wave
waves=$(sed -n 's/^waves  *\([0-9]*\) (\([0-9]*\) rows.*/\1 \2/p' "$tmp/plan.txt")
said=$(sed -n 's/^patchbay: plan: stream weights .*at most \([0-9]*\) waves of up to \([0-9]*\) rows.*/\1 \2/p' "$tmp/err")
[ -n "$waves" ] && [ "$waves" = "$said" ] || { cat "$tmp/err"; fail "the sweep's plan ($said) is not the plan's ($waves)"; }
"$cli" sweep --model "$model" --dtype file --spec "$spec" --out "$tmp/resident" --no-progress >/dev/null 2>&1 \
  || fail "resident sweep"
python3 - "$tmp" <<'PY' || fail "streamed and resident results differ"
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/{d}/results.json")) for d in ("streamed", "resident"))
assert a["sites"] == b["sites"], "sites differ"
PY

# an estimate on a device backend (checked stands in for cuda): its captures
# and logits on a line of their own, host memory; on the CPU, no such line
atp_spec=$fixtures/atp_star/tiny_gqa_denoise_logit_diff/spec.json
"$cli" plan --model "$model" --backend checked --spec "$atp_spec" --device-memory 64MiB >"$tmp/device.txt" \
  || fail "plan of an estimate on checked exited $?"
grep -q '^peak per rank .* gradient scratch' "$tmp/device.txt" || { cat "$tmp/device.txt"; fail "device peak line"; }
grep -q '^host memory .*captures and logits' "$tmp/device.txt" || { cat "$tmp/device.txt"; fail "no host line"; }
"$cli" plan --model "$model" --spec "$atp_spec" --device-memory 64MiB >"$tmp/host.txt" || fail "plan on cpu exited $?"
! grep -q '^host memory' "$tmp/host.txt" || fail "a host line on the CPU, whose memory is the host's"

set +e
"$cli" plan --model "$model" --spec "$spec" --device-memory 256KiB >"$tmp/out" 2>"$tmp/err"
rc=$?
set -e
[ "$rc" = 1 ] || fail "a plan over memory exited $rc, not 1"
grep -q "cannot run here: .*MiB of memory per rank" "$tmp/err" || { cat "$tmp/err"; fail "refusal without numbers"; }
set +e
"$cli" plan --model "$model" >/dev/null 2>&1
rc=$?
set -e
[ "$rc" = 2 ] || fail "plan without --spec exited $rc, not 2"
echo "OK"
