#!/usr/bin/env bash
# patchbay attribute from the command line: a sweep spec estimated by
# attribution patching writes the sweep's outputs with "method": "atp",
# --verify top:K,control:N adds the exact engine's verdict (K + N sites,
# both effects; a line on stderr, report.txt and report.html, which say the
# sites were estimated); a spec that asks for "exact" and a
# malformed --verify are usage errors (exit 2). The estimates themselves
# are checked in test_atp.c.
set -euo pipefail
build=${PB_BUILD_DIR:-build}
fixtures=${PB_FIXTURES:-tests/fixtures}
cli=$build/patchbay
[ -x "$cli" ] || { echo "skipping: $cli is not built"; exit 77; }
export OMP_NUM_THREADS=1
tmp=$(mktemp -d /tmp/pb_attribute_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
model=$fixtures/tiny_gqa/model.gguf
spec=$fixtures/patching/tiny_gqa_denoise_logit_diff/spec.json

"$cli" attribute --model "$model" --spec "$spec" --verify top:5,control:7,seed:2 --out "$tmp/atp" --no-progress \
  >/dev/null 2>"$tmp/err" || { cat "$tmp/err"; fail "attribute exited $?"; }
grep -q '^patchbay: verify: the exact engine on the top 5 sites by |estimate| and 7 control sites' "$tmp/err" ||
  { cat "$tmp/err"; fail "no verify line"; }
python3 - "$tmp/atp/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = r["verification"]
assert r["method"] == "atp", r["method"]
assert r["n_rows_executed"] == 0, r["n_rows_executed"]
assert len(v["sites"]) == 12 and sum(s["control"] for s in v["sites"]) == 7, v
assert all(s["exact"] is not None and s["estimate"] is not None for s in v["sites"])
assert 0 <= v["recall_at_top"] <= 1 and -1 <= v["spearman"] <= 1
PY
[ -f "$tmp/atp/resid_pre.npy" ] || fail "no heatmap"
# the reports say estimated, not "0 executed, the rest exactly 0 by construction", and carry the verdict
grep -q '^Sites estimated: ' "$tmp/atp/report.txt" || { cat "$tmp/atp/report.txt"; fail "report.txt: no estimated sites"; }
grep -q '^Verification: the exact engine on the top 5 sites' "$tmp/atp/report.txt" || fail "report.txt: no verdict"
grep -q '<th>Verification</th>' "$tmp/atp/report.html" || fail "report.html: no verdict"
! grep -q 'exactly 0 by construction' "$tmp/atp/report.html" || fail "report.html: an estimate's rows called exact zeros"

python3 -c "import json,sys; s=json.load(open(sys.argv[1])); s['method']='exact'; json.dump(s, open(sys.argv[2],'w'))" \
  "$spec" "$tmp/exact.json"
rc=0
"$cli" attribute --model "$model" --spec "$tmp/exact.json" --out "$tmp/x" 2>"$tmp/err2" >/dev/null || rc=$?
[ $rc -eq 2 ] || fail "a spec saying exact: exit $rc, expected 2"
grep -q '"method" is not "atp"' "$tmp/err2" || { cat "$tmp/err2"; fail "no reason"; }
rc=0
"$cli" attribute --model "$model" --spec "$spec" --verify top5 --out "$tmp/y" 2>"$tmp/err3" >/dev/null || rc=$?
[ $rc -eq 2 ] || fail "--verify top5: exit $rc, expected 2"
grep -q 'expected top:K' "$tmp/err3" || { cat "$tmp/err3"; fail "no reason"; }
rc=0
"$cli" attribute --model "$model" --out "$tmp/z" 2>"$tmp/err4" >/dev/null || rc=$?
[ $rc -eq 2 ] || fail "no --spec: exit $rc, expected 2"
grep -q '^patchbay attribute: --spec' "$tmp/err4" || { cat "$tmp/err4"; fail "the usage error does not name attribute"; }
echo "patchbay attribute: ok"
