// v1: the obvious GPU split. cuBLAS computes both halves' score matrices, (B, h, n_keys) fp32
// each (cublasSgemmStridedBatched over the heads; cublasGemmStridedBatchedEx with bf16 inputs
// and fp32 compute for bf16), written to device scratch; then one block per (b, h) row selects
// each half's top-k with the shared top-k list (threshold filter, warp-aggregated append,
// bitonic sort + merge in shared memory) and runs the pruned k×k candidate step
// ((i+1)(j+1) <= k pairs only) to the final top-k. qk_norm: a small kernel writes normalised
// fp32 copies of the queries and both key tables first, and the GEMM runs on those.
// Under simt there is no cuBLAS: a plain thread-per-score kernel of our own computes the same
// score matrices, so simt tests the selection kernel, the part this variant adds.
// Bottleneck: the score matrices, 2·B·h·n_keys·4 bytes written and read back
// (Fwd::score_matrix_bytes), and one block of 128 threads per row walking n_keys scores.
// Measured: not yet on a GPU (simt-correct).
#include "pk_topk/cuda/common.cuh"

namespace memlayers::pk_topk {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
    select_block_per_row(const float* __restrict__ s1, const float* __restrict__ s2,
                         float* __restrict__ scores, IndexOut indices, int64_t rows, int64_t n_keys,
                         RowSpace sp) {
  MEMLAYERS_DYNAMIC_SHARED(unsigned char, smem);
  int* off = reinterpret_cast<int*>(smem + sp.bytes());
  pair_offsets(off, sp.k);
  __syncthreads();
  RowLists R = carve_row(smem, sp);
  const Group g = block_group();
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    for (int c = 0; c < 2; ++c) {
      const float* s = (c == 0 ? s1 : s2) + row * n_keys;
      list_init(R.half[c], g);
      for (int64_t base = 0; base < n_keys; base += g.size) {
        const int64_t i = base + g.rank;
        const bool valid = i < n_keys;
        list_offer(R.half[c], valid, valid ? make_key(__ldg(s + i), static_cast<uint32_t>(i)) : 0,
                   g);
      }
      list_finish(R.half[c], g);
    }
    pair_step(R, sp, off, n_keys, scores + row * sp.k, indices.at(row * sp.k), g);
  }
}

void launch(const FwdParams& p, Stream stream) {
  dispatch_dtype(p, [&](auto t) {
    using T = typename decltype(t)::type;
    const int64_t rows = p.batch * p.heads;
    dev::Buffer<float> s1(rows * p.n_keys, stream), s2(rows * p.n_keys, stream);
    forward_scores<T>(p, s1.get(), s2.get(), stream);
    const RowSpace sp = row_space(p.k, p.n_keys, kThreads);
    const std::size_t smem = sp.bytes() + (p.k + 1) * sizeof(int);
    launch_kernel("pk_topk_fwd_v1_select", select_block_per_row, dim3(grid_cap(rows)),
                  dim3(kThreads), smem, stream, s1.get(), s2.get(), p.scores, index_out(p), rows,
                  p.n_keys, sp);
  });
}

// The GEMM differs by backend, so the summary does too.
#if defined(__CUDACC__)
constexpr const char* kSummary =
    "cuBLAS score matrices, block per row: top-k list "
    "(bitonic) per half, pruned pairs";
#else
constexpr const char* kSummary =
    "own-kernel score matrices (cuBLAS on the GPU), "
    "block per row: bitonic top-k list, pruned pairs";
#endif

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{"v1_cublas_select", MEMLAYERS_KERNEL_BACKEND, launch,
                                           materialised_supports, kSummary, true});

}  // namespace
}  // namespace memlayers::pk_topk
