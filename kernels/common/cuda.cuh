// The first include of every CUDA kernel source. Under nvcc it brings the CUDA runtime; compiled
// with the host compiler for simt (MEMLAYERS_SIMT) it brings simt/simt.h instead. Either way the
// kernel source sees the same names: the launch helper, checks, dynamic shared memory, device
// buffers, and MEMLAYERS_KERNEL_BACKEND (cuda or simt) for its registration.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#elif defined(MEMLAYERS_SIMT)
#include "simt/simt.h"
#else
#error "kernels/common/cuda.cuh: compile with nvcc, or with MEMLAYERS_SIMT defined for simt"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/backend.h"
#include "common/error.h"

// Device code shared between variants lives in an inline namespace per target, so the nvcc and
// the simt build of the same header never collide at link time.
#if defined(__CUDACC__)
#define MEMLAYERS_TARGET_NS gpu
#else
#define MEMLAYERS_TARGET_NS simt
#endif

#if defined(__CUDACC__)
#define MEMLAYERS_KERNEL_BACKEND ::memlayers::Backend::cuda
#else
#define MEMLAYERS_KERNEL_BACKEND ::memlayers::Backend::simt
#endif

// Dynamic shared memory: `extern __shared__` under nvcc; under simt an exact-size heap buffer
// filled with garbage, so AddressSanitizer catches an overrun.
#if defined(__CUDACC__)
#define MEMLAYERS_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char memlayers_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(memlayers_dynamic_smem_)
#else
#define MEMLAYERS_DYNAMIC_SHARED(T, name) \
  T* name = reinterpret_cast<T*>(::simt::detail::dynamic_shared_memory())
#endif

#if defined(__CUDACC__)
#define MEMLAYERS_CUDA_CHECK(expr)                                                             \
  do {                                                                                         \
    cudaError_t memlayers_err_ = (expr);                                                       \
    if (memlayers_err_ != cudaSuccess)                                                         \
      ::memlayers::fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(memlayers_err_), \
                        cudaGetErrorString(memlayers_err_), #expr, __FILE__, __LINE__);        \
  } while (0)
#endif

namespace memlayers {
inline namespace MEMLAYERS_TARGET_NS {

// Launches `kernel` on the GPU (checking the launch) or on simt's CPU threads.
template <class... KArgs, class... Args>
void launch_kernel(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                   std::size_t shared_bytes, Stream stream, Args&&... args) {
#if defined(__CUDACC__)
  if (shared_bytes > 48 * 1024)
    MEMLAYERS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(shared_bytes)));
  kernel<<<grid, block, shared_bytes, static_cast<cudaStream_t>(stream)>>>(
      std::forward<Args>(args)...);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    fail("launch of kernel {} (grid {}x{}x{}, block {}x{}x{}, {} B shared) failed: {}", name,
         grid.x, grid.y, grid.z, block.x, block.y, block.z, shared_bytes, cudaGetErrorString(err));
#else
  (void)stream;
  try {
    ::simt::launch(name, kernel, grid, block, shared_bytes, std::forward<Args>(args)...);
  } catch (const ::simt::KernelError& e) {
    fail("simt: {}", e.what());
  }
#endif
}

// Ceil division for grid sizes.
template <class A, class B>
constexpr A ceil_div(A a, B b) {
  return static_cast<A>((a + b - 1) / b);
}

// Most blocks a grid-stride kernel launches: enough to fill any current GPU many times over; under
// simt a handful, since each block costs a round of thread wake-ups on the CPU.
inline unsigned grid_cap(int64_t wanted_blocks) {
#if defined(__CUDACC__)
  constexpr int64_t kCap = 16384;
#else
  constexpr int64_t kCap = 4;
#endif
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted_blocks, kCap)));
}

namespace dev {
// Stream-ordered device memory for launchers' scratch space.
inline void* alloc(std::size_t bytes, Stream stream) {
#if defined(__CUDACC__)
  void* p = nullptr;
  if (bytes) MEMLAYERS_CUDA_CHECK(cudaMallocAsync(&p, bytes, static_cast<cudaStream_t>(stream)));
  return p;
#else
  // simt's memory: born garbage, as stale contents of a stream-ordered pool would be, so scratch
  // a kernel reads before anything wrote it fails under simt.
  (void)stream;
  return bytes ? ::memlayers::simt_memory().alloc(bytes) : nullptr;
#endif
}
inline void release(void* p, Stream stream) {
#if defined(__CUDACC__)
  if (p) MEMLAYERS_CUDA_CHECK(cudaFreeAsync(p, static_cast<cudaStream_t>(stream)));
#else
  (void)stream;
  if (p) ::memlayers::simt_memory().release(p);
#endif
}
inline void fill_bytes(void* p, int value, std::size_t bytes, Stream stream) {
  if (!bytes) return;
#if defined(__CUDACC__)
  MEMLAYERS_CUDA_CHECK(cudaMemsetAsync(p, value, bytes, static_cast<cudaStream_t>(stream)));
#else
  (void)stream;
  ::memlayers::simt_memory().fill_bytes(p, value, bytes);
#endif
}
inline void copy(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (!bytes) return;
#if defined(__CUDACC__)
  MEMLAYERS_CUDA_CHECK(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)));
#else
  (void)stream;
  ::simt::DeviceAccess access;  // any direction, as cudaMemcpyDefault
  std::memcpy(dst, src, bytes);
#endif
}

// Scratch memory that lives for one launcher call.
template <class T>
class Buffer {
 public:
  Buffer(std::size_t n, Stream stream) : n_(n), stream_(stream) {
    p_ = static_cast<T*>(alloc(n * sizeof(T), stream));
  }
  ~Buffer() { release(p_, stream_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* get() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
  Stream stream_;
};
}  // namespace dev

}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers
