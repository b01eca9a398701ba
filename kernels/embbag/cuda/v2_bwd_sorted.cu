// Backward v2: deterministic. (row, position) pairs are radix-sorted (CUB), cut into runs of equal
// rows (run-length encode, exclusive scan), and each run's gradient row is summed in position
// order by one warp (a block of 8 warps for runs longer than 256 entries, combined in warp
// order): no atomics, bitwise identical across runs. Compact (unique rows ascending + their
// gradients) and dense outputs; dense is zeroed and then written row by row.
// Over v1: determinism and the compact form a sparse optimiser wants (no N·dim zeroing when only
// the compact form is asked for). Cost: the sort's B·k·(8 + 4)·2 bytes and a dependent read of
// dy through the permutation. dw: the shared warp-per-slot dot product (a second pass over V).
// Measured: not yet on a GPU (simt-correct; see reports/).
#include "embbag/cuda/sorted.cuh"

namespace memlayers::embbag {
namespace {

void launch(const BwdParams& p, Stream stream) {
  sorted::launch<false>(p, stream, "embbag_bwd_v2_sorted_runs");
}

MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{"v2_bwd_sorted", MEMLAYERS_KERNEL_BACKEND, launch,
                                           sorted::supports,
                                           "radix sort + runs, warp (or block) per row, "
                                           "deterministic; compact and dense dV",
                                           true});

}  // namespace
}  // namespace memlayers::embbag
