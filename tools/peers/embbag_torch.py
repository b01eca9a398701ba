#!/usr/bin/env python3
"""PyTorch peer of bench_embbag: torch.nn.functional.embedding_bag(mode='sum', per_sample_weights)
forward and backward (sparse and dense gradient) on the shapes and flags bench_embbag uses.

Run:  pip install -r tools/requirements-peers.txt
      python3 tools/peers/embbag_torch.py --dim 1024 --k 32 --device cpu --json torch_embbag.json

Bytes use the op's declared formulas (kernels/embbag/embbag.h and embbag.cpp are the source of
truth; DESIGN.md section 5), reimplemented below, so GB/s columns compare directly with
bench_embbag's. The JSON follows Google Benchmark's layout ("context", "benchmarks": [{"name",
"real_time", "time_unit", "bytes_per_second", counters...}]) with one aggregate row per case,
aggregate_name "median", as bench_embbag writes with --reps > 1.
"""
import argparse
import math
import os
import statistics
import subprocess
import sys

from peer_common import (SKIP, add_run_args, aggregate_row, human_bytes, import_torch,
                         measure, timer, torch_dtypes, torch_line, write_json)

ONE_GIB = 1 << 30


# ---- machine and table sizing (as bench/common/bench_common.cpp) ----

def host_last_level_cache_bytes():
    """The larger of the highest cache level sysfs lists for cpu0 and sysconf's L3/L4 size."""
    best_level, sysfs_bytes = 0, 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(e for e in os.listdir(base) if e.startswith("index"))
    except OSError:
        entries = []
    for e in entries:
        try:
            with open(f"{base}/{e}/type") as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(f"{base}/{e}/level") as f:
                level = int(f.read().strip())
            with open(f"{base}/{e}/size") as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        size = int(text[:-1] if scale != 1 else text) * scale
        if level > best_level or (level == best_level and size > sysfs_bytes):
            best_level, sysfs_bytes = level, size
    # Python's os.sysconf does not know the cache names; getconf asks the same glibc sysconf.
    sysconf_bytes = 0
    for name in ("LEVEL3_CACHE_SIZE", "LEVEL4_CACHE_SIZE"):
        try:
            out = subprocess.run(["getconf", name], capture_output=True, text=True, timeout=5)
            sysconf_bytes = max(sysconf_bytes, int(out.stdout.strip() or 0))
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return max(sysfs_bytes, sysconf_bytes)


def physical_memory_bytes():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def size_table(row_bytes, cache_bytes):
    """At least 8 x cache and 1 GiB, at most a quarter of physical memory."""
    target, why = ONE_GIB, "1 GiB floor"
    if 8 * cache_bytes > target:
        target, why = 8 * cache_bytes, f"8 x last-level cache ({human_bytes(cache_bytes)})"
    cap = physical_memory_bytes() / 4
    if cap > 0 and target > cap:
        target, why = cap, why + f", capped at a quarter of physical memory ({human_bytes(cap)})"
    return max(1, math.ceil(target / row_bytes)), why


# ---- the op's declared bytes and flops (source of truth: kernels/embbag/embbag.h) ----

def fwd_bytes(batch, k, dim, s_v, s_idx, s_y):
    # B*k*dim*s_V (gathered rows) + B*k*(s_idx + 4) (indices, weights) + B*dim*s_y (output)
    return batch * k * dim * s_v + batch * k * (s_idx + 4) + batch * dim * s_y


def bwd_bytes(batch, k, dim, s_v, s_idx, unique_rows):
    # dy read once (B*dim*4); dw: rows re-read B*k*dim*s_V + dw written B*k*4;
    # dV: U*dim*4 rows written + B*k*(s_idx + 4)*2 for the sort's keys and values, in and out.
    return (batch * dim * 4 + batch * k * dim * s_v + batch * k * 4
            + unique_rows * dim * 4 + batch * k * (s_idx + 4) * 2)


def dense_zeroing_bytes(rows, dim):
    # A dense dV zeroes N*dim*4 bytes; reported apart from GB/s.
    return rows * dim * 4


def fwd_flops(batch, k, dim):
    return 2 * batch * k * dim


def bwd_flops(batch, k, dim):
    return 4 * batch * k * dim  # dw and dV


# ---- inputs ----

def zipf_indices(torch, rows, s, shape, gen):
    """Zipf over ranks 1..rows (inverse CDF), hot ranks spread over the table by a multiplier
    coprime with rows, as bench_embbag does."""
    ranks = torch.arange(1, rows + 1, dtype=torch.float64)
    cdf = torch.cumsum(ranks.pow(-s), 0)
    cdf /= cdf[-1].clone()
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    r = torch.searchsorted(cdf, u).clamp_(max=rows - 1)  # rank - 1
    mult = max(1, int(rows * 0.6180339887))
    while math.gcd(mult, rows) != 1:
        mult += 1
    return (r * mult) % rows


def make_sets(torch, a, device, value_dtype, index_dtype):
    sets = []
    for s in range(a.sets):
        g = torch.Generator().manual_seed(a.seed * 1000003 + s)
        if a.dist == "zipf":
            idx = zipf_indices(torch, a.rows, a.zipf_s, (a.batch, a.k), g)
        else:
            idx = torch.randint(0, a.rows, (a.batch, a.k), generator=g, dtype=torch.int64)
        unique = int(torch.unique(idx).numel())
        # embedding_bag requires per_sample_weights in the table's dtype.
        w = torch.rand((a.batch, a.k), generator=g).to(value_dtype)
        dy = (torch.rand((a.batch, a.dim), generator=g) * 2 - 1).to(value_dtype)
        sets.append({"idx": idx.to(index_dtype).to(device), "w": w.to(device),
                     "dy": dy.to(device), "unique": unique})
    return sets


# ---- the record ----

def row(name, times, bytes_per_call, flops_per_call, peak_gbs, reps, extra=None):
    def columns(med):
        gbs = bytes_per_call / med / 1e9
        return {"GB/s": gbs, "pct_peak": 100 * gbs / peak_gbs,
                "GFLOP/s": flops_per_call / med / 1e9}
    return aggregate_row(name, times, reps, bytes_per_call, columns, extra)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dim", type=int, default=1024, help="values per row")
    p.add_argument("--k", type=int, default=32, help="rows per bag")
    p.add_argument("--batch", type=int, default=4096, help="bags per call (tokens)")
    p.add_argument("--rows", default="auto",
                   help="table rows; auto: >= 8 x last-level cache (GPU L2 on cuda) and >= 1 GiB, "
                        "<= a quarter of physical memory")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="table dtype (torch also keeps weights, dy and dV in it)")
    p.add_argument("--index", choices=["int32", "int64"], default="int64", help="index dtype")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--direction", choices=["fwd", "bwd", "all"], default="all")
    p.add_argument("--grad", choices=["sparse", "dense", "both"], default="both",
                   help="backward: sparse=True, sparse=False, or both")
    p.add_argument("--dist", choices=["uniform", "zipf"], default="uniform")
    p.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent")
    add_run_args(p, "input sets rotated between calls")
    p.add_argument("--json", metavar="FILE", help="write Google-Benchmark-style JSON here")
    a = p.parse_args(argv)
    for name in ("dim", "k", "batch", "reps", "sets"):
        if getattr(a, name) < 1:
            p.error(f"--{name} {getattr(a, name)}: must be at least 1")
    if a.zipf_s <= 0:
        p.error(f"--zipf-s {a.zipf_s}: must be > 0")

    torch = import_torch("embbag_torch", a.device, a.threads, thp=not a.no_thp)
    if torch is None:
        return SKIP
    import torch.nn.functional as F

    value_dtype, index_dtype, s_v, s_idx = torch_dtypes(torch, a.dtype, a.index)
    host_llc = host_last_level_cache_bytes()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size if a.device == "cuda" else 0
    if a.rows == "auto":
        a.rows, rows_why = size_table(a.dim * s_v, max(host_llc, l2))
    else:
        try:
            a.rows = int(a.rows)
        except ValueError:
            p.error(f"--rows {a.rows}: must be a positive integer or 'auto'")
        if a.rows < 1:
            p.error(f"--rows {a.rows}: must be a positive integer or 'auto'")
        rows_why = "--rows"
    table_bytes = a.rows * a.dim * s_v

    print("embbag_torch configuration")
    print(torch_line(torch, a.device))
    print(f"  rows {a.rows} ({rows_why}), table {human_bytes(table_bytes)}, host LLC "
          f"{human_bytes(host_llc)}" + (f", GPU L2 {human_bytes(l2)}" if l2 else ""))
    print(f"  batch {a.batch}, k {a.k}, dim {a.dim}, dtype {a.dtype}, index {a.index}, "
          f"dist {a.dist}, reps {a.reps}, sets {a.sets}")

    torch.manual_seed(a.seed)
    V = torch.empty((a.rows, a.dim), dtype=value_dtype, device=a.device).uniform_(-1, 1)
    sets = make_sets(torch, a, a.device, value_dtype, index_dtype)
    time_call = timer(torch, a.device)
    shape = f"{a.dtype}_{a.index}_d{a.dim}_k{a.k}_b{a.batch}_{a.dist}"
    backend = f"torch_{a.device}"
    rows_out = []

    def report(r):
        rows_out.append(r)
        extra = "".join(f" {k}={r[k]:.4g}" for k in ("unique_rows", "GB/s_incl_zeroing")
                        if k in r)
        print(f"{r['name']:<90} {r['real_time']:9.3f} ms  GB/s={r['GB/s']:.3f} "
              f"pct_peak={r['pct_peak']:.3f}{extra}")

    if a.direction in ("fwd", "all"):
        with torch.no_grad():
            calls = [lambda s=s: F.embedding_bag(s["idx"], V, per_sample_weights=s["w"],
                                                 mode="sum") for s in sets]
            times = measure(time_call, calls, a.reps)
        report(row(f"embbag_fwd/{backend}/embedding_bag/{shape}", times,
                   fwd_bytes(a.batch, a.k, a.dim, s_v, s_idx, s_v),
                   fwd_flops(a.batch, a.k, a.dim), a.peak_gbs, a.reps))

    if a.direction in ("bwd", "all"):
        Vg = V.requires_grad_(True)
        grads = ["sparse", "dense"] if a.grad == "both" else [a.grad]
        for grad in grads:
            graphs = []
            for s in sets:
                w = s["w"].clone().requires_grad_(True)
                y = F.embedding_bag(s["idx"], Vg, per_sample_weights=w, mode="sum",
                                    sparse=(grad == "sparse"))
                graphs.append((y, w, s["dy"]))
            # Only the backward is timed: dV and dw from the retained forward graph.
            calls = [lambda g=g: torch.autograd.grad(g[0], (Vg, g[1]), g[2], retain_graph=True)
                     for g in graphs]
            times = measure(time_call, calls, a.reps)
            unique = [s["unique"] for s in sets]
            # Rotation visits the sets in order, so the mean bytes over the timed calls is exact.
            per_call = statistics.mean(
                bwd_bytes(a.batch, a.k, a.dim, s_v, s_idx, unique[i % len(sets)])
                for i in range(a.reps))
            extra = {"unique_rows": statistics.mean(unique)}
            if grad == "dense":
                z = dense_zeroing_bytes(a.rows, a.dim)
                extra["dense_zeroing_bytes"] = z
                extra["GB/s_incl_zeroing"] = (per_call + z) / statistics.median(times) / 1e9
            report(row(f"embbag_bwd/{backend}/embedding_bag/{shape}_{grad}", times, per_call,
                       bwd_flops(a.batch, a.k, a.dim), a.peak_gbs, a.reps, extra))
            del graphs, calls

    if a.json:
        write_json(a.json, "tools/peers/embbag_torch.py", torch, a.device, {
            "embbag_rows": str(a.rows),
            "embbag_table_bytes": str(table_bytes),
            "embbag_batch": str(a.batch),
            "embbag_k": str(a.k),
            "embbag_dim": str(a.dim),
            "embbag_dtype": a.dtype,
            "embbag_index": a.index,
            "embbag_dist": f"zipf:{a.zipf_s}" if a.dist == "zipf" else a.dist,
            "host_llc_bytes": str(host_llc),
            "gpu_l2_bytes": str(l2),
            "peak_gbs": str(a.peak_gbs),
        }, rows_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
