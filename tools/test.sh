#!/usr/bin/env bash
# The test gate, as CI runs it (.ci/run calls this script):
#   1. release build (CPU + CUDA when nvcc is on PATH), cppcheck over its C++ translation units
#      (tools/lint.sh: any finding fails) and every ctest test;
#   2. every CUDA source compiled for sm_90: any register spill or local memory use fails;
#   3. the CPU-only configure with nvcc hidden from PATH;
#   4. the asan preset (AddressSanitizer + UBSan, -O1 -g1): every test, simt included (the test
#      code and the CLI's subcommand glue keep only UBSan's cheap checks: memlayers_light_ubsan in
#      CMakeLists.txt; the code under test keeps all of them);
#   5. the tsan preset (ThreadSanitizer, -O2 -g1): the tests labelled simt (CUDA kernels on CPU
#      threads) or threads (the harness's threaded cpu backend), their sweeps thinned to what can
#      race (tests/common/cases.h).
# Sanitizer builds compile Highway code for AVX2 and EMU128 only (CMakeLists.txt), to fit CI time.
# Usage: tools/test.sh [--quick]   (--quick: steps 1 and 2 only)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=no
case "${1:-}" in
  "") ;;
  --quick) quick=yes ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "test.sh: unknown option '$1' (accepted: --quick, --help)" >&2; exit 2 ;;
esac

start=$(date +%s)
step() { echo; echo "==== $* [$(($(date +%s) - start)) s]"; }

tools/install_deps.sh

step "release: configure and build"
cmake --preset release
# ptxas reports go to a log that accumulates, so incremental builds keep every kernel's report.
cmake --build --preset release 2>&1 | tee -a build/release/ptxas-build.log

step "lint: clang-format and cppcheck"
tools/lint.sh build/release

step "release: ctest"
ctest --preset release

step "GPU code: spills and local memory (report: build/release/ptxas-report.txt)"
if grep -q '^MEMLAYERS_CUDA_BUILT:INTERNAL=ON' build/release/CMakeCache.txt; then
  python3 tools/check_spills.py build/release/ptxas-build.log --expect-kernels \
    --report build/release/ptxas-report.txt
else
  echo "nvcc not on PATH: GPU sources were not compiled"
fi
[ "$quick" = yes ] && { step "quick gate passed"; exit 0; }

step "CPU-only configure with nvcc hidden from PATH"
# PATH without every folder that holds an nvcc (a toolkit's bin/ or a link in /usr/local/bin).
nocuda_path=""
IFS=: read -r -a path_dirs <<< "$PATH"
for d in "${path_dirs[@]}"; do
  [ -n "$d" ] && [ ! -e "$d/nvcc" ] && nocuda_path="${nocuda_path:+$nocuda_path:}$d"
done
PATH="$nocuda_path" command -v nvcc >/dev/null && { echo "could not hide nvcc from PATH"; exit 1; }
rm -rf build/nocuda-configure
PATH="$nocuda_path" env -u CUDACXX cmake -S . -B build/nocuda-configure -G Ninja -U CMAKE_CUDA_COMPILER \
  > build/nocuda-configure.log 2>&1 || { cat build/nocuda-configure.log; exit 1; }
grep -q "nvcc not on PATH: GPU targets skipped" build/nocuda-configure.log &&
  grep -q '^MEMLAYERS_CUDA_BUILT:INTERNAL=OFF' build/nocuda-configure/CMakeCache.txt ||
  { cat build/nocuda-configure.log; echo "FAILED: with nvcc hidden, CUDA was not skipped"; exit 1; }
# The asan and tsan presets below build and test everything with CUDA off.
echo "ok: GPU targets skipped, CPU/simt/reference configured"

step "asan: configure, build, ctest"
cmake --preset asan
cmake --build --preset asan
ctest --preset asan

step "tsan: configure, build, ctest (simt and threads tests)"
cmake --preset tsan
# Only the executables of the simt-labelled tests (target simt_label_tests, tests/CMakeLists.txt):
# the benchmarks, CLI and tools are not rebuilt under TSan.
cmake --build --preset tsan --target simt_label_tests
ctest --preset tsan

step "all gates passed"
