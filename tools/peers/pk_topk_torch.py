#!/usr/bin/env python3
"""PyTorch peer of bench_pk_topk: the product-key top-k search as the reference implementation
writes it in PyTorch (einsum for both halves' scores, topk per half, the k x k broadcast sums,
topk, gather of the indices), forward and (autograd) backward to dq, dK1, dK2, on the shapes and
flags bench_pk_topk uses.

Run:  pip install -r tools/requirements-peers.txt
      python3 tools/peers/pk_topk_torch.py --device cpu --json torch_pk_topk.json
      python3 tools/peers/pk_topk_torch.py --device cuda --dtype bf16 --qk-norm

Bytes and flops use the op's declared formulas (kernels/pk_topk/pk_topk.h and pk_topk.cpp,
Fwd::bytes_moved / Fwd::flops / Bwd::bytes_moved / Bwd::flops, are the source of truth; DESIGN.md
section 5), restated below, so the GB/s and TFLOP/s columns compare directly with bench_pk_topk's.
The JSON follows Google Benchmark's layout ("context", "benchmarks": [{"name", "real_time",
"time_unit", "bytes_per_second", counters...}]) with one aggregate row per case, aggregate_name
"median", as bench_pk_topk writes with --reps > 1.
"""
import argparse
import sys

from peer_common import (SKIP, add_run_args, aggregate_row, import_torch, measure, timer,
                         torch_dtypes, torch_line, write_json)

NORM_EPS = 1e-6  # pk_topk::kNormEps


# ---- the op's declared bytes and flops (source of truth: kernels/pk_topk/pk_topk.cpp) ----

def fwd_bytes(batch, heads, n_keys, k_dim, k, s, s_idx):
    # Fwd::bytes_moved: B*h*n*s (queries) + 2*h*n_keys*(n/2)*s (sub-keys) + B*h*k*(4 + s_idx)
    return (batch * heads * k_dim * s + 2 * heads * n_keys * (k_dim // 2) * s
            + batch * heads * k * (4 + s_idx))


def fwd_flops(batch, heads, n_keys, k_dim):
    # Fwd::flops: 2*B*h*n_keys*n (both halves' scores; selection and the k x k step not counted)
    return 2 * batch * heads * n_keys * k_dim


def score_matrix_bytes(batch, heads, n_keys):
    # Fwd::score_matrix_bytes: what writing and re-reading the (B*h, n_keys) score matrices of
    # both halves costs on top of the floor. torch's einsum + topk pays it; reported apart.
    return 2 * batch * heads * n_keys * 4 * 2


def bwd_bytes_dense(batch, heads, n_keys, k_dim, k, s, s_idx):
    # Bwd::bytes_moved with dq and both dense key gradients requested (what autograd returns):
    # B*h*n*s + B*h*k*(s_idx + 4) + 2*h*n_keys*(n/2)*s + B*h*n*4 (dq) + 2 * h*n_keys*(n/2)*4 (dK)
    half = k_dim // 2
    return (batch * heads * k_dim * s + batch * heads * k * (s_idx + 4)
            + 2 * heads * n_keys * half * s + batch * heads * k_dim * 4
            + 2 * heads * n_keys * half * 4)


def bwd_flops(batch, heads, k, k_dim):
    # Bwd::flops: 2*B*h*k*n per requested gradient; dq and the key gradients (as one) -> two.
    return 2 * (2 * batch * heads * k * k_dim)


# ---- the search, the reference implementation's way ----

def rms_norm(torch, x):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + NORM_EPS).to(x.dtype)


def pk_topk(torch, q, K1, K2, k, qk_norm):
    """q: (B, h, n); K1, K2: (h, n_keys, n/2). Returns scores (B, h, k), indices (B, h, k) int64
    (i1 * n_keys + i2), best first."""
    half = q.shape[-1] // 2
    n_keys = K1.shape[1]
    q1, q2 = q[..., :half], q[..., half:]
    if qk_norm:
        q1, q2, K1, K2 = (rms_norm(torch, t) for t in (q1, q2, K1, K2))
    s1 = torch.einsum("bhd,hnd->bhn", q1, K1)  # (B, h, n_keys)
    s2 = torch.einsum("bhd,hnd->bhn", q2, K2)
    S1, I1 = s1.topk(k, dim=-1)  # (B, h, k), sorted
    S2, I2 = s2.topk(k, dim=-1)
    sums = S1.unsqueeze(-1) + S2.unsqueeze(-2)  # (B, h, k, k)
    ids = I1.unsqueeze(-1) * n_keys + I2.unsqueeze(-2)
    scores, best = sums.flatten(-2).topk(k, dim=-1)
    indices = ids.flatten(-2).gather(-1, best)
    return scores, indices


# ---- the record ----

def row(name, times, bytes_per_call, flops_per_call, peak_gbs, peak_tflops, reps, extra=None):
    def columns(med):
        gbs = bytes_per_call / med / 1e9
        tflops = flops_per_call / med / 1e12
        return {"GB/s": gbs, "TFLOP/s": tflops, "pct_peak": 100 * gbs / peak_gbs,
                "pct_peak_tflops": 100 * tflops / peak_tflops}
    return aggregate_row(name, times, reps, bytes_per_call, columns, extra)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=4096, help="tokens B")
    p.add_argument("--heads", type=int, default=4, help="heads h")
    p.add_argument("--n-keys", type=int, default=1024, help="sub-keys per half")
    p.add_argument("--k-dim", type=int, default=512, help="query width n (even)")
    p.add_argument("--k", type=int, default=32, help="top-k per head")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="q, K1, K2 dtype (torch computes the scores and gradients in it too)")
    p.add_argument("--index", choices=["int32", "int64"], default="int64",
                   help="index dtype of the results (topk gives int64; int32 adds a cast)")
    p.add_argument("--qk-norm", action="store_true",
                   help="RMS-normalise each query half and each sub-key first")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--direction", choices=["fwd", "bwd", "all"], default="all")
    add_run_args(p, "query sets rotated between calls")
    p.add_argument("--peak-tflops", type=float, default=67,
                   help="nominal peak for pct_peak_tflops (H100 SXM fp32, no tensor cores)")
    p.add_argument("--json", metavar="FILE", help="write Google-Benchmark-style JSON here")
    a = p.parse_args(argv)
    for name in ("batch", "heads", "n_keys", "k_dim", "k", "reps", "sets"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)}: must be at least 1")
    if a.k_dim % 2:
        p.error(f"--k-dim {a.k_dim}: must be even (two halves)")
    if a.k > min(a.n_keys, 1024):
        p.error(f"--k {a.k}: accepted 1 <= k <= min(n_keys = {a.n_keys}, 1024)")
    if a.index == "int32" and a.n_keys * a.n_keys > 2**31 - 1:
        p.error(f"--index int32 with --n-keys {a.n_keys}: N = n_keys^2 does not fit")

    torch = import_torch("pk_topk_torch", a.device, a.threads, thp=not a.no_thp)
    if torch is None:
        return SKIP

    dtype, index_dtype, s, s_idx = torch_dtypes(torch, a.dtype, a.index)
    B, h, nk, n, k = a.batch, a.heads, a.n_keys, a.k_dim, a.k

    print("pk_topk_torch configuration")
    print(torch_line(torch, a.device))
    print(f"  batch {B}, heads {h}, n_keys {nk} (N = {nk * nk}), k_dim {n}, k {k}, dtype {a.dtype}, "
          f"index {a.index}{', qk-norm' if a.qk_norm else ''}, reps {a.reps}, sets {a.sets}")

    # Uniform in [-1, 1) like bench_pk_topk: keys shared, queries and ds one per set.
    g = torch.Generator().manual_seed(a.seed)

    def uniform(*shape):
        return (torch.rand(shape, generator=g) * 2 - 1).to(dtype).to(a.device)

    K1, K2 = uniform(h, nk, n // 2), uniform(h, nk, n // 2)
    sets = [{"q": uniform(B, h, n),
             "ds": (torch.rand((B, h, k), generator=g) * 2 - 1).to(a.device)}
            for _ in range(a.sets)]
    time_call = timer(torch, a.device)
    shape = f"{a.dtype}_{a.index}_b{B}_h{h}_nk{nk}_n{n}_k{k}" + ("_qknorm" if a.qk_norm else "")
    backend = f"torch_{a.device}"
    rows_out = []

    def report(r):
        rows_out.append(r)
        print(f"{r['name']:<96} {r['real_time']:10.3f} ms  TFLOP/s={r['TFLOP/s']:.4f} "
              f"GB/s={r['GB/s']:.3f} pct_peak={r['pct_peak']:.4f} "
              f"pct_peak_tflops={r['pct_peak_tflops']:.4f}")

    def search(q, Kh1, Kh2):
        scores, indices = pk_topk(torch, q, Kh1, Kh2, k, a.qk_norm)
        return scores, indices.to(index_dtype)

    if a.direction in ("fwd", "all"):
        with torch.no_grad():
            calls = [lambda st=st: search(st["q"], K1, K2) for st in sets]
            times = measure(time_call, calls, a.reps)
        report(row(f"pk_topk_fwd/{backend}/einsum_topk/{shape}", times,
                   fwd_bytes(B, h, nk, n, k, s, s_idx), fwd_flops(B, h, nk, n),
                   a.peak_gbs, a.peak_tflops, a.reps,
                   {"score_matrix_bytes": score_matrix_bytes(B, h, nk)}))

    if a.direction in ("bwd", "all"):
        Kg1, Kg2 = K1.clone().requires_grad_(True), K2.clone().requires_grad_(True)
        graphs = []
        for st in sets:
            q = st["q"].clone().requires_grad_(True)
            scores, _ = search(q, Kg1, Kg2)
            graphs.append((scores, q, st["ds"].to(scores.dtype)))
        # Only the backward is timed: dq, dK1, dK2 (dense) from the retained forward graph.
        calls = [lambda gr=gr: torch.autograd.grad(gr[0], (gr[1], Kg1, Kg2), gr[2],
                                                   retain_graph=True) for gr in graphs]
        times = measure(time_call, calls, a.reps)
        report(row(f"pk_topk_bwd/{backend}/einsum_topk/{shape}_dense", times,
                   bwd_bytes_dense(B, h, nk, n, k, s, s_idx), bwd_flops(B, h, k, n),
                   a.peak_gbs, a.peak_tflops, a.reps))
        del graphs, calls

    if a.json:
        write_json(a.json, "tools/peers/pk_topk_torch.py", torch, a.device, {
            "pk_topk_batch": str(B),
            "pk_topk_heads": str(h),
            "pk_topk_n_keys": str(nk),
            "pk_topk_k_dim": str(n),
            "pk_topk_k": str(k),
            "pk_topk_dtype": a.dtype,
            "pk_topk_index": a.index,
            "pk_topk_qk_norm": "true" if a.qk_norm else "false",
            "pk_topk_score_matrix_bytes": str(score_matrix_bytes(B, h, nk)),
            "peak_gbs": str(a.peak_gbs),
            "peak_tflops": str(a.peak_tflops),
        }, rows_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
