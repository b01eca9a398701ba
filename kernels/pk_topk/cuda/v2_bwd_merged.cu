// Backward v2: v1_bwd_sorted with each bag's repeated sub-key rows merged before they are read.
// A row's k best pairs (i1, i2) share sub-keys: at the paper's shape (n_keys 1024, k 32) the 32
// slots hold about 12 distinct rows per half (measured on the CPU), so v1 reads each K̂c row for
// dq, and each q̂ row for dK̂c, about 2.7 times over.
//  - dq̂: the block stages the row's k (sub-key row, ds) pairs as v1 does, then merges them: a
//    slot whose row appeared in an earlier slot is skipped, and the first slot of each row
//    carries the ds of all its slots summed in slot order. The sum over the distinct rows then
//    reads each K̂c row once. The merge costs O(k²) shared-memory compares per half, against
//    O(k·n/2) global loads it saves from; above kMergeMaxK slots it is left out.
//  - dK̂c: the same sort into runs as v1 (bwd.cuh). A run's slots are in ascending slot order, so
//    the slots of one bag are adjacent in it: their ds are summed before the bag's q̂c row is read
//    once, and the block's threads read the run's entries once for all their columns (kCols per
//    thread), where v1 rescanned them per column pass. The entries (bag, ds) are staged in shared
//    memory a chunk of kThreads at a time, one thread loading each: every thread loading every
//    entry's perm and ds made ~12 one-sector broadcast requests per q̂c row request (simt's
//    AccessCounter, reports/simt_access.md), each entry a chain of two dependent loads.
//  - qk_norm as in v1: normalised copies first, the fp64 RMS-norm backward in the same block.
// Every sum has a fixed order (merged weights in slot order, then rows in first-slot or bag
// order): deterministic. The rounding differs from v1's, which multiplies before it adds.
// Bottleneck: the gathers of K̂c rows (dq, from L2: the tables are 2·h·n_keys·n/2·4 = 8 MiB at
// the paper's shape) and of q̂c rows (dK̂c: B·h·n·4 = 32 MiB) fall by the merge factor, ~2.7×;
// the two radix sorts of B·h·k pairs stay. Predicted: the backward ~1.5-2× faster than v1 at
// the paper's shape, where the gathers are most of v1's time.
// Measured: not yet on a GPU (simt-correct).
#include "pk_topk/cuda/bwd.cuh"

namespace memlayers::pk_topk {
namespace {

using bwd::kThreads;
using bwd::kWarps;
using bwd::NormBack;
using bwd::NormSums;

constexpr int64_t kMergeMaxK = 256;
constexpr int kCols = 2;  // columns per thread per pass
constexpr int64_t kPass = int64_t{kThreads} * kCols;

// The columns of pass e0 a thread owns: e0 + j·kThreads + threadIdx.x, j < kCols, below width.
__device__ __forceinline__ int64_t column(int64_t e0, int j) {
  return e0 + int64_t{j} * kThreads + threadIdx.x;
}

// dq: a block per row (grid-stride). U: the element type of the (normalised or raw) keys the
// sums read; T: the raw inputs' type; the norm backward reads the raw query `qraw`.
// Shared memory: ids, merged ids (int64), ds, merged ds (fp32), k each.
template <class U, class T, class I>
__global__ void __launch_bounds__(kThreads)
    dq_kernel(const T* __restrict__ qraw, const U* __restrict__ k1, const U* __restrict__ k2,
              const I* __restrict__ indices, const float* __restrict__ ds, float* __restrict__ dq,
              int64_t rows, int64_t heads, int64_t n_keys, int64_t k_dim, int64_t k, bool norm) {
  MEMLAYERS_DYNAMIC_SHARED(unsigned char, smem);
  int64_t* ids = reinterpret_cast<int64_t*>(smem);
  int64_t* mids = ids + k;  // the slot's row offset if it is its row's first slot, else -1
  float* w = reinterpret_cast<float*>(mids + k);
  float* mw = w + k;  // the first slot's summed ds
  __shared__ double red[kWarps];
  const int64_t half = k_dim / 2;
  const bool merge = k <= kMergeMaxK;
  const int64_t* use_ids = merge ? mids : ids;
  const float* use_w = merge ? mw : w;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t h = row % heads;
    for (int c = 0; c < 2; ++c) {
      const U* keys = c == 0 ? k1 : k2;
      __syncthreads();  // the previous half's readers of the shared arrays are done
      for (int64_t t = threadIdx.x; t < k; t += blockDim.x) {
        const int64_t m = read_index(indices, row * k + t);
        ids[t] = (h * n_keys + (c == 0 ? m / n_keys : m % n_keys)) * half;
        w[t] = __ldg(ds + row * k + t);
      }
      __syncthreads();
      if (merge) {
        for (int64_t t = threadIdx.x; t < k; t += blockDim.x) {
          const int64_t id = ids[t];
          bool first = true;
          for (int64_t u = 0; u < t && first; ++u) first = ids[u] != id;
          float sum = 0.f;
          if (first) {
            sum = w[t];
            for (int64_t u = t + 1; u < k; ++u)
              if (ids[u] == id) sum += w[u];
          }
          mids[t] = first ? id : -1;
          mw[t] = sum;
        }
        __syncthreads();
      }
      float* out = dq + row * k_dim + c * half;
      const T* x = qraw + row * k_dim + c * half;
      NormSums sums;
      for (int64_t e0 = 0; e0 < half; e0 += kPass) {
        float acc[kCols] = {};
        for (int64_t t = 0; t < k; ++t) {
          const int64_t id = use_ids[t];
          if (id < 0) continue;  // uniform across the block
          const float wt = use_w[t];
          const U* key = keys + id;
#pragma unroll
          for (int j = 0; j < kCols; ++j)
            if (column(e0, j) < half) acc[j] += wt * to_f32(__ldg(key + column(e0, j)));
        }
#pragma unroll
        for (int j = 0; j < kCols; ++j) {
          const int64_t e = column(e0, j);
          if (e >= half) continue;
          out[e] = acc[j];
          if (norm) sums.add(to_f32(x[e]), acc[j]);
        }
      }
      if (norm) {  // uniform across the block
        const NormBack back = bwd::norm_back(sums, half, red);
        // Each thread rereads the columns it wrote: no barrier needed.
        for (int64_t e0 = 0; e0 < half; e0 += kPass)
#pragma unroll
          for (int j = 0; j < kCols; ++j) {
            const int64_t e = column(e0, j);
            if (e < half) out[e] = back(to_f32(x[e]), out[e]);
          }
      }
    }
  }
}

// dK̂ of one half: a block per run of equal sub-key rows (grid-stride over *num_runs).
// q (normalised or raw) is (rows, k_dim) with this half at q_off; kraw: the raw key table,
// (heads·n_keys, half), read by the norm backward.
template <class U, class T>
__global__ void __launch_bounds__(kThreads, 4)
    key_grad_kernel(const U* __restrict__ q, int64_t q_off, const T* __restrict__ kraw,
                    const uint64_t* __restrict__ unique, const uint32_t* __restrict__ counts,
                    const uint32_t* __restrict__ offsets, const int64_t* __restrict__ num_runs,
                    const uint32_t* __restrict__ perm, const float* __restrict__ ds,
                    float* __restrict__ compact, float* __restrict__ dense, int64_t k,
                    int64_t k_dim, bool norm) {
  __shared__ double red[kWarps];
  // A chunk of the run's entries: each entry's bag and ds, loaded once by one thread where every
  // thread used to load them (two dependent loads an entry, each a one-sector broadcast).
  __shared__ uint32_t chunk_bag[kThreads];
  __shared__ float chunk_ds[kThreads];
  constexpr uint32_t kNoBag = 0xffffffffu;
  const int64_t half = k_dim / 2, runs = *num_runs;
  const uint32_t k32 = static_cast<uint32_t>(k);
  for (int64_t run = blockIdx.x; run < runs; run += gridDim.x) {
    const int64_t r = static_cast<int64_t>(unique[run]);
    const int64_t first = offsets[run], last = first + counts[run];
    // Without norm the sums go straight to their outputs; with it they go to one output first
    // and are finished in place by the thread that wrote them.
    // cppcheck-suppress nullPointerArithmeticRedundantCheck ; dense is set where compact is not
    float* primary = compact ? compact + run * half : dense + r * half;
    const T* x = kraw + r * half;
    NormSums sums;
    for (int64_t e0 = 0; e0 < half; e0 += kPass) {
      float acc[kCols] = {};
      // One bag's adjacent entries are summed, then its q̂c row read once: acc += wsum·q̂c[bag].
      const auto add_bag = [&](uint32_t bag, float wsum) {
        const U* qrow = q + static_cast<int64_t>(bag) * k_dim + q_off;
#pragma unroll
        for (int c = 0; c < kCols; ++c)
          if (column(e0, c) < half) acc[c] += wsum * to_f32(__ldg(qrow + column(e0, c)));
      };
      uint32_t bag = kNoBag;  // the bag being summed, carried across chunks
      float wsum = 0.f;
      for (int64_t j0 = first; j0 < last; j0 += kThreads) {
        const int n = static_cast<int>(min(static_cast<int64_t>(kThreads), last - j0));
        __syncthreads();  // the previous chunk is read
        if (static_cast<int>(threadIdx.x) < n) {
          // partial sectors: a run starts anywhere, and most are shorter than a warp
          const uint32_t pos = __ldg(perm + j0 + threadIdx.x);
          chunk_bag[threadIdx.x] = pos / k32;
          // partial sectors: a gather, ds by the entry's (bag, slot) position
          chunk_ds[threadIdx.x] = __ldg(ds + pos);
        }
        __syncthreads();
        for (int i = 0; i < n; ++i) {
          if (chunk_bag[i] == bag) {
            wsum += chunk_ds[i];
            continue;
          }
          if (bag != kNoBag) add_bag(bag, wsum);
          bag = chunk_bag[i];
          wsum = chunk_ds[i];
        }
      }
      if (bag != kNoBag) add_bag(bag, wsum);
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int64_t e = column(e0, c);
        if (e >= half) continue;
        primary[e] = acc[c];
        if (!norm && compact && dense) dense[r * half + e] = acc[c];
        if (norm) sums.add(to_f32(x[e]), acc[c]);
      }
    }
    if (norm) {
      const NormBack back = bwd::norm_back(sums, half, red);
      for (int64_t e0 = 0; e0 < half; e0 += kPass)
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int64_t e = column(e0, c);
          if (e >= half) continue;
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
    return bwd::Kernels<U, T, I>{"pk_topk_bwd_v2_dq", dq_kernel<U, T, I>,
                                 2 * (sizeof(int64_t) + sizeof(float)), "pk_topk_bwd_v2_key_grad",
                                 key_grad_kernel<U, T>};
  });
}

std::string supports(const BwdParams& p) { return bwd::sort_supports(p); }

MEMLAYERS_REGISTER(Bwd,
                   Variant<BwdParams>{"v2_bwd_merged", MEMLAYERS_KERNEL_BACKEND, launch, supports,
                                      "v1 with each bag's repeated sub-key rows merged "
                                      "before they are read (dq and dK); deterministic",
                                      true});

}  // namespace
}  // namespace memlayers::pk_topk
