#!/usr/bin/env python3
"""The sharded memory layer's communication against its local work, on paper (issue 8).

    tools/scaling_model.py                          # writes reports/scaling_model.md
    tools/scaling_model.py --out -                  # prints it instead

A model, not a measurement: byte counts from the sharded EmbeddingBag's pattern
(dist/sharded_embbag.h: the value table split along the embedding dimension over P GPUs, the
bags all-gathered, the outputs and dy through all-to-alls, the dw partial sums reduce-scattered)
and the op's own floors (DESIGN.md §5), divided by nominal bandwidths. Every formula is in
FORMULAS below, the one place they are written; the report prints their text beside the numbers
they give. Before writing, the script checks the closed forms against a rank-by-rank count of
what each rank hands to each collective (the header's definition), so the two cannot drift.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# ---- the shapes (Memory Layers at Scale; DESIGN.md §1) ----
HEADS, TOPK = 4, 32
K = HEADS * TOPK                   # rows in one token's bag: 128
N_KEYS = 1024
N = N_KEYS * N_KEYS                # rows of the value table: 1,048,576
DIMS = [1024, 4096, 8192]          # value width = d_model
S_V = {"fp32": 4, "bf16": 2}       # bytes per value
S_IDX, S_W = 8, 4                  # int64 indices, fp32 weights
S_OUT = 4                          # the all-to-all carries fp32 partial sums (and fp32 dy)
RANKS = [1, 2, 8, 64]
GPUS_PER_NODE = 8
BIG_MEMORY_PARAMS = 64e9           # the largest memory the issue names: 64B parameters
# AdamW's state per value: fp32 m and v, plus an fp32 master copy when the table is bf16.
STATE_BYTES = {"fp32": 8, "bf16": 12}
GPU_MEMORY = {"H100": 80e9, "H200": 141e9}  # bytes on one GPU (nominal)

# ---- the machines (nominal figures; GB = 1e9 bytes) ----
HBM = {"H100": 3.35e12, "H200": 4.8e12}
# NVLink 4 (H100/H200 SXM): 18 links of 25 GB/s per direction = 450 GB/s per direction per GPU,
# the "900 GB/s" being both directions together. A rank sends what it sends while it receives
# as much in the other direction, so its time is bytes sent / 450 GB/s. Through the NVSwitch of
# an 8-GPU node every pair of GPUs gets that rate.
NVLINK = 450e9
# InfiniBand NDR: 400 Gb/s = 50 GB/s per direction, one NIC per GPU (the DGX/HGX H100 layout).
IB = 50e9

# ---- the formulas: bytes per token that a rank owns, and times ----
# Symbols: P ranks, G GPUs per node, k rows per bag, dim value width, s_V bytes per value,
# s_idx + s_w bytes per bag slot (index and weight), b tokens per rank (cancels out).
FORMULAS = [
    ("bag", "bytes of one token's bag (indices and weights)", "k·(s_idx + s_w)",
     lambda k, dim, sv, P: k * (S_IDX + S_W)),
    ("ag_fwd", "forward all-gather of the bags, sent", "k·(s_idx + s_w)·(P−1)",
     lambda k, dim, sv, P: k * (S_IDX + S_W) * (P - 1)),
    ("a2a_fwd", "forward all-to-all of the fp32 outputs, sent", "dim·4·(P−1)/P",
     lambda k, dim, sv, P: dim * S_OUT * (P - 1) / P),
    ("ag_bwd", "backward all-gather of the bags again, sent", "k·(s_idx + s_w)·(P−1)",
     lambda k, dim, sv, P: k * (S_IDX + S_W) * (P - 1)),
    ("a2a_bwd", "backward all-to-all of dy (fp32), sent", "dim·4·(P−1)/P",
     lambda k, dim, sv, P: dim * S_OUT * (P - 1) / P),
    ("rs_bwd", "backward reduce-scatter of the dw partial sums, sent (and received: a rank gets "
     "the P−1 other shards' partial dw of its own tokens)", "k·4·(P−1)",
     lambda k, dim, sv, P: k * 4 * (P - 1)),
    ("hbm_fwd", "forward HBM bytes (the bag over all P·b tokens of the group, dim/P columns, "
     "divided by the b tokens a rank owns)", "k·dim·s_V + P·k·(s_idx + s_w) + dim·4",
     lambda k, dim, sv, P: k * dim * sv + P * k * (S_IDX + S_W) + dim * 4),
    ("hbm_bwd", "backward HBM bytes (dw re-reads the rows and reads dy, writes dw; compact dV "
     "writes at most every touched row and sorts the P·b bags' indices twice)",
     "k·dim·s_V + dim·4 + P·k·4 + k·dim·4 + 2·P·k·(s_idx + s_w)",
     lambda k, dim, sv, P: k * dim * sv + dim * 4 + P * k * 4 + k * dim * 4
     + 2 * P * k * (S_IDX + S_W)),
    ("table", "value-table bytes per GPU", "N·dim·s_V / P",
     lambda k, dim, sv, P: N * dim * sv / P),
]
F = {name: fn for name, _, _, fn in FORMULAS}
# How the sent bytes split over the links: a collective sends the same count to each peer (the
# all-gather its bag, the all-to-all dim·4/P, the reduce-scatter k·4), so min(P, G) − 1 peers'
# worth go over NVLink and P − min(P, G) peers' worth over InfiniBand; the two run at once
# (grouped send/recv progresses every peer together), so a collective takes the longer of them.
LINK_TEXT = ("t_comm = max(bytes_NVLink / 450 GB/s, bytes_IB / 50 GB/s), bytes_NVLink = "
             "sent·(min(P,G)−1)/(P−1), bytes_IB = sent·(P−min(P,G))/(P−1); "
             "t_HBM = bytes_HBM / HBM bandwidth; serial step = t_HBM + t_comm, "
             "overlapped = max(t_HBM, t_comm)")


def split_links(sent, P):
    """(NVLink bytes, InfiniBand bytes) of `sent` bytes spread evenly over the P−1 peers."""
    if P == 1:
        return 0.0, 0.0
    local = min(P, GPUS_PER_NODE) - 1
    return sent * local / (P - 1), sent * (P - 1 - local) / (P - 1)


def t_comm(sent, P):
    nvl, ib = split_links(sent, P)
    return max(nvl / NVLINK, ib / IB)


def direction(dim, sv, P, which):
    """Per token a rank owns: (HBM bytes, [(collective, bytes sent)])."""
    if which == "fwd":
        colls = [("all-gather", F["ag_fwd"](K, dim, sv, P)),
                 ("all-to-all", F["a2a_fwd"](K, dim, sv, P))]
        return F["hbm_fwd"](K, dim, sv, P), colls
    colls = [("all-gather", F["ag_bwd"](K, dim, sv, P)),
             ("all-to-all", F["a2a_bwd"](K, dim, sv, P)),
             ("reduce-scatter", F["rs_bwd"](K, dim, sv, P))]
    return F["hbm_bwd"](K, dim, sv, P), colls


# ---- the closed forms against a rank-by-rank count (dist/sharded_embbag.h's definition) ----
def check_against_rank_count():
    b = 3  # tokens per rank; any value: it cancels
    for P in RANKS:
        for dim in [8192, 1000]:  # 1000: the column split uneven at P = 64
            width = [dim // P + (1 if r < dim % P else 0) for r in range(P)]
            total = P * b
            ag = sum(b * K * (S_IDX + S_W) * (P - 1) for r in range(P)) / total
            a2a_fwd = sum((total - b) * width[r] * S_OUT for r in range(P)) / total
            a2a_bwd = sum(b * (dim - width[r]) * S_OUT for r in range(P)) / total
            rs = sum((total - b) * K * 4 for r in range(P)) / total
            for name, counted in [("ag_fwd", ag), ("a2a_fwd", a2a_fwd), ("a2a_bwd", a2a_bwd),
                                  ("rs_bwd", rs)]:
                closed = F[name](K, dim, 2, P)
                if abs(closed - counted) > 1e-9 * max(1.0, counted):
                    sys.exit(f"scaling_model: {name} at P={P}, dim={dim}: the closed form gives "
                             f"{closed}, the rank-by-rank count {counted}")


# ---- the report ----
def kib(x):
    return f"{x / 1024:,.1f}"


def ns(t):
    return f"{t * 1e9:,.1f}"


def gib(x):
    return f"{x / 2**30:,.2f}"


def report():
    out = []
    w = out.append
    w("# The sharded memory layer's communication: a model on paper")
    w("")
    w("*Generated by `tools/scaling_model.py` (issue 8); do not edit by hand — change the script "
      "and run it again. Nothing here is measured: the numbers are byte counts divided by nominal "
      "bandwidths, floors that real runs will not reach.*")
    w("")
    w("## Assumptions")
    w("")
    w(f"- Shapes (Memory Layers at Scale): h = {HEADS} heads × k = {TOPK} per head, so a token's "
      f"bag has k = {K} rows; n_keys = {N_KEYS}, so N = {N:,} rows per memory; value width = "
      f"d_model ∈ {{{', '.join(map(str, DIMS))}}}; values fp32 or bf16; int64 indices and fp32 "
      "weights in the bags; the outputs and dy travel as fp32 (the all-to-all carries fp32 "
      "partial sums, `dist/sharded_embbag.h`).")
    w("- The pattern of `dist/sharded_embbag.h`: the table split along dim over P GPUs; each rank's "
      "tokens are its own; forward: the bags all-gathered, each rank sums its dim/P columns for "
      "all P·b tokens of the group, an all-to-all returns the outputs; backward: the bags "
      "all-gathered again, dy through the matching all-to-all, dV local to its shard, the dw "
      "partial sums reduce-scattered.")
    w("- Counts are per token that a rank owns (b tokens per rank; b cancels), bytes a rank *sends* "
      "to other ranks (its own block is a local copy); in this balanced pattern it receives as "
      "many. The script checks the closed forms against a rank-by-rank count, including an "
      "uneven column split.")
    w(f"- HBM: H100 SXM {HBM['H100'] / 1e12:.2f} TB/s, H200 {HBM['H200'] / 1e12:.1f} TB/s (nominal). "
      "HBM bytes are the op's floors of DESIGN.md §5 applied to a shard (dim/P columns, P·b bags): "
      "the gathered rows, the bags read, the outputs written (backward: dw's re-read of the rows "
      "and dy, compact dV's writes at most one row per bag slot and its two sorts of the indices). "
      "The product-key search, the projections and the gating are not in it: they are the same "
      "for every P (each rank searches only its own tokens).")
    w(f"- NVLink 4 within a node of G = {GPUS_PER_NODE} GPUs: {NVLINK / 1e9:.0f} GB/s per direction "
      "per GPU (18 links × 25 GB/s; the often-quoted 900 GB/s counts both directions). A rank "
      "sends while it receives as much, so its time is bytes sent / 450 GB/s; the NVSwitch gives "
      "every pair that rate.")
    w(f"- InfiniBand NDR across nodes: 400 Gb/s = {IB / 1e9:.0f} GB/s per direction per GPU (one NIC "
      "per GPU). At P = 64 (8 nodes), a rank's 63 peers are 7 on its node and 56 on others: the "
      "all-gather sends its bag 56 times over IB, the all-to-all (P−8)/P of dim·4.")
    w("- The NCCL communicator's send/recv collectives (`dist/cuda/comm_nccl.cu`) progress all "
      "peers at once, so a collective takes the longer of its NVLink and IB parts; no protocol "
      "overheads, latencies or kernel-launch costs are counted (at small batches the latency of a "
      "collective, some µs, dominates instead).")
    w("")
    w("## The formulas")
    w("")
    w("| quantity | formula |")
    w("| --- | --- |")
    for _, what, text, _ in FORMULAS:
        w(f"| {what} | `{text}` |")
    w(f"| time | `{LINK_TEXT}` |")
    w("")

    # Memory per GPU
    w("## The table's memory per GPU")
    w("")
    w("The reason to shard at all: N·dim·s_V / P, the value table alone (AdamW adds fp32 m and v, "
      "and an fp32 master for a bf16 table: 8 or 12 bytes per value more, sharded the same way).")
    w("")
    w("| dim | values | " + " | ".join(f"P = {P} (GiB)" for P in RANKS)
      + " | table + AdamW state, P = 1 (GiB) |")
    w("| ---: | --- | " + " | ".join("---:" for _ in RANKS) + " | ---: |")
    for dim in DIMS:
        for dt, sv in S_V.items():
            state = N * dim * (sv + STATE_BYTES[dt])
            w(f"| {dim} | {dt} | " + " | ".join(gib(F["table"](K, dim, sv, P)) for P in RANKS)
              + f" | {gib(state)} |")
    big = BIG_MEMORY_PARAMS
    w("")
    w(f"One memory of 1M × 8192 in bf16 is {gib(N * 8192 * 2)} GiB ({N * 8192 / 1e9:.1f}B "
      f"parameters). A {big / 1e9:.0f}B-parameter memory is {big * 2 / 2**30:,.0f} GiB in bf16 and "
      f"{big * 14 / 2**30:,.0f} GiB with its AdamW state (2 + 12 bytes per value): more than one "
      f"H200 (141 GB) holds, {big * 14 / 2**30 / 8:,.0f} GiB per GPU at P = 8, "
      f"{big * 14 / 2**30 / 64:,.1f} GiB at P = 64. At N = 1M every shape above fits one H200 "
      f"with its state (the largest, dim 8192 in bf16, {gib(N * 8192 * 14)} GiB of "
      f"{GPU_MEMORY['H200'] / 2**30:.0f}), though not beside much else; on an 80 GB H100 the "
      "dim-8192 tables with their state need P ≥ 2.")
    w("")

    # Bytes per token by collective
    w("## Bytes sent per token (independent of the table's dtype)")
    w("")
    w("KiB per token a rank owns; in brackets the part over InfiniBand.")
    w("")
    w("| dim | P | fwd all-gather | fwd all-to-all | bwd all-gather | bwd all-to-all "
      "| bwd reduce-scatter | fwd + bwd |")
    w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for dim in DIMS:
        for P in RANKS:
            _, cf = direction(dim, 2, P, "fwd")
            _, cb = direction(dim, 2, P, "bwd")
            cells = []
            for _, sent in cf + cb:
                ib = split_links(sent, P)[1]
                cells.append(kib(sent) + (f" ({kib(ib)})" if ib else ""))
            total = sum(s for _, s in cf + cb)
            total_ib = sum(split_links(s, P)[1] for _, s in cf + cb)
            cells.append(kib(total) + (f" ({kib(total_ib)})" if total_ib else ""))
            w(f"| {dim} | {P} | " + " | ".join(cells) + " |")
    w("")

    # Time per token
    for which, title in [("fwd", "forward"), ("bwd", "backward")]:
        w(f"## Time per token, {title}")
        w("")
        w("ns per token a rank owns. t_HBM: the shard's bag at the HBM floor (H100 | H200); "
          "t_comm: the collectives at the link floor; comm/HBM on the H200: above 1, "
          "communication dominates (without overlap the step takes t_HBM + t_comm, with full "
          "overlap the larger).")
        w("")
        w("| dim | values | P | HBM KiB | t_HBM H100 | t_HBM H200 | sent KiB | t_comm "
          "| comm/HBM (H200) | serial (H200) | overlapped (H200) | dominant |")
        w("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for dim in DIMS:
            for dt, sv in S_V.items():
                for P in RANKS:
                    hbm, colls = direction(dim, sv, P, which)
                    sent = sum(s for _, s in colls)
                    tc = sum(t_comm(s, P) for _, s in colls)
                    th100, th200 = hbm / HBM["H100"], hbm / HBM["H200"]
                    ratio = tc / th200
                    dom = "—" if P == 1 else ("communication" if ratio > 1 else "HBM")
                    w(f"| {dim} | {dt} | {P} | {kib(hbm)} | {ns(th100)} | {ns(th200)} "
                      f"| {kib(sent)} | {ns(tc)} | {ratio:.2f} | {ns(th200 + tc)} | {ns(max(th200, tc))} | {dom} |")
        w("")

    # The all-gather alone
    bag = F["bag"](K, 0, 0, 1)
    w("## The all-gather at the paper's shapes")
    w("")
    w(f"A token's bag is {K} × ({S_IDX} + {S_W}) = {bag:,} bytes, whatever dim and the table's "
      "dtype. Per token a rank owns, per direction (forward and backward each pay it once):")
    w("")
    w("| P | sent | over NVLink | over IB | t at the link floor | the same, hierarchical over IB |")
    w("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for P in RANKS:
        sent = F["ag_fwd"](K, 0, 0, P)
        nvl, ib = split_links(sent, P)
        # A hierarchical all-gather moves each remote bag over IB once per node, not once per GPU:
        # a node receives (P − G) bags, spread over its G NICs.
        hier_ib = bag * max(0, P - GPUS_PER_NODE) / GPUS_PER_NODE
        hier = max(nvl / NVLINK, hier_ib / IB) if P > 1 else 0.0
        w(f"| {P} | {kib(sent)} KiB | {kib(nvl)} KiB | {kib(ib)} KiB | {ns(t_comm(sent, P))} ns | "
          f"{ns(hier)} ns |")
    w("")

    # Discussion, with the numbers it quotes computed here
    def ratio(dim, sv, P, which="fwd"):
        hbm, colls = direction(dim, sv, P, which)
        return sum(t_comm(s, P) for _, s in colls) / (hbm / HBM["H200"])

    ag64 = t_comm(F["ag_fwd"](K, 0, 0, 64), 64)
    a2a64 = t_comm(F["a2a_fwd"](K, 8192, 2, 64), 64)
    w("## Discussion")
    w("")
    w("- **The local work does not shrink with P.** A rank reads dim/P columns but of all P·b "
      "tokens of the group: k·dim·s_V bytes per token it owns, the same as one GPU running its own "
      "tokens on a whole table. Sharding by columns buys memory, not bandwidth: its time per token "
      "is at best that of the unsharded layer, plus communication, plus the parts that grow with "
      "P (every rank reads all P·b bags, and the backward sorts all of them: "
      f"2·P·k·12 bytes per token, {kib(2 * 64 * K * 12)} KiB at P = 64 against "
      f"{kib(K * 1024 * 2)} KiB of rows at dim 1024 in bf16).")
    w(f"- **Within a node (P ≤ 8, NVLink) the HBM dominates** at every shape of the table but the "
      f"narrowest: at P = 8, comm/HBM on the H200 is {ratio(8192, 2, 8):.2f} (dim 8192, bf16), "
      f"{ratio(4096, 2, 8):.2f} (4096), {ratio(1024, 2, 8):.2f} (1024) in the forward; fp32 values "
      "double the HBM time and halve these ratios. With the collectives overlapped with the bag "
      "(below), an 8-GPU node shards the table at almost no cost in time.")
    w(f"- **Across nodes (P = 64, InfiniBand) communication dominates** at every shape: comm/HBM "
      f"{ratio(8192, 2, 64):.1f} (dim 8192, bf16), {ratio(1024, 2, 64):.1f} (dim 1024, bf16) in "
      "the forward. The link is 9× slower than NVLink and 7/8 of the peers are behind it.")
    w(f"- **The all-gather of the bags is small per peer but grows with P.** {bag:,} bytes per "
      f"token per peer, independent of dim: at P = 8 it is {kib(F['ag_fwd'](K, 0, 0, 8))} KiB per "
      f"token, below the all-to-all from dim 4096 on ({kib(F['a2a_fwd'](K, 4096, 2, 8))} KiB) and "
      f"{F['ag_fwd'](K, 0, 0, 8) / F['a2a_fwd'](K, 1024, 2, 8):.0f}× it at dim 1024; at P = 64 it is "
      f"{kib(F['ag_fwd'](K, 0, 0, 64))} KiB per token, "
      f"{ns(ag64)} ns at the IB floor against {ns(a2a64)} ns for the dim-8192 all-to-all: the "
      "largest term. It can shrink: int32 indices (N = 1M < 2³¹) cut a slot from 12 to 8 bytes, "
      "bf16 weights to 6; a hierarchical gather (within the node over NVLink, each remote bag over "
      "IB once per node) divides its IB bytes by G = 8 (last column above). The send/recv "
      "all-gather of `comm_nccl.cu` is the direct one, every pair of ranks; a two-level gather (or "
      "NCCL's own ncclAllGather where the counts are equal, whose ring and tree algorithms are "
      "aware of the nodes) is the next step where P crosses nodes.")
    w("- **The all-to-all is what a token-sharded output costs**: dim·4·(P−1)/P bytes per token in "
      "each direction, at most dim·4 however large P — the same volume as moving the token's "
      "fp32 output once. It would halve with bf16 partial sums (an accuracy trade: the sum over "
      "shards is of P fp32 partials per element). Across nodes (P − G)/P of it crosses IB.")
    w("- **The reduce-scatter of dw** is k·4·(P−1) bytes per token sent and as many received (a "
      "rank receives the P−1 other shards' partial dw of its own tokens): "
      f"{kib(F['rs_bwd'](K, 0, 0, 8))} KiB at P = 8, {kib(F['rs_bwd'](K, 0, 0, 64))} KiB at P = 64; "
      "like the all-gather it grows with P and not with dim.")
    w("- **Overlap.** The collectives use the links and the copy engines, the bag the SMs and HBM: "
      "with the batch split into chunks, the all-gather of chunk i+1 runs under the bag of chunk "
      "i and the all-to-all of chunk i under the bag of chunk i+1, so the step tends to the "
      "'overlapped' column. The bags need no values, so their all-gather can start as soon as the "
      "search ends, under the query projection of the next memory layer or the gating's GEMMs; "
      "the backward's second all-gather can be avoided by keeping the gathered bags from the "
      "forward (P·b·k·12 bytes per rank of memory). `dist/` today runs each collective to "
      "completion before the next step (the contract: complete on return), so it pays the "
      "'serial' column.")
    w("- **When to shard the table at all**: when it does not fit — a table and its optimiser "
      "state above what one GPU holds beside the model. At N = 1M that is the dim-8192 tables on "
      "an 80 GB GPU, and memories of tens of billions of parameters on any; shard within the node first "
      "(P ≤ 8, where the cost is small), and across nodes only when a node cannot hold it, "
      "where the all-gather's hierarchical form and overlap decide the speed. Data parallelism "
      "of the rest of the model is orthogonal: it multiplies the groups, not P.")
    w("")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "reports" / "scaling_model.md"),
                    help="where to write the report ('-': standard output)")
    args = ap.parse_args()
    check_against_rank_count()
    text = report()
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"scaling_model: wrote {args.out}")


if __name__ == "__main__":
    main()
