#!/usr/bin/env python3
"""PyTorch peer of bench_memory_layer: the memory layer as one writes it in PyTorch (the query
projection as a Linear, einsum scores per half, topk per half, the k x k candidate sums, topk,
softmax, F.embedding_bag with per_sample_weights mode='sum', Memory+'s SiLU gating, PEER's experts,
the scalar gate), an inference forward and a training step's forward + autograd backward, on the
shapes and flags bench_memory_layer uses, with the same stage breakdown.

Run:  pip install -r tools/requirements-peers.txt
      python3 tools/peers/memory_layer_torch.py --device cpu --json torch_memory_layer.json
      python3 tools/peers/memory_layer_torch.py --shape small --kind memory --direction fwd
      python3 tools/peers/memory_layer_torch.py --check-costs bench.json   (no torch needed)

Stages: the forward marks the time between its stages (perf_counter on the CPU, CUDA events on
the GPU). The backward's stages are cut where autograd reaches each stage's output: a hook on the
stage's output tensor runs as the stage's first backward node starts, so a stage's backward is the
time from that hook to the next one (autograd runs the later stages' nodes first; a node it
defers lands in the stage that was running).

Bytes and flops restate the declarations (kernels/memory_layer/memory_layer.cpp for the layer's
totals, kernels/memory_layer/stage_costs.cpp for the stages; DESIGN.md section 5), so GB/s and
GFLOP/s compare directly with bench_memory_layer's; --check-costs compares the restatement with a
bench_memory_layer JSON record. The value gradient is torch's sparse one (--dv dense: dense);
it is counted as the compact form either way, the floor's form. The JSON follows Google
Benchmark's layout, one median aggregate row per layer row and one row per stage, as
bench_memory_layer writes.
"""
import argparse
import json
import math
import statistics
import sys

from peer_common import SKIP, add_run_args, aggregate_row, import_torch, torch_line, write_json
from embbag_torch import fwd_bytes as bag_fwd_bytes
from pk_topk_torch import bwd_bytes_dense as search_bwd_bytes, fwd_bytes as search_fwd_bytes
from pk_topk_torch import pk_topk

PRESETS = {  # bench_memory_layer's --shape presets
    "paper": dict(batch=4096, d_model=1024, heads=4, n_keys=1024, k_dim=512, k=32),
    "small": dict(batch=512, d_model=512, heads=4, n_keys=256, k_dim=128, k=16),
}
FWD_STAGES = ("projection", "search", "softmax", "bag", "gating")
S_IDX = 8  # the compositions' int64 indices


# ---- declared bytes and flops (source of truth: memory_layer.cpp, stage_costs.cpp) ----

class Shape:
    def __init__(self, a):
        self.B, self.d, self.h, self.nk = a.batch, a.d_model, a.heads, a.n_keys
        self.n, self.k, self.v = a.k_dim, a.k, a.value_dim
        self.kind, self.gate = a.kind, a.gate
        self.sv = 2 if a.dtype == "bf16" else 4
        self.hn, self.hk, self.N = self.h * self.n, self.h * self.k, self.nk * self.nk
        self.w = self.d if self.kind == "peer" else self.v  # value width
        # embbag::expected_unique_rows(B*h*k, N)
        draws = self.B * self.hk
        self.unique = -self.N * math.expm1(draws * math.log1p(-1.0 / self.N)) if self.N > 1 \
            else min(1.0, draws)

    def parameter_floats(self):
        d, v = self.d, self.v
        f = d * self.hn + self.hn + 2 * self.h * self.nk * (self.n // 2)
        if self.kind == "memory_plus":
            f += d * v + v + v * d + d
        if self.gate:
            f += d
        return f

    def gathered(self):
        return self.B * self.hk * self.w * self.sv * (2 if self.kind == "peer" else 1)

    def gemm_flops(self):
        f = 2 * self.B * self.d * self.hn
        if self.kind == "memory_plus":
            f += 4 * self.B * self.d * self.v
        return f

    def bag_flops(self):
        return 2 * self.B * self.hk * self.w * (2 if self.kind == "peer" else 1)

    def fwd_totals(self):
        """memory_layer::Fwd::bytes_moved, ::flops."""
        return (self.parameter_floats() * 4 + 2 * self.B * self.d * 4 + self.gathered(),
                self.gemm_flops() + 2 * self.B * self.h * self.nk * self.n + self.bag_flops())

    def bwd_totals(self):
        """memory_layer::Bwd::bytes_moved, ::flops with the gradients bench_memory_layer asks."""
        B, d, v = self.B, self.d, self.v
        b = self.parameter_floats() * 4 + 2 * B * d * 4 + self.gathered()
        b += B * d * 4 + d * self.hn * 4 + self.hn * 4 + 2 * self.h * self.nk * (self.n // 2) * 4
        if self.kind == "memory_plus":
            b += (d * v + v + v * d + d) * 4
        if self.gate:
            b += d * 4
        b += self.unique * (self.w * 4 + 8) * (2 if self.kind == "peer" else 1)
        return (b, 2 * self.gemm_flops() + 4 * B * self.hk * self.n + 2 * self.bag_flops())

    # stage_costs.cpp's pieces
    @staticmethod
    def gemm(m, n, k, accumulate=False, extra=0):
        return (4 * (m * k + k * n + m * n * (2 if accumulate else 1) + extra), 2 * m * n * k)

    @staticmethod
    def elementwise(read, written):
        return (4 * (read + written), 0)

    def bag_fwd(self, dim):
        return (bag_fwd_bytes(self.B, self.hk, dim, self.sv, S_IDX, 4), 2 * self.B * self.hk * dim)

    def bag_bwd(self, dim, dw, dv):
        B, hk = self.B, self.hk
        b = B * dim * 4 if dw or dv else 0
        if dw:
            b += B * hk * dim * self.sv + B * hk * 4
        if dv:
            b += self.unique * dim * 4 + B * hk * (S_IDX + 4) * 2
        return (b, 2 * B * hk * dim * (int(dw) + int(dv)))

    def stages(self, backward):
        """[(name, bytes, flops)] as stage_costs(config, batch, backward) returns them."""
        B, d, hn, hk, v = self.B, self.d, self.hn, self.hk, self.v
        out = []

        def stage(name, *parts):
            out.append((name, sum(p[0] for p in parts), sum(p[1] for p in parts)))

        if not backward:
            stage("projection", self.gemm(B, hn, d, False, hn))
            stage("search", (search_fwd_bytes(B, self.h, self.nk, self.n, self.k, 4, S_IDX),
                             2 * B * self.h * self.nk * self.n))
            stage("softmax", self.elementwise(B * hk, B * hk))
            bag = [self.bag_fwd(self.w)]
            if self.kind == "peer":
                bag.append(self.bag_bwd(d, True, False))
            stage("bag", *bag)
            gating = []
            if self.kind == "memory_plus":
                gating += [self.gemm(B, v, d, False, v), self.elementwise(2 * B * v, B * v),
                           self.gemm(B, d, v, False, d)]
            elif self.kind == "peer":
                gating.append(self.elementwise(2 * B * hk, B * hk))
            if self.gate:
                gating += [self.gemm(B, 1, d), self.elementwise(B * d + B, B * d)]
            if self.kind != "memory" or self.gate:
                stage("gating", *gating)
            return out
        gating = [self.elementwise(0, B * d)]
        if self.gate:
            if self.kind == "memory_plus":
                gating.append(self.elementwise(B * d + 3 * B * v + B + d, B * d + 2 * B * v + B))
            else:
                gating.append(self.elementwise(2 * B * d + B, B * d + B))
            gating += [self.gemm(1, d, B), self.elementwise(2 * B * d + B + d, B * d)]
        if self.kind == "memory_plus":
            gating.append(self.gemm(B, v, d))
            if not self.gate:
                gating.append(self.elementwise(2 * B * v, B * v))
            gating += [self.gemm(v, d, B), self.elementwise(B * d, d),
                       self.elementwise(3 * B * v, 2 * B * v), self.gemm(d, v, B),
                       self.elementwise(B * v, v), self.gemm(B, d, v, True)]
        elif self.kind == "peer":
            gating += [self.elementwise(2 * B * hk, 2 * B * hk),
                       self.elementwise(4 * B * hk, 2 * B * hk)]
        stage("gating_bwd", *gating)
        bag = [self.bag_bwd(self.w, True, True)]
        if self.kind == "peer":
            bag += [self.bag_bwd(d, False, True), self.bag_fwd(d),
                    self.elementwise(2 * B * d, B * d)]
        stage("bag_bwd", *bag)
        stage("softmax_bwd", self.elementwise(2 * B * hk, B * hk))
        stage("search_bwd", (search_bwd_bytes(B, self.h, self.nk, self.n, self.k, 4, S_IDX),
                             4 * B * hk * self.n))
        stage("projection_bwd", self.gemm(d, hn, B), self.elementwise(B * hn, hn),
              self.gemm(B, d, hn, True))
        return out


def shape_name(a):
    return (f"{a.kind}_{a.dtype}_b{a.batch}_d{a.d_model}_h{a.heads}_nk{a.n_keys}_n{a.k_dim}"
            f"_k{a.k}_v{a.d_model if a.kind == 'peer' else a.value_dim}"
            + ("_qknorm" if a.qk_norm else "") + ("_gate" if a.gate else ""))


def check_costs(path):
    """Compares the restated stage bytes and flops with a bench_memory_layer JSON record; returns
    the exit status (0: all equal to 1e-9 relative)."""
    with open(path) as f:
        doc = json.load(f)
    ctx = doc["context"]
    a = argparse.Namespace(
        batch=int(ctx["memory_layer_batch"]), d_model=int(ctx["memory_layer_d_model"]),
        heads=int(ctx["memory_layer_heads"]), n_keys=int(ctx["memory_layer_n_keys"]),
        k_dim=int(ctx["memory_layer_k_dim"]), k=int(ctx["memory_layer_k"]),
        value_dim=int(ctx["memory_layer_value_dim"]), kind=ctx["memory_layer_kind"],
        gate=ctx["memory_layer_gate"] == "true", dtype=ctx["memory_layer_dtype"])
    s = Shape(a)
    mine = {n: (b, f) for bwd in (False, True) for n, b, f in s.stages(bwd)}
    checked, bad = 0, []
    for r in doc["benchmarks"]:
        if "/stage:" not in r["name"] or "bytes" not in r:
            continue
        stage = r["name"].split("/stage:")[1].split("/")[0]
        want = mine.get(stage)
        got = (r["bytes"], r["flops"])
        checked += 1
        if want is None or any(abs(w - g) > 1e-9 * max(abs(g), 1) for w, g in zip(want, got)):
            bad.append(f"{r['name']}: bench {got}, restated {want}")
    if not checked:
        print(f"check-costs: {path} has no stage rows with bytes and flops", file=sys.stderr)
        return 1
    for line in bad:
        print("check-costs: mismatch " + line, file=sys.stderr)
    print(f"check-costs: {checked - len(bad)} of {checked} stage rows agree")
    return 1 if bad else 0


# ---- the layer ----

class Layer:
    def __init__(self, torch, a, device, values_dtype, gen):
        self.torch, self.a, self.F = torch, a, torch.nn.functional
        d, hn, v, h, nk, half = a.d_model, a.heads * a.k_dim, a.value_dim, a.heads, a.n_keys, \
            a.k_dim // 2

        def uniform(*shape, scale=1.0, dtype=torch.float32):
            # in place: the value table can be several GiB
            return torch.rand(shape, generator=gen).mul_(2).sub_(1).mul_(scale).to(dtype).to(device)

        N = nk * nk
        # as bench_memory_layer: weights scaled by 1/sqrt(fan-in), biases by 0.1
        self.p = {"wq": uniform(hn, d, scale=d ** -0.5), "bq": uniform(hn, scale=0.1),
                  "k1": uniform(h, nk, half), "k2": uniform(h, nk, half),
                  "values": uniform(N, d if a.kind == "peer" else v, dtype=values_dtype)}
        if a.kind == "peer":
            self.p["down"] = uniform(N, d, scale=d ** -0.5, dtype=values_dtype)
        if a.kind == "memory_plus":
            self.p.update(w1=uniform(v, d, scale=d ** -0.5), b1=uniform(v, scale=0.1),
                          w2=uniform(d, v, scale=v ** -0.5), b2=uniform(d, scale=0.1))
        if a.gate:
            self.p["wg"] = uniform(d, scale=d ** -0.5)

    def forward(self, x, mark, keep=None):
        """out; mark(stage) is called as each stage starts; (stage, its output) pairs are
        appended to `keep` (for the backward's hooks) when it is a list."""
        torch, F, a, p = self.torch, self.F, self.a, self.p
        B, h, k = x.shape[0], a.heads, a.k
        kept = keep if keep is not None else []

        def keep_(stage, t):
            kept.append((stage, t))
        mark("projection")
        q = F.linear(x, p["wq"], p["bq"]).view(B, h, a.k_dim)
        keep_("projection", q)
        mark("search")
        scores, idx = pk_topk(torch, q, p["k1"], p["k2"], k, a.qk_norm)
        keep_("search", scores)
        mark("softmax")
        w = torch.softmax(scores, dim=-1).view(B, h * k)
        keep_("softmax", w)
        mark("bag")
        idx = idx.view(B, h * k)
        V = p["values"]
        if a.kind == "peer":
            rows = F.embedding(idx, p["down"], sparse=a.dv == "sparse").float()
            z = torch.einsum("bjd,bd->bj", rows, x)  # U[I]·x
            keep_("bag", z)
            mark("gating")
            coef = w * F.gelu(z)
            keep_("gating", coef)
            mark("bag")
            out = F.embedding_bag(idx, V, per_sample_weights=coef.to(V.dtype), mode="sum",
                                  sparse=a.dv == "sparse").float()
            keep_("bag", out)
        else:
            out = F.embedding_bag(idx, V, per_sample_weights=w.to(V.dtype), mode="sum",
                                  sparse=a.dv == "sparse").float()
            keep_("bag", out)
            if a.kind == "memory_plus":
                mark("gating")
                hidden = F.linear(x, p["w1"], p["b1"])
                out = F.linear(out * F.silu(hidden), p["w2"], p["b2"])
        if a.gate:
            mark("gating")
            out = out * torch.sigmoid(x @ p["wg"]).unsqueeze(-1)
        if a.gate or a.kind != "memory":
            keep_("gating", out)
        mark(None)
        return out


# ---- timing by stage ----

class StageTimer:
    """Marks on the host clock (CPU) or CUDA events (GPU); intervals() after the call."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device == "cuda"
        self.marks = []

    def now(self):
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        import time
        return time.perf_counter()

    def mark(self, stage):
        self.marks.append((stage, self.now()))

    def seconds(self, t0, t1):
        return t0.elapsed_time(t1) / 1e3 if self.cuda else t1 - t0

    def intervals(self):
        """{stage: seconds} and the total from the first mark to the last."""
        if self.cuda:
            self.torch.cuda.synchronize()
        out = {}
        for (stage, t0), (_, t1) in zip(self.marks, self.marks[1:]):
            if stage is not None:
                out[stage] = out.get(stage, 0.0) + self.seconds(t0, t1)
        total = self.seconds(self.marks[0][1], self.marks[-1][1])
        self.marks = []
        return out, total


def run_call(layer, timer_, x, dout, grads_of, train):
    """One call; returns ({stage: seconds}, total seconds)."""
    torch = layer.torch
    if not train:
        with torch.no_grad():
            timer_.mark("start")
            layer.forward(x, timer_.mark)
        marks, total = timer_.intervals()
        marks.pop("start", None)
        return marks, total
    keep = []
    timer_.mark("start")
    out = layer.forward(x, timer_.mark, keep)
    last = timer_.marks[-1]
    handles = []
    for stage, t in keep:
        handles.append(t.register_hook(lambda g, s=stage: timer_.mark(s + "_bwd")))
    # the backward starts in the last stage of the forward
    timer_.marks[-1] = (keep[-1][0] + "_bwd", last[1])
    torch.autograd.grad(out, grads_of, dout)
    timer_.mark(None)
    for hd in handles:
        hd.remove()
    marks, total = timer_.intervals()
    marks.pop("start", None)
    return marks, total


# ---- main ----

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shape", choices=sorted(PRESETS), default="paper",
                   help="bench_memory_layer's presets; size flags given beside it win")
    for name, what in (("batch", "tokens B"), ("d-model", "model width d"), ("heads", "heads h"),
                       ("n-keys", "sub-keys per half (N = n_keys^2)"),
                       ("k-dim", "query width n (even)"), ("k", "top-k per head")):
        p.add_argument("--" + name, type=int, default=None, help=what + " (default: the preset's)")
    p.add_argument("--value-dim", type=int, default=0, help="value width v; 0 = d_model")
    p.add_argument("--kind", choices=["memory", "memory_plus", "peer"], default="memory_plus")
    p.add_argument("--qk-norm", action="store_true", help="RMS-normalise query halves and sub-keys")
    p.add_argument("--gate", action="store_true", help="the scalar output gate sigmoid(x*wg)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="element type of the value table (and PEER's down experts)")
    p.add_argument("--direction", choices=["fwd", "fwd_bwd", "all"], default="all")
    p.add_argument("--dv", choices=["sparse", "dense"], default="sparse",
                   help="torch's value-table gradient (embedding_bag sparse=)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    add_run_args(p, "input sets (x, dout) rotated between calls")
    p.add_argument("--peak-tflops", type=float, default=67, help="nominal peak (H100 SXM fp32)")
    p.add_argument("--json", metavar="FILE", help="write Google-Benchmark-style JSON here")
    p.add_argument("--check-costs", metavar="BENCH_JSON",
                   help="only compare the restated stage bytes and flops with this "
                        "bench_memory_layer record (no torch needed)")
    a = p.parse_args(argv)
    if a.check_costs:
        return check_costs(a.check_costs)
    for key, value in PRESETS[a.shape].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.value_dim == 0:
        a.value_dim = a.d_model
    for name in ("batch", "d_model", "heads", "n_keys", "k_dim", "k", "reps", "sets"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)}: must be at least 1")
    if a.k_dim % 2:
        p.error(f"--k-dim {a.k_dim}: must be even (two halves)")
    if a.k > a.n_keys:
        p.error(f"--k {a.k}: accepted 1 <= k <= n_keys = {a.n_keys}")
    if a.kind == "memory" and a.value_dim != a.d_model:
        p.error(f"--value-dim {a.value_dim} with --kind memory: must equal --d-model {a.d_model}")

    torch = import_torch("memory_layer_torch", a.device, a.threads, thp=not a.no_thp)
    if torch is None:
        return SKIP
    values_dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    shape = Shape(a)
    name = shape_name(a)
    backend = f"torch_{a.device}"
    print("memory_layer_torch configuration")
    print(torch_line(torch, a.device))
    print(f"  kind {a.kind}, batch {a.batch}, d_model {a.d_model}, heads {a.heads}, n_keys "
          f"{a.n_keys} (N = {shape.N}), k_dim {a.k_dim}, k {a.k}, value_dim {shape.w}, values "
          f"{a.dtype}{', qk-norm' if a.qk_norm else ''}{', scalar gate' if a.gate else ''}, "
          f"dV {a.dv}, reps {a.reps}, sets {a.sets}")
    print("  % of floor: tools/report.py computes it against the ceilings bench_memory_layer "
          "measured on the same machine")

    gen = torch.Generator().manual_seed(a.seed)
    layer = Layer(torch, a, a.device, values_dtype, gen)
    sets = [{"x": (torch.rand((a.batch, a.d_model), generator=gen) * 2 - 1).to(a.device),
             "dout": (torch.rand((a.batch, a.d_model), generator=gen) * 2 - 1).to(a.device)}
            for _ in range(a.sets)]
    timer_ = StageTimer(torch, a.device)
    rows_out = []

    def measure_row(op, train, bytes_, flops, stages):
        grads_of = None
        if train:
            for t in layer.p.values():
                t.requires_grad_(True)
            for st in sets:
                st["x"].requires_grad_(True)
        per_stage, totals = {s[0]: [] for s in stages}, []
        for i in range(2 + a.reps):  # two warm-up calls
            st = sets[i % len(sets)]
            if train:
                grads_of = [st["x"]] + list(layer.p.values())
            marks, total = run_call(layer, timer_, st["x"], st["dout"], grads_of, train)
            if i < 2:
                continue
            totals.append(total)
            for s in per_stage:
                per_stage[s].append(marks.get(s, 0.0))
        row_name = f"{op}/{backend}/autograd/{name}" if train else f"{op}/{backend}/eager/{name}"

        def columns(med):
            gbs, tflops = bytes_ / med / 1e9, flops / med / 1e12
            return {"us_per_token": med / a.batch * 1e6, "tokens_per_s": a.batch / med,
                    "GB/s": gbs, "TFLOP/s": tflops, "pct_peak": 100 * gbs / a.peak_gbs,
                    "pct_peak_tflops": 100 * tflops / a.peak_tflops}
        r = aggregate_row(row_name, totals, a.reps, bytes_, columns)
        rows_out.append(r)
        print(f"{r['name']:<100} {r['real_time']:10.3f} ms  us_per_token={r['us_per_token']:.3f} "
              f"tokens_per_s={r['tokens_per_s']:.1f} GB/s={r['GB/s']:.3f} "
              f"TFLOP/s={r['TFLOP/s']:.4f}")
        med_total = statistics.median(totals)
        inside = [sum(per_stage[s][i] for s in per_stage) for i in range(len(totals))]
        outside = statistics.median([t - s for t, s in zip(totals, inside)])
        for stage, b, f in list(stages) + [("outside", 0, 0)]:
            sec = statistics.median(per_stage[stage]) if stage in per_stage else outside
            sr = {"name": f"{row_name}/stage:{stage}/iterations:1/manual_time",
                  "run_name": f"{row_name}/stage:{stage}/iterations:1/manual_time",
                  "run_type": "iteration", "repetitions": 1, "iterations": 1,
                  "real_time": sec * 1e3, "cpu_time": sec * 1e3, "time_unit": "ms",
                  "pct_time": 100 * sec / med_total}
            text = f"  stage {stage:<15} {sec * 1e3:10.3f} ms  {100 * sec / med_total:5.1f}%"
            if stage != "outside":
                sr.update(bytes=b, flops=f)
                if sec > 0:
                    sr["GB/s"] = b / sec / 1e9
                    text += f"  GB/s={sr['GB/s']:.3f}"
                    if f:
                        sr["GFLOP/s"] = f / sec / 1e9
                        text += f" GFLOP/s={sr['GFLOP/s']:.3f}"
            rows_out.append(sr)
            print(text)

    fwd_b, fwd_f = shape.fwd_totals()
    if a.direction in ("fwd", "all"):
        measure_row("memory_layer_fwd", False, fwd_b, fwd_f, shape.stages(False))
    if a.direction in ("fwd_bwd", "all"):
        bwd_b, bwd_f = shape.bwd_totals()
        measure_row("memory_layer_fwd_bwd", True, fwd_b + bwd_b, fwd_f + bwd_f,
                    shape.stages(False) + shape.stages(True))

    if a.json:
        write_json(a.json, "tools/peers/memory_layer_torch.py", torch, a.device, {
            "memory_layer_kind": a.kind,
            "memory_layer_batch": str(a.batch),
            "memory_layer_d_model": str(a.d_model),
            "memory_layer_heads": str(a.heads),
            "memory_layer_n_keys": str(a.n_keys),
            "memory_layer_k_dim": str(a.k_dim),
            "memory_layer_k": str(a.k),
            "memory_layer_value_dim": str(shape.w),
            "memory_layer_dtype": a.dtype,
            "memory_layer_qk_norm": "true" if a.qk_norm else "false",
            "memory_layer_gate": "true" if a.gate else "false",
            "memory_layer_dv": a.dv,
            "peak_gbs": str(a.peak_gbs),
            "peak_tflops": str(a.peak_tflops),
        }, rows_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
