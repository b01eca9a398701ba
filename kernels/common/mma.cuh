// Tensor-core matrix multiply-accumulate for one warp, under nvcc and simt alike:
//
//   mma_bf16_m16n8k16(d, a, b):  D (16×8 fp32) += A (16×16 bf16, row-major) · B (16×8 bf16)
//   mma_tf32_m16n8k8(d, a, b):   D (16×8 fp32) += A (16×8 tf32, row-major) · B (8×8 tf32)
//   mma_3xtf32_m16n8k8(d, a, b): the same product for fp32 operands, split into tf32 hi + lo
//                                (three tf32 mma: near-fp32 accuracy on tensor cores)
//
// with PTX's register fragments (lane l, g = l / 4, t = l % 4):
//   m16n8k16 bf16 (two bf16 per 32-bit word, the lower index in the low 16 bits):
//     a[r]: A row g + 8·(r % 2), columns 2·(t + 4·(r / 2)) + {0, 1}
//     b[r]: B column g, rows 2·(t + 4·r) + {0, 1}      (a key row's dims, when B is keysᵀ)
//   m16n8k8 tf32 (one value per word, an fp32 bit pattern with the low 13 bits zero):
//     a[r]: A row g + 8·(r % 2), column t + 4·(r / 2)
//     b[r]: B column g, row t + 4·r
//   both: d[r]: D row g + 8·(r / 2), column 2·t + r % 2
// The two shapes read the same 32-bit words: a k-step is 8 words of a row (16 bf16 or 8 tf32),
// lane (g, t) takes words t and t + 4 of rows g and g + 8 of A and of row (column) g of B.
// Under nvcc they are the instructions themselves (sm_80 and newer); under simt, simt/simt.h
// emulates them with the same fragments (a warp rendezvous, fp32 sums in k order), so a kernel
// that loads the wrong elements into a fragment fails its tests on the CPU, and tests/simt checks
// the emulation's layout against the GPU's when one is present.
#pragma once
#include <cstdint>

#include "common/cuda.cuh"

#if defined(__CUDACC__)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "kernels/common/mma.cuh: mma.sync with bf16 and tf32 needs sm_80 or newer"
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
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
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

// An fp32 value (bit pattern) rounded to tf32: 10 explicit mantissa bits, to nearest with ties
// away from zero (as cvt.rna.tf32.f32), the low 13 bits zero. Integer arithmetic, so nvcc and
// simt round alike: adding half a tf32 ulp carries into the kept bits exactly when the dropped
// ones are at least half; an infinity stays one, a NaN becomes the canonical one, a finite value
// past tf32's largest rounds to infinity.
__device__ __forceinline__ uint32_t tf32_round(uint32_t x) {
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc00000u;
  return (x + 0x1000u) & 0xffffe000u;
}

// x = hi + lo + e: hi = tf32(x), lo = tf32(x − hi) (x − hi is exact in fp32), |e| ≤ 2⁻²²·|x|
// for normal values.
template <int N>
__device__ __forceinline__ void tf32_split(const uint32_t (&x)[N], uint32_t (&hi)[N],
                                           uint32_t (&lo)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    hi[i] = tf32_round(x[i]);
    lo[i] = tf32_round(__float_as_uint(__uint_as_float(x[i]) - __uint_as_float(hi[i])));
  }
}

// D += A·B for fp32 A and B (bit patterns, the m16n8k8 fragments above), each split into tf32
// halves by tf32_split: A·B ≈ A_lo·B_hi + A_hi·B_lo + A_hi·B_hi, the small terms first; the
// A_lo·B_lo term (about 2⁻²²·|A||B|) is dropped. Each product's error is then a few 2⁻²² of
// |a||b|, near fp32's own rounding, at three tensor-core instructions where one tf32 mma would be
// off by 2⁻¹¹. The caller splits, since one A fragment serves many B and one B many A.
__device__ __forceinline__ void mma_3xtf32_m16n8k8(float (&d)[4], const uint32_t (&a_hi)[4],
                                                   const uint32_t (&a_lo)[4],
                                                   const uint32_t (&b_hi)[2],
                                                   const uint32_t (&b_lo)[2]) {
#if defined(__CUDACC__)
  mma_tf32_m16n8k8(d, a_lo, b_hi);
  mma_tf32_m16n8k8(d, a_hi, b_lo);
  mma_tf32_m16n8k8(d, a_hi, b_hi);
#else
  // simt: the same three mma with the same arithmetic, in one warp rendezvous (simt/simt.h)
  simt_mma_3xtf32_m16n8k8(d, a_hi, a_lo, b_hi, b_lo);
#endif
}

}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers
