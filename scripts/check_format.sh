#!/usr/bin/env bash
# Checks C and C++ sources against the repository's .clang-format with clang-format 14 (Debian's clang-format-14,
# so that every machine formats alike): prints each file that differs, with the lines clang-format would change,
# and exits 1 when any file differs (0 when all are formatted, 2 when clang-format 14 is missing).
#
#   scripts/check_format.sh                  # every tracked .c, .cpp, .h, .hpp file
#   scripts/check_format.sh gpu examples     # files under these folders (or these files)
#   scripts/check_format.sh --fix gpu        # reformat them in place instead (clang-format -i)
set -euo pipefail
cd "$(dirname "$0")/.."

fix=0
if [[ "${1:-}" == "--fix" ]]; then
  fix=1
  shift
fi

format=""
for candidate in clang-format-14 clang-format; do
  if command -v "$candidate" >/dev/null && "$candidate" --version | grep -q "version 14\."; then
    format=$candidate
    break
  fi
done
if [[ -z "$format" ]]; then
  echo "check_format.sh: clang-format 14 is not installed (apt-get install clang-format-14)" >&2
  exit 2
fi

# The files: those git tracks or would track (so build trees and generated files are never checked), under the
# given paths.
files=()
while IFS= read -r -d '' f; do
  files+=("$f")
done < <(git ls-files -z --cached --others --exclude-standard -- "${@:-.}" | grep -zE '\.(c|cpp|h|hpp)$' || true)
if [[ ${#files[@]} -eq 0 ]]; then
  echo "check_format.sh: no C or C++ files under: ${*:-.}" >&2
  exit 2
fi

if [[ $fix -eq 1 ]]; then
  "$format" -i --style=file "${files[@]}"
  echo "formatted ${#files[@]} file(s)"
  exit 0
fi

# The line numbers (of the file as it is) that clang-format would change, as ranges: "12-14, 80".
changed_lines() {
  { diff --unchanged-line-format= --old-line-format='%dn
' --new-line-format= "$1" <("$format" --style=file "$1") || true; } |
    awk 'NR == 1 { start = $1; prev = $1; next }
         $1 == prev + 1 { prev = $1; next }
         { out = out (out ? ", " : "") (start == prev ? start : start "-" prev); start = $1; prev = $1 }
         END { if (NR) print out (out ? ", " : "") (start == prev ? start : start "-" prev) }'
}

bad=0
for f in "${files[@]}"; do
  if ! "$format" --style=file --dry-run -Werror "$f" >/dev/null 2>&1; then
    lines=$(changed_lines "$f")
    # A change that only inserts lines leaves no old line to name; point at the file then.
    echo "$f: ${lines:-lines to insert} differ from .clang-format"
    bad=$((bad + 1))
  fi
done
if [[ $bad -gt 0 ]]; then
  echo "$bad of ${#files[@]} file(s) are not formatted; scripts/check_format.sh --fix <paths> reformats them" >&2
  exit 1
fi
echo "all ${#files[@]} file(s) match .clang-format"
