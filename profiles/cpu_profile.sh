#!/usr/bin/env bash
# The CPU counterpart of ncu.sh: hardware counters of one CPU variant inside a run of its bench
# binary with `perf stat` where the machine exposes them (cycles, instructions, cache and branch
# misses), else instruction counts per function with valgrind's callgrind (exact, about 50x
# slower: small shapes). Writes, under --out (default profiles/out):
#   cpu_<op>_<variant>.perf.csv | .callgrind   the raw record
#   cpu_<op>_<variant>.md                      a markdown summary
#
#   profiles/cpu_profile.sh --op embbag_fwd --variant v2_hwy_threads [--build-dir build/release]
#   profiles/cpu_profile.sh --op pk_topk_fwd --variant v2_fused_pruned --tool callgrind -- --k 7
# Options:
#   --op OP / --variant NAME   as in ncu.sh (bench_<op without _fwd/_bwd>, --backend cpu)
#   --tool auto|perf|callgrind auto: perf when `perf stat -e cycles,instructions` counts here
#   --build-dir DIR            default build/release
#   --out DIR                  default profiles/out
#   -- ARGS                    bench flags; with callgrind and no ARGS, a small default shape
# perf counts the whole process (input generation too): compare variants at one shape, or read
# the callgrind table, which names the variant's own functions.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
op="" variant="" tool=auto build_dir="$root/build/release" out="$root/profiles/out"
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --op) op="$2"; shift ;;
    --variant) variant="$2"; shift ;;
    --tool) tool="$2"; shift ;;
    --build-dir) build_dir="$2"; shift ;;
    --out) out="$2"; shift ;;
    --) shift; bench_args=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "cpu_profile.sh: unknown option '$1' (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$op" ] && [ -n "$variant" ] || { echo "cpu_profile.sh: --op and --variant are required (--help)" >&2; exit 2; }
bench="bench_${op%_fwd}"; bench="${bench%_bwd}"
direction=all
case "$op" in *_fwd) direction=fwd ;; *_bwd) direction=bwd ;; esac
bin=$(find "$build_dir" -maxdepth 3 -type f -name "$bench" -perm -u+x -not -path '*/CMakeFiles/*' 2>/dev/null | head -n 1)
[ -n "$bin" ] || { echo "cpu_profile.sh: $bench not found under $build_dir (cmake --build $build_dir --target $bench)" >&2; exit 2; }

if [ "$tool" = auto ]; then
  # perf runs in most VMs, but the hardware events may be "<not supported>" there.
  if command -v perf >/dev/null && perf stat -x, -e cycles,instructions true 2>&1 >/dev/null |
     grep -q '^[0-9]'; then tool=perf; else tool=callgrind; fi
fi
mkdir -p "$out"
stem="$out/cpu_${op}_${variant}"
run=("$bin" --backend cpu --variant "$variant" --direction "$direction"
     --benchmark_filter="^(${op}/cpu/${variant}/|ceiling/)")
case "$tool" in
  perf)
    events=task-clock,cycles,instructions,cache-references,cache-misses,branches,branch-misses
    set -x
    perf stat -x, -e "$events" -o "$stem.perf.csv" -- "${run[@]}" "${bench_args[@]}"
    set +x
    python3 - "$stem.perf.csv" "$op/$variant" "$stem.md" <<'PY'
import sys
path, title, md = sys.argv[1:]
vals = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) >= 3 and not line.startswith("#"):
        try:
            vals[f[2]] = float(f[0])
        except ValueError:
            vals[f[2]] = None  # <not counted> / <not supported>
out = ["## perf stat: %s (whole bench process)\n" % title, "| event | count |", "| --- | ---: |"]
out += ["| %s | %s |" % (k, "not counted" if v is None else "%.0f" % v) for k, v in vals.items()]
ipc = vals.get("instructions") and vals.get("cycles") and vals["instructions"] / vals["cycles"]
if ipc:
    out.append("\nIPC %.2f" % ipc)
if vals.get("cache-misses") and vals.get("cache-references"):
    out.append("; cache misses %.1f%% of references" % (100 * vals["cache-misses"] / vals["cache-references"]))
open(md, "w").write("\n".join(out) + "\n")
PY
    ;;
  callgrind)
    command -v valgrind >/dev/null || { echo "cpu_profile.sh: neither perf counters nor valgrind here" >&2; exit 77; }
    if [ ${#bench_args[@]} -eq 0 ]; then
      case "$bench" in
        bench_embbag) bench_args=(--rows 65536 --batch 256 --dim 256 --k 16) ;;
        bench_pk_topk) bench_args=(--batch 128 --heads 2 --n-keys 256 --k-dim 128 --k 16 --ceiling-bytes 16777216) ;;
      esac
    fi
    set -x
    valgrind --tool=callgrind --callgrind-out-file="$stem.callgrind" -- "${run[@]}" --reps 1 --sets 1 \
      --benchmark_min_time=0.001 "${bench_args[@]}"
    set +x
    callgrind_annotate --inclusive=no --threshold=100 "$stem.callgrind" > "$stem.annotate.txt"
    python3 - "$stem.annotate.txt" "$op/$variant ($bench ${bench_args[*]})" "$stem.md" <<'PY'
import re, sys
path, title, md = sys.argv[1:]
text = open(path).read()
total = re.search(r"^([\d,]+) +\(100\.0%\) +PROGRAM TOTALS", text, re.M) or \
    re.search(r"^([\d,]+) +PROGRAM TOTALS", text, re.M)
rows = re.findall(r"^ *([\d,]+) +\( *([\d.]+)%\) +(\S.*?)$", text, re.M)
out = ["## callgrind: %s\n" % title,
       "Instructions executed (Ir) by the whole bench process%s (input generation and the "
       "ceiling included).\n" % (": %s" % total.group(1) if total else "")]
rows = [r for r in rows if "PROGRAM TOTALS" not in r[2]]
def tab(head, sel):
    out.append(head + "\n")
    out.extend(["| Ir | % of all | function |", "| ---: | ---: | --- |"])
    for ir, pct, fn in sel[:12]:
        name = re.sub(r"^\S*?:", "", fn, count=1)
        name = re.sub(r" \[[^\]]*\]$", "", name)
        out.append("| %s | %s | `%s` |" % (ir, pct, name.strip()[:110].replace("|", "/")))
    out.append("")
tab("Functions in libmemlayers.so (the variants), by their own Ir:",
    [r for r in rows if "libmemlayers" in r[2]])
tab("All functions, by their own Ir:", rows)
open(md, "w").write("\n".join(out) + "\n")
PY
    ;;
  *) echo "cpu_profile.sh: --tool $tool: accepted are auto, perf, callgrind" >&2; exit 2 ;;
esac
cat "$stem.md"
