// Asynchronous copies from global to shared memory (cp.async, sm_80 and newer), under nvcc and
// simt alike:
//
//   cp_async_16(dst, src, src_bytes): starts a copy of src_bytes (0..16) bytes from global `src`
//       to 16 bytes of shared `dst`, the rest zeros (0: all zeros, `src` not read). Both
//       addresses 16-byte aligned. The copy goes through L2 only (.cg): a tile streamed once per
//       block gains nothing from L1.
//   cp_async_commit(): closes the calling thread's group of copies started since the last commit.
//   cp_async_wait<N>(): waits until at most the N most recently committed groups of the calling
//       thread are still in flight. Another thread sees the data only after a barrier that
//       follows this wait.
//
// A multi-stage pipeline (stage s's copies one group): commit one group per stage, even an
// empty one, so that cp_async_wait<stages - 2>() always means "stage s has landed".
//
// Under simt (simt/simt.h) a copy reads its source when started, fills its destination with
// garbage (all-ones bytes) at once and writes the data at the wait that completes its group,
// from the thread that started it. So a read before the wait sees garbage and fails the kernel's
// tests; a read from another thread with no barrier after that wait is a data race
// ThreadSanitizer reports; and a thread that ends with copies it never waited for, a misaligned
// address or a src_bytes outside 0..16 is a KernelError.
#pragma once
#include <cstdint>

#include "common/cuda.cuh"

#if defined(__CUDACC__)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "kernels/common/async_copy.cuh: cp.async needs sm_80 or newer"
#endif
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes = 16) {
#if defined(__CUDA_ARCH__)
  const auto shared = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src),
               "r"(src_bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7");
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
#endif
