// simt's own tests: each primitive against a plain CPU computation, over grid and block shapes
// that include blocks which are not a multiple of 32; and the rules simt enforces (divergent
// barriers, deadlocks, bad launches) failing fast with the kernel's name.
// Run: ctest -R Simt  (or build/tests/simt/simt_test)
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/backend.h"
#include "tests/simt/test_kernels.h"

namespace simt_tests {
namespace {

using memlayers::Backend;

// Device buffers of one backend, filled from and read back to host vectors.
struct Target {
  Backend backend;
  const KernelSet* k;
  const memlayers::Memory* mem;

  template <class T>
  T* upload(const std::vector<T>& host) {
    T* d = static_cast<T*>(mem->alloc(host.size() * sizeof(T) + 1));
    mem->to_device(d, host.data(), host.size() * sizeof(T));
    owned.push_back(d);
    return d;
  }
  // A device buffer of n elements, every byte 0xff (NaN for floats) so unwritten output shows.
  template <class T>
  T* poisoned(std::size_t n) {
    T* d = static_cast<T*>(mem->alloc(n * sizeof(T) + 1));
    mem->fill_bytes(d, 0xff, n * sizeof(T));
    owned.push_back(d);
    return d;
  }
  template <class T>
  std::vector<T> download(const T* d, std::size_t n) {
    mem->synchronize();
    std::vector<T> h(n);
    mem->to_host(h.data(), d, n * sizeof(T));
    return h;
  }
  ~Target() {
    for (void* p : owned) mem->release(p);
  }
  std::vector<void*> owned;
};

std::vector<Backend> targets() {
  std::vector<Backend> t{Backend::simt};
#if defined(MEMLAYERS_HAVE_CUDA)
  t.push_back(Backend::cuda);
#endif
  return t;
}

const KernelSet& kernels_for(Backend b) {
#if defined(MEMLAYERS_HAVE_CUDA)
  if (b == Backend::cuda) return gpu::kernels();
#endif
  (void)b;
  return simt::kernels();
}

class Simt : public ::testing::TestWithParam<std::tuple<Backend, int>> {
 protected:
  void SetUp() override {
    backend_ = std::get<0>(GetParam());
    if (std::string why = memlayers::usable(backend_); !why.empty()) GTEST_SKIP() << why;
    threads_ = std::get<1>(GetParam());
  }
  Target target() {
    return Target{backend_, &kernels_for(backend_), memlayers::backend_info(backend_).memory, {}};
  }
  Backend backend_;
  int threads_ = 0;
  std::mt19937 rng_{12345};
};

std::vector<float> small_ints(int n, std::mt19937& rng) {
  // Integer-valued floats: every summation order gives the exact same sum.
  std::uniform_int_distribution<int> d(-8, 8);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(d(rng));
  return v;
}

TEST_P(Simt, BlockReduceEqualsCpuSum) {
  for (int n : {1, threads_ * 2 - 1, threads_ * 5 + 3}) {
    auto x = small_ints(n, rng_);
    Target t = target();
    int blocks = (n + 2 * threads_ - 1) / (2 * threads_);
    float* out = t.poisoned<float>(blocks);
    t.k->block_reduce(t.upload(x), out, n, threads_, nullptr);
    auto got = t.download(out, blocks);
    for (int b = 0; b < blocks; ++b) {
      float want = 0;
      for (int i = b * 2 * threads_; i < std::min(n, (b + 1) * 2 * threads_); ++i) want += x[i];
      ASSERT_EQ(got[b], want) << "block " << b << " of n=" << n;
    }
  }
}

TEST_P(Simt, WarpShuffleReduceEqualsCpuSum) {
  // With more than one thread per block, the last lane of the grid has no input.
  const int blocks = 3, n = threads_ * blocks - (threads_ > 1 ? 1 : 0);
  auto x = small_ints(n, rng_);
  Target t = target();
  const int warps = (threads_ + 31) / 32, segs = (threads_ + 7) / 8;
  float* ws = t.poisoned<float>(blocks * warps);
  float* ss = t.poisoned<float>(blocks * segs);
  t.k->warp_reduce(t.upload(x), ws, ss, n, threads_, nullptr);
  auto wsum = t.download(ws, blocks * warps);
  auto ssum = t.download(ss, blocks * segs);
  auto sum = [&](int first, int last) {  // [first, last) of the block's threads, inputs < n
    float acc = 0;
    for (int i = first; i < last; ++i) acc += i < n ? x[i] : 0.f;
    return acc;
  };
  for (int b = 0; b < blocks; ++b) {
    int base = b * threads_, end = base + threads_;
    for (int w = 0; w < warps; ++w)
      EXPECT_EQ(wsum[b * warps + w], sum(base + 32 * w, std::min(end, base + 32 * w + 32)))
          << "block " << b << " warp " << w;
    for (int s8 = 0; s8 < segs; ++s8)
      EXPECT_EQ(ssum[b * segs + s8], sum(base + 8 * s8, std::min(end, base + 8 * s8 + 8)))
          << "block " << b << " segment " << s8;
  }
}

TEST_P(Simt, BlockScanEqualsCpuPrefixSums) {
  int n = threads_ * 4 + 3;
  std::vector<int> x(n);
  std::uniform_int_distribution<int> d(-50, 50);
  for (auto& v : x) v = d(rng_);
  Target t = target();
  int* out = t.poisoned<int>(n);
  t.k->block_scan(t.upload(x), out, n, threads_, nullptr);
  auto got = t.download(out, n);
  for (int b = 0; b * threads_ < n; ++b) {
    int acc = 0;
    for (int i = b * threads_; i < std::min(n, (b + 1) * threads_); ++i) {
      acc += x[i];
      ASSERT_EQ(got[i], acc) << "element " << i;
    }
  }
}

TEST_P(Simt, HistogramEqualsCpuCounts) {
  int n = threads_ * 7 + 11;
  int bins = 37;
  std::vector<unsigned> x(n);
  std::uniform_int_distribution<unsigned> d(0, 1000);
  for (auto& v : x) v = d(rng_);
  Target t = target();
  unsigned* hist = t.upload(std::vector<unsigned>(bins, 0));
  t.k->histogram(t.upload(x), hist, n, bins, threads_, nullptr);
  auto got = t.download(hist, bins);
  std::vector<unsigned> want(bins, 0);
  for (unsigned v : x) ++want[v % bins];
  EXPECT_EQ(got, want);
}

TEST_P(Simt, AtomicsEqualCpu) {
  int n = threads_ * 2 + 3;
  std::vector<int> x(n);
  std::uniform_int_distribution<int> d(-1000, 1000);
  for (auto& v : x) v = d(rng_);
  Target t = target();
  int* words = t.upload(std::vector<int>{0, 0, -100000, 100000, 0, 0});
  float* fsum = t.upload(std::vector<float>{0.f});
  double* dsum = t.upload(std::vector<double>{0.0});
  t.k->atomics(t.upload(x), words, fsum, dsum, n, threads_, nullptr);
  auto w = t.download(words, 6);
  long long sum = std::accumulate(x.begin(), x.end(), 0LL);
  EXPECT_EQ(w[0], sum);
  EXPECT_EQ(w[1], n);
  EXPECT_EQ(w[2], *std::max_element(x.begin(), x.end()));
  EXPECT_EQ(w[3], *std::min_element(x.begin(), x.end()));
  EXPECT_EQ(w[4], n);
  EXPECT_EQ(w[5], 1);
  EXPECT_EQ(t.download(fsum, 1)[0], static_cast<float>(sum));  // integers below 2^24: exact
  EXPECT_EQ(t.download(dsum, 1)[0], 0.5 * sum);
}

TEST_P(Simt, VotesAndBarrierReductionsEqualCpu) {
  int blocks = 2;
  Target t = target();
  int warps_per_block = (threads_ + 31) / 32;
  unsigned* wo = t.poisoned<unsigned>(3 * warps_per_block * blocks);
  int* bo = t.poisoned<int>(3 * blocks);
  t.k->votes(wo, bo, threads_, blocks, nullptr);
  auto wv = t.download(wo, 3 * warps_per_block * blocks);
  auto bv = t.download(bo, 3 * blocks);
  auto pred = [](int tid) { return (tid % 3 == 0) != (tid == 7); };
  for (int b = 0; b < blocks; ++b) {
    int count = 0;
    bool all = true;
    for (int tid = 0; tid < threads_; ++tid) {
      count += pred(tid);
      all = all && pred(tid);
    }
    EXPECT_EQ(bv[3 * b], count);
    EXPECT_EQ(bv[3 * b + 1], all ? 1 : 0);
    EXPECT_EQ(bv[3 * b + 2], 1);
    for (int w = 0; w < warps_per_block; ++w) {
      unsigned ballot = 0;
      for (int l = 0; l < 32 && w * 32 + l < threads_; ++l)
        if (pred(w * 32 + l)) ballot |= 1u << l;
      bool wall = true;
      for (int l = 0; l < 32 && w * 32 + l < threads_; ++l) wall = wall && pred(w * 32 + l);
      int slot = 3 * (b * warps_per_block + w);
      EXPECT_EQ(wv[slot], ballot) << "warp " << w;
      EXPECT_EQ(wv[slot + 1], ballot != 0 ? 1u : 0u);
      EXPECT_EQ(wv[slot + 2], wall ? 1u : 0u);
    }
  }
}

TEST_P(Simt, ShufflesFollowCudaSemanticsForEveryType) {
  for (int width : {32, 16, 8, 4}) {
    Target t = target();
    int n = 4 * threads_;
    int* io = t.poisoned<int>(n);
    float* fo = t.poisoned<float>(n);
    double* dd = t.poisoned<double>(n);
    float* ho = t.poisoned<float>(n);
    float* bo = t.poisoned<float>(n);
    t.k->shuffles(io, fo, dd, ho, bo, width, threads_, nullptr);
    auto iv = t.download(io, n);
    auto fv = t.download(fo, n);
    auto dv = t.download(dd, n);
    auto hv = t.download(ho, n);
    auto bv = t.download(bo, n);
    for (int tid = 0; tid < threads_; ++tid) {
      int lane = tid % 32;
      int lanes = std::min(32, threads_ - tid / 32 * 32);  // lanes present in this warp
      int seg = lane & ~(width - 1);
      int src[4] = {seg + ((lane * 3) & (width - 1)), (lane % width) >= 3 ? lane - 3 : lane,
                    (lane % width) + 5 < width ? lane + 5 : lane,
                    ((lane ^ 6) / width == lane / width) ? lane ^ 6 : lane};
      for (int op = 0; op < 4; ++op) {
        if (src[op] >= lanes) continue;  // an absent source lane is undefined on a GPU
        float f = 0.5f * src[op] - 3.f;
        SCOPED_TRACE(testing::Message() << "width " << width << " thread " << tid << " op " << op);
        EXPECT_EQ(iv[4 * tid + op], 100 + src[op]);
        EXPECT_EQ(fv[4 * tid + op], f);
        EXPECT_EQ(dv[4 * tid + op], 1e10 + src[op]);
        EXPECT_EQ(hv[4 * tid + op], f);  // halves of small half-integers are exact
        EXPECT_EQ(bv[4 * tid + op], f);
      }
    }
  }
}

TEST_P(Simt, DynamicSharedMemoryAndEarlyReturn) {
  int n = threads_ * 3 - 1;
  auto x = small_ints(n, rng_);
  for (int early : {0, threads_ / 2}) {
    Target t = target();
    float* out = t.poisoned<float>(n);
    t.k->reverse_dynamic(t.upload(x), out, n, threads_, early, nullptr);
    auto got = t.download(out, n);
    for (int i = 0; i < n; ++i) {
      int tid = i % threads_, base = i - tid;
      if (tid < early) {
        EXPECT_TRUE(std::isnan(got[i])) << "thread " << tid << " returned early but wrote";
        continue;
      }
      int src = base + threads_ - 1 - tid;
      float want = src < n ? x[src] : 0.f;
      ASSERT_EQ(got[i], want) << "element " << i << " early " << early;
    }
  }
}

std::string name_of(const testing::TestParamInfo<std::tuple<Backend, int>>& info) {
  return std::string(memlayers::to_string(std::get<0>(info.param))) + "_block" +
         std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Shapes, Simt,
                         testing::Combine(testing::ValuesIn(targets()),
                                          testing::Values(1, 31, 32, 33, 96, 100, 256)),
                         name_of);

// Transpose has its own fixed block (32×8); the shapes vary the matrix.
TEST(SimtTranspose, EqualsCpuTranspose) {
  for (Backend b : targets()) {
    if (!memlayers::usable(b).empty()) continue;
    for (auto [rows, cols] : {std::pair{1, 1}, {32, 32}, {33, 70}, {100, 7}}) {
      std::mt19937 rng(rows * 1000 + cols);
      auto x = small_ints(rows * cols, rng);
      Target t{b, &kernels_for(b), memlayers::backend_info(b).memory, {}};
      float* out = t.poisoned<float>(rows * cols);
      t.k->transpose(t.upload(x), out, rows, cols, nullptr);
      auto got = t.download(out, rows * cols);
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
          ASSERT_EQ(got[c * rows + r], x[r * cols + c])
              << rows << "x" << cols << " at " << r << "," << c;
    }
  }
}

// mma.sync m16n8k16 (bf16 in, fp32 accumulators): simt's emulation must use PTX's fragment
// layout, which the kernel's loads follow; on a GPU the same kernel checks that layout against
// the hardware. Small integers: every product and sum is exact in any order.
TEST(SimtMma, Bf16M16n8k16EqualsCpuProduct) {
  for (Backend b : targets()) {
    if (!memlayers::usable(b).empty()) continue;
    for (int tiles : {1, 3}) {
      std::mt19937 rng(tiles);
      std::uniform_int_distribution<int> small(-4, 4), acc(-8, 8);
      std::vector<__nv_bfloat16> a(tiles * 256), bm(tiles * 128);
      std::vector<float> af(a.size()), bf(bm.size()), c(tiles * 128);
      for (std::size_t i = 0; i < a.size(); ++i) a[i] = __float2bfloat16(af[i] = small(rng));
      for (std::size_t i = 0; i < bm.size(); ++i) bm[i] = __float2bfloat16(bf[i] = small(rng));
      for (auto& x : c) x = static_cast<float>(acc(rng));
      Target t{b, &kernels_for(b), memlayers::backend_info(b).memory, {}};
      float* d = t.poisoned<float>(tiles * 128);
      t.k->mma_bf16(t.upload(a), t.upload(bm), t.upload(c), d, tiles, nullptr);
      const auto got = t.download(d, tiles * 128);
      for (int tile = 0; tile < tiles; ++tile)
        for (int row = 0; row < 16; ++row)
          for (int col = 0; col < 8; ++col) {
            float want = c[tile * 128 + row * 8 + col];
            for (int k = 0; k < 16; ++k)
              want += af[tile * 256 + row * 16 + k] * bf[tile * 128 + col * 16 + k];
            ASSERT_EQ(got[tile * 128 + row * 8 + col], want)
                << memlayers::to_string(b) << " tile " << tile << " row " << row << " col " << col;
          }
    }
  }
}

// mma.sync m16n8k8 with tf32 operands: the same check of the fragment layout (small integers are
// tf32 values, and every product and sum is exact).
TEST(SimtMma, Tf32M16n8k8EqualsCpuProduct) {
  for (Backend b : targets()) {
    if (!memlayers::usable(b).empty()) continue;
    for (int tiles : {1, 3}) {
      std::mt19937 rng(10 + tiles);
      std::uniform_int_distribution<int> small(-6, 6), acc(-8, 8);
      std::vector<float> a(tiles * 128), bm(tiles * 64), c(tiles * 128);
      for (auto& x : a) x = static_cast<float>(small(rng));
      for (auto& x : bm) x = static_cast<float>(small(rng));
      for (auto& x : c) x = static_cast<float>(acc(rng));
      Target t{b, &kernels_for(b), memlayers::backend_info(b).memory, {}};
      float* d = t.poisoned<float>(tiles * 128);
      t.k->mma_tf32(t.upload(a), t.upload(bm), t.upload(c), d, tiles, 0, nullptr);
      const auto got = t.download(d, tiles * 128);
      for (int tile = 0; tile < tiles; ++tile)
        for (int row = 0; row < 16; ++row)
          for (int col = 0; col < 8; ++col) {
            float want = c[tile * 128 + row * 8 + col];
            for (int k = 0; k < 8; ++k)
              want += a[tile * 128 + row * 8 + k] * bm[tile * 64 + col * 8 + k];
            ASSERT_EQ(got[tile * 128 + row * 8 + col], want)
                << memlayers::to_string(b) << " tile " << tile << " row " << row << " col " << col;
          }
    }
  }
}

// Three tf32 mma on fp32 operands split into halves: each output within a few 2⁻²² of
// |c| + Σ|a·b| of the fp64 product, where one tf32 mma on the rounded operands is off by about
// 2⁻¹¹ of it. On a GPU this measures the hardware's tf32 products and accumulation; the bound
// leaves room for an accumulator that keeps fewer bits than fp32's rounding would.
TEST(SimtMma, ThreeTf32IsNearFp32) {
  for (Backend b : targets()) {
    if (!memlayers::usable(b).empty()) continue;
    const int tiles = 4;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<float> a(tiles * 128), bm(tiles * 64), c(tiles * 128);
    for (auto& x : a) x = normal(rng);
    for (auto& x : bm) x = normal(rng);
    for (auto& x : c) x = normal(rng);
    Target t{b, &kernels_for(b), memlayers::backend_info(b).memory, {}};
    float* d = t.poisoned<float>(tiles * 128);
    t.k->mma_tf32(t.upload(a), t.upload(bm), t.upload(c), d, tiles, 1, nullptr);
    const auto got = t.download(d, tiles * 128);
    // The helper is its three mma, bitwise (simt runs them in one rendezvous).
    float* d3 = t.poisoned<float>(tiles * 128);
    t.k->mma_tf32(t.upload(a), t.upload(bm), t.upload(c), d3, tiles, 2, nullptr);
    EXPECT_EQ(t.download(d3, tiles * 128), got) << memlayers::to_string(b);
    double worst = 0;
    for (int tile = 0; tile < tiles; ++tile)
      for (int row = 0; row < 16; ++row)
        for (int col = 0; col < 8; ++col) {
          double want = c[tile * 128 + row * 8 + col], scale = std::abs(want);
          for (int k = 0; k < 8; ++k) {
            const double p = double(a[tile * 128 + row * 8 + k]) * bm[tile * 64 + col * 8 + k];
            want += p;
            scale += std::abs(p);
          }
          worst = std::max(worst, std::abs(got[tile * 128 + row * 8 + col] - want) / scale);
        }
    EXPECT_LE(worst, 8 * std::ldexp(1.0, -22)) << memlayers::to_string(b);
    EXPECT_GT(worst, 0) << memlayers::to_string(b) << ": exact on random fp32 input is suspect";
  }
}

// cp.async through a 2-, 3- and 4-stage ring: every float lands where it belongs, the tail of the
// last chunk zero-filled, read by another thread than the one that copied it. Under simt the data
// lands only at the wait, so a wait or barrier missing from the pipeline fails here (and under
// ThreadSanitizer is a race).
TEST(SimtAsyncCopy, PipelinedRingCopiesExactly) {
  for (Backend b : targets()) {
    if (!memlayers::usable(b).empty()) continue;
    for (int stages : {2, 3, 4})
      for (auto [n, threads] : {std::pair{1, 32}, {4 * 64 * 5 + 6, 64}, {1000, 96}}) {
        std::mt19937 rng(stages * 1000 + n);
        std::normal_distribution<float> normal(0.f, 1.f);
        std::vector<float> x(n);
        for (auto& v : x) v = normal(rng);
        const int chunk = 4 * threads, padded = (n + chunk - 1) / chunk * chunk;
        Target t{b, &kernels_for(b), memlayers::backend_info(b).memory, {}};
        float* out = t.poisoned<float>(padded);
        t.k->async_copy(t.upload(x), out, n, threads, stages, nullptr);
        const auto got = t.download(out, padded);
        for (int i = 0; i < padded; ++i)
          ASSERT_EQ(got[i], i < n ? x[i] : 0.f)
              << memlayers::to_string(b) << " stages " << stages << " n " << n << " threads "
              << threads << " at " << i;
      }
  }
}

}  // namespace
}  // namespace simt_tests
