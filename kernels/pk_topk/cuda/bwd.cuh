// Code shared by the CUDA product-key backward variants (v1_bwd, v2_bwd_merged): fixed-order
// block sums, the fp64 RMS-norm backward, and one half's (sub-key row, slot) pairs radix-sorted
// (CUB; std::stable_sort under simt) and cut into runs of equal rows (run-length encode +
// exclusive scan). The run list is the compact form directly: rows ascending, count in num_rows.
#pragma once
#include <algorithm>
#include <cstddef>
#include <string>

#include "common/device_sort.cuh"
#include "pk_topk/cuda/common.cuh"

namespace memlayers::pk_topk {
inline namespace MEMLAYERS_TARGET_NS {
namespace bwd {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

// Sum of v over the block, the same value in every thread; fixed order (deterministic).
// `red` holds kWarps doubles of shared memory.
__device__ __forceinline__ double block_sum(double v, double* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // red is free (a previous call's readers are done)
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  double s = 0.0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) s += red[w];
  return s;
}

// The RMS-norm backward runs in fp64: dx = (dx̂ − x̂·mean(dx̂·x̂)) / rms(x) cancels almost
// exactly for narrow rows (a half-width of 1 leaves dx̂·(1 − x̂²), with 1 − x̂² ~ eps / x²), so
// x̂ = x / rms(x) is recomputed from the raw x in fp64 rather than read as a rounded fp32 copy.
// With mean(dx̂·x̂) = Σ dx̂·x / (rms(x)·width), one pass collects Σ x² and Σ dx̂·x.
struct NormSums {
  double ss = 0.0, dot = 0.0;
  __device__ __forceinline__ void add(float x, float dxhat) {
    ss += static_cast<double>(x) * x;
    dot += static_cast<double>(dxhat) * x;
  }
};
struct NormBack {
  double inv = 1.0, scale = 0.0;  // 1 / rms(x); mean(dx̂·x̂)·inv
  __device__ __forceinline__ float operator()(float x, float dxhat) const {
    return static_cast<float>((static_cast<double>(dxhat) - static_cast<double>(x) * scale) * inv);
  }
};
__device__ __forceinline__ NormBack norm_back(NormSums s, int64_t width, double* red) {
  const double ss = block_sum(s.ss, red), dot = block_sum(s.dot, red);
  NormBack b;
  b.inv = 1.0 / sqrt(ss / static_cast<double>(width) + static_cast<double>(kNormEps));
  b.scale = dot * b.inv / static_cast<double>(width) * b.inv;
  return b;
}

template <class I>
__global__ void make_pairs_kernel(const I* __restrict__ indices, uint64_t* __restrict__ keys,
                                  uint32_t* __restrict__ pos, int64_t n, int64_t heads,
                                  int64_t n_keys, int64_t k, int half_index) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = read_index(indices, e), h = e / k % heads;
    keys[e] = static_cast<uint64_t>(h * n_keys + (half_index == 0 ? m / n_keys : m % n_keys));
    pos[e] = static_cast<uint32_t>(e);
  }
}

inline int key_bits(int64_t num_rows) {
  int bits = 1;
  while (bits < 64 && (uint64_t{1} << bits) < static_cast<uint64_t>(num_rows)) ++bits;
  return bits;
}

// One half's slots grouped by sub-key row: run r covers perm[offsets[r], offsets[r] + counts[r]),
// the slots (b·h + hd)·k + t of row unique[r] in ascending order, for r < *num_runs. With a
// compact output, unique and num_runs are the output's rows and num_rows.
struct Runs {
  int64_t n;  // B·h·k slots
  dev::Buffer<uint32_t> perm, counts, offsets;
  dev::Buffer<uint64_t> unique_scratch;
  dev::Buffer<int64_t> runs_scratch;
  uint64_t* unique;
  int64_t* num_runs;
  Runs(const BwdParams& p, const BwdParams::KeyGrad& g, Stream stream)
      : n(p.batch * p.heads * p.k),
        perm(n, stream),
        counts(n, stream),
        offsets(n, stream),
        unique_scratch(g.has_compact() ? 0 : n, stream),
        runs_scratch(g.has_compact() ? 0 : 1, stream),
        unique(g.has_compact() ? reinterpret_cast<uint64_t*>(g.rows) : unique_scratch.get()),
        num_runs(g.has_compact() ? g.num_rows : runs_scratch.get()) {}
};

template <class I>
void sort_into_runs(const BwdParams& p, int half_index, Runs& r, Stream stream) {
  const int n = static_cast<int>(r.n);
  dev::Buffer<uint64_t> pair_keys(r.n, stream), sorted(r.n, stream);
  dev::Buffer<uint32_t> pos(r.n, stream);
  launch_kernel("pk_topk_bwd_make_pairs", make_pairs_kernel<I>,
                dim3(grid_cap(ceil_div(r.n, int64_t{256}))), dim3(256), 0, stream,
                static_cast<const I*>(p.indices), pair_keys.get(), pos.get(), r.n, p.heads,
                p.n_keys, p.k, half_index);
  dev::sort_pairs(pair_keys.get(), sorted.get(), pos.get(), r.perm.get(), n,
                  key_bits(p.heads * p.n_keys), stream);
  // Counts past the last run are never written by the encoder; the scan reads all n of them.
  dev::fill_bytes(r.counts.get(), 0, r.n * sizeof(uint32_t), stream);
  dev::run_length_encode(sorted.get(), r.unique, r.counts.get(), r.num_runs, n, stream);
  dev::exclusive_sum(r.counts.get(), r.offsets.get(), n, stream);
}

// A variant's two kernels. U: the element type the sums read (fp32 normalised copies with
// qk_norm, else T); T: the inputs' dtype; I: the index dtype.
//  dq:  a block per (b, h) row, grid-stride: (raw q, K̂1, K̂2, indices, ds, dq, rows, heads,
//       n_keys, k_dim, k, norm), with dq_smem_per_slot·k bytes of dynamic shared memory;
//  key: a block per run of one half, grid-stride: (q̂, the half's offset in a q̂ row, raw keys,
//       unique, counts, offsets, num_runs, perm, ds, compact, dense, k, k_dim, norm).
template <class U, class T, class I>
struct Kernels {
  using Dq = void (*)(const T*, const U*, const U*, const I*, const float*, float*, int64_t,
                      int64_t, int64_t, int64_t, int64_t, bool);
  using Key = void (*)(const U*, int64_t, const T*, const uint64_t*, const uint32_t*,
                       const uint32_t*, const int64_t*, const uint32_t*, const float*, float*,
                       float*, int64_t, int64_t, bool);
  const char* dq_name;
  Dq dq;
  std::size_t dq_smem_per_slot;
  const char* key_name;
  Key key;
};

// Runs a backward with the variant's kernels: dq when asked, then each requested key half (its
// slots sorted into runs, the dense form zeroed, the runs summed).
template <class U, class T, class I>
void run(const BwdParams& p, const U* q, const U* k1, const U* k2, const Kernels<U, T, I>& kern,
         Stream stream) {
  const int64_t rows = p.batch * p.heads, half = p.k_dim / 2;
  if (p.grad_queries)
    launch_kernel(kern.dq_name, kern.dq, dim3(grid_cap(rows)), dim3(kThreads),
                  p.k * kern.dq_smem_per_slot, stream, static_cast<const T*>(p.queries), k1, k2,
                  static_cast<const I*>(p.indices), p.grad_scores, p.grad_queries, rows, p.heads,
                  p.n_keys, p.k_dim, p.k, p.qk_norm);
  for (int c = 0; c < 2; ++c) {
    const BwdParams::KeyGrad& g = c == 0 ? p.grad_keys1 : p.grad_keys2;
    if (!g.any()) continue;
    Runs r(p, g, stream);
    sort_into_runs<I>(p, c, r, stream);
    if (g.dense) dev::fill_bytes(g.dense, 0, p.heads * p.n_keys * half * sizeof(float), stream);
    launch_kernel(kern.key_name, kern.key, dim3(grid_cap(std::min(r.n, compact_capacity(p)))),
                  dim3(kThreads), 0, stream, q, c * half,
                  static_cast<const T*>(c == 0 ? p.keys1 : p.keys2), r.unique, r.counts.get(),
                  r.offsets.get(), r.num_runs, r.perm.get(), p.grad_scores,
                  g.has_compact() ? g.compact : nullptr, g.dense, p.k, p.k_dim, p.qk_norm);
  }
}

// Runs a backward with the kernels that pick(Tag<U>, Tag<T>, Tag<I>) returns (a Kernels<U, T,
// I>), U float when qk_norm made normalised copies to sum over, else T.
template <class Pick>
void launch(const BwdParams& p, Stream stream, Pick&& pick) {
  dispatch(p, [&](auto t, auto i) {
    with_normalised<typename decltype(t)::type>(
        p, stream, [&](const auto* q, const auto* k1, const auto* k2) {
          using U = std::remove_cv_t<std::remove_pointer_t<decltype(q)>>;
          run(p, q, k1, k2, pick(Tag<U>{}, t, i), stream);
        });
  });
}

// What the sorting variants cannot take.
inline std::string sort_supports(const BwdParams& p) {
  if (p.batch * p.heads * p.k >= (int64_t{1} << 31))
    return "batch·heads·k = " + std::to_string(p.batch * p.heads * p.k) +
           " entries; the sort takes < 2^31";
  return "";
}

}  // namespace bwd
}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers::pk_topk
