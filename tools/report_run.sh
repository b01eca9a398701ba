#!/usr/bin/env bash
# Reruns this machine's CPU benchmarks with the PyTorch peers beside them, saves their JSON under
# reports/cpu-<model>/, records the machine (machine.json) and regenerates the report.
#   tools/report_run.sh                                  # bench_embbag --dim 1024 --k 32, the same
#                                                        # in bf16, bench_pk_topk,
#                                                        # bench_memory_layer --batch 256
#   tools/report_run.sh --embbag "--dim 4096 --k 32" --pk-topk "--dtype bf16 --qk-norm"
#   tools/report_run.sh --embbag-bf16 ""                 # no bf16 EmbeddingBag run
#   tools/report_run.sh --memory-layer "--batch 128 --kind memory --reps 5"
#   BUILD_DIR=build/h-bench tools/report_run.sh --only memory_layer
# --only embbag,pk_topk,memory_layer reruns just those (the other JSON stays; machine.json keeps
# their commands). BUILD_DIR: take the binaries from that build folder instead of building the
# release preset through tools/run.
# bench_pk_topk and its peer run when this checkout has them and bench_pk_topk builds; otherwise
# the report has the EmbeddingBag only; so for bench_memory_layer and its peer, which run with the
# same flags (the paper's shape at a batch that keeps a run to a few minutes on 2 cores). A
# notes.md in the folder is kept and copied into the report. tools/report.py alone regenerates
# README.md (and the roofline SVGs) from the saved JSON. A GPU machine's report comes from
# tools/device_check.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
emb_args=(--dim 1024 --k 32) pk_args=() ml_args=(--batch 256) only=embbag,pk_topk,memory_layer
# The second EmbeddingBag run, into *_bf16_cpu.json: a bf16 table halves the bytes a bag reads.
emb_bf16_args=(--dim 1024 --k 32 --dtype bf16)
while [ $# -gt 0 ]; do
  case "$1" in
    --embbag | --embbag-bf16 | --pk-topk | --memory-layer | --only)
      [ $# -ge 2 ] || { echo "report_run: $1 needs a value (a quoted flag string or, for --only, a list)" >&2; exit 2; } ;;
  esac
  case "$1" in
    --embbag) read -r -a emb_args <<< "$2"; shift 2 ;;
    --embbag-bf16) read -r -a emb_bf16_args <<< "$2"; shift 2 ;;
    --pk-topk) read -r -a pk_args <<< "$2"; shift 2 ;;
    --memory-layer) read -r -a ml_args <<< "$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "report_run: unknown option '$1' (accepted: --embbag, --embbag-bf16, --pk-topk," \
         "--memory-layer, each with a quoted flag string, --only LIST, --help)" >&2; exit 2 ;;
  esac
done
for part in ${only//,/ }; do
  case "$part" in
    embbag | pk_topk | memory_layer) ;;
    *) echo "report_run: --only '$part' is not a run (accepted: embbag, pk_topk, memory_layer)" >&2
       exit 2 ;;
  esac
done
model=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
slug=$(echo "$model" | tr 'A-Z' 'a-z' | sed -E 's/\(r\)|\(tm\)|cpu|processor|[0-9]+-core//g; s/@.*//; s/[^a-z0-9]+/-/g; s/^-|-$//g' | cut -c1-40)
dir="${REPORT_DIR:-reports/cpu-${slug:-unknown}}"  # REPORT_DIR: elsewhere (trying the script out)
mkdir -p "$dir"
commands=("tools/report_run.sh")
have_torch=no
python3 -c "import torch" 2>/dev/null && have_torch=yes
[ $have_torch = no ] && echo "== torch not installed (pip install -r tools/requirements-peers.txt): no PyTorch columns"

run() {  # echo and record a command, then run it
  echo "== $*"
  commands+=("${*/#bench /tools/run }")  # as run by hand
  "$@"
}
wanted() { [[ ",$only," == *",$1,"* ]]; }
bench() {  # bench() NAME ARGS...: the binary from $BUILD_DIR, else built by tools/run
  local name="$1"
  shift
  if [ -n "${BUILD_DIR:-}" ]; then
    local bin
    bin=$(find "$BUILD_DIR" -type f -name "$name" -perm -u+x -not -path '*/CMakeFiles/*' | head -n 1)
    [ -n "$bin" ] || { echo "report_run: no $name under BUILD_DIR=$BUILD_DIR" >&2; return 1; }
    "$bin" "$@"
  else
    tools/run "$name" "$@"
  fi
}

if wanted embbag; then
  run bench bench_embbag "${emb_args[@]}" --backend cpu \
    --benchmark_out="$dir/bench_embbag_cpu.json" --benchmark_out_format=json
  [ $have_torch = yes ] && run python3 tools/peers/embbag_torch.py "${emb_args[@]}" --device cpu \
    --json "$dir/embbag_torch_cpu.json"
  if [ ${#emb_bf16_args[@]} -gt 0 ]; then
    run bench bench_embbag "${emb_bf16_args[@]}" --backend cpu \
      --benchmark_out="$dir/bench_embbag_bf16_cpu.json" --benchmark_out_format=json
    [ $have_torch = yes ] && run python3 tools/peers/embbag_torch.py "${emb_bf16_args[@]}" \
      --device cpu --json "$dir/embbag_torch_bf16_cpu.json"
  fi
fi

if wanted pk_topk && [ -f bench/pk_topk/CMakeLists.txt ]; then
  if bench bench_pk_topk --help > /dev/null 2>&1; then
    run bench bench_pk_topk "${pk_args[@]}" --backend cpu \
      --benchmark_out="$dir/bench_pk_topk_cpu.json" --benchmark_out_format=json
    [ $have_torch = yes ] && [ -f tools/peers/pk_topk_torch.py ] &&
      run python3 tools/peers/pk_topk_torch.py "${pk_args[@]}" --device cpu \
        --json "$dir/pk_topk_torch_cpu.json"
  else
    echo "== bench_pk_topk does not build here yet: the report has the EmbeddingBag only"
  fi
fi

if wanted memory_layer && [ -f bench/memory_layer/CMakeLists.txt ]; then
  if bench bench_memory_layer --help > /dev/null 2>&1; then
    run bench bench_memory_layer "${ml_args[@]}" --backend cpu \
      --benchmark_out="$dir/bench_memory_layer_cpu.json" --benchmark_out_format=json
    [ $have_torch = yes ] && [ -f tools/peers/memory_layer_torch.py ] &&
      run python3 tools/peers/memory_layer_torch.py "${ml_args[@]}" --device cpu \
        --json "$dir/memory_layer_torch_cpu.json"
  else
    echo "== bench_memory_layer does not build here yet: the report has no memory layer"
  fi
fi

python3 - "$dir/machine.json" "$model" "$(git rev-parse --short=12 HEAD)" "$only" "${commands[@]}" <<'PY'
import json, os, sys
path, model, commit, only, *commands = sys.argv[1:]
rerun = only.split(",")
if set(rerun) != {"embbag", "pk_topk", "memory_layer"} and os.path.exists(path):
    # a partial rerun keeps the commands of the runs it left alone
    kept = [c for c in json.load(open(path)).get("commands", [])
            if c != "tools/report_run.sh" and not c.startswith("(--only")
            and not any(r in c for r in rerun)]
    commands = commands[:1] + ["(--only %s; earlier:)" % only] + kept + commands[1:]
flags = []
for line in open("/proc/cpuinfo"):
    if line.startswith(("flags", "Features")):
        flags = line.split(":", 1)[1].split()
        break
mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
json.dump({"title": "CPU: " + model, "cpu_model": model, "cpu_flags": flags,
           "cpu_cores": os.cpu_count(), "memory": "%.1f GiB" % (mem / 2**30), "commit": commit,
           "gpu": "none on this machine (GPU rows: not measured)", "commands": commands},
          open(path, "w"), indent=1)
PY
python3 tools/report.py "$dir"
