#!/usr/bin/env bash
# Installs the Debian packages memlayers builds with, when any is missing. Nothing else is fetched.
# Usage: tools/install_deps.sh [--check]   (--check: only report what is missing, exit 1 if any)
set -euo pipefail
case "${1:-}" in
  "" | --check) ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "install_deps.sh: unknown option '$1' (accepted: --check, --help)" >&2; exit 2 ;;
esac

packages=(
  cmake ninja-build g++ python3
  libgtest-dev libgmock-dev libbenchmark-dev
  libfmt-dev libcli11-dev nlohmann-json3-dev libhwy-dev libopenblas-dev
  # simt runs each CUDA thread as a fiber (Boost.Context).
  libboost-context-dev
  # memory parallelism (dist/): Open MPI for CPU ranks and the mpirun tests.
  libopenmpi-dev openmpi-bin
  # tools/lint.sh: the format and static checks of the test gate.
  clang-format cppcheck
  # tools/report.py draws the roofline SVGs with it (the report is still written without it).
  python3-matplotlib
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# simt compiles CUDA sources against the toolkit's host headers (cuda_bf16.h); nvcc itself is
# optional. Say so early rather than at configure time.
found_headers=no
for dir in "${CUDA_PATH:-}" "${CUDA_HOME:-}" /usr/local/cuda /usr; do
  [ -n "$dir" ] && [ -f "$dir/include/cuda_bf16.h" ] && found_headers=yes
done
if [ "$found_headers" = no ]; then
  echo "memlayers: note: CUDA toolkit headers (cuda_bf16.h) not found; simt needs them:" \
       "install the CUDA toolkit or set CUDA_PATH" >&2
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "memlayers: missing packages: ${missing[*]}"
if [ "${1:-}" = "--check" ]; then
  exit 1
fi
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo_cmd=(sudo); else
    echo "memlayers: run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"

