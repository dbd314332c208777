#!/usr/bin/env bash
# report.html in a real browser: test_report_html --write renders the report
# of a tiny_gqa sweep (2 pairs of 6 tokens, 2 layers, 4 heads); headless
# Chromium loads it twice, once dumping the DOM after its script has run
# (opened with #export-all, so the script renders every heatmap's PNG
# download too; --virtual-time-budget lets those image loads finish), once
# taking a screenshot. Fails on any console message (Chromium logs every
# console level, errors and uncaught exceptions included, as ":CONSOLE"
# lines with --enable-logging=stderr; the page itself logs nothing), on a
# heatmap whose rendered cell count is not data-rows x data-cols or not
# tiny_gqa's sizes, whose legend does not end at its own component's
# data-range, or whose SVG/PNG download is missing or wrong, on prompts not
# showing their 24 tokens, and on external references
# (tests/browser/check_dom.py). The screenshot is kept as
# $PB_BUILD_DIR/report-screenshot.png for a person to look at.
# Then the same for patterns.html (test_patterns_html --write: tiny_gqa's
# attention patterns over 7 tokens, 2 layers x 4 heads): no console
# messages, 8 lower-triangle heatmaps of 7 x 7 with their downloads, the 7
# prompt tokens (check_dom.py --patterns). One Chromium run (the DOM dump;
# no screenshot) to keep the seconds this adds small.
# Skipped (77) without chromium or python3.
set -euo pipefail
src=${PB_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
build=${PB_BUILD_DIR:-$src/build}

if ! command -v chromium >/dev/null 2>&1; then
  echo "skipping: chromium not installed (scripts/install-deps.sh installs it)"
  exit 77
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "skipping: python3 not installed (it reads the dumped DOM)"
  exit 77
fi
for exe in test_report_html test_patterns_html; do
  if [ ! -x "$build/$exe" ]; then
    echo "FAIL: $build/$exe is not built"
    exit 1
  fi
done

# Chromium's limit per run scales with PB_TEST_TIMEOUT_SCALE (README, Testing).
limit=$((120 * ${PB_TEST_TIMEOUT_SCALE:-1}))
tmp=$(mktemp -d /tmp/pb_report_browser.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$build/test_report_html" --write "$tmp/report.html"
"$build/test_patterns_html" --write "$tmp/patterns.html"

# A fresh profile per run; no sandbox because CI runs as root.
chrome=(chromium --headless=new --no-sandbox --disable-gpu --no-first-run --no-default-browser-check
        --user-data-dir="$tmp/profile" --enable-logging=stderr --v=0)
# dump_dom PAGE OUT: the DOM of PAGE (its #export-all run) into OUT, the
# browser's log into OUT.log; exits the test when chromium fails.
dump_dom() {
  local rc=0
  timeout "$limit" "${chrome[@]}" --virtual-time-budget=10000 --dump-dom "file://$1#export-all" >"$2" \
    2>"$2.log" || rc=$?
  if [ $rc -ne 0 ] || [ ! -s "$2" ]; then
    echo "FAIL: chromium --dump-dom on $1 exited $rc"
    tail -20 "$2.log"
    exit 1
  fi
}
url="file://$tmp/report.html"
status=0
dump_dom "$tmp/report.html" "$tmp/dom.html"
timeout "$limit" "${chrome[@]}" --hide-scrollbars --window-size=1400,2600 --screenshot="$tmp/report.png" "$url" \
  >/dev/null 2>"$tmp/shot.log" || status=$?
if [ $status -ne 0 ] || [ ! -s "$tmp/report.png" ]; then
  echo "FAIL: chromium --screenshot exited $status"
  tail -20 "$tmp/shot.log"
  exit 1
fi

failed=0
if grep -hE ':CONSOLE|Uncaught' "$tmp/dom.html.log" "$tmp/shot.log"; then
  echo "FAIL: the page wrote to the browser console (lines above)"
  failed=1
fi
echo "rendered DOM:"
python3 "$src/tests/browser/check_dom.py" "$tmp/dom.html" --tokens 24 resid_pre=2x6 attn_out=2x6 z=2x4 || failed=1
if [ "$(head -c 8 "$tmp/report.png" | od -An -tx1 | tr -d ' \n')" != "89504e470d0a1a0a" ]; then
  echo "FAIL: the screenshot is not a PNG"
  failed=1
fi
cp "$tmp/report.png" "$build/report-screenshot.png"
echo "screenshot: $build/report-screenshot.png ($(wc -c <"$tmp/report.png") bytes)"
[ $failed -eq 0 ] && echo "ok: report.html renders without console messages"

dump_dom "$tmp/patterns.html" "$tmp/patterns-dom.html"
if grep -hE ':CONSOLE|Uncaught' "$tmp/patterns-dom.html.log"; then
  echo "FAIL: patterns.html wrote to the browser console (lines above)"
  failed=1
fi
echo "patterns.html, rendered DOM:"
maps=()
for layer in 0 1; do
  for head in 0 1 2 3; do maps+=("L$layer-H$head=7x7"); done
done
python3 "$src/tests/browser/check_dom.py" "$tmp/patterns-dom.html" --patterns --tokens 7 "${maps[@]}" || failed=1
[ $failed -eq 0 ] && echo "ok: patterns.html renders without console messages"
exit $failed
