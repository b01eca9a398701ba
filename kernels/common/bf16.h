// bfloat16 on the host: the top 16 bits of an IEEE fp32. Kept free of CUDA headers so reference/
// and the CPU variants convert exactly the same way without a toolkit.
#pragma once
#include <bit>
#include <cstdint>

namespace memlayers {

// Exact: every bf16 is an fp32.
inline float bf16_bits_to_float(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

// Round to nearest, ties to even (what the GPU's __float2bfloat16_rn does). NaN stays a quiet
// NaN with its sign; overflow rounds to infinity as IEEE rounding does.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float round_to_bf16(float f) { return bf16_bits_to_float(float_to_bf16_bits(f)); }

}  // namespace memlayers
