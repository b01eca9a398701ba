// The sorted backward shared by v2_bwd_sorted and v3_bwd_sorted_fused: (row, position) pairs are
// radix-sorted, cut into runs of equal rows, and each run's gradient row is summed in sorted
// (= position) order by one warp — or by one block for long runs — with no atomics, so the result
// is bitwise identical from run to run. With FuseDw, the same pass also computes
// dw[pos] = dy[b]·V[row] while it holds the row's slice of V in registers.
#pragma once
#include <algorithm>
#include <string>

#include "common/device_sort.cuh"
#include "embbag/cuda/common.cuh"

namespace memlayers::embbag {
inline namespace MEMLAYERS_TARGET_NS {
namespace sorted {

constexpr int kWarps = 8;
constexpr int kLongRun = 256;  // runs longer than this get a block of kWarps warps
constexpr int kCols = 4;       // fp32 columns per lane per pass (one 16-byte dy load)

template <class I>
__global__ void make_pairs_kernel(const I* __restrict__ indices, uint64_t* keys, uint32_t* pos,
                                  int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  keys[i] = static_cast<uint64_t>(load_index(indices, i));
  pos[i] = static_cast<uint32_t>(i);
}

// The lane's kCols values of V's row at c, as fp32 (zero past dim): one 16-byte load (8 for bf16)
// where the row allows it, else one per column. V's rows are as many bytes as dy's that the pass
// reads; element loads would be four requests where one does.
template <class V>
__device__ __forceinline__ void load_cols(const V* __restrict__ vrow, int64_t dim, int64_t c,
                                          float* v) {
  static_assert(kCols == 4, "one 4-element vector a lane");
  if (c + kCols <= dim && reinterpret_cast<uintptr_t>(vrow + c) % (kCols * sizeof(V)) == 0) {
    if constexpr (sizeof(V) == 4) {
      const float4 t = __ldg(reinterpret_cast<const float4*>(vrow + c));
      v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
    } else {  // bf16 is the top half of an fp32
      const uint2 t = __ldg(reinterpret_cast<const uint2*>(vrow + c));
      v[0] = __uint_as_float(t.x << 16), v[1] = __uint_as_float(t.x & 0xffff0000u);
      v[2] = __uint_as_float(t.y << 16), v[3] = __uint_as_float(t.y & 0xffff0000u);
    }
    return;
  }
#pragma unroll
  for (int q = 0; q < kCols; ++q) v[q] = c + q < dim ? to_float(__ldg(vrow + c + q)) : 0.f;
}

// The entries of one run, handled by one warp: entries e = first + lane_group·step ... in order.
// Adds this warp's share of the run's gradient for columns [c, c + kCols) into acc, and, with
// FuseDw, its share of dw for each entry.
template <bool FuseDw, class V>
__device__ __forceinline__ void accumulate_run(const V* __restrict__ vrow,
                                               const uint32_t* __restrict__ perm,
                                               const float* __restrict__ weights,
                                               const float* __restrict__ dy, float* __restrict__ dw,
                                               int64_t k, int64_t dim, int64_t c, int64_t e_begin,
                                               int64_t e_end, int64_t e_step, float* acc) {
  const int lane = threadIdx.x % 32;
  const bool vector = dim % kCols == 0;  // dy rows are 16-byte aligned: dy is contiguous fp32
  const bool want_dw = FuseDw && dw != nullptr;  // uniform across the warp
  float v[kCols] = {};
  if (want_dw) load_cols(vrow, dim, c, v);
  for (int64_t e = e_begin; e < e_end; e += e_step) {
    const uint32_t pos = __ldg(perm + e);
    const float w = __ldg(weights + pos);
    const float* g = dy + static_cast<int64_t>(pos / k) * dim;
    float gv[kCols];
    if (vector && c + kCols <= dim) {
      const float4 t = __ldg(reinterpret_cast<const float4*>(g + c));
      gv[0] = t.x, gv[1] = t.y, gv[2] = t.z, gv[3] = t.w;
    } else {
#pragma unroll
      for (int q = 0; q < kCols; ++q) gv[q] = c + q < dim ? __ldg(g + c + q) : 0.f;
    }
    float dot = 0.f;
#pragma unroll
    for (int q = 0; q < kCols; ++q) {
      acc[q] += w * gv[q];
      if (want_dw) dot += v[q] * gv[q];
    }
    if (want_dw) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      // One warp owns each entry, and the column passes run in a fixed order: deterministic.
      if (lane == 0) dw[pos] += dot;
    }
  }
}

// Stores the lane's kCols gradient columns at c of `row` (fp32, dim wide): one 16-byte store
// where dim is a multiple of kCols and the row 16-byte aligned, else one store per column. Element
// stores would make each warp request fill 4 bytes of every 16 across the warp's 512-byte span
// (simt's AccessCounter), four requests where one does; dV is written once per touched row, as
// many bytes as the rows the pass reads. Cache-hinted (__stwb, a plain store) so simt counts them.
__device__ __forceinline__ void store_cols(float* __restrict__ row, int64_t dim, int64_t c,
                                           const float* acc) {
  static_assert(kCols == 4, "one float4 a lane");
  if (c >= dim) return;
  if (dim % kCols == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    __stwb(reinterpret_cast<float4*>(row + c), make_float4(acc[0], acc[1], acc[2], acc[3]));
    return;
  }
#pragma unroll
  for (int q = 0; q < kCols; ++q)
    if (c + q < dim) __stwb(row + c + q, acc[q]);
}

__device__ __forceinline__ void store_row(float* __restrict__ compact, float* __restrict__ dense,
                                          int64_t run, uint64_t row, int64_t dim, int64_t c,
                                          const float* acc) {
  if (compact) store_cols(compact + run * dim, dim, c, acc);
  if (dense) store_cols(dense + static_cast<int64_t>(row) * dim, dim, c, acc);
}

// One warp per run of at most kLongRun entries (grid-stride over the runs).
template <bool FuseDw, class V>
__global__ void __launch_bounds__(kWarps * 32)
    short_runs_kernel(const V* __restrict__ values, int64_t vstride,
                      const uint64_t* __restrict__ unique, const uint32_t* __restrict__ counts,
                      const uint32_t* __restrict__ offsets, const int64_t* __restrict__ num_runs,
                      const uint32_t* __restrict__ perm, const float* __restrict__ weights,
                      const float* __restrict__ dy, float* __restrict__ dw,
                      float* __restrict__ compact, float* __restrict__ dense, int64_t k,
                      int64_t dim) {
  const int lane = threadIdx.x % 32;
  const int64_t runs = *num_runs;
  for (int64_t run = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; run < runs;
       run += static_cast<int64_t>(gridDim.x) * kWarps) {
    if (counts[run] > kLongRun) continue;
    const uint64_t row = unique[run];
    const V* vrow = values + static_cast<int64_t>(row) * vstride;
    const int64_t first = offsets[run], last = first + counts[run];
    for (int64_t c0 = 0; c0 < dim; c0 += 32 * kCols) {
      const int64_t c = c0 + static_cast<int64_t>(lane) * kCols;
      float acc[kCols] = {};
      accumulate_run<FuseDw>(vrow, perm, weights, dy, dw, k, dim, c, first, last, 1, acc);
      store_row(compact, dense, run, row, dim, c, acc);
    }
  }
}

// One block per long run: warp w sums entries first + w, first + w + kWarps, ...; the kWarps
// partial rows are then added in warp order. Fixed order throughout: deterministic.
template <bool FuseDw, class V>
__global__ void __launch_bounds__(kWarps * 32)
    long_runs_kernel(const V* __restrict__ values, int64_t vstride,
                     const uint64_t* __restrict__ unique, const uint32_t* __restrict__ counts,
                     const uint32_t* __restrict__ offsets, const int64_t* __restrict__ num_runs,
                     const uint32_t* __restrict__ perm, const float* __restrict__ weights,
                     const float* __restrict__ dy, float* __restrict__ dw,
                     float* __restrict__ compact, float* __restrict__ dense, int64_t k,
                     int64_t dim) {
  __shared__ float partial[kWarps][32 * kCols];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t runs = *num_runs;
  for (int64_t run = blockIdx.x; run < runs; run += gridDim.x) {
    if (counts[run] <= kLongRun) continue;  // uniform across the block
    const uint64_t row = unique[run];
    const V* vrow = values + static_cast<int64_t>(row) * vstride;
    const int64_t first = offsets[run], last = first + counts[run];
    for (int64_t c0 = 0; c0 < dim; c0 += 32 * kCols) {
      const int64_t c = c0 + static_cast<int64_t>(lane) * kCols;
      float acc[kCols] = {};
      accumulate_run<FuseDw>(vrow, perm, weights, dy, dw, k, dim, c, first + warp, last, kWarps,
                             acc);
#pragma unroll
      for (int q = 0; q < kCols; ++q) partial[warp][lane * kCols + q] = acc[q];
      __syncthreads();
      if (warp == 0) {
        float sum[kCols] = {};
        for (int w = 0; w < kWarps; ++w)
#pragma unroll
          for (int q = 0; q < kCols; ++q) sum[q] += partial[w][lane * kCols + q];
        store_row(compact, dense, run, row, dim, c, sum);
      }
      __syncthreads();
    }
  }
}

inline int key_bits(int64_t num_rows) {
  int bits = 1;
  while (bits < 64 && (uint64_t{1} << bits) < static_cast<uint64_t>(num_rows)) ++bits;
  return bits;
}

// The whole sorted backward. FuseDw: dw from the per-run pass (dw zeroed first); otherwise from
// the warp-per-slot kernel.
template <bool FuseDw>
void launch(const BwdParams& p, Stream stream, const char* name) {
  const int64_t n64 = p.batch * p.k;
  const int n = static_cast<int>(n64);
  const bool want_dv = p.grad_values_dense || p.grad_values_compact;
  dispatch_bwd(p, [&](auto v, auto i) {
    using V = typename decltype(v)::type;
    using I = typename decltype(i)::type;
    if (!want_dv || (!FuseDw && p.grad_weights)) {
      if (p.grad_weights) launch_dw_warp_per_slot<V, I>(p, stream);
      if (!want_dv) return;
    }
    dev::Buffer<uint64_t> keys(n64, stream), keys_sorted(n64, stream);
    dev::Buffer<uint32_t> pos(n64, stream), perm(n64, stream), counts(n64, stream),
        offsets(n64, stream);
    dev::Buffer<uint64_t> unique_scratch(p.unique_rows ? 0 : n64, stream);
    dev::Buffer<int64_t> runs_scratch(p.num_unique ? 0 : 1, stream);
    uint64_t* unique =
        p.unique_rows ? reinterpret_cast<uint64_t*>(p.unique_rows) : unique_scratch.get();
    int64_t* num_runs = p.num_unique ? p.num_unique : runs_scratch.get();

    launch_kernel("embbag_bwd_make_pairs", make_pairs_kernel<I>,
                  dim3(static_cast<unsigned>(ceil_div(n64, 256))), dim3(256), 0, stream,
                  static_cast<const I*>(p.indices), keys.get(), pos.get(), n64);
    dev::sort_pairs(keys.get(), keys_sorted.get(), pos.get(), perm.get(), n, key_bits(p.num_rows),
                    stream);
    // Counts past the last run are never written by the encoder; the scan reads all n of them.
    dev::fill_bytes(counts.get(), 0, n64 * sizeof(uint32_t), stream);
    dev::run_length_encode(keys_sorted.get(), unique, counts.get(), num_runs, n, stream);
    dev::exclusive_sum(counts.get(), offsets.get(), n, stream);
    if (p.grad_values_dense)
      dev::fill_bytes(p.grad_values_dense, 0, p.num_rows * p.dim * sizeof(float), stream);
    if (FuseDw && p.grad_weights) dev::fill_bytes(p.grad_weights, 0, n64 * sizeof(float), stream);

    const auto* values = static_cast<const V*>(p.values);
    const int64_t vs = values_stride(p);
    float* dw = FuseDw ? p.grad_weights : nullptr;
    launch_kernel(name, short_runs_kernel<FuseDw, V>, dim3(grid_cap(ceil_div(n64, kWarps))),
                  dim3(kWarps * 32), 0, stream, values, vs, unique, counts.get(), offsets.get(),
                  num_runs, perm.get(), p.weights, p.grad_out, dw, p.grad_values_compact,
                  p.grad_values_dense, p.k, p.dim);
    // Long runs are rare (at most n / kLongRun of them): a small grid strides over all runs.
    launch_kernel(name, long_runs_kernel<FuseDw, V>, dim3(grid_cap(n64 / kLongRun)),
                  dim3(kWarps * 32), 0, stream, values, vs, unique, counts.get(), offsets.get(),
                  num_runs, perm.get(), p.weights, p.grad_out, dw, p.grad_values_compact,
                  p.grad_values_dense, p.k, p.dim);
  });
}

inline std::string supports(const BwdParams& p) {
  if (p.batch * p.k >= (int64_t{1} << 31))
    return "batch·k = " + std::to_string(p.batch * p.k) + " entries; the sort takes < 2^31";
  return "";
}

}  // namespace sorted
}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers::embbag
