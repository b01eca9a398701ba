// Tensor-core matrix multiply-accumulate for one warp, under nvcc and simt alike:
//
//   mma_bf16_m16n8k16(d, a, b):  D (16×8 fp32) += A (16×16 bf16, row-major) · B (16×8 bf16)
//
// with PTX's register fragments for mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (lane l,
// g = l / 4, t = l % 4; two bf16 per 32-bit word, the lower index in the low 16 bits):
//   a[r]: A row g + 8·(r % 2), columns 2·(t + 4·(r / 2)) + {0, 1}
//   b[r]: B column g, rows 2·(t + 4·r) + {0, 1}      (a key row's dims, when B is keysᵀ)
//   d[r]: D row g + 8·(r / 2), column 2·t + r % 2
// Under nvcc it is the instruction itself (sm_80 and newer); under simt, simt/simt.h emulates it
// with the same fragments (a warp rendezvous, fp32 sums in k order), so a kernel that loads the
// wrong elements into a fragment fails its tests on the CPU, and tests/simt checks the emulation's
// layout against the GPU's when one is present.
#pragma once
#include <cstdint>

#include "common/cuda.cuh"

#if defined(__CUDACC__)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "kernels/common/mma.cuh: mma.sync m16n8k16 with bf16 needs sm_80 or newer"
#endif
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
#endif

namespace memlayers {
inline namespace MEMLAYERS_TARGET_NS {

// Two bf16 as one fragment word: `lo` in the low 16 bits.
__device__ __forceinline__ uint32_t pack_bf16(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) |
         (static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16);
}
// The bf16 in the low or high half of a fragment word, as fp32 (exact).
__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers
