#!/usr/bin/env python3
"""How every CUDA variant's global memory requests coalesce, counted on the CPU by simt.

    tools/simt_access_report.py                      # writes reports/simt_access.md
    tools/simt_access_report.py --out /tmp/access.md --cli build/release/tools/cli/memlayers

Runs each simt variant of embbag_fwd, embbag_bwd, pk_topk_fwd and pk_topk_bwd once through the
memlayers CLI with SIMT_ACCESS_REPORT=1 (simt/simt.h, AccessCounter), on small inputs written
here as .npy, in fp32 and bf16, and tabulates per kernel and source location: the warp-wide
requests, the 32-byte sectors per request and the share of the sectors' bytes the lanes asked
for. Only cache-hinted accesses (__ldg, __stwb, __stcs, cp.async, ...) are counted: the ones
that carry the kernels' bytes carry one. A GPU's Nsight Compute pass (profiles/ncu.sh, the
summary's "ld / st sectors per request") measures the same thing on the hardware.
Shapes: EmbeddingBag 16 bags of k 32 over 4096 rows of dim 1024; pk_topk 64 tokens, 4 heads,
256 sub-keys a half, k_dim 128, k 32. Needs the release build's memlayers (tools/run builds it).
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, K, ROWS, DIM = 16, 32, 4096, 1024
TOKENS, HEADS, NKEYS, KDIM, TOPK = 64, 4, 256, 128, 32


def write_npy(path, descr, shape, values):
    """A C-order .npy of `values` ('<f4' floats or '<i8' integers), without numpy."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, "".join("%d, " % n for n in shape))
    pad = 64 - (10 + len(header) + 1) % 64
    header += " " * pad + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(struct.pack("<%d%s" % (len(values), "f" if descr == "<f4" else "q"), *values))


def inputs(d):
    rng = random.Random(7)
    unit = lambda n: [rng.uniform(-1, 1) for _ in range(n)]
    write_npy(os.path.join(d, "V.npy"), "<f4", (ROWS, DIM), unit(ROWS * DIM))
    write_npy(os.path.join(d, "idx.npy"), "<i8", (BATCH, K),
              [rng.randrange(ROWS) for _ in range(BATCH * K)])
    write_npy(os.path.join(d, "w.npy"), "<f4", (BATCH, K), unit(BATCH * K))
    write_npy(os.path.join(d, "dy.npy"), "<f4", (BATCH, DIM), unit(BATCH * DIM))
    write_npy(os.path.join(d, "q.npy"), "<f4", (TOKENS, HEADS, KDIM), unit(TOKENS * HEADS * KDIM))
    for name in ("K1.npy", "K2.npy"):
        write_npy(os.path.join(d, name), "<f4", (HEADS, NKEYS, KDIM // 2),
                  unit(HEADS * NKEYS * KDIM // 2))
    write_npy(os.path.join(d, "ds.npy"), "<f4", (TOKENS, HEADS, TOPK), unit(TOKENS * HEADS * TOPK))


def command(op, variant, dtype, d):
    f = lambda name: os.path.join(d, name)
    common = ["--backend", "simt", "--variant", variant, "--dtype", dtype]
    if op.startswith("embbag"):
        args = ["embbag", "--indices", f("idx.npy"), "--weights", f("w.npy"), "--values",
                f("V.npy")] + common
        if op == "embbag_fwd":
            return args + ["--out", f("y.npy")]
        return args + ["--backward", "--grad-out", f("dy.npy"), "--grad-values", f("dV.npy"),
                       "--grad-weights", f("dw.npy")]
    args = ["pk-topk", "--queries", f("q.npy"), "--keys1", f("K1.npy"), "--keys2", f("K2.npy"),
            "--k", str(TOPK), "--indices", f("i_%s.npy" % dtype)] + common
    if op == "pk_topk_fwd":
        return args + ["--scores", f("s.npy")]
    return args + ["--backward", "--grad-scores", f("ds.npy"), "--grad-queries", f("dq.npy"),
                   "--grad-keys1", f("dk1.npy"), "--grad-keys2", f("dk2.npy")]


def counted(cli, args):
    """The report lines of one run: (kernel, op, where, requests, sectors/request, used %)."""
    env = dict(os.environ, SIMT_ACCESS_REPORT="1")
    p = subprocess.run([cli] + args, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("simt_access_report: %s failed:\n%s" % (" ".join(args[:1]), p.stderr))
    lines = p.stderr.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("simt access report")) + 2
    rows = []
    for line in lines[start:]:
        kernel, op, where, requests, per_request, used = line.split()
        rows.append((kernel, op, where, int(requests), float(per_request), float(used.rstrip("%"))))
    return rows


def declared(where):
    """The reason the kernel source gives for a partial access at `where` (path:line:column from
    the repository root), from a "partial sectors: ..." comment on that line or the one above."""
    path, line = where.rsplit(":", 2)[:2]
    try:
        lines = open(os.path.join(ROOT, path), encoding="utf-8").read().splitlines()
    except OSError:
        return None
    for text in (lines[int(line) - 1], lines[int(line) - 2] if int(line) > 1 else ""):
        if "partial sectors:" in text:
            return text.split("partial sectors:", 1)[1].strip()
    return None


def checkout():
    """The checkout's commit, '+changes' when it has uncommitted ones."""
    git = lambda *a: subprocess.run(["git", "-C", ROOT] + list(a), capture_output=True,
                                    text=True).stdout.strip()
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cli", default=os.path.join(ROOT, "build", "release", "tools", "cli",
                                                  "memlayers"), help="the memlayers binary")
    ap.add_argument("--out", default=os.path.join(ROOT, "reports", "simt_access.md"))
    a = ap.parse_args()
    if not os.access(a.cli, os.X_OK):
        sys.exit("simt_access_report: no memlayers binary at %s (build the release preset, or "
                 "--cli PATH)" % a.cli)
    info = json.loads(subprocess.run([a.cli, "info", "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    ops = ("embbag_fwd", "embbag_bwd", "pk_topk_fwd", "pk_topk_bwd")
    variants = {op: [] for op in ops}
    for v in info["variants"]:
        if v["backend"] == "simt" and v["op"] in variants:
            variants[v["op"]].append(v["name"])
    out = ["# Global memory coalescing of the CUDA variants, counted by simt", "",
           "Written by `tools/simt_access_report.py` (%s, the checkout at `%s`): every simt variant once "
           "through `memlayers` with `SIMT_ACCESS_REPORT=1`. EmbeddingBag: %d bags of k %d over "
           "%d × %d rows; pk_topk: %d tokens, %d heads, %d sub-keys a half, k_dim %d, k %d. A "
           "request is a warp's accesses from one source location (simt.h, AccessCounter); "
           "\"used\" is the share of the touched sectors' bytes the lanes asked for. Only "
           "cache-hinted accesses are counted. A one-sector request at 12.5%% or 25%% is a "
           "broadcast: every lane reads the same 4 or 8 bytes." % (
               datetime.now(timezone.utc).strftime("%Y-%m-%d"), checkout(),
               BATCH, K, ROWS, DIM, TOKENS, HEADS, NKEYS, KDIM, TOPK), ""]
    wasteful = []
    with tempfile.TemporaryDirectory() as d:
        inputs(d)
        for dtype in ("fp32", "bf16"):
            for op in ops:
                out += ["## %s, %s" % (op, dtype), "",
                        "| variant | kernel | access | where | requests | sectors / request "
                        "| used |", "| --- | --- | --- | --- | ---: | ---: | ---: |"]
                for v in variants[op]:
                    print("== %s %s %s" % (op, v, dtype), file=sys.stderr)
                    for kernel, acc, where, req, per, used in counted(a.cli, command(op, v, dtype,
                                                                                     d)):
                        out.append("| %s | `%s` | %s | `%s` | %d | %.2f | %.1f%% |" % (
                            v, kernel, acc, where, req, per, used))
                        if used < 100 and per > 1:
                            wasteful.append(("%s/%s %s %s %s: %.2f sectors a request, %.1f%% used"
                                             % (op, v, dtype, acc, where, per, used),
                                             declared(where)))
                out.append("")
    out += ["## Requests that fetch bytes nobody asked for", "",
            "Requests of more than one sector that leave some of it unused. Where the kernel "
            "source says why (a comment \"partial sectors: ...\" on the access's line or the "
            "one above; tests/simt/access_test.cpp requires it), the reason follows.", ""]
    out += ["- %s%s" % (w, " (declared: %s)" % why if why else "") for w, why in wasteful] \
        if wasteful else ["None: every counted request of more than one sector uses all of it."]
    if any(w.startswith("embbag_fwd/") and " bf16 store " in w for w, _ in wasteful):
        out += ["", "The bf16 forwards' stores: the CLI's output is fp32 by default, so a lane's 8 "
                "bf16 columns (one 16-byte row load) become 32 bytes of output, stored as two "
                "16-byte vectors 32 bytes apart; each request fills half of each sector it "
                "touches and the other fills the rest (the L2 merges them). With `--out-dtype "
                "bf16` the stores are whole."]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print("wrote %s" % a.out, file=sys.stderr)


if __name__ == "__main__":
    main()
