// A thread per element: f(i) for every i in [0, n), grid-stride, for the elementwise steps of the
// compositions (the memory layer's, the training harness's cuda backend). Under nvcc and simt
// alike (common/cuda.cuh).
#pragma once
#include <cstdint>

#include "common/cuda.cuh"

namespace memlayers {
inline namespace MEMLAYERS_TARGET_NS {

template <int kBlock, class F>
__global__ void __launch_bounds__(kBlock) for_each_kernel(int64_t n, F f) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kBlock)
    f(i);
}

// f(i) for i in [0, n) on `stream`: blocks of kBlock threads, at most grid_cap of them.
template <int kBlock, class F>
void for_each(const char* name, int64_t n, const F& f, Stream stream) {
  if (n <= 0) return;
  launch_kernel(name, for_each_kernel<kBlock, F>, dim3(grid_cap(ceil_div(n, int64_t{kBlock}))),
                dim3(kBlock), 0, stream, n, f);
}

}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers
