// v4: v3's fused search with the scores on tensor cores, its tiles fed by cp.async. A block takes
// 16 queries of one head (the mma's M; with W < 8 warps, 2·W queries and the other rows zero) and
// streams the head's sub-keys through shared memory in tiles of 128 keys × 16 32-bit words per
// row (rows padded to 20 words so the fragment reads of a warp hit 32 distinct banks). A word holds
// two bf16 or one fp32, so a tile covers 32 or 16 dims; either way a k-step is 8 words and a lane
// reads the same words (kernels/common/mma.cuh):
//   bf16: mma.sync m16n8k16, bf16 operands as stored, fp32 accumulators;
//   fp32: mma_3xtf32_m16n8k8, each operand split into tf32 hi + lo and three m16n8k8 tf32 mma
//         (A_lo·B_hi + A_hi·B_lo + A_hi·B_hi), each product within a few 2⁻²² of |q_i·k_i|:
//         fp32-level scores, which the fp32 tests' tolerance (1e-5 of ‖q‖·‖k‖) holds them to.
// Each warp owns 16 / W of the tile's 16 n8 column blocks. The finished 16 × 128 score tile goes
// through shared memory (rows padded to 136 floats: conflict-free 8-byte stores from the
// accumulator layout) to the same warp top-k lists and pruned candidate step as v3.
// qk_norm as in v3: the key's sum of squares from the same shared tile, the scales in fp64.
// A step (16 words of the query tile's and the key tile's rows) goes into a ring of 4 shared
// stages as one cp.async group of 16-byte copies, zero-filled past the ends (kernels/common/
// async_copy.cuh), when the half-width is a multiple of 16 bytes' elements (8 bf16, 4 fp32) and
// the inputs are 16-byte aligned (the paper's shapes): three steps are in flight while the warps
// multiply the fourth, and also while they offer a finished key tile's scores to their lists;
// one barrier a step. Otherwise element loads fill the same ring when a step is started.
//
// Predicted gain over v3 at the paper's shape (B = 4096, h = 4, n_keys = 1024, n = 512): the
// scoring is 2·B·h·n_keys·n = 17.2 GFLOP; v3 runs it as FFMA, at most ~60 TFLOP/s on an
// H100/H200's CUDA cores (~0.3 ms, plus shared-memory traffic that caps it lower).
//   bf16: on tensor cores (~990 dense bf16 TFLOP/s peak, mma.sync reaching perhaps half) the
//         scoring itself takes ~0.04 ms.
//   fp32: three tf32 mma per product (~495 dense tf32 TFLOP/s peak, so ~165 for 3xTF32, perhaps
//         half of it through mma.sync): ~0.2 ms.
// What then bounds both (and v3 as well) is the key tiles' traffic from L2: every block of 16
// queries streams its head's two sub-key tables, n_keys·n elements, so the grid reads
// B·h/16 · n_keys·n elements = 1 GiB of bf16 or 2 GiB of fp32 at the paper's shape: ~0.15–0.2 ms
// and ~0.3–0.4 ms at the 5.5–7 TB/s an H100's L2 delivers. Reaching that rate needs ~20 KB in
// flight per SM (L2's bytes per cycle per SM times ~700 cycles of latency): with the ring, two
// blocks keep 2 × 3 steps of ~9 KB in flight, where loads issued a step at a time, behind two
// barriers and with none in flight during the offers (this kernel before the ring, and v3) leave
// the latency exposed once per step. Expect bf16 ~1.5–2× over v3 (bound
// by L2 and the selection: the B·h·2·n_keys offers through the warp lists and the pruned pair
// step, which v3 and v4 share), and fp32 about level with v3 or a little ahead: the bench's fp32
// compute floor is cuBLAS's sgemm without TF32 (~50 TFLOP/s, ~0.35 ms), so the L2 term decides
// whether v4 comes within 1.3× of it. v5_fused_mma_wide halves that term (32 queries a block).
// Bottlenecks left: the key tiles' L2 traffic (above), the offer rounds (a read of the k-th
// best, a compare and a ballot per 32 candidates, the pending count in a register: common.cuh),
// 32-bit fragment loads where ldmatrix would take one instruction per 8×8 block, and the tf32
// split of the query fragments, redone by each warp (all read the same 16 rows).
// Registers (sm_90, nvcc 13): see the ptxas report (tools/check_spills.py); the minimum-blocks
// bound at 8 warps keeps two blocks of 256 threads on an SM, as v3, and keeps ptxas from
// spilling around the mma (with none it chose ~80 registers and spilled). Shared memory at k = 32:
// ~103 KiB a block (the 4-stage ring ~45 KiB of it), so two blocks still fit an SM's 228 KiB.
// The kernel is in fused_mma.cuh, shared with v5_fused_mma_wide.
// Measured: not yet on a GPU (simt-correct: simt emulates both mma shapes fragment-exactly).
#include "pk_topk/cuda/fused_mma.cuh"

namespace memlayers::pk_topk {
namespace {

void launch(const FwdParams& p, Stream stream) {
  launch_fused_mma<false>("pk_topk_fwd_v4_fused_mma", p, stream);
}

std::string supports(const FwdParams& p) { return fused_mma_supports(p, false); }

MEMLAYERS_REGISTER(Fwd,
                   Variant<FwdParams>{"v4_fused_mma", MEMLAYERS_KERNEL_BACKEND, launch, supports,
                                      "v3 with the scores on tensor cores (bf16 mma.sync "
                                      "m16n8k16, fp32 as 3xTF32 m16n8k8), tiles fed by a "
                                      "4-stage cp.async ring; no score matrix",
                                      true});

}  // namespace
}  // namespace memlayers::pk_topk
