// fp32 <-> bf16: round to nearest even against an independent reference (the nearer of the two
// neighbouring bf16 values, computed in double), NaN kept, infinities and overflow.
#include <bit>
#include <cmath>
#include <cstdint>
#include <random>

#include <gtest/gtest.h>

#include "npy/convert.h"

namespace memlayers::npy {
namespace {

float f(std::uint32_t bits) { return std::bit_cast<float>(bits); }

// The bf16 nearest to x by distance, ties to the even pattern; x finite.
std::uint16_t nearest_bf16(float x) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  const auto lo = static_cast<std::uint16_t>(u >> 16);  // truncation: toward zero
  const auto hi = static_cast<std::uint16_t>(lo + 1);   // next away from zero (may be inf)
  const double dlo = std::fabs(static_cast<double>(x) - bf16_bits_to_fp32(lo));
  double dhi = std::fabs(static_cast<double>(bf16_bits_to_fp32(hi)) - x);
  if ((hi & 0x7fff) == 0x7f80) {
    // Past the largest finite bf16 the next value is infinity; IEEE rounding treats it as the
    // value one step further, 2^128.
    dhi = std::fabs(std::ldexp(1.0, 128) - std::fabs(static_cast<double>(x)));
  }
  if (dlo != dhi) return dlo < dhi ? lo : hi;
  return (lo & 1) == 0 ? lo : hi;
}

TEST(CliBf16, KnownValues) {
  EXPECT_EQ(fp32_to_bf16_bits(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16_bits(-2.0f), 0xc000);
  EXPECT_EQ(fp32_to_bf16_bits(0.0f), 0x0000);
  EXPECT_EQ(fp32_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(bf16_bits_to_fp32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_bits_to_fp32(0x4049), 3.140625f);
  EXPECT_EQ(round_to_bf16(3.14159265f), 3.140625f);
}

TEST(CliBf16, RoundsToNearestEven) {
  EXPECT_EQ(fp32_to_bf16_bits(f(0x3f808000)), 0x3f80);  // tie, even below
  EXPECT_EQ(fp32_to_bf16_bits(f(0x3f818000)), 0x3f82);  // tie, even above
  EXPECT_EQ(fp32_to_bf16_bits(f(0x3f808001)), 0x3f81);  // just above the tie
  EXPECT_EQ(fp32_to_bf16_bits(f(0x3f807fff)), 0x3f80);  // just below the tie
  EXPECT_EQ(fp32_to_bf16_bits(f(0xbf818000)), 0xbf82);  // sign does not change the rule
  EXPECT_EQ(fp32_to_bf16_bits(f(0x00008000)), 0x0000);  // subnormal tie
  EXPECT_EQ(fp32_to_bf16_bits(f(0x00018000)), 0x0002);
  EXPECT_EQ(fp32_to_bf16_bits(f(0x3fffffff)), 0x4000);  // carry into the exponent
}

TEST(CliBf16, InfinityAndOverflow) {
  EXPECT_EQ(fp32_to_bf16_bits(INFINITY), 0x7f80);
  EXPECT_EQ(fp32_to_bf16_bits(-INFINITY), 0xff80);
  EXPECT_EQ(fp32_to_bf16_bits(f(0x7f7fffff)), 0x7f80);  // FLT_MAX rounds up to infinity
  EXPECT_EQ(fp32_to_bf16_bits(f(0x7f7f7fff)), 0x7f7f);  // largest finite bf16 stays
}

TEST(CliBf16, NanStaysNan) {
  // Payloads only in the low 16 bits: plain rounding would truncate them to infinity.
  for (std::uint32_t bits : {0x7f800001u, 0x7f80ffffu, 0xff800001u, 0x7fc00000u, 0xffffffffu}) {
    const std::uint16_t b = fp32_to_bf16_bits(f(bits));
    EXPECT_TRUE(std::isnan(bf16_bits_to_fp32(b))) << std::hex << bits << " -> " << b;
    EXPECT_EQ(b & 0x8000, (bits >> 16) & 0x8000) << "sign of NaN " << std::hex << bits;
  }
  EXPECT_EQ(fp32_to_bf16_bits(f(0x7fc00000)), 0x7fc0);
}

TEST(CliBf16, MatchesNearestReferenceOnSampledPatterns) {
  std::mt19937 rng(7);
  std::int64_t checked = 0, mismatches = 0;
  auto check = [&](std::uint32_t bits) {
    const float x = f(bits);
    if (!std::isfinite(x)) return;
    ++checked;
    const std::uint16_t got = fp32_to_bf16_bits(x), want = nearest_bf16(x);
    if (got != want && ++mismatches <= 5)
      ADD_FAILURE() << std::hex << "fp32 0x" << bits << ": got 0x" << got << ", nearest 0x" << want;
  };
  // Every pattern near a tie (the low 16 bits around 0x8000) in a stride of exponents, plus random.
  for (std::uint32_t hi = 0; hi < 0x10000; hi += 97)
    for (std::uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu})
      check(hi << 16 | lo);
  for (int i = 0; i < 1 << 20; ++i) check(rng());
  EXPECT_EQ(mismatches, 0) << "of " << checked;
  EXPECT_GT(checked, 1 << 19);
}

TEST(CliBf16, EveryBf16SurvivesTheRoundTrip) {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const float x = bf16_bits_to_fp32(static_cast<std::uint16_t>(b));
    if (std::isnan(x)) continue;
    ASSERT_EQ(fp32_to_bf16_bits(x), b) << std::hex << b;
  }
}

TEST(CliBf16, SpanHelpers) {
  const std::vector<float> in{1.0f, f(0x3f818000), -0.0f, NAN};
  const std::vector<std::uint16_t> bits = fp32_to_bf16(in);
  ASSERT_EQ(bits.size(), 4u);
  EXPECT_EQ(bits[0], 0x3f80);
  EXPECT_EQ(bits[1], 0x3f82);
  EXPECT_EQ(bits[2], 0x8000);
  const std::vector<float> back = bf16_to_fp32(bits);
  EXPECT_EQ(back[1], bf16_bits_to_fp32(0x3f82));
  EXPECT_TRUE(std::isnan(back[3]));
  std::vector<std::uint16_t> short_out(3);
  EXPECT_THROW(fp32_to_bf16(in, short_out), Error);
}

}  // namespace
}  // namespace memlayers::npy
