#!/usr/bin/env bash
# The library (libpatchbay.a) is the engine only: no command-line code
# (pb_cli_* symbols) and no test framework (cmocka) in it. Also lists, without
# failing, the library's objects that still write to the terminal (stdout,
# stderr, printf, puts ...), the remaining work of "the library does not
# print". The shared libpatchbay.so beside it, when built, must export the
# PB_API functions of include/patchbay.h and no other pb_ symbol.
# PB_HYGIENE_LIB names another archive to check. Exit 77 (skip) when nm or the built library is missing.
set -euo pipefail
lib=${PB_HYGIENE_LIB:-${PB_BUILD_DIR:-build}/libpatchbay.a}
missing=
command -v nm >/dev/null 2>&1 || missing="nm not found"
[ -f "$lib" ] || missing="${missing:+$missing; }$lib not built"
if [ -n "$missing" ]; then
  echo "skipping: $missing"
  exit 77
fi
# nm -A: one line per symbol, "archive:object: value type name"
symbols=$(nm -A "$lib" 2>/dev/null)
status=0
defined_cli=$(printf '%s\n' "$symbols" | awk '$(NF-1) ~ /^[TDBRCVW]$/ && $NF ~ /^pb_cli_/' || true)
if [ -n "$defined_cli" ]; then
  echo "FAIL: the library defines command-line symbols:"
  printf '%s\n' "$defined_cli"
  status=1
fi
cmocka=$(printf '%s\n' "$symbols" | awk '$NF ~ /^(_cmocka|cmocka_|mock_assert|_assert_|_test_|_fail$|_skip$)/' || true)
if [ -n "$cmocka" ]; then
  echo "FAIL: the library references cmocka:"
  printf '%s\n' "$cmocka"
  status=1
fi
# Objects that reference the terminal (the standard streams, or functions that
# only write to stdout): printed for the record, not a failure. fprintf and
# fwrite are left out: the library writes its result files with them.
terminal=$(printf '%s\n' "$symbols" |
  awk '$(NF-1) == "U" && $NF ~ /^(stdout|stderr|printf|vprintf|puts|putchar|perror)$/ {
         split($1, p, ":"); obj = p[2]; refs[obj] = refs[obj] " " $NF }
       END { for (o in refs) print o ":" refs[o] }' | sort)
echo "note: library objects referencing stdout/stderr/printf/puts/perror: $(printf '%s' "$terminal" | grep -c . || true)"
if [ -n "$terminal" ]; then
  printf '%s\n' "$terminal" | sed 's/^/  /'
fi
if [ $status -eq 0 ]; then
  echo "ok: no pb_cli_* symbol and no cmocka symbol in $lib"
fi
# The shared library (the Python package's) exports the public API and
# nothing else of ours: every pb_ symbol it defines is a PB_API function of
# include/patchbay.h, and those are all there.
shared=$(dirname "$lib")/libpatchbay.so
header=${PB_SOURCE_DIR:-.}/include/patchbay.h
if [ -f "$shared" ] && [ -f "$header" ]; then
  exported=$(nm -D --defined-only "$shared" | awk '$NF ~ /^pb_/ {print $NF}' | sort -u)
  api=$(sed -n 's/^PB_API .*[ *]\(pb_[a-z0-9_]*\)(.*/\1/p' "$header" | sort -u)
  extra=$(comm -23 <(printf '%s\n' "$exported") <(printf '%s\n' "$api"))
  missing_api=$(comm -13 <(printf '%s\n' "$exported") <(printf '%s\n' "$api"))
  if [ -n "$extra" ]; then
    echo "FAIL: $shared exports symbols that are not PB_API in patchbay.h:"
    printf '%s\n' "$extra" | sed 's/^/  /'
    status=1
  fi
  if [ -n "$missing_api" ]; then
    echo "FAIL: PB_API functions $shared does not export:"
    printf '%s\n' "$missing_api" | sed 's/^/  /'
    status=1
  fi
  [ -z "$extra$missing_api" ] && echo "ok: $shared exports exactly the $(printf '%s\n' "$api" | wc -l) PB_API functions"
fi
exit $status
