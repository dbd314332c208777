#!/usr/bin/env bash
# generate and refusal-rate from the command line on SmolLM2 (skipped
# without models/): K sampled continuations, reproducible from
# --sample-seed and not from another; greedy --samples refused; refusal-rate
# runs its prompts batched and writes patchbay.refusal_rate/2, whose counts,
# rates and intervals agree with its own items (the interval recomputed
# here from the formula); bad sampling values, and sampling options without
# --temperature, are usage errors (exit 2); --chat-template is taken; an
# existing --json is replaced only with --overwrite.
# The numerics are checked in test_generate.c.
set -euo pipefail
build=${PB_BUILD_DIR:-build}
source_dir=${PB_SOURCE_DIR:-.}
cli=$build/patchbay
model=${PB_MODEL:-$source_dir/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -x "$cli" ] || { echo "skipping: $cli is not built"; exit 77; }
[ -f "$model" ] || { echo "skipping: $model is absent (scripts/fetch-model.sh)"; exit 77; }
tmp=$(mktemp -d /tmp/pb_generate_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

sample() {
  "$cli" generate --model "$model" --prompt "Name a colour." --max-new-tokens 8 --temperature 1.2 --top-k 50 \
    --samples 3 --sample-seed "$1"
}
sample 5 >"$tmp/a" 2>/dev/null || fail "generate --samples exited $?"
sample 5 >"$tmp/b" 2>/dev/null
sample 6 >"$tmp/c" 2>/dev/null
[ "$(grep -c '^continuation [123]/3: ' "$tmp/a")" -eq 3 ] || { cat "$tmp/a"; fail "not three continuations"; }
grep -q '^decoding: sampled: temperature 1.2, top-k 50, seed 5, 3 samples per prompt$' "$tmp/a" ||
  { cat "$tmp/a"; fail "no decoding line"; }
cmp -s "$tmp/a" "$tmp/b" || fail "the same seed gave other continuations"
! cmp -s <(grep ids "$tmp/a") <(grep ids "$tmp/c") || fail "seeds 5 and 6 gave the same continuations"

usage() {
  local want=$1; shift
  local rc=0
  "$cli" "$@" >/dev/null 2>"$tmp/err" || rc=$?
  [ $rc -eq 2 ] || fail "$* exited $rc, expected 2"
  grep -q -- "$want" "$tmp/err" || { cat "$tmp/err"; fail "no '$want' in the message"; }
}
usage "needs --temperature" generate --model "$model" --prompt Hi --samples 2
usage "top_p = 2 must lie in \[0, 1\]" generate --model "$model" --prompt Hi --temperature 1 --top-p 2
# checked when greedy too, and refused there: greedy decoding would ignore them
usage "top_p = 1.5 must lie in \[0, 1\]" generate --model "$model" --prompt Hi --top-p 1.5
usage "need --temperature" generate --model "$model" --prompt Hi --top-p 0.5
usage "need --temperature" generate --model "$model" --prompt Hi --top-k 4
usage "temperature -1 must be finite" refusal-rate --model "$model" --prompts x --temperature -1
usage "empty stop string" generate --model "$model" --prompt Hi --stop ""
# --chat-template reaches generate, refusal-rate and direction (Gemma 3 270M's
# GGUF has no template, and their message says to pass one)
rc=0; "$cli" generate --model "$model" --prompt Hi --chat-template nosuch --max-new-tokens 1 >/dev/null 2>"$tmp/err" || rc=$?
[ $rc -eq 1 ] && grep -q -- "--chat-template" "$tmp/err" || { cat "$tmp/err"; fail "an unknown --chat-template: exit $rc"; }
"$cli" generate --model "$model" --prompt Hi --chat-template chatml --max-new-tokens 1 >/dev/null 2>"$tmp/err" ||
  { cat "$tmp/err"; fail "generate --chat-template chatml exited $?"; }

"$cli" refusal-rate --model "$model" --prompts "$source_dir/data/refusal_pairs.json" --limit 5 --max-new-tokens 12 \
  --temperature 0.8 --samples 3 --json "$tmp/rate.json" >"$tmp/out" 2>"$tmp/err" ||
  { cat "$tmp/err"; fail "refusal-rate exited $?"; }
grep -q '^harmful: [0-9]*/15 refused' "$tmp/out" || { cat "$tmp/out"; fail "no harmful rate line"; }
python3 - "$tmp/rate.json" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
assert r["schema"] == "patchbay.refusal_rate/2", r["schema"]
assert r["decoding"]["samples"] == 3 and r["decoding"]["temperature"] == 0.8, r["decoding"]
assert len(r["items"]) == 10, len(r["items"])
for side in ("harmful", "harmless"):
    items = [i for i in r["items"] if i["side"] == side]
    s = r["sides"][side]
    assert s["prompts"] == len(items) == 5 and s["samples"] == 3, s
    for i in items:
        assert len(i["continuations"]) == 3 and i["refused"] == sum(i["refusals"]), i
    fractions = [i["refused"] / 3 for i in items]
    p = sum(fractions) / 5
    assert s["refused"] == sum(i["refused"] for i in items)
    assert abs(s["rate"] - p) < 1e-12, (s["rate"], p)
    var = sum((f - p) ** 2 for f in fractions) / 4 / 5
    n = min(15.0, max(1.0, p * (1 - p) / var)) if var > 0 else 5.0
    z = 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = s["ci95"]
    assert abs(lo - max(0.0, centre - half)) < 1e-9 and abs(hi - min(1.0, centre + half)) < 1e-9, (lo, hi)
PY

# an existing --json is kept unless --overwrite, which the refusal names and
# refusal-rate takes (with --no-progress, like the other long commands)
rate_again=("$cli" refusal-rate --model "$model" --prompts "$source_dir/data/refusal_pairs.json" --limit 1
  --max-new-tokens 2 --json "$tmp/rate.json")
rc=0; "${rate_again[@]}" >/dev/null 2>"$tmp/err" || rc=$?
[ $rc -eq 2 ] && grep -q -- "pass --overwrite" "$tmp/err" || { cat "$tmp/err"; fail "an existing --json: exit $rc"; }
"${rate_again[@]}" --overwrite --no-progress >/dev/null 2>"$tmp/err" || { cat "$tmp/err"; fail "--overwrite exited $?"; }
python3 -c 'import json, sys; assert len(json.load(open(sys.argv[1]))["items"]) == 2' "$tmp/rate.json" ||
  fail "--overwrite did not replace the rates"
