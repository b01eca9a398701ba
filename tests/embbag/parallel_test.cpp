// kernels/common/parallel.h: every index visited exactly once, exceptions reach the caller,
// nested and concurrent calls fall back to serial instead of deadlocking, spinning and sleeping
// workers both pick up jobs. kernels/common/dense_rows.h: zero_untouched_rows zeroes exactly the
// rows not listed.
// Build and run: cmake --build build --target embbag_test && ctest --test-dir build -L embbag
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/dense_rows.h"
#include "common/parallel.h"

namespace memlayers {
namespace {

TEST(ParallelFor, VisitsEveryIndexOnceInChunksOfGrain) {
  for (int64_t n : {1, 7, 1000, 100003})
    for (int64_t grain : {1, 3, 64, 200000}) {
      std::vector<std::atomic<int>> seen(static_cast<std::size_t>(n));
      std::atomic<int64_t> oversize{0};
      parallel_for(n, grain, [&](int64_t b, int64_t e) {
        if (e - b > grain || b >= e) oversize.fetch_add(1);
        for (int64_t i = b; i < e; ++i) seen[i].fetch_add(1);
      });
      EXPECT_EQ(oversize.load(), 0) << "n " << n << " grain " << grain;
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 1) << "n " << n << " i " << i;
    }
  int calls = 0;
  parallel_for(0, 4, [&](int64_t, int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ParallelFor, RethrowsTheFirstException) {
  std::atomic<int64_t> done{0};
  EXPECT_THROW(parallel_for(10000, 10,
                            [&](int64_t b, int64_t e) {
                              if (b <= 5000 && 5000 < e) throw std::runtime_error("chunk failed");
                              done.fetch_add(e - b);
                            }),
               std::runtime_error);
  EXPECT_LT(done.load(), 10000);
  // The pool is usable afterwards.
  std::atomic<int64_t> sum{0};
  parallel_for(1000, 7, [&](int64_t b, int64_t e) { sum.fetch_add(e - b); });
  EXPECT_EQ(sum.load(), 1000);
}

TEST(ParallelFor, NestedAndConcurrentCallsComplete) {
  std::atomic<int64_t> total{0};
  parallel_for(64, 1, [&](int64_t, int64_t) {
    parallel_for(100, 10, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
  });
  EXPECT_EQ(total.load(), 6400);
  std::atomic<int64_t> both{0};
  std::thread other([&] {
    for (int i = 0; i < 50; ++i)
      parallel_for(1000, 13, [&](int64_t b, int64_t e) { both.fetch_add(e - b); });
  });
  for (int i = 0; i < 50; ++i)
    parallel_for(1000, 17, [&](int64_t b, int64_t e) { both.fetch_add(e - b); });
  other.join();
  EXPECT_EQ(both.load(), 100 * 1000);
  EXPECT_GE(num_threads(), 1);
}

TEST(ParallelPool, SpinningAndSleepingThreadsRunEveryJob) {
  // Back-to-back jobs meet spinning workers; jobs after a pause longer than the spin meet
  // sleeping ones; a spin of 0 sleeps at once. Every job visits every index once either way.
  using std::chrono::microseconds;
  for (microseconds spin : {microseconds(0), microseconds(50), microseconds(20000)}) {
    parallel_detail::Pool pool(3, spin);
    for (int j = 0; j < 60; ++j) {
      if (j % 20 == 19) std::this_thread::sleep_for(microseconds(200));
      std::vector<std::atomic<int>> seen(1000);
      auto body = [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) seen[static_cast<std::size_t>(i)].fetch_add(1);
      };
      parallel_detail::Job job;
      job.call = [](void* ctx, int64_t b, int64_t e) {
        (*static_cast<decltype(body)*>(ctx))(b, e);
      };
      job.ctx = &body;
      job.n = 1000;
      job.grain = 7;
      ASSERT_TRUE(pool.run(job)) << "spin " << spin.count() << " us, job " << j;
      for (const auto& v : seen)
        ASSERT_EQ(v.load(), 1) << "spin " << spin.count() << " us, job " << j;
    }
  }
}

TEST(DenseRows, ZeroesExactlyTheRowsNotTouched) {
  std::mt19937_64 rng(7);
  for (int64_t rows : {1, 5, 1000, 100003})
    for (int64_t width : {1, 3, 100})
      for (int pattern = 0; pattern < 5; ++pattern) {
        // none, all, the first and last, about a third at random, about 1 in 97 at random
        std::vector<int64_t> touched;
        for (int64_t r = 0; r < rows; ++r) {
          const bool t = pattern == 1 || (pattern == 2 && (r == 0 || r == rows - 1)) ||
                         (pattern == 3 && r % 3 == static_cast<int64_t>(rng() % 3)) ||
                         (pattern == 4 && rng() % 97 == 0);
          if (t) touched.push_back(r);
        }
        std::vector<float> dense(static_cast<std::size_t>(rows * width), 7.0f);
        zero_untouched_rows(dense.data(), rows, width, static_cast<int64_t>(touched.size()),
                            [&](int64_t i) { return touched[static_cast<std::size_t>(i)]; });
        std::size_t next = 0;
        for (int64_t r = 0; r < rows; ++r) {
          const bool t = next < touched.size() && touched[next] == r;
          next += t;
          for (int64_t e = 0; e < width; ++e)
            ASSERT_EQ(dense[static_cast<std::size_t>(r * width + e)], t ? 7.0f : 0.0f)
                << "rows " << rows << ", width " << width << ", pattern " << pattern << ", row "
                << r << ", element " << e;
        }
      }
}

}  // namespace
}  // namespace memlayers
