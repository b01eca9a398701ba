#!/usr/bin/env bash
# Nsight Compute over one registered CUDA variant, inside a run of its bench binary: the
# SpeedOfLight (with its roofline chart), MemoryWorkloadAnalysis, Occupancy, WarpStateStats and
# LaunchStats sections, the clocks left as they are (--clock-control none), only the kernels
# launched inside the variant's NVTX range "<op>/<variant>" (Registry::run and the bench_*
# binaries push it around every launch). Writes, under --out (default profiles/out/):
#   ncu_<op>_<variant>.ncu-rep   the report (open with ncu-ui, or ncu --import)
#   ncu_<op>_<variant>.csv       its raw page (every collected metric), ncu --csv --page raw
#   ncu_<op>_<variant>.md        profiles/ncu_summary.py's markdown of that CSV
#
#   profiles/ncu.sh --op embbag_fwd --variant v4_persistent_stream [--build-dir build/device]
#   profiles/ncu.sh --op pk_topk_bwd --variant v3_fused --bin-dir DIR -- --dtype bf16 --qk-norm
# Options:
#   --op OP            embbag_fwd, embbag_bwd, pk_topk_fwd, pk_topk_bwd, ... (the bench is
#                      bench_<op without _fwd/_bwd>)
#   --variant NAME     the registered variant's name (memlayers info lists them)
#   --build-dir DIR    where the bench binary was built (default build/device, then build/release)
#   --bin-dir DIR      a flat folder of prebuilt binaries (tools/device_check.sh --bundle)
#   --out DIR          output folder (default profiles/out)
#   --count N          kernels profiled (default 4: the range's first launches, warm-up included)
#   --set NAME         profile a whole ncu section set instead (e.g. full; slower)
#   -- ARGS            more flags for the bench binary (shape, dtype, ...)
# Each profiled kernel is replayed once per counter pass, so keep shapes that fit a check's
# budget; the bench runs one repetition.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
op="" variant="" build_dir="" bin_dir="" out="$root/profiles/out" count=4 set_name=""
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --op) op="$2"; shift ;;
    --variant) variant="$2"; shift ;;
    --build-dir) build_dir="$2"; shift ;;
    --bin-dir) bin_dir="$2"; shift ;;
    --out) out="$2"; shift ;;
    --count) count="$2"; shift ;;
    --set) set_name="$2"; shift ;;
    --) shift; bench_args=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "ncu.sh: unknown option '$1' (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$op" ] && [ -n "$variant" ] || { echo "ncu.sh: --op and --variant are required (--help)" >&2; exit 2; }
command -v ncu >/dev/null || { echo "ncu.sh: ncu (Nsight Compute) is not on PATH" >&2; exit 77; }

bench="bench_${op%_fwd}"; bench="${bench%_bwd}"
direction=all
case "$op" in *_fwd) direction=fwd ;; *_bwd) direction=bwd ;; esac
# shellcheck source=profiles/find_bench.sh
. "$root/profiles/find_bench.sh"
find_bench ncu.sh "$bench"

# Sections this ncu knows (older versions lack some); the summary needs the first five.
wanted=(SpeedOfLight SpeedOfLight_RooflineChart MemoryWorkloadAnalysis Occupancy WarpStateStats LaunchStats)
known=$(ncu --list-sections 2>/dev/null || true)
sections=()
if [ -n "$set_name" ]; then
  sections=(--set "$set_name")
else
  for s in "${wanted[@]}"; do
    if [ -z "$known" ] || grep -qw "$s" <<< "$known"; then sections+=(--section "$s"); fi
  done
fi
mkdir -p "$out"
stem="$out/ncu_${op}_${variant}"
# The range name holds a '/', which NVTX filters read as nesting: escape it. A trailing '/'
# selects a push/pop range.
range="${op}\\/${variant}/"
# Beside the sections: L2 hits, DRAM bytes, and global sectors per request, which simt's
# AccessCounter predicts (SIMT_ACCESS_REPORT=1 on a simt run of the same variant).
metrics=lts__t_sector_hit_rate.pct,dram__bytes_read.sum,dram__bytes_write.sum
for d in ld st; do
  metrics+=",l1tex__t_sectors_pipe_lsu_mem_global_op_$d.sum,l1tex__t_requests_pipe_lsu_mem_global_op_$d.sum"
done
set -x
ncu --nvtx --nvtx-include "$range" --clock-control none "${sections[@]}" \
  --metrics "$metrics" \
  --launch-count "$count" -f -o "$stem" \
  "$bin" --backend cuda --variant "$variant" --direction "$direction" --reps 1 --sets 2 \
  --benchmark_filter="^(${op}/cuda/${variant}/|ceiling/)" --benchmark_min_time=0.05 \
  "${bench_args[@]}"
ncu --import "$stem.ncu-rep" --csv --page raw > "$stem.csv"
set +x
# simt's count of the same accesses (reports/simt_access.md), for the comparison.
simt_args=()
if [ -f "$root/reports/simt_access.md" ]; then
  dtype=fp32
  [[ " ${bench_args[*]} " == *" --dtype bf16 "* ]] && dtype=bf16
  simt_args=(--simt-access "$root/reports/simt_access.md" --op "$op" --variant "$variant" --dtype "$dtype")
fi
python3 "$root/profiles/ncu_summary.py" "$stem.csv" --title "${op}/${variant} ($bench ${bench_args[*]})" \
  --out "$stem.md" "${simt_args[@]}"
cat "$stem.md"
