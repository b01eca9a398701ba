// Backward v3: v2's sorted runs with dw fused into the per-row pass. While a warp sums a run's
// gradient row it also holds that row's slice of V in registers, so dw[pos] = dy[b]·V[row] costs
// one more FMA per column and a warp reduction per entry instead of a second pass that re-reads
// V[idx[b,j]] for every (b, j). Pays where rows repeat (Zipf-like index distributions: a hot row
// is read once, not once per use); with uniform indices over a large table it saves little but
// the separate launch. dw is accumulated per column pass by the one warp owning the entry:
// deterministic.
// Measured: not yet on a GPU (simt-correct; see reports/).
#include "embbag/cuda/sorted.cuh"

namespace memlayers::embbag {
namespace {

void launch(const BwdParams& p, Stream stream) {
  sorted::launch<true>(p, stream, "embbag_bwd_v3_sorted_fused_dw");
}

MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{"v3_bwd_sorted_fused", MEMLAYERS_KERNEL_BACKEND, launch,
                                           sorted::supports,
                                           "v2 with dw fused into the per-row pass over V", true});

}  // namespace
}  // namespace memlayers::embbag
