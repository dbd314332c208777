#!/usr/bin/env bash
# Style checks, a step of scripts/test.sh:
#  (a) clang-format 14 (Debian 12's; .clang-format) on every .c/.h/.cu/.cuh
#      under host cuda include tests bench (not tests/fixtures): --dry-run
#      -Werror, so any file clang-format would change fails the check;
#  (b) lizard (PyPI, pinned in scripts/install-deps.sh, run from .venv): no
#      function in host/ or cuda/ longer than 100 lines; prints the ten
#      longest with their lengths.
#   scripts/check-style.sh            both checks
#   PB_STYLE_FORMAT=report ...        (a) lists the files it would change, without failing
#   PB_STYLE_FORMAT=skip ...          (b) only
set -euo pipefail
cd "$(dirname "$0")/.."

PB_STYLE_FORMAT=${PB_STYLE_FORMAT:-enforce}
cores=$(bash scripts/cores.sh)
status=0

# ---- (a) clang-format ------------------------------------------------------
clang_format() {
  if command -v clang-format-14 >/dev/null 2>&1; then
    echo clang-format-14
    return
  fi
  if command -v clang-format >/dev/null 2>&1; then
    local major
    major=$(clang-format --version | sed -n 's/.*version \([0-9][0-9]*\)\..*/\1/p' | awk 'NR == 1')
    if [ "$major" = 14 ]; then
      echo clang-format
      return
    fi
    echo "check-style: clang-format is version ${major:-unknown}, the check needs 14 (Debian 12's; apt-get install clang-format)" >&2
    return 1
  fi
  echo "check-style: clang-format 14 not found (Debian 12: apt-get install clang-format; scripts/install-deps.sh)" >&2
  return 1
}

if [ "$PB_STYLE_FORMAT" = skip ]; then
  echo "check-style: clang-format check skipped (PB_STYLE_FORMAT=skip)"
else
  cf=$(clang_format) || exit 1
  mapfile -t files < <(git ls-files -- 'host/*.c' 'host/*.h' 'cuda/*.cu' 'cuda/*.cuh' 'cuda/*.c' 'cuda/*.h' \
                         'include/*.h' 'tests/*.c' 'tests/*.h' 'tests/*.cu' 'tests/*.cuh' 'bench/*.c' 'bench/*.h' |
                       grep -v '^tests/fixtures/')
  # the files it would change, sorted; checked a few at a time on every core
  mapfile -t unformatted < <(printf '%s\0' "${files[@]}" |
    xargs -0 -n 8 -P "$cores" sh -c 'for f; do "$0" --style=file --dry-run -Werror "$f" >/dev/null 2>&1 || echo "$f"; done' \
      "$cf" | sort)
  if [ ${#unformatted[@]} -eq 0 ]; then
    echo "check-style: clang-format: ${#files[@]} files formatted"
  elif [ "$PB_STYLE_FORMAT" = enforce ]; then
    echo "check-style: clang-format would change ${#unformatted[@]} of ${#files[@]} files:" >&2
    printf '  %s\n' "${unformatted[@]}" >&2
    echo "  fix with: $cf -i --style=file <files>" >&2
    status=1
  else
    echo "check-style: note: clang-format would change ${#unformatted[@]} of ${#files[@]} files" \
         "(PB_STYLE_FORMAT=report: not failing)"
    printf '  %s\n' "${unformatted[@]}"
  fi
fi

# ---- (b) function length ---------------------------------------------------
lizard=.venv/bin/lizard
if [ ! -x "$lizard" ]; then
  echo "check-style: $lizard not found (scripts/install-deps.sh installs it)" >&2
  exit 1
fi
# lizard reads C/C++ by extension and does not know .cu/.cuh: it reads copies
# named .cpp, and the report names the originals again.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/cuda"
for f in cuda/*.cu cuda/*.cuh; do
  [ -e "$f" ] && cp "$f" "$scratch/$f.cpp"
done
unrename() { sed -e "s#$scratch/##g" -e 's#\.\(cuh\?\)\.cpp\b#.\1#g'; }
# every function with its length (lizard's "length" column: lines from the
# signature to the closing brace)
lizard_out=$("$lizard" -t "$cores" host cuda "$scratch/cuda" | unrename || true)
# "LENGTH  FILE:LINE NAME" of every function, longest first
lengths=$(printf '%s\n' "$lizard_out" |
  awk '$6 ~ /@[0-9]+-[0-9]+@/ { split($6, at, "@"); split(at[2], lines, "-"); printf "%5d  %s:%s %s\n", $5, at[3], lines[1], at[1] }' |
  sort -u | sort -rn)
[ -n "$lengths" ] || { echo "check-style: lizard reported no functions" >&2; exit 1; }
echo "check-style: the ten longest functions of host/ and cuda/ (lines):"
printf '%s\n' "$lengths" | awk 'NR <= 10' # awk reads to the end: head's early exit would SIGPIPE (pipefail)
long=$(printf '%s\n' "$lengths" | awk '$1 > 100')
if [ -n "$long" ]; then
  echo "check-style: functions over 100 lines:" >&2
  printf '%s\n' "$long" | sed 's/^/  /' >&2
  status=1
else
  echo "check-style: lizard: no function over 100 lines"
fi
exit $status
