// fp32 <-> bf16 by bit manipulation, for the CLI: bf16 tensors travel as float32 in .npy files and
// the op subcommands narrow them here. Plain integer code, so it needs neither CUDA headers nor a
// GPU and gives the same bits everywhere.
#pragma once
#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include "common/error.h"

namespace memlayers::npy {

// Round to nearest, ties to even. NaN stays NaN (quiet, sign kept): plain rounding could carry a
// NaN whose payload sits in the low bits into infinity. Overflow rounds to infinity, as on the GPU.
constexpr std::uint16_t fp32_to_bf16_bits(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  const std::uint32_t lsb = (u >> 16) & 1u;
  return static_cast<std::uint16_t>((u + 0x7fffu + lsb) >> 16);
}

constexpr float bf16_bits_to_fp32(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

// fp32 -> nearest bf16 -> fp32: what a value becomes once stored as bf16.
constexpr float round_to_bf16(float f) { return bf16_bits_to_fp32(fp32_to_bf16_bits(f)); }

inline void fp32_to_bf16(std::span<const float> in, std::span<std::uint16_t> out) {
  MEMLAYERS_CHECK(in.size() == out.size(), "fp32_to_bf16: {} inputs, {} outputs", in.size(),
                  out.size());
  for (std::size_t i = 0; i < in.size(); ++i) out[i] = fp32_to_bf16_bits(in[i]);
}

inline void bf16_to_fp32(std::span<const std::uint16_t> in, std::span<float> out) {
  MEMLAYERS_CHECK(in.size() == out.size(), "bf16_to_fp32: {} inputs, {} outputs", in.size(),
                  out.size());
  for (std::size_t i = 0; i < in.size(); ++i) out[i] = bf16_bits_to_fp32(in[i]);
}

inline std::vector<std::uint16_t> fp32_to_bf16(std::span<const float> in) {
  std::vector<std::uint16_t> out(in.size());
  fp32_to_bf16(in, out);
  return out;
}

inline std::vector<float> bf16_to_fp32(std::span<const std::uint16_t> in) {
  std::vector<float> out(in.size());
  bf16_to_fp32(in, out);
  return out;
}

}  // namespace memlayers::npy
