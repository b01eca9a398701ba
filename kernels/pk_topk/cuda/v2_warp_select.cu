// v2: the same materialised score matrices as v1 (cuBLAS; our own kernel under simt), but the
// selection is warp-level: one warp per (row, half) runs a bitonic queue (the top-k list of
// common.cuh with a warp as the group: ballot-compacted appends, __syncwarp between network
// stages, no block barriers), and the row's first warp then runs the pruned candidate step.
// A block holds two rows (four warps).
// Over v1: four times the rows in flight per block and no __syncthreads in the selection loop,
// so the selection (not the GEMM) stops being latency-bound on block barriers; each half of a
// row is selected concurrently. Bottleneck left: the score matrices' round trip through HBM
// (Fwd::score_matrix_bytes), which v3 removes.
// Measured: not yet on a GPU (simt-correct).
#include "pk_topk/cuda/common.cuh"

namespace memlayers::pk_topk {
namespace {

constexpr int kRowsPerBlock = 2;
constexpr int kThreads = kRowsPerBlock * 2 * 32;
constexpr int kMinList = 64;  // pending half of two warp rounds: fewer flushes

// The minimum-blocks hint changes ptxas's allocation: without it a few bytes spill at 56 registers.
__global__ void __launch_bounds__(kThreads, 4)
    select_warp_per_half(const float* __restrict__ s1, const float* __restrict__ s2,
                         float* __restrict__ scores, IndexOut indices, int64_t rows, int64_t n_keys,
                         RowSpace sp) {
  MEMLAYERS_DYNAMIC_SHARED(unsigned char, smem);
  int* off = reinterpret_cast<int*>(smem + kRowsPerBlock * sp.bytes());
  pair_offsets(off, sp.k);
  __syncthreads();
  const int warp = threadIdx.x / 32, r = warp / 2, c = warp % 2;
  const RowLists R = carve_row(smem + r * sp.bytes(), sp);
  const Group g = warp_group();
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; first < rows;
       first += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t row = first + r;
    if (row < rows) {
      const float* s = (c == 0 ? s1 : s2) + row * n_keys;
      // A ternary, not R.half[c]: a runtime index into the struct would put it in local memory.
      TopList L = c == 0 ? R.half[0] : R.half[1];
      list_init(L, g);
      for (int64_t base = 0; base < n_keys; base += 32) {
        const int64_t i = base + g.rank;
        const bool valid = i < n_keys;
        list_offer(L, valid, valid ? make_key(__ldg(s + i), static_cast<uint32_t>(i)) : 0, g);
      }
      list_finish(L, g);
    }
    __syncthreads();
    if (row < rows && c == 0)
      pair_step(R, sp, off, n_keys, scores + row * sp.k, indices.at(row * sp.k), g);
    __syncthreads();
  }
}

void launch(const FwdParams& p, Stream stream) {
  dispatch_dtype(p, [&](auto t) {
    using T = typename decltype(t)::type;
    const int64_t rows = p.batch * p.heads;
    dev::Buffer<float> s1(rows * p.n_keys, stream), s2(rows * p.n_keys, stream);
    forward_scores<T>(p, s1.get(), s2.get(), stream);
    const RowSpace sp = row_space(p.k, p.n_keys, kMinList);
    const std::size_t smem = kRowsPerBlock * sp.bytes() + (p.k + 1) * sizeof(int);
    launch_kernel("pk_topk_fwd_v2_warp_select", select_warp_per_half,
                  dim3(grid_cap(ceil_div(rows, kRowsPerBlock))), dim3(kThreads), smem, stream,
                  s1.get(), s2.get(), p.scores, index_out(p), rows, p.n_keys, sp);
  });
}

// The GEMM differs by backend, so the summary does too.
#if defined(__CUDACC__)
constexpr const char* kSummary =
    "cuBLAS score matrices, warp per (row, half) bitonic "
    "queue, pruned pairs";
#else
constexpr const char* kSummary =
    "own-kernel score matrices (cuBLAS on the GPU), warp "
    "per (row, half) bitonic queue, pruned pairs";
#endif

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{"v2_warp_select", MEMLAYERS_KERNEL_BACKEND, launch,
                                           materialised_supports, kSummary, true});

}  // namespace
}  // namespace memlayers::pk_topk
