#!/usr/bin/env bash
# Reruns the benchmarks of this machine (CPU; the GPU too when one is usable) with the PyTorch
# peers beside them, saves their JSON under reports/<machine>/, and regenerates the report.
#   tools/report_run.sh [--dim 1024 --k 32 ...]   (extra flags go to bench_embbag and the peer)
# The machine folder is cpu-<model> (e.g. reports/cpu-amd-epyc); tools/report.py alone
# regenerates README.md from the saved JSON.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
model=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
slug=$(echo "$model" | tr 'A-Z' 'a-z' | sed -E 's/\(r\)|\(tm\)|cpu|processor|[0-9]+-core//g; s/@.*//; s/[^a-z0-9]+/-/g; s/^-|-$//g' | cut -c1-40)
dir="reports/cpu-${slug:-unknown}"
mkdir -p "$dir"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--dim 1024 --k 32)

bench_cmd="tools/run bench_embbag ${args[*]} --backend cpu --benchmark_out=$dir/bench_embbag_cpu.json --benchmark_out_format=json"
echo "== $bench_cmd"
tools/run bench_embbag "${args[@]}" --backend cpu \
  --benchmark_out="$dir/bench_embbag_cpu.json" --benchmark_out_format=json
peer_cmd="python3 tools/peers/embbag_torch.py ${args[*]} --device cpu --json $dir/embbag_torch_cpu.json"
if python3 -c "import torch" 2>/dev/null; then
  echo "== $peer_cmd"
  python3 tools/peers/embbag_torch.py "${args[@]}" --device cpu --json "$dir/embbag_torch_cpu.json"
else
  echo "== torch not installed (pip install -r tools/requirements-peers.txt): no PyTorch columns"
  peer_cmd=""
fi
python3 - "$dir/machine.json" "$model" "$bench_cmd" "$peer_cmd" "$(git rev-parse --short=12 HEAD)" <<'PY'
import json, sys
path, model, bench, peer, commit = sys.argv[1:]
json.dump({"title": "CPU: " + model, "cpu_model": model, "commit": commit,
           "gpu": "none on this machine (GPU rows: not measured)",
           "commands": ["tools/report_run.sh"] + [c for c in (bench, peer) if c]},
          open(path, "w"), indent=1)
PY
python3 tools/report.py "$dir"
