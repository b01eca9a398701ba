// Backward v1: deterministic, no atomics. The backward is an EmbeddingBag pair (pk_topk.h):
//  - dq̂: a block per (b, h) row stages the row's k sub-key ids and ds in shared memory, and each
//    thread sums ds[t]·K̂c[id_t][e] over t in slot order for its columns e (both halves);
//  - dK̂c: (sub-key row h·n_keys + i_c, slot) pairs are radix-sorted (CUB; std::stable_sort
//    under simt) by row, cut into runs (run-length encode + exclusive scan), and a block per run
//    sums ds·q̂c of the run's entries in slot order. The run list is the compact form directly
//    (rows ascending, count in num_rows); the dense form is zeroed and then written by the runs;
//  - qk_norm: fp32 normalised copies of q and both key tables are made first (the forward's norm
//    kernel), the sums above run on them, and the RMS-norm backward
//    dx = (dx̂ − x̂·mean(dx̂·x̂)) / rms(x) is applied in the same block in fp64 from the raw x (it
//    cancels almost exactly for narrow rows), with fixed-order block reductions.
// Every sum has a fixed order, so results are bitwise identical run to run. The embbag CUDA
// variants are not reused: their k is capped at embbag::kMaxK = 256 (pk_topk allows 1024).
// Bottleneck: the sort's B·h·k·(8 + 4)·2 bytes per half and dependent gathers of q̂ rows through
// the permutation; with qk_norm also the full normalised copy of both key tables.
// Measured: not yet on a GPU (simt-correct).
#include "pk_topk/cuda/bwd.cuh"

namespace memlayers::pk_topk {
namespace {

using bwd::kThreads;
using bwd::kWarps;
using bwd::NormBack;
using bwd::NormSums;

// dq: a block per row (grid-stride). U: the element type of the (normalised or raw) keys the
// sums read; T: the raw inputs' type; the norm backward reads the raw query `qraw`.
template <class U, class T, class I>
__global__ void __launch_bounds__(kThreads)
    dq_kernel(const T* __restrict__ qraw, const U* __restrict__ k1, const U* __restrict__ k2,
              const I* __restrict__ indices, const float* __restrict__ ds, float* __restrict__ dq,
              int64_t rows, int64_t heads, int64_t n_keys, int64_t k_dim, int64_t k, bool norm) {
  MEMLAYERS_DYNAMIC_SHARED(unsigned char, smem);
  int64_t* ids = reinterpret_cast<int64_t*>(smem);
  float* w = reinterpret_cast<float*>(smem + k * sizeof(int64_t));
  __shared__ double red[kWarps];
  const int64_t half = k_dim / 2;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t h = row % heads;
    for (int c = 0; c < 2; ++c) {
      const U* keys = c == 0 ? k1 : k2;
      __syncthreads();  // the previous half's readers of ids / w are done
      for (int64_t t = threadIdx.x; t < k; t += blockDim.x) {
        const int64_t m = read_index(indices, row * k + t);
        ids[t] = (h * n_keys + (c == 0 ? m / n_keys : m % n_keys)) * half;
        w[t] = __ldg(ds + row * k + t);
      }
      __syncthreads();
      float* out = dq + row * k_dim + c * half;
      const T* x = qraw + row * k_dim + c * half;
      NormSums sums;
      for (int64_t e = threadIdx.x; e < half; e += blockDim.x) {
        float acc = 0.f;
        for (int64_t t = 0; t < k; ++t) acc += w[t] * to_f32(__ldg(keys + ids[t] + e));
        out[e] = acc;
        if (norm) sums.add(to_f32(x[e]), acc);
      }
      if (norm) {  // uniform across the block
        const NormBack back = bwd::norm_back(sums, half, red);
        // Each thread rereads the columns it wrote: no barrier needed.
        for (int64_t e = threadIdx.x; e < half; e += blockDim.x)
          out[e] = back(to_f32(x[e]), out[e]);
      }
    }
  }
}

// dK̂ of one half: a block per run of equal sub-key rows (grid-stride over *num_runs).
// q (normalised or raw) is (rows, k_dim) with this half at q_off; kraw: the raw key table,
// (heads·n_keys, half), read by the norm backward.
// The minimum-blocks hint changes ptxas's allocation: without it 8 bytes spill at ~40 registers.
template <class U, class T>
__global__ void __launch_bounds__(kThreads, 4)
    key_grad_kernel(const U* __restrict__ q, int64_t q_off, const T* __restrict__ kraw,
                    const uint64_t* __restrict__ unique, const uint32_t* __restrict__ counts,
                    const uint32_t* __restrict__ offsets, const int64_t* __restrict__ num_runs,
                    const uint32_t* __restrict__ perm, const float* __restrict__ ds,
                    float* __restrict__ compact, float* __restrict__ dense, int64_t k,
                    int64_t k_dim, bool norm) {
  __shared__ double red[kWarps];
  const int64_t half = k_dim / 2, runs = *num_runs;
  for (int64_t run = blockIdx.x; run < runs; run += gridDim.x) {
    const int64_t r = static_cast<int64_t>(unique[run]);
    const int64_t first = offsets[run], last = first + counts[run];
    // Without norm the sums go straight to their outputs; with it they go to one output first
    // and are finished in place by the thread that wrote them.
    // cppcheck-suppress nullPointerArithmeticRedundantCheck ; dense is set where compact is not
    float* primary = compact ? compact + run * half : dense + r * half;
    const T* x = kraw + r * half;
    NormSums sums;
    for (int64_t e = threadIdx.x; e < half; e += blockDim.x) {
      float acc = 0.f;
      for (int64_t j = first; j < last; ++j) {
        const uint32_t pos = __ldg(perm + j);
        acc +=
            __ldg(ds + pos) * to_f32(__ldg(q + static_cast<int64_t>(pos / k) * k_dim + q_off + e));
      }
      primary[e] = acc;
      if (!norm && compact && dense) dense[r * half + e] = acc;
      if (norm) sums.add(to_f32(x[e]), acc);
    }
    if (norm) {
      const NormBack back = bwd::norm_back(sums, half, red);
      for (int64_t e = threadIdx.x; e < half; e += blockDim.x) {
        const float v = back(to_f32(x[e]), primary[e]);
        primary[e] = v;
        if (compact && dense) dense[r * half + e] = v;
      }
    }
  }
}

void launch(const BwdParams& p, Stream stream) {
  bwd::launch(p, stream, [](auto u, auto t, auto i) {
    using U = typename decltype(u)::type;
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    return bwd::Kernels<U, T, I>{"pk_topk_bwd_v1_dq", dq_kernel<U, T, I>,
                                 sizeof(int64_t) + sizeof(float), "pk_topk_bwd_v1_key_grad",
                                 key_grad_kernel<U, T>};
  });
}

std::string supports(const BwdParams& p) { return bwd::sort_supports(p); }

MEMLAYERS_REGISTER(Bwd,
                   Variant<BwdParams>{"v1_bwd_sorted", MEMLAYERS_KERNEL_BACKEND, launch, supports,
                                      "block per row dq; radix sort + runs, block per key "
                                      "row dK (compact/dense); norm bwd; deterministic",
                                      true});

}  // namespace
}  // namespace memlayers::pk_topk
