// Backward v1: scatter with atomics. dV (dense, fp32) is zeroed, then a warp per (bag, slot) adds
// w·dy[b,:] into dV[idx,:] with atomicAdd; dw comes from the shared warp-per-slot dot product.
// The simplest backward and what frameworks do. Bottlenecks: the dense zeroing (N·dim·4 bytes,
// 4 GB for a 1M × 1024 table, whatever the batch), and atomics whose order varies from run to run
// (not deterministic). No compact output: that needs the rows grouped (v2_bwd_sorted).
// Measured: not yet on a GPU (simt-correct; see reports/).
#include "embbag/cuda/common.cuh"

namespace memlayers::embbag {
namespace {

constexpr int kWarps = 8;

template <class I>
__global__ void __launch_bounds__(kWarps * 32)
    scatter_kernel(const I* __restrict__ indices, const float* __restrict__ weights,
                   const float* __restrict__ dy, float* __restrict__ dv, int64_t slots, int64_t k,
                   int64_t dim) {
  const int lane = threadIdx.x % 32;
  for (int64_t slot = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; slot < slots;
       slot += static_cast<int64_t>(gridDim.x) * kWarps) {
    const float w = __ldg(weights + slot);
    const float* g = dy + (slot / k) * dim;
    float* dst = dv + load_index(indices, slot) * dim;
    for (int64_t c = lane; c < dim; c += 32) atomicAdd(dst + c, w * __ldg(g + c));
  }
}

void launch(const BwdParams& p, Stream stream) {
  dispatch_bwd(p, [&](auto v, auto i) {
    using V = typename decltype(v)::type;
    using I = typename decltype(i)::type;
    if (p.grad_weights) launch_dw_warp_per_slot<V, I>(p, stream);
    if (!p.grad_values_dense) return;
    dev::fill_bytes(p.grad_values_dense, 0, p.num_rows * p.dim * sizeof(float), stream);
    const int64_t slots = p.batch * p.k;
    launch_kernel("embbag_bwd_v1_atomic_scatter", scatter_kernel<I>,
                  dim3(grid_cap(ceil_div(slots, kWarps))), dim3(kWarps * 32), 0, stream,
                  static_cast<const I*>(p.indices), p.weights, p.grad_out, p.grad_values_dense,
                  slots, p.k, p.dim);
  });
}

std::string supports(const BwdParams& p) {
  if (p.grad_values_compact || p.unique_rows || p.num_unique)
    return "compact dV needs the rows grouped: use v2_bwd_sorted";
  return "";
}

MEMLAYERS_REGISTER(Bwd,
                   Variant<BwdParams>{"v1_bwd_atomic", MEMLAYERS_KERNEL_BACKEND, launch, supports,
                                      "dense dV by atomicAdd scatter; dw warp per slot", false});

}  // namespace
}  // namespace memlayers::embbag
