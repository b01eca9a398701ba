#!/usr/bin/env bash
# One command for a GPU machine: build (or take prebuilt binaries), the GPU tests,
# compute-sanitizer memcheck and racecheck on small cases of every CUDA variant, the benchmarks
# at the default and the paper shapes (JSON), the PyTorch peers on the GPU, Nsight Compute on the
# best CUDA variant of each op, a short training run when the harness exists, nvidia-smi facts,
# and the report (tools/report.py) into reports/<gpu>/. Every step is time-boxed and the whole
# run keeps inside a budget (default 450 s, well inside an 8-minute lease); a summary of passed,
# failed and skipped steps ends it. Everything lands in one folder: $OUT when set, else
# out/device-check-<date>/.
#
#   tools/device_check.sh                        # build here (build/device, CMake preset 'device')
#   tools/device_check.sh --prebuilt DIR         # binaries + libmemlayers.so (+ their libraries)
#   tools/device_check.sh --prebuilt DIR.tar.gz  # the same, packed (unpacked into a temporary folder)
#   tools/device_check.sh --dry-run [...]        # list the steps, check the binaries exist
#   tools/device_check.sh --bundle DIR [--build-dir build/device]   # make DIR and DIR.tar.gz
#
# Two ways to get binaries onto a GPU machine (it may have no package registry):
#  1. Build there: `cmake --preset device` needs the Debian packages of tools/install_deps.sh
#     (fmt, Highway, Google Benchmark/Test, OpenBLAS, CLI11, nlohmann-json) besides nvcc.
#  2. Build elsewhere with nvcc (`cmake --preset device && cmake --build --preset device`; the
#     release preset builds the same CUDA code wherever nvcc is on PATH), then
#     `tools/device_check.sh --bundle out/bundle` copies the binaries, libmemlayers.so and the
#     non-system shared libraries they need (fmt, benchmark, hwy, OpenBLAS, ...) into one folder
#     (~72 MB) and packs it into out/bundle.tar.gz (~23 MB); bring that (and this checkout, for the
#     scripts) and run `tools/device_check.sh --prebuilt out/bundle.tar.gz`. The binaries find
#     libmemlayers.so through their $ORIGIN rpath in a build tree and through LD_LIBRARY_PATH=DIR
#     in a bundle; the CUDA runtime and cuBLAS come from the GPU machine: its toolkit
#     (/usr/local/cuda*), else the nvidia-* Python wheels of its python3 (PyTorch's).
# Options:
#   --out DIR        output folder (default: $OUT, else out/device-check-<date>)
#   --budget S       seconds for the whole run (default 450)
#   --quick          tiny shapes everywhere (checks the script itself; not a measurement)
#   --skip a,b       skip steps by name (see --dry-run for the names)
#   --require-gpu    with --dry-run: also fail when nvidia-smi, ncu, compute-sanitizer or torch
#                    is missing, or the library holds no cuda variant
#   --pack           at the end, pack the folder into device_check.tar.gz (for runners that bring
#                    back only a few files), leaving beside it summary.txt and report_README.md
#   --peak-gbs X     nominal bandwidth for % of peak (default 4800: H200 HBM3e; H100: 3350)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
invocation="tools/device_check.sh $*"

dry_run=no prebuilt="" build_dir="" out_dir="${OUT:-}" budget=450 quick=no skip="" require_gpu=no
pack=no bundle="" peak_gbs=4800
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=yes ;;
    --prebuilt) prebuilt="$2"; shift ;;
    --build-dir) build_dir="$2"; shift ;;
    --out) out_dir="$2"; shift ;;
    --budget) budget="$2"; shift ;;
    --quick) quick=yes ;;
    --skip) skip="$2"; shift ;;
    --require-gpu) require_gpu=yes ;;
    --pack) pack=yes ;;
    --bundle) bundle="$2"; shift ;;
    --peak-gbs) peak_gbs="$2"; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "device_check: unknown option '$1' (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done

# ---- where the binaries are ----
# The checkout decides which binaries must exist: an executable that a bench/<op> or
# tests/<op> CMakeLists.txt declares is one this check needs.
declares() { [ -f "$1/CMakeLists.txt" ] && grep -q "add_executable($2[ )]" "$1/CMakeLists.txt"; }
benches=()
for b in embbag pk_topk memory_layer; do declares "bench/$b" "bench_$b" && benches+=("bench_$b"); done
tests=()
for t in embbag pk_topk memory_layer; do declares "tests/$t" "${t}_test" && tests+=("${t}_test"); done
# The training harness's cuda backend (its entry-by-entry test runs cuda where a GPU is usable).
[ -f tests/harness/ops_simt_test.cpp ] && tests+=(harness_ops_simt_test)
# The NCCL communicator's check (tests/dist/gpu): a plain executable, run under mpirun.
checks=()
declares tests/dist/gpu dist_nccl_comm_check && checks+=(dist_nccl_comm_check)
# simt's own test kernels on the GPU: what simt emulates (shuffles, votes, atomics, barriers, the
# mma.sync fragment layout) against the hardware.
declares tests/simt simt_test && checks+=(simt_test)
needed=(memlayers "${benches[@]}" "${tests[@]}" "${checks[@]}")

if [ -n "$prebuilt" ] && [ -f "$prebuilt" ]; then
  # A packed bundle: unpacked into a temporary folder, which then serves as the bundle.
  case "$prebuilt" in
    *.tar.gz|*.tgz) ;;
    *) echo "device_check: --prebuilt $prebuilt: a folder or a .tar.gz from --bundle is accepted" >&2; exit 2 ;;
  esac
  unpacked=$(mktemp -d) || exit 1
  trap 'rm -rf "$unpacked"' EXIT
  tar xzf "$prebuilt" -C "$unpacked" || { echo "device_check: --prebuilt $prebuilt: cannot unpack" >&2; exit 2; }
  # The archive holds one folder (the bundle's own name); its files, or the archive's top level.
  inner=$(find "$unpacked" -mindepth 1 -maxdepth 1 -type d)
  [ "$(echo "$inner" | grep -c .)" -eq 1 ] && prebuilt="$inner" || prebuilt="$unpacked"
fi
if [ -n "$prebuilt" ]; then
  bin_root="$(cd "$prebuilt" 2>/dev/null && pwd)" || { echo "device_check: --prebuilt $prebuilt: no such folder" >&2; exit 2; }
  export LD_LIBRARY_PATH="$bin_root${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  case "${build_dir:-build/device}" in
    /*) bin_root="$build_dir" ;;                       # an absolute build folder as given
    *) bin_root="$root/${build_dir:-build/device}" ;;  # relative to the checkout
  esac
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
# The CUDA libraries that libmemlayers.so needs and the loader cannot find yet (a GPU image may
# keep them outside /usr/local/cuda: another toolkit folder, or PyTorch's nvidia-* wheels).
cuda_lib_dirs() {
  ls -d /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib 2>/dev/null
  python3 - <<'PY' 2>/dev/null
import glob, os, site
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))):
        print(d)
PY
}
add_missing_cuda_libs() {
  local lib="$1" so d
  [ -f "$lib" ] || return 0
  for so in $(ldd "$lib" 2>/dev/null | awk '/not found/ {print $1}'); do
    for d in $(cuda_lib_dirs); do
      if [ -e "$d/$so" ]; then
        export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
        echo "device_check: $so from $d"
        break
      fi
    done
  done
}
# Steps that are shell functions run in a child bash (run_step): nccl_comm_check calls these.
export -f cuda_lib_dirs add_missing_cuda_libs

# The path of binary $1 under bin_root (a bundle is flat; a build tree has bench/<op>/, ...).
find_bin() {
  local hit
  hit=$(find "$bin_root" -maxdepth 4 -type f -name "$1" -perm -u+x -not -path '*/CMakeFiles/*' 2>/dev/null | head -n 1)
  echo "$hit"
}
# The library the binaries load, under bin_root (empty when it is not built yet).
find_lib() { find "$bin_root" -maxdepth 3 -name libmemlayers.so -not -path '*/CMakeFiles/*' 2>/dev/null | head -n 1; }

# ---- a bundle for --prebuilt ----
if [ -n "$bundle" ]; then
  mkdir -p "$bundle" || exit 1
  missing=0
  for b in "${needed[@]}"; do
    p=$(find_bin "$b")
    if [ -z "$p" ]; then echo "device_check: $b not found under $bin_root (build it first)" >&2; missing=1; continue; fi
    cp "$p" "$bundle/"
  done
  lib=$(find_lib)
  [ -n "$lib" ] && cp "$lib" "$bundle/" || { echo "device_check: libmemlayers.so not found under $bin_root" >&2; missing=1; }
  # Libraries a GPU image may lack; glibc, libstdc++ and the CUDA toolkit's own are left to it
  # (libnccl too, some 200 MB: the toolkit's or PyTorch's wheel's is used there, step nccl_comm).
  for f in "$bundle"/*; do
    ldd "$f" 2>/dev/null | awk '$3 ~ /^\// {print $3}'
  done | sort -u | while read -r so; do
    case "$(basename "$so")" in
      libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libgcc_s.so*|libstdc++.so*) ;;
      libcuda.so*|libcudart.so*|libcublas*.so*|libnvidia*|libnvrtc*|libnvJitLink*|libnccl.so*) ;;
      libmemlayers.so) ;;
      *) cp -L "$so" "$bundle/" ;;
    esac
  done
  echo "device_check: bundle in $bundle ($(du -sh "$bundle" | cut -f1)):"
  ls "$bundle"
  # Packed, for runners that carry a limited number of bytes (the folder itself is ~72 MB).
  bundle_abs="$(cd "$bundle" && pwd)"
  tar czf "$bundle_abs.tar.gz" -C "$(dirname "$bundle_abs")" "$(basename "$bundle_abs")" || exit 1
  echo "device_check: packed into ${bundle%/}.tar.gz ($(du -h "$bundle_abs.tar.gz" | cut -f1)); on the GPU machine: tools/device_check.sh --prebuilt ${bundle%/}.tar.gz --pack"
  exit $missing
fi

# ---- the run's folder and bookkeeping ----
start=$(date +%s)
if [ -z "$out_dir" ]; then out_dir="out/device-check-$(date +%Y%m%d-%H%M%S)"; fi
if [ "$dry_run" = no ]; then
  mkdir -p "$out_dir/logs" || exit 1
  out_dir="$(cd "$out_dir" && pwd)"
  : > "$out_dir/steps.tsv"
fi
results=()
record() {  # name status seconds note
  results+=("$(printf '%-22s %-8s %4ss  %s' "$1" "$2" "$3" "$4")")
  [ "$dry_run" = no ] && printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$out_dir/steps.tsv"
}
skipped() { case ",$skip," in *",$1,"*) return 0 ;; esac; return 1; }
left() { echo $((budget - ($(date +%s) - start))); }

# run_step NAME TIMEOUT CMD... : runs CMD with its output in logs/NAME.log, time-boxed by
# min(TIMEOUT, what is left of the budget less 20 s for the report).
run_step() {
  local name="$1" box="$2"; shift 2
  if skipped "$name"; then record "$name" skipped 0 "--skip"; return 0; fi
  if [ "$dry_run" = yes ]; then
    printf '  %-22s (<= %3ss)  %s\n' "$name" "$box" "$*"
    return 0
  fi
  local avail=$(( $(left) - 20 ))
  [ "$name" = report ] && avail=$(( $(left) ))
  if [ "$avail" -lt 5 ]; then record "$name" skipped 0 "out of time (budget ${budget}s)"; return 0; fi
  [ "$box" -gt "$avail" ] && box=$avail
  local t0=$(date +%s) rc
  echo "== [$(( t0 - start ))s] $name (<= ${box}s): $*"
  if declare -F "$1" >/dev/null; then  # a shell function: run it in a child bash
    export -f "$1"
    timeout --kill-after=10 "$box" bash -c '"$@"' _ "$@" > "$out_dir/logs/$name.log" 2>&1
  else
    timeout --kill-after=10 "$box" "$@" > "$out_dir/logs/$name.log" 2>&1
  fi
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then record "$name" passed "$dt" "logs/$name.log"
  elif [ $rc -eq 78 ]; then record "$name" passed "$dt" "$(tail -n 1 "$out_dir/logs/$name.log"): logs/$name.log"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then record "$name" failed "$dt" "timed out after ${box}s: logs/$name.log"
  elif [ $rc -eq 77 ]; then record "$name" skipped "$dt" "$(tail -n 1 "$out_dir/logs/$name.log")"
  else record "$name" failed "$dt" "exit $rc: logs/$name.log"; tail -n 5 "$out_dir/logs/$name.log" | sed 's/^/    /'
  fi
  return 0
}
skip_step() { record "$1" skipped 0 "$2"; [ "$dry_run" = yes ] && printf '  %-22s skipped: %s\n' "$1" "$2"; return 0; }

# ---- shapes ----
# Default: each benchmark's own defaults (bench_embbag: dim 1024, k 32, B 4096; bench_pk_topk:
# the reference implementation's n_keys 1024, h 4, k 32, k_dim 512, B 4096, fp32).
# Paper: a memory layer of N = 1024^2 values shared by its h*k = 4*32 = 128-slot bags, model
# width 2048, bf16 table (4 GiB); the product-key search in bf16 with QK-norm.
if [ "$quick" = yes ]; then
  emb_default=(--rows 100000 --batch 256 --dim 256 --k 8 --reps 2 --sets 2)
  emb_paper=(--rows 100000 --batch 256 --dim 512 --k 16 --dtype bf16 --reps 2 --sets 2)
  pk_default=(--batch 64 --heads 2 --n-keys 128 --k-dim 64 --k 8 --reps 2 --sets 2)
  pk_paper=(--batch 64 --heads 2 --n-keys 128 --k-dim 64 --k 8 --dtype bf16 --qk-norm --reps 2 --sets 2)
  torch_emb_default=(--rows 100000 --batch 256 --dim 256 --k 8 --reps 3 --sets 2)
  torch_emb_paper=(--rows 100000 --batch 256 --dim 512 --k 16 --dtype bf16 --reps 3 --sets 2)
  ml=(--shape small --reps 2 --sets 2)
else
  emb_default=()
  emb_paper=(--rows 1048576 --dim 2048 --k 128 --batch 4096 --dtype bf16)
  pk_default=()
  pk_paper=(--dtype bf16 --qk-norm)
  torch_emb_default=()
  torch_emb_paper=(--rows 1048576 --dim 2048 --k 128 --batch 4096 --dtype bf16)
  ml=(--direction all)  # memory+ at the paper's shape (d 1024, h 4, n_keys 1024, k 32, n 512)
fi
# fp32 int32 cases at k 7, and the bf16 ones of the tensor-core variants (pk_topk v4 and v5: their
# bf16 and fp32 paths differ).
sanitizer_filter="${SANITIZER_FILTER:-Sweep/*cuda_*f32_i32*k7*:Sweep/*cuda_v*_fused_mma*_bf16_i32*k7*}"
# The memory layer's cases carry no index type: its fp32 cases of the first (odd-width) shape.
sanitizer_filter_memory_layer="${SANITIZER_FILTER_MEMORY_LAYER:-Sweep/*cuda_*_f32_*b5_d24*}"

# ---- dry run: what would run, and whether the binaries exist ----
add_missing_cuda_libs "$(find_lib)"
declare -A bin
missing_bins=() missing_gpu=()
for b in "${needed[@]}"; do
  p=$(find_bin "$b")
  if [ -n "$p" ]; then bin[$b]="$p"; else bin[$b]="$bin_root/.../$b"; missing_bins+=("$b"); fi
done
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || missing_gpu+=("a GPU (nvidia-smi -L)")
command -v ncu >/dev/null || missing_gpu+=("ncu")
command -v compute-sanitizer >/dev/null || missing_gpu+=("compute-sanitizer")
python3 -c "import torch" >/dev/null 2>&1 || missing_gpu+=("python3 torch")
cuda_variants=0
if [ -n "${bin[memlayers]:-}" ] && [ -x "${bin[memlayers]}" ]; then
  cuda_variants=$("${bin[memlayers]}" info 2>/dev/null | grep -cE '^  cuda +v[0-9]')
  [ "$cuda_variants" -gt 0 ] || missing_gpu+=("cuda variants in libmemlayers.so (built without CUDA?)")
fi

if [ "$dry_run" = yes ]; then
  echo "device_check --dry-run: binaries from ${prebuilt:+--prebuilt }$bin_root, budget ${budget}s"
  [ -n "$prebuilt" ] || [ -f "$bin_root/build.ninja" ] || echo "  (no build there yet: the build step would make it)"
fi

# ---- the steps ----
echo "device_check: output in ${out_dir}${dry_run:+ }$( [ "$dry_run" = yes ] && echo '(dry run: nothing is written)')"
[ "$dry_run" = yes ] && echo "steps:"

run_step facts 30 python3 - "$out_dir" "$peak_gbs" <<'PY'
import json, os, subprocess, sys
out, peak = sys.argv[1], sys.argv[2]
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
q = "name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit,compute_cap"
line = sh("nvidia-smi", "--query-gpu=" + q, "--format=csv,noheader")
if not line:
    sys.exit("nvidia-smi gave no GPU: this machine has no usable GPU")
v = [x.strip() for x in line.splitlines()[0].split(",")]
gpu = {"name": v[0], "driver": v[1], "memory": v[2], "clocks": "SM %s, memory %s (at the check's start)" % (v[3], v[4]),
       "max_clocks": "SM %s, memory %s" % (v[5], v[6]), "power_limit": v[7], "compute_cap": v[8]}
cuda = sh("nvcc", "--version").splitlines()
gpu["cuda"] = cuda[-1] if cuda else ""
model, flags = "", []
for l in open("/proc/cpuinfo"):
    if l.startswith("model name") and not model:
        model = l.split(":", 1)[1].strip()
    if l.startswith("flags") and not flags:
        flags = l.split(":", 1)[1].split()
slug = "-".join("".join(c if c.isalnum() else " " for c in v[0].lower()).split())
meta = {"title": "GPU: %s" % v[0], "gpu": gpu, "gpu_slug": slug, "cpu_model": model,
        "cpu_flags": flags, "cpu_cores": os.cpu_count(), "commit": sh("git", "rev-parse", "--short=12", "HEAD"),
        "nominal_peak_gbs": peak, "tools": {"ncu": sh("ncu", "--version").splitlines()[-1:],
        "compute-sanitizer": sh("compute-sanitizer", "--version").splitlines()[-1:],
        "torch": sh("python3", "-c", "import torch; print(torch.__version__)")}}
json.dump(meta, open(os.path.join(out, "machine.json"), "w"), indent=1)
print(json.dumps(meta, indent=1))
PY

if [ -n "$prebuilt" ]; then
  skip_step build "--prebuilt $prebuilt"
else
  targets=(memlayers "${benches[@]}" "${tests[@]}" "${checks[@]}")
  run_step build 300 bash -c "cmake -S . -B '$bin_root' -G Ninja -DCMAKE_BUILD_TYPE=Release -DMEMLAYERS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMEMLAYERS_WERROR=ON && cmake --build '$bin_root' -j\$(nproc) --target ${targets[*]}"
  if [ "$dry_run" = no ]; then
    for b in "${needed[@]}"; do p=$(find_bin "$b"); [ -n "$p" ] && bin[$b]="$p"; done
    add_missing_cuda_libs "$(find_lib)"
  fi
fi

# A GoogleTest run that proves something: it fails when no test matched the filter and is
# reported skipped (77) when every test skipped itself (no usable GPU).
gtest_run() {
  local log rc
  log=$(mktemp)
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  local ran skipped_n
  ran=$(sed -nE 's/^\[==========\] ([0-9]+) tests? from .* ran\..*/\1/p' "$log" | tail -n 1)
  skipped_n=$(sed -nE 's/^\[  SKIPPED \] ([0-9]+) tests?.*/\1/p' "$log" | tail -n 1)
  rm -f "$log"
  [ "$rc" -ne 0 ] && return "$rc"
  if [ "${ran:-0}" -eq 0 ]; then echo "no test matched the filter (a library without cuda variants?)"; return 1; fi
  if [ "${skipped_n:-0}" -eq "$ran" ]; then echo "all $ran tests skipped themselves (no usable GPU?)"; return 77; fi
  if [ "${skipped_n:-0}" -gt 0 ]; then echo "passed, but $skipped_n of $ran tests skipped themselves"; return 78; fi
  return 0
}
for t in "${tests[@]}"; do
  [ "$t" = harness_ops_simt_test ] && continue  # below, whole
  run_step "test_${t%_test}" 60 gtest_run "${bin[$t]}" --gtest_filter='*cuda_*' --gtest_brief=1
done
if [ -n "${bin[simt_test]:-}" ]; then
  run_step simt_on_gpu 60 gtest_run "${bin[simt_test]}" \
    --gtest_filter='*cuda_*:SimtMma.*:SimtTranspose.*:SimtAsyncCopy.*' --gtest_brief=1
else
  skip_step simt_on_gpu "tests/simt is not in this checkout"
fi
for tool in memcheck racecheck; do
  for t in "${tests[@]}"; do
    [ "$t" = harness_ops_simt_test ] && continue
    if ! command -v compute-sanitizer >/dev/null && [ "$dry_run" = no ]; then
      skip_step "${tool}_${t%_test}" "compute-sanitizer is not on PATH"
      continue
    fi
    filter="$sanitizer_filter"
    [ "$t" = memory_layer_test ] && filter="$sanitizer_filter_memory_layer"
    run_step "${tool}_${t%_test}" 45 gtest_run compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "${bin[$t]}" --gtest_filter="$filter" --gtest_brief=1
  done
done

# Every collective of the nccl communicator on device buffers (dist/cuda/comm_nccl.cu). One rank:
# NCCL refuses two ranks on one GPU and one GPU is lent, so no byte goes to a peer here (set-up,
# own-block copies, the rank-order sum kernel, host sums and refusals are what -np 1 checks).
nccl_comm_check() {  # BIN
  add_missing_cuda_libs "$1"  # the toolkit's libnccl missing: PyTorch's nvidia-nccl wheel has one
  local log rc
  log=$(mktemp)
  if command -v mpirun >/dev/null; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 1 "$1" 2>&1 | tee "$log"
  else
    echo "mpirun is not on PATH: one rank started alone (MPI's singleton start)"
    "$1" 2>&1 | tee "$log"
  fi
  rc=${PIPESTATUS[0]}
  # With no usable GPU the check prints "no GPU: skipped" and exits 0: a skip, not a pass.
  if [ "$rc" -eq 0 ] && grep -q 'no GPU: skipped' "$log"; then rc=77; fi
  rm -f "$log"
  return "$rc"
}
if [ -n "${bin[dist_nccl_comm_check]:-}" ]; then
  run_step nccl_comm 60 nccl_comm_check "${bin[dist_nccl_comm_check]}"
else
  skip_step nccl_comm "tests/dist/gpu is not in this checkout"
fi

json_args() { echo "--benchmark_out=$out_dir/$1.json" --benchmark_out_format=json; }
# bench_NAME SHAPE: the benchmark and its peer at one shape (default | paper).
benches_at() {
  local shape="$1" box="$2"
  local -n emb="emb_$shape" pk="pk_$shape" temb="torch_emb_$shape"
  run_step "bench_embbag_$shape" "$box" "${bin[bench_embbag]}" --backend cuda --peak-gbs "$peak_gbs" "${emb[@]}" $(json_args "bench_embbag_$shape")
  if [ -n "${bin[bench_pk_topk]:-}" ]; then
    run_step "bench_pk_topk_$shape" "$box" "${bin[bench_pk_topk]}" --backend cuda --peak-gbs "$peak_gbs" "${pk[@]}" $(json_args "bench_pk_topk_$shape")
  else
    skip_step "bench_pk_topk_$shape" "bench/pk_topk is not in this checkout"
  fi
  run_step "peer_embbag_$shape" 40 python3 tools/peers/embbag_torch.py --device cuda --peak-gbs "$peak_gbs" "${temb[@]}" --json "$out_dir/embbag_torch_$shape.json"
  if [ -f tools/peers/pk_topk_torch.py ]; then
    run_step "peer_pk_topk_$shape" 40 python3 tools/peers/pk_topk_torch.py --device cuda --peak-gbs "$peak_gbs" "${pk[@]}" --json "$out_dir/pk_topk_torch_$shape.json"
  else
    skip_step "peer_pk_topk_$shape" "tools/peers/pk_topk_torch.py is not in this checkout"
  fi
}
benches_at default 45

# ncu on the fastest CUDA variant of each op and direction in the default-shape runs.
best_variants() {
  python3 - "$out_dir" <<'PY'
import json, glob, os, re, sys
best = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "bench_*_default.json"))):
    for b in json.load(open(f)).get("benchmarks", []):
        m = re.match(r"^([a-z0-9_]+)/cuda/([^/]+)/", b["name"])
        if not m or b.get("error_occurred") or b.get("aggregate_name", "median") != "median":
            continue
        bench = os.path.basename(f).rsplit("_default", 1)[0]
        if m.group(1) not in best or b["real_time"] < best[m.group(1)][2]:
            best[m.group(1)] = (bench, m.group(2), b["real_time"])
for op, (bench, variant, _) in best.items():
    print(op, bench, variant)
PY
}
if [ "$dry_run" = yes ]; then
  run_step ncu_OP_VARIANT 60 profiles/ncu.sh --op OP --variant "BEST (fastest cuda row of bench_*_default.json)" --bin-dir "$bin_root" --out "$out_dir/ncu"
elif skipped ncu; then
  record ncu skipped 0 "--skip"
else
  picked=$(best_variants)
  if [ -z "$picked" ]; then
    skip_step ncu "no cuda row in the default benchmark runs to profile"
  else
    while read -r op bench variant; do
      extra=()
      [ "$quick" = yes ] && case "$bench" in
        bench_embbag) extra=("${emb_default[@]}") ;;
        bench_pk_topk) extra=("${pk_default[@]}") ;;
      esac
      run_step "ncu_${op}" 60 profiles/ncu.sh --op "$op" --variant "$variant" --bin-dir "$bin_root" \
        --out "$out_dir/ncu" -- "${extra[@]}"
    done <<< "$picked"
  fi
fi


benches_at paper 50
if [ -n "${bin[bench_memory_layer]:-}" ]; then
  run_step bench_memory_layer 50 "${bin[bench_memory_layer]}" --backend cuda --peak-gbs "$peak_gbs" "${ml[@]}" $(json_args bench_memory_layer)
  run_step peer_memory_layer 40 python3 tools/peers/memory_layer_torch.py --device cuda --peak-gbs "$peak_gbs" "${ml[@]}" --json "$out_dir/memory_layer_torch.json"
else
  skip_step bench_memory_layer "bench/memory_layer is not in this checkout yet"
fi

if [[ " ${tests[*]} " == *" harness_ops_simt_test "* ]]; then
  # Every harness Ops entry on cuda against cpu, then the same short training run of a memory+
  # model on cpu and on cuda: the loss curves in the two JSON files should agree to the fp32
  # policy (cuBLAS and our kernels against OpenBLAS and loops).
  run_step harness_ops_cuda 90 gtest_run "${bin[harness_ops_simt_test]}" --gtest_brief=1
  train_args=(--model memory+ --names 48 --subjects 512 --relations 4 --objects 64 --facts 1024
         --d-model 32 --layers 2 --heads 2 --ffn-hidden 86 --steps 300 --batch 64 --eval-every 100
         --lr 0.003 --quiet)
  run_step train_cpu 60 "${bin[memlayers]}" train --backend cpu "${train_args[@]}" --json "$out_dir/train_cpu.json"
  run_step train_cuda 120 "${bin[memlayers]}" train --backend cuda "${train_args[@]}" --json "$out_dir/train_cuda.json"
else
  skip_step harness_ops_cuda "no harness cuda backend in this checkout (tests/harness/ops_simt_test.cpp)"
fi

report_cmd() {  # OUT_DIR ROOT INVOCATION (a child bash runs it: no globals)
  python3 - "$1" "$2" "$3" <<'PY'
import glob, json, os, shutil, subprocess, sys
out, root = sys.argv[1], sys.argv[2]
meta = json.load(open(os.path.join(out, "machine.json")))
dest = os.path.join(root, "reports", meta.get("gpu_slug") or "gpu")
os.makedirs(dest, exist_ok=True)
meta["commands"] = [sys.argv[3]]
json.dump(meta, open(os.path.join(dest, "machine.json"), "w"), indent=1)
for f in glob.glob(os.path.join(out, "*.json")):
    if os.path.basename(f) != "machine.json":
        shutil.copy(f, dest)
rc = subprocess.run([sys.executable, os.path.join(root, "tools", "report.py"), os.path.relpath(dest, root)], cwd=root).returncode
shutil.copytree(dest, os.path.join(out, "report"), dirs_exist_ok=True)
print("report in", dest, "and", os.path.join(out, "report"))
sys.exit(rc)
PY
}
if [ "$dry_run" = yes ]; then
  run_step report 30 tools/report.py "reports/<gpu>  (the JSON and machine.json copied there from the output folder)"
elif [ -f "$out_dir/machine.json" ]; then
  run_step report 30 report_cmd "$out_dir" "$root" "$invocation"
else
  skip_step report "no machine.json (the facts step failed: no GPU?)"
fi

# ---- summary ----
if [ "$dry_run" = yes ]; then
  echo
  status=0
  if [ ${#missing_bins[@]} -gt 0 ]; then
    echo "MISSING binaries under $bin_root: ${missing_bins[*]}"
    echo "  (build them: cmake --preset device && cmake --build --preset device, or pass --prebuilt DIR)"
    status=1
  else
    echo "found: ${needed[*]}"
  fi
  if [ ${#missing_gpu[@]} -gt 0 ]; then
    echo "missing on this machine (the GPU steps would fail or be skipped): $(IFS=';'; echo "${missing_gpu[*]}")"
    [ "$require_gpu" = yes ] && status=1
  else
    echo "GPU tools present; the library holds $cuda_variants cuda variants"
  fi
  exit $status
fi

passed=0 failed=0 skip_n=0
for r in "${results[@]}"; do
  case "$r" in *" passed "*) passed=$((passed + 1)) ;; *" failed "*) failed=$((failed + 1)) ;; *) skip_n=$((skip_n + 1)) ;; esac
done
{
  echo "device_check summary ($(( $(date +%s) - start ))s of ${budget}s; output in $out_dir)"
  printf '%s\n' "${results[@]}"
  echo "passed $passed, failed $failed, skipped $skip_n"
} | tee "$out_dir/summary.txt"
if [ "$pack" = yes ]; then
  tmp_tar=$(mktemp --suffix=.tar.gz)
  tar czf "$tmp_tar" -C "$out_dir" --exclude=summary.txt . &&
    { [ -f "$out_dir/report/README.md" ] && cp "$out_dir/report/README.md" "$tmp_tar.md" || true; } &&
    find "$out_dir" -mindepth 1 -maxdepth 1 ! -name summary.txt -exec rm -rf {} + &&
    mv "$tmp_tar" "$out_dir/device_check.tar.gz" &&
    { [ -f "$tmp_tar.md" ] && mv "$tmp_tar.md" "$out_dir/report_README.md" || true; }
  echo "packed into $out_dir/device_check.tar.gz"
fi
[ "$failed" -eq 0 ]
