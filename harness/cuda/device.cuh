// What the harness's cuda/simt sources share: the launch shapes (a thread per element, a warp per
// row), fixed-order warp and block reductions, and host copies through the backend's memory.
// Included after common/cuda.cuh by harness/cuda/*.cu; everything lives in the per-target inline
// namespace, so the nvcc and the simt build of one source never collide at link time.
#pragma once
#include <cstdint>
#include <vector>

#include "common/cuda.cuh"
#include "common/for_each.cuh"

namespace memlayers::harness {
inline namespace MEMLAYERS_TARGET_NS {
namespace device {

// 128 threads a block: four warps. Under simt a block barrier switches through all its threads,
// so blocks stay small; the harness's shapes (≤ 4096 rows of ≤ 512 columns) fill a GPU anyway.
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// The launches run on the default stream; the backend's Memory (synchronous copies) orders
// with them.
inline constexpr Stream kStream = nullptr;

// ---- a thread per element ----

// f(i) for i in [0, n), grid-stride (common/for_each.cuh), on the default stream.
template <class F>
void for_each(const char* name, int64_t n, const F& f) {
  ::memlayers::for_each<kThreads>(name, n, f, kStream);
}

// ---- a warp per row ----

// f(row, lane) for rows [0, n): the 32 lanes of a warp share a row, so every lane of a warp runs
// the same number of iterations and the warp's shuffles see all 32 lanes.
template <class F>
__global__ void __launch_bounds__(kThreads) per_warp_kernel(int64_t n, F f) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; r < n;
       r += static_cast<int64_t>(gridDim.x) * kWarps)
    f(r, lane);
}

template <class F>
void per_warp(const char* name, int64_t n, const F& f) {
  if (n <= 0) return;
  launch_kernel(name, per_warp_kernel<F>, dim3(grid_cap(ceil_div(n, int64_t{kWarps}))),
                dim3(kThreads), 0, kStream, n, f);
}

// Sums and maxima over a warp by a fixed butterfly: every lane gets the same, deterministic value.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// Σ v over the block's kThreads threads by a fixed tree in shared memory `sh` (kThreads doubles);
// every thread gets the sum. Every thread of the block must call it (it holds barriers).
__device__ __forceinline__ double block_sum(double v, double* sh) {
  const unsigned t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (unsigned s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  const double total = sh[0];
  __syncthreads();  // sh is reused by the next call
  return total;
}

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

// ---- host side ----

// The backend's memory (the CUDA runtime's on the GPU, host memory under simt).
inline const Memory& memory() { return *backend_info(MEMLAYERS_KERNEL_BACKEND).memory; }

// n elements of device memory copied to the host (after the work queued before).
template <class T>
std::vector<T> to_host(const T* p, int64_t n) {
  std::vector<T> h(static_cast<std::size_t>(n));
  if (n > 0) {
    memory().synchronize();
    memory().to_host(h.data(), p, h.size() * sizeof(T));
  }
  return h;
}

}  // namespace device
}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers::harness
