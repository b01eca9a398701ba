#!/usr/bin/env bash
# Nsight Systems over a bench run: a timeline of every CUDA launch, memcpy and NVTX range
# ("<op>/<variant>" around each launch), and the per-kernel and per-range summaries as CSV.
#   profiles/nsys.sh [--build-dir DIR | --bin-dir DIR] [--out DIR] BENCH [bench flags...]
#   profiles/nsys.sh bench_embbag --backend cuda --variant v4_persistent_stream --reps 3
# Writes DIR/nsys_<bench>.nsys-rep and DIR/nsys_<bench>_{cuda_gpu_kern_sum,nvtx_sum}.csv
# (default DIR profiles/out). When the training harness lands, its training step is the program
# to put here (forward, backward and optimiser phases carry NVTX ranges): replace BENCH by the
# train binary and its flags. nsys is looked for on PATH, then under /opt/nvidia and the CUDA
# toolkit; exit 77 when there is none (the GPU machines of this project have seen none working).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build_dir="" bin_dir="" out="$root/profiles/out"
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "nsys.sh: name the bench binary (--help)" >&2; exit 2; }
bench="$1"; shift
nsys=$(command -v nsys || true)
if [ -z "$nsys" ]; then
  nsys=$(ls -d /opt/nvidia/nsight-systems*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | tail -n 1 || true)
fi
[ -n "$nsys" ] || { echo "nsys.sh: Nsight Systems (nsys) not found on PATH, /opt/nvidia or the CUDA toolkit" >&2; exit 77; }
# shellcheck source=profiles/find_bench.sh
. "$root/profiles/find_bench.sh"
find_bench nsys.sh "$bench"
mkdir -p "$out"
stem="$out/nsys_${bench}"
set -x
"$nsys" profile --trace=cuda,nvtx,osrt --sample=none --cpuctxsw=none --force-overwrite=true \
  -o "$stem" "$bin" "$@"
"$nsys" stats --report cuda_gpu_kern_sum,nvtx_sum --format csv --force-export=true \
  --output "$stem" "$stem.nsys-rep"
