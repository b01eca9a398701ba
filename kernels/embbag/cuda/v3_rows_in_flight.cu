// v3: several rows in flight per thread, wide rows split across warps, any dim and alignment.
// Over v2:
//  - a warp owns one (bag, column slice) of up to 32·kVec·kSlice columns, so a 1024-wide fp32 row
//    is read by 4 warps at once instead of walked by one (more parallelism for small batches);
//  - the bag's indices and weights are staged once in shared memory and read as broadcasts
//    (no shuffle chain per row);
//  - rows are consumed kUnroll at a time: all kUnroll·kSlice 16-byte loads of a thread are issued
//    before the first FMA, so each thread keeps several independent loads in flight (Little's law:
//    ~3 TB/s × ~600 ns ≈ 2 MB must be in flight on an H100/H200, ~15 KB per SM);
//  - bf16 rows with fp32 accumulation; ragged dims and unaligned rows take a scalar path for the
//    tail (or the whole row when its start is not 16-byte aligned).
// Predicted: near the copy roofline for dim ≥ 256 where v2 is latency-bound.
// Measured: not yet on a GPU (simt-correct; see reports/).
#include "embbag/cuda/common.cuh"

namespace memlayers::embbag {
namespace {

constexpr int kWarps = 4;
constexpr int kUnroll = 4;  // rows in flight per thread
constexpr int kSlice = 2;   // 16-byte vectors per lane per row

template <class V>
constexpr int64_t slice_width() {
  return 32 * kVec<V> * kSlice;
}

template <class V, class I, class O>
__global__ void __launch_bounds__(kWarps * 32)
    fwd_rows_in_flight(const V* __restrict__ values, const I* __restrict__ indices,
                       const float* __restrict__ weights, O* __restrict__ out, int64_t batch,
                       int64_t k, int64_t dim, int64_t vstride, int64_t ostride, bool vector_ok,
                       bool vector_out) {
  constexpr int N = kVec<V>;
  MEMLAYERS_DYNAMIC_SHARED(unsigned char, smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t* rows = reinterpret_cast<int64_t*>(smem) + warp * k;
  float* ws = reinterpret_cast<float*>(smem + kWarps * k * sizeof(int64_t)) + warp * k;

  const int64_t slices = (dim + slice_width<V>() - 1) / slice_width<V>();
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (item >= batch * slices) return;
  const int64_t b = item / slices;
  const int64_t c_begin = (item % slices) * slice_width<V>();

  for (int64_t j = lane; j < k; j += 32) {
    rows[j] = load_index(indices, b * k + j) * vstride;
    ws[j] = __ldg(weights + b * k + j);
  }
  __syncwarp();

  O* y = out + b * ostride;
  const int64_t c_end = min(dim, c_begin + slice_width<V>());
  if (vector_ok) {
    // Vector columns of this lane: c_begin + (q·32 + lane)·N for q < kSlice, where in range.
    float acc[kSlice][N] = {};
    int64_t col[kSlice];
    bool full[kSlice];
#pragma unroll
    for (int q = 0; q < kSlice; ++q) {
      col[q] = c_begin + (static_cast<int64_t>(q) * 32 + lane) * N;
      full[q] = col[q] + N <= c_end;
    }
    accumulate_rows<kUnroll>(values, rows, ws, k, col, full, acc, LoadCached{});
#pragma unroll
    for (int q = 0; q < kSlice; ++q)
      if (full[q]) store_vec<O, N>(y, col[q], acc[q], vector_out, StorePlain{});
    // The ragged tail past the last full vector: scalar, one column per lane.
    const int64_t tail = c_begin + (c_end - c_begin) / N * N;
    for (int64_t c = tail + lane; c < c_end; c += 32) {
      float a = 0.f;
      for (int64_t jj = 0; jj < k; ++jj) a += ws[jj] * to_float(values[rows[jj] + c]);
      y[c] = from_float<O>(a);
    }
  } else {
    for (int64_t c = c_begin + lane; c < c_end; c += 32) {
      float a = 0.f;
      for (int64_t jj = 0; jj < k; ++jj) a += ws[jj] * to_float(values[rows[jj] + c]);
      y[c] = from_float<O>(a);
    }
  }
}

void launch(const FwdParams& p, Stream stream) {
  dispatch_fwd(p, [&](auto v, auto i, auto o) {
    using V = typename decltype(v)::type;
    using I = typename decltype(i)::type;
    using O = typename decltype(o)::type;
    const int64_t slices = ceil_div(p.dim, slice_width<V>());
    const bool vector_ok = rows_aligned16(p.values, values_stride(p), sizeof(V));
    launch_kernel("embbag_fwd_v3_rows_in_flight", fwd_rows_in_flight<V, I, O>,
                  dim3(static_cast<unsigned>(ceil_div(p.batch * slices, kWarps))),
                  dim3(kWarps * 32), kWarps * p.k * (sizeof(int64_t) + sizeof(float)), stream,
                  static_cast<const V*>(p.values), static_cast<const I*>(p.indices), p.weights,
                  static_cast<O*>(p.out), p.batch, p.k, p.dim, values_stride(p), out_stride(p),
                  vector_ok, rows_aligned16(p.out, out_stride(p), sizeof(O)));
  });
}

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{"v3_rows_in_flight", MEMLAYERS_KERNEL_BACKEND, launch,
                                           [](const FwdParams&) { return std::string(); },
                                           "rows in flight, wide rows split across warps, "
                                           "ragged tails, any alignment",
                                           true});

}  // namespace
}  // namespace memlayers::embbag
