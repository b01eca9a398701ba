// kernels/common/blas.h, the host GEMM the CPU variants and the harness call: OpenBLAS on each
// thread of the pool over blocks of C's rows (or columns). Checked against fp64 loops for every
// transpose, with padded leading dimensions, alpha and beta; the same bits on every run; OpenBLAS
// left on one thread; sizes beyond OpenBLAS's int refused.
// Build and run: cmake --build build --target embbag_test && ctest --test-dir build -L embbag
#include <cblas.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/blas.h"
#include "common/error.h"
#include "tests/common/random.h"

namespace memlayers {
namespace {

struct Gemm {
  bool ta, tb;
  int64_t m, n, k, pad;  // pad: extra elements in every leading dimension
  float alpha, beta;
  std::vector<float> a, b, c;

  int64_t lda() const { return (ta ? m : k) + pad; }
  int64_t ldb() const { return (tb ? k : n) + pad; }
  int64_t ldc() const { return n + pad; }
  float at_a(int64_t i, int64_t l) const { return ta ? a[l * lda() + i] : a[i * lda() + l]; }
  float at_b(int64_t l, int64_t j) const { return tb ? b[j * ldb() + l] : b[l * ldb() + j]; }

  Gemm(bool ta_, bool tb_, int64_t m_, int64_t n_, int64_t k_, int64_t pad_, float alpha_,
       float beta_, const std::string& name)
      : ta(ta_), tb(tb_), m(m_), n(n_), k(k_), pad(pad_), alpha(alpha_), beta(beta_) {
    test::Rng rng(name);
    a.resize(std::size_t((ta ? k : m) * lda()));
    b.resize(std::size_t((tb ? n : k) * ldb()));
    c.resize(std::size_t(m * ldc()));
    for (auto* v : {&a, &b, &c})
      for (float& x : *v) x = rng.signed_unit();
  }
  std::vector<float> run() const {
    std::vector<float> out = c;
    host_blas::gemm(ta, tb, m, n, k, alpha, a.data(), lda(), b.data(), ldb(), beta, out.data(),
                    ldc());
    return out;
  }
};

std::string describe(const Gemm& g) {
  return std::string(g.ta ? "T" : "N") + (g.tb ? "T" : "N") + " m " + std::to_string(g.m) + " n " +
         std::to_string(g.n) + " k " + std::to_string(g.k) + " pad " + std::to_string(g.pad);
}

// (m, n, k): one thread (small), blocks of rows (m >= 32, enough work), blocks of columns (m < 32
// and enough work), an empty C, ragged sizes everywhere.
const int64_t kShapes[][3] = {{1, 1, 1},      {5, 300, 7},    {0, 5, 5},     {33, 70, 1000},
                              {257, 129, 77}, {20, 4000, 64}, {100, 3, 9000}};

TEST(HostGemm, MatchesFp64LoopsForEveryTransposeAndShape) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& s : kShapes)
        for (int64_t pad : {0, 3}) {
          const std::string name = std::string("gemm") + (ta ? "T" : "N") + (tb ? "T" : "N") +
                                   std::to_string(s[0]) + "x" + std::to_string(s[1]) + "x" +
                                   std::to_string(s[2]) + "p" + std::to_string(pad);
          const Gemm g(ta, tb, s[0], s[1], s[2], pad, pad ? 0.5f : 1.0f, pad ? 1.0f : 0.0f, name);
          const std::vector<float> got = g.run();
          for (int64_t i = 0; i < g.m; ++i)
            for (int64_t j = 0; j < g.n; ++j) {
              double sum = 0, scale = 0;
              for (int64_t l = 0; l < g.k; ++l) {
                sum += double(g.at_a(i, l)) * double(g.at_b(l, j));
                scale += std::fabs(double(g.at_a(i, l)) * double(g.at_b(l, j)));
              }
              const double want = g.alpha * sum + g.beta * double(g.c[i * g.ldc() + j]);
              ASSERT_NEAR(got[i * g.ldc() + j], want, 1e-5 * (scale + 1))
                  << describe(g) << " at (" << i << ", " << j << ")";
            }
          // The padding of C is never written.
          for (int64_t i = 0; i < g.m; ++i)
            for (int64_t j = g.n; j < g.ldc(); ++j)
              ASSERT_EQ(got[i * g.ldc() + j], g.c[i * g.ldc() + j]) << describe(g);
        }
}

TEST(HostGemm, SameBitsEveryRun) {
  // The blocks are fixed by the sizes and the thread count, so a call repeats its bits (the cpu
  // backends' determinism rests on it). Another thread count may round differently: OpenBLAS's
  // micro-kernels tile a block's edge differently (measured with its Haswell kernels).
  for (const auto& s : {std::array<int64_t, 3>{256, 300, 200}, {16, 3000, 100}, {500, 64, 128}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const Gemm g(ta, tb, s[0], s[1], s[2], 1, 1.0f, 1.0f, "bits");
        const std::vector<float> first = g.run();
        for (int i = 0; i < 3; ++i) ASSERT_EQ(g.run(), first) << describe(g) << ", run " << i + 2;
      }
}

#if defined(OPENBLAS_VERSION)
TEST(HostGemm, LeavesOpenBlasOnOneThread) {
  openblas_set_num_threads(2);
  Gemm(false, false, 64, 64, 64, 0, 1.0f, 0.0f, "one thread").run();
  EXPECT_EQ(openblas_get_num_threads(), 1);
}
#endif

TEST(HostGemm, RefusesSizesBeyondOpenBlasInt) {
  const int64_t big = int64_t{1} << 32;
  float x = 0;
  try {
    host_blas::gemm(false, false, big, 1, 1, 1.0f, &x, 1, &x, 1, 0.0f, &x, 1);
    FAIL() << "a GEMM with m = 2^32 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("m = 4294967296"), std::string::npos) << e.what();
  }
  EXPECT_THROW(host_blas::gemm(false, false, 1, 1, 1, 1.0f, &x, big, &x, 1, 0.0f, &x, 1), Error);
}

}  // namespace
}  // namespace memlayers
