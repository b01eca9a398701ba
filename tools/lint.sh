#!/usr/bin/env bash
# Static checks (a step of tools/test.sh), each failing on any finding; about 15 s on 2 cores:
#   1. clang-format (.clang-format at the root): every C++ and CUDA source is formatted;
#   2. cppcheck's warning, performance and portability checks over every C++ translation unit of
#      a configured build, the tests and the CUDA sources included (simt compiles each .cu as
#      C++; nvcc's own compile lines are left out, cppcheck cannot read nvcc's flags).
#
# A false positive is silenced where it is, with the reason:
#   // cppcheck-suppress <id> ; <why the code is right>
# Two checks are off everywhere, as every finding of theirs in this tree was false:
#   invalidPointerCast  byte buffers read as floats (dynamic shared memory, file and network
#                       buffers), which the code does on purpose;
#   constStatement      cppcheck 2.10 reads a functional cast such as double{x[i]} as an unused
#                       array access.
# Another release of either tool formats or reports differently (the tree is kept to Debian 12's
# clang-format 14 and cppcheck 2.10): its findings are then printed as advice and fail nothing.
# Usage: tools/lint.sh [BUILD_DIR]   (default build/release: needs its compile_commands.json)
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  -*) echo "lint.sh: unknown option '$1' (usage: tools/lint.sh [BUILD_DIR])" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
build=${1:-build/release}
db="$build/compile_commands.json"
if [ ! -f "$db" ]; then
  echo "lint: $db not found: configure the build first (cmake --preset release)" >&2
  exit 2
fi
for tool in clang-format cppcheck; do
  if ! command -v "$tool" >/dev/null; then
    echo "lint: $tool not found: tools/install_deps.sh installs it" >&2
    exit 2
  fi
done

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t sources < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')
else
  mapfile -t sources < <(find . -path ./build -prune -o -type f \( -name '*.cpp' -o -name '*.h' \
    -o -name '*.cu' -o -name '*.cuh' \) -print)
fi
# The tool's release, as major.minor (clang-format 14.0.6: 14.0; cppcheck 2.10: 2.10).
release_of() { "$1" --version | grep -oE '[0-9]+\.[0-9]+' | head -1; }
failed=no
# Fails (strict) or advises: $1 the tool, $2 the release the tree is kept to, $3 the message.
finding() {
  local got
  got=$(release_of "$1")
  if [ "$got" = "$2" ]; then
    echo "lint: $3" >&2
    failed=yes
  else
    echo "lint: advice only: $1 $got is not the $2 the tree is kept to: $3" >&2
  fi
}

echo "lint: clang-format $(release_of clang-format) over ${#sources[@]} sources"
if ! clang-format --dry-run --Werror "${sources[@]}"; then
  finding clang-format 14.0 "not formatted as .clang-format says: run clang-format -i on the files above"
fi

cpp_db="$build/cppcheck/compile_commands.json"
mkdir -p "$build/cppcheck"
python3 - "$db" "$cpp_db" <<'PY'
import json, sys
units = [u for u in json.load(open(sys.argv[1])) if u["file"].endswith(".cpp")]
json.dump(units, open(sys.argv[2], "w"), indent=1)
print(f"lint: cppcheck over {len(units)} translation units")
PY
echo "lint: cppcheck $(release_of cppcheck)"
# The build folder keeps cppcheck's results: a rerun checks only what changed.
if ! cppcheck --project="$cpp_db" --library=googletest --enable=warning,performance,portability \
  --inline-suppr --suppress=missingIncludeSystem --suppress=invalidPointerCast \
  --suppress=constStatement --cppcheck-build-dir="$build/cppcheck" -j "$(nproc)" -q \
  --error-exitcode=1 --template='{file}:{line}:{column}: {severity}: {message} [{id}]'; then
  finding cppcheck 2.10 "cppcheck found the problems above (a false positive: see the top of $0)"
fi
[ "$failed" = yes ] && exit 1
echo "lint: passed"
