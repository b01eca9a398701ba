// v4: v3's (bag, slice) work items on a persistent grid, with streaming cache hints.
// Roofline reasoning: v3 already keeps enough loads in flight to cover DRAM latency, so what it
// leaves on the table is (1) the tail of the last wave of blocks and per-block start-up (staging
// the bag's indices before the first row load can issue), and (2) L2 pollution: each gathered
// row is used once, yet it evicts lines that other warps still need (indices, weights, output).
// So v4 launches just enough blocks to fill the GPU once (blocks per SM from the occupancy
// calculator), each warp walks work items with a grid stride, fetches the next item's indices and
// weights while it accumulates the current one, loads rows with evict-first hints (__ldcs) and
// writes y with streaming stores (__stcs).
// Predicted gain over v3: +2–5% of the copy roofline at dim 1024, k 32 (tail and start-up), more
// for small batches; a wash where v3 is already at the roofline.
// Measured: not yet on a GPU (simt-correct; see reports/).
#include "embbag/cuda/common.cuh"

namespace memlayers::embbag {
namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 4;
constexpr int kSlice = 2;

template <class V>
constexpr int64_t slice_width() {
  return 32 * kVec<V> * kSlice;
}

// Two blocks per SM in the hint: with the block size alone ptxas caps registers at 64 and spills.
template <class V, class I, class O>
__global__ void __launch_bounds__(kWarps * 32, 2)
    fwd_persistent(const V* __restrict__ values, const I* __restrict__ indices,
                   const float* __restrict__ weights, O* __restrict__ out, int64_t batch, int64_t k,
                   int64_t dim, int64_t vstride, int64_t ostride, bool vector_out) {
  constexpr int N = kVec<V>;
  MEMLAYERS_DYNAMIC_SHARED(unsigned char, smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Two staging buffers per warp: the current item's and the next one's.
  int64_t* rows_buf = reinterpret_cast<int64_t*>(smem) + warp * 2 * k;
  float* w_buf = reinterpret_cast<float*>(smem + kWarps * 2 * k * sizeof(int64_t)) + warp * 2 * k;

  const int64_t slices = (dim + slice_width<V>() - 1) / slice_width<V>();
  const int64_t items = batch * slices;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + warp;

  auto stage = [&](int64_t it, int buf) {
    const int64_t b = it / slices;
    for (int64_t j = lane; j < k; j += 32) {
      rows_buf[buf * k + j] = load_index(indices, b * k + j) * vstride;
      w_buf[buf * k + j] = __ldg(weights + b * k + j);
    }
  };
  if (item < items) stage(item, 0);
  __syncwarp();
  for (int buf = 0; item < items; item += stride, buf ^= 1) {
    // Indices of the next item load while this one's rows stream in.
    if (item + stride < items) stage(item + stride, buf ^ 1);
    const int64_t* rows = rows_buf + buf * k;
    const float* ws = w_buf + buf * k;
    const int64_t b = item / slices;
    const int64_t c_begin = (item % slices) * slice_width<V>();
    const int64_t c_end = min(dim, c_begin + slice_width<V>());
    float acc[kSlice][N] = {};
    int64_t col[kSlice];
    bool full[kSlice];
#pragma unroll
    for (int q = 0; q < kSlice; ++q) {
      col[q] = c_begin + (static_cast<int64_t>(q) * 32 + lane) * N;
      full[q] = col[q] + N <= c_end;
    }
    accumulate_rows<kUnroll>(values, rows, ws, k, col, full, acc, LoadStreaming{});
    O* y = out + b * ostride;
#pragma unroll
    for (int q = 0; q < kSlice; ++q)
      if (full[q]) store_vec<O, N>(y, col[q], acc[q], vector_out, StoreStreaming{});
    __syncwarp();  // the next item's staging is complete, and this item's is no longer read
  }
}

int blocks_for_device() {
#if defined(__CUDACC__)
  int device = 0, sms = 0;
  MEMLAYERS_CUDA_CHECK(cudaGetDevice(&device));
  MEMLAYERS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
#else
  return 4;  // simt: a few blocks, so the grid stride is exercised
#endif
}

void launch(const FwdParams& p, Stream stream) {
  dispatch_fwd(p, [&](auto v, auto i, auto o) {
    using V = typename decltype(v)::type;
    using I = typename decltype(i)::type;
    using O = typename decltype(o)::type;
    const std::size_t smem = kWarps * 2 * p.k * (sizeof(int64_t) + sizeof(float));
    auto kernel = fwd_persistent<V, I, O>;
    int per_sm = 1;
#if defined(__CUDACC__)
    MEMLAYERS_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, smem));
#endif
    const int64_t items = p.batch * ceil_div(p.dim, slice_width<V>());
    const int64_t blocks = std::min<int64_t>(
        ceil_div(items, kWarps), static_cast<int64_t>(blocks_for_device()) * std::max(per_sm, 1));
    launch_kernel("embbag_fwd_v4_persistent_stream", kernel, dim3(static_cast<unsigned>(blocks)),
                  dim3(kWarps * 32), smem, stream, static_cast<const V*>(p.values),
                  static_cast<const I*>(p.indices), p.weights, static_cast<O*>(p.out), p.batch, p.k,
                  p.dim, values_stride(p), out_stride(p),
                  rows_aligned16(p.out, out_stride(p), sizeof(O)));
  });
}

std::string supports(const FwdParams& p) {
  const std::size_t sv = dtype_size(p.values_dtype);
  const int64_t vec = 16 / static_cast<int64_t>(sv);
  if (p.dim % vec != 0)
    return "dim " + std::to_string(p.dim) + " is not a multiple of " + std::to_string(vec) +
           " (16-byte loads only); v3 handles ragged dims";
  if (!rows_aligned16(p.values, values_stride(p), sv))
    return "value rows are not 16-byte aligned (pointer or stride); v3 handles them";
  return "";
}

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{"v4_persistent_stream", MEMLAYERS_KERNEL_BACKEND, launch,
                                           supports,
                                           "persistent grid, next bag's indices prefetched, "
                                           "evict-first row loads, streaming stores",
                                           true});

}  // namespace
}  // namespace memlayers::embbag
