// The AMX bf16 products (kernels/common/amx.h) that v3_amx_rescored scores with and the bench's
// host bf16 ceiling times: amx_pack_panel's layout and amx_gemm_bf16's sums against a plain loop.
// Skipped where the CPU has no AMX-BF16 (the reason printed).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/amx.h"
#include "common/bf16.h"
#include "tests/common/random.h"

namespace memlayers {
namespace {

// amx_pack_panel against its documented layout, written as a plain loop: pair (2P, 2P + 1) of row
// t is word (P % 16) · 16 + t % 16 of tile t / 16 of k-step P / 16; past n or keys, zero.
TEST(AmxPack, LayoutAsDocumented) {
  if (!amx_unavailable().empty()) GTEST_SKIP() << amx_unavailable();
  struct Shape {
    int64_t keys, n, ld, depth;
  };
  // a full panel; odd n, keys past one tile; ld past n; a k-step wholly past n; one key, n 1
  for (const Shape sh : {Shape{32, 64, 64, 64}, Shape{17, 19, 19, 32}, Shape{30, 40, 56, 64},
                         Shape{32, 31, 31, 96}, Shape{1, 1, 1, 32}}) {
    test::Rng rng("amx_pack_" + std::to_string(sh.keys) + "_" + std::to_string(sh.n));
    // Exactly the rows read: the last row ends at n, so a read past it is ASan's to catch.
    std::vector<uint16_t> rows(static_cast<std::size_t>((sh.keys - 1) * sh.ld + sh.n));
    for (auto& x : rows) x = static_cast<uint16_t>(rng.index(65536));
    std::vector<uint16_t> got(static_cast<std::size_t>(kAmxKeys * sh.depth), 0x7fc1);
    amx_pack_panel(rows.data(), sh.ld, sh.keys, sh.n, sh.depth, got.data());
    int64_t bad = 0;
    for (int64_t t = 0; t < kAmxKeys; ++t)
      for (int64_t e = 0; e < sh.depth; ++e) {
        const int64_t p = e / 2, step = p / 16, tile = t / 16;
        const int64_t word = ((step * 2 + tile) * 16 + p % 16) * 16 + t % 16;
        const uint16_t want = t < sh.keys && e < sh.n ? rows[t * sh.ld + e] : uint16_t{0};
        if (got[word * 2 + e % 2] != want && ++bad <= 5)
          ADD_FAILURE() << "keys " << sh.keys << ", n " << sh.n << ": row " << t << ", element "
                        << e << " is " << got[word * 2 + e % 2] << ", want " << want;
      }
    EXPECT_EQ(bad, 0) << "keys " << sh.keys << ", n " << sh.n;
  }
}

struct AmxCase {
  int64_t rows, keys, n, lda, ld;  // n: elements a row uses, depth: n padded to 32
};

class AmxGemm : public ::testing::TestWithParam<AmxCase> {};

TEST_P(AmxGemm, MatchesPlainSums) {
  if (!amx_unavailable().empty()) GTEST_SKIP() << amx_unavailable();
  const AmxCase c = GetParam();
  const int64_t depth = (c.n + kAmxDepth - 1) / kAmxDepth * kAmxDepth;
  const int64_t panels = (c.keys + kAmxKeys - 1) / kAmxKeys;
  test::Rng rng("amx_gemm_" + std::to_string(c.rows) + "_" + std::to_string(c.keys) + "_" +
                std::to_string(c.n));
  std::vector<uint16_t> a(static_cast<std::size_t>(c.rows * c.lda), 0);
  std::vector<uint16_t> b(static_cast<std::size_t>(c.keys * c.n));
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t d = 0; d < c.n; ++d) a[r * c.lda + d] = float_to_bf16_bits(rng.signed_unit());
  for (auto& x : b) x = float_to_bf16_bits(rng.signed_unit());
  // Poisoned: amx_pack_panel writes every element of a panel, the padding included.
  std::vector<uint16_t> packed(static_cast<std::size_t>(panels * kAmxKeys * depth), 0x7fc1);
  for (int64_t j = 0; j < c.keys; j += kAmxKeys)
    amx_pack_panel(b.data() + j * c.n, c.n, std::min(kAmxKeys, c.keys - j), c.n, depth,
                   packed.data() + j * depth);
  std::vector<float> out(static_cast<std::size_t>(c.rows * c.ld), NAN);
  {
    const AmxTiles tiles;
    amx_gemm_bf16(a.data(), c.lda, c.rows, packed.data(), panels, depth, out.data(), c.ld);
  }
  int64_t bad = 0;
  double norm = 0;
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t j = 0; j < panels * kAmxKeys; ++j) {
      double want = 0, mag = 0;  // keys past c.keys are the panel's zero padding
      for (int64_t d = 0; j < c.keys && d < c.n; ++d) {
        const double p =
            double(bf16_bits_to_float(a[r * c.lda + d])) * bf16_bits_to_float(b[j * c.n + d]);
        want += p, mag += std::fabs(p);
      }
      const float got = out[r * c.ld + j];
      norm += std::fabs(got);
      // Products of bf16 are exact in fp32; the fp32 sums round at most n times.
      if (!(std::fabs(got - want) <= double(c.n + 1) * 0x1p-24 * mag)) {
        if (++bad <= 5)
          ADD_FAILURE() << "row " << r << ", key " << j << ": " << got << " against " << want;
      }
    }
  EXPECT_EQ(bad, 0);
  EXPECT_GT(norm, 0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AmxGemm,
                         ::testing::Values(AmxCase{32, 32, 32, 32, 32},    // one pass
                                           AmxCase{64, 96, 256, 256, 96},  // 3 panels, 8 steps
                                           AmxCase{96, 100, 19, 32, 128},  // padded n and keys
                                           AmxCase{32, 64, 64, 80, 200}),  // strides past n
                         [](const auto& p) {
                           const AmxCase& c = p.param;
                           return "rows" + std::to_string(c.rows) + "_keys" +
                                  std::to_string(c.keys) + "_n" + std::to_string(c.n) + "_lda" +
                                  std::to_string(c.lda) + "_ld" + std::to_string(c.ld);
                         });

}  // namespace
}  // namespace memlayers
