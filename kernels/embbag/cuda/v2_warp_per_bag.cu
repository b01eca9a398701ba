// v2: one warp per bag, 16-byte vector loads (4 fp32 or 8 bf16 per lane per row), the bag's
// indices and weights loaded once (lane l holds slots l, l+32, ...) and broadcast by shuffle.
// Over v1: removes the k index/weight re-reads per output element and moves 16 bytes per load
// instruction instead of 4, so a warp streams a 512-byte row slice per instruction.
// Bottleneck left: one row in flight per lane at a time (the FMA waits on each load), and a
// single warp walks the whole width of a wide row. Needs dim·sizeof(V) and the row starts to be
// 16-byte aligned; supports() says so otherwise.
// Measured: not yet on a GPU (simt-correct; see reports/).
#include "embbag/cuda/common.cuh"

namespace memlayers::embbag {
namespace {

constexpr int kWarps = 8;
constexpr int kSlotRegs = kMaxK / 32;  // slots held per lane

// Three blocks per SM: without the hint ptxas caps the registers at 64 and spills the slot array.
template <class V, class I, class O>
__global__ void __launch_bounds__(kWarps * 32, 3)
    fwd_warp_per_bag(const V* __restrict__ values, const I* __restrict__ indices,
                     const float* __restrict__ weights, O* __restrict__ out, int64_t batch,
                     int64_t k, int64_t dim, int64_t vstride, int64_t ostride, bool vector_out) {
  constexpr int N = kVec<V>;
  const int lane = threadIdx.x % 32;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (b >= batch) return;
  int64_t my_row[kSlotRegs];
  float my_w[kSlotRegs];
#pragma unroll
  for (int s = 0; s < kSlotRegs; ++s) {
    const int64_t j = s * 32 + lane;
    my_row[s] = j < k ? load_index(indices, b * k + j) : 0;
    my_w[s] = j < k ? __ldg(weights + b * k + j) : 0.f;
  }
  // Every lane takes part in every shuffle, also those past the end of a narrow row: a shuffle
  // reading an exited or absent lane is undefined on a GPU (simt catches it).
  for (int64_t c0 = 0; c0 < dim; c0 += 32 * N) {
    const int64_t c = c0 + static_cast<int64_t>(lane) * N;
    const bool active = c < dim;
    float acc[N] = {};
#pragma unroll
    for (int s = 0; s < kSlotRegs; ++s) {
      if (s * 32 >= k) break;
      const int n = static_cast<int>(min(static_cast<int64_t>(32), k - s * 32));
      for (int l = 0; l < n; ++l) {
        const int64_t row = __shfl_sync(0xffffffffu, my_row[s], l);
        const float w = __shfl_sync(0xffffffffu, my_w[s], l);
        if (active) fma_vec(values + row * vstride, c, w, acc);
      }
    }
    if (active) store_vec<O, N>(out + b * ostride, c, acc, vector_out, StorePlain{});
  }
}

void launch(const FwdParams& p, Stream stream) {
  dispatch_fwd(p, [&](auto v, auto i, auto o) {
    using V = typename decltype(v)::type;
    using I = typename decltype(i)::type;
    using O = typename decltype(o)::type;
    launch_kernel("embbag_fwd_v2_warp_per_bag", fwd_warp_per_bag<V, I, O>,
                  dim3(static_cast<unsigned>(ceil_div(p.batch, kWarps))), dim3(kWarps * 32), 0,
                  stream, static_cast<const V*>(p.values), static_cast<const I*>(p.indices),
                  p.weights, static_cast<O*>(p.out), p.batch, p.k, p.dim, values_stride(p),
                  out_stride(p), rows_aligned16(p.out, out_stride(p), sizeof(O)));
  });
}

std::string supports(const FwdParams& p) {
  const std::size_t sv = dtype_size(p.values_dtype);
  const int64_t vec = 16 / static_cast<int64_t>(sv);
  if (p.dim % vec != 0)
    return "dim " + std::to_string(p.dim) + " is not a multiple of " + std::to_string(vec) +
           " (16-byte loads); v3 handles ragged dims";
  if (!rows_aligned16(p.values, values_stride(p), sv))
    return "value rows are not 16-byte aligned (pointer or stride); v3 handles them";
  return "";
}

MEMLAYERS_REGISTER(Fwd,
                   Variant<FwdParams>{"v2_warp_per_bag", MEMLAYERS_KERNEL_BACKEND, launch, supports,
                                      "warp per bag, 16-byte loads, indices/weights "
                                      "broadcast by shuffle",
                                      true});

}  // namespace
}  // namespace memlayers::embbag
