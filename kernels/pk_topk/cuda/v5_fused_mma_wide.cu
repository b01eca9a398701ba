// v5: v4's tensor-core fused search with twice the queries per block: 8 warps of four queries
// each (two m16 row tiles; each B fragment, and its tf32 split for fp32, serves both), so every
// key tile streamed from L2 serves 32 queries instead of 16. Same kernel (fused_mma.cuh), same
// fragments, lists and pruned pair step; only the queries per warp differ.
//
// Predicted gain over v4 at the paper's shape (B = 4096, h = 4, n_keys = 1024, n = 512): the key
// tiles' L2 traffic, which v4_fused_mma's header names as the bound, halves: 0.5 GiB of bf16
// (~0.08 ms) and 1 GiB of fp32 (~0.16 ms) at an H100's 5.5–7 TB/s. The price is occupancy: at
// k = 32 a block takes ~164 KiB of shared memory (32 row workspaces of 3 KiB and the 4-stage
// cp.async ring), so one block of 8 warps fits an SM where v4 keeps two. The ring keeps three
// steps of ~10 KB in flight, ~30 KB an SM: enough for L2's rate by v4's header's estimate, and
// what keeps a lone block from stalling on each step's loads. Expect fp32 1.3–1.6× over v4
// (under the cuBLAS sgemm floor when L2 was the bound) and bf16 about level (its bound moves to
// the selection); if one block an SM leaves the offers and the pair step exposed, v5 loses —
// which the bench shows beside v4.
// Takes k while the wide block's 32 query lists fit 227 KiB (k <= 64: past it the lists double);
// beyond that it says so, and v4_fused_mma, which drops to fewer warps, takes it.
// Measured: not yet on a GPU (simt-correct: simt emulates both mma shapes fragment-exactly).
#include "pk_topk/cuda/fused_mma.cuh"

namespace memlayers::pk_topk {
namespace {

void launch(const FwdParams& p, Stream stream) {
  launch_fused_mma<true>("pk_topk_fwd_v5_fused_mma_wide", p, stream);
}

std::string supports(const FwdParams& p) { return fused_mma_supports(p, true); }

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{"v5_fused_mma_wide", MEMLAYERS_KERNEL_BACKEND, launch,
                                           supports,
                                           "v4 with 32 queries a block (four a warp): half the "
                                           "key tiles' L2 traffic, one block an SM",
                                           true});

}  // namespace
}  // namespace memlayers::pk_topk
