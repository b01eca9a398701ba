// v1: one thread per output element (bag b, column d): y[b,d] = Σ_j w[b,j]·V[idx[b,j], d].
// The obvious mapping and the baseline the other variants are measured against. Bottleneck: every
// thread re-reads the bag's k indices and weights (served by L1/L2, but k extra loads per output
// element), and each row is fetched as 4-byte (or 2-byte) scalar loads: coalesced across a warp,
// yet with one load in flight per FMA the memory system sees little parallelism.
// Measured: not yet on a GPU (simt-correct; see reports/).
#include "embbag/cuda/common.cuh"

namespace memlayers::embbag {
namespace {

constexpr int kThreads = 256;

template <class V, class I, class O>
__global__ void __launch_bounds__(kThreads)
    fwd_thread_per_elem(const V* __restrict__ values, const I* __restrict__ indices,
                        const float* __restrict__ weights, O* __restrict__ out, int64_t batch,
                        int64_t k, int64_t dim, int64_t vstride, int64_t ostride) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= batch * dim) return;
  const int64_t b = e / dim, d = e % dim;
  float acc = 0.f;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t row = load_index(indices, b * k + j);
    acc += __ldg(weights + b * k + j) * to_float(__ldg(values + row * vstride + d));
  }
  out[b * ostride + d] = from_float<O>(acc);
}

void launch(const FwdParams& p, Stream stream) {
  dispatch_fwd(p, [&](auto v, auto i, auto o) {
    using V = typename decltype(v)::type;
    using I = typename decltype(i)::type;
    using O = typename decltype(o)::type;
    launch_kernel("embbag_fwd_v1_thread_per_elem", fwd_thread_per_elem<V, I, O>,
                  dim3(static_cast<unsigned>(ceil_div(p.batch * p.dim, kThreads))), dim3(kThreads),
                  0, stream, static_cast<const V*>(p.values), static_cast<const I*>(p.indices),
                  p.weights, static_cast<O*>(p.out), p.batch, p.k, p.dim, values_stride(p),
                  out_stride(p));
  });
}

std::string supports(const FwdParams& p) {
  if (ceil_div(p.batch * p.dim, kThreads) > 0x7fffffff)
    return "batch·dim needs more than 2^31 blocks";
  return "";
}

MEMLAYERS_REGISTER(Fwd,
                   Variant<FwdParams>{"v1_thread_per_elem", MEMLAYERS_KERNEL_BACKEND, launch,
                                      supports, "thread per (bag, column); scalar loads", true});

}  // namespace
}  // namespace memlayers::embbag
