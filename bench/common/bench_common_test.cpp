// Tests of the benchmark helpers: flag parsing and pass-through, table sizing, median, Zipf
// sampling, cache-size parsing, and that the streaming-read ceiling reads what it is given.
// Build and run: cmake --build build --target bench_common_test && ctest --test-dir build -R
// bench_common
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/common/bench_common.h"
#include "common/error.h"

namespace mb = memlayers::bench;

namespace {

struct Argv {
  std::vector<std::string> storage;
  std::vector<char*> ptrs;
  explicit Argv(std::vector<std::string> args) : storage(std::move(args)) {
    for (auto& s : storage) ptrs.push_back(s.data());
  }
  int argc() const { return int(ptrs.size()); }
};

TEST(BenchFlags, ParsesOwnFlagsAndHandsBenchmarkFlagsOn) {
  int64_t dim = 1024;
  std::string dtype = "fp32";
  double peak = 3350;
  mb::Flags f("prog", "test");
  f.add_int("dim", &dim, "dim", 1);
  f.add_choice("dtype", &dtype, {"fp32", "bf16"}, "dtype");
  f.add_double("peak-gbs", &peak, "peak");
  Argv a({"prog", "--benchmark_filter=fwd", "--dim", "64", "--dtype=bf16", "--benchmark_out=x.json",
          "--peak-gbs", "2000.5"});
  int argc = a.argc();
  ASSERT_TRUE(f.parse(&argc, a.ptrs.data()));
  EXPECT_EQ(dim, 64);
  EXPECT_EQ(dtype, "bf16");
  EXPECT_DOUBLE_EQ(peak, 2000.5);
  EXPECT_TRUE(f.given("dim"));
  EXPECT_FALSE(f.given("rows"));
  ASSERT_EQ(argc, 3);
  EXPECT_STREQ(a.ptrs[0], "prog");
  EXPECT_STREQ(a.ptrs[1], "--benchmark_filter=fwd");
  EXPECT_STREQ(a.ptrs[2], "--benchmark_out=x.json");
}

TEST(BenchFlags, RejectsBadInputWithAReason) {
  int64_t dim = 1024;
  std::string dtype = "fp32";
  mb::Flags f("prog", "test");
  f.add_int("dim", &dim, "dim", 1);
  f.add_choice("dtype", &dtype, {"fp32", "bf16"}, "dtype");
  auto parse = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "prog");
    Argv a(args);
    int argc = a.argc();
    return f.parse(&argc, a.ptrs.data());
  };
  EXPECT_THROW(parse({"--dim", "0"}), memlayers::Error);
  EXPECT_THROW(parse({"--dim", "12x"}), memlayers::Error);
  EXPECT_THROW(parse({"--dim"}), memlayers::Error);
  EXPECT_THROW(parse({"--dtype", "fp16"}), memlayers::Error);
  EXPECT_THROW(parse({"--nope", "1"}), memlayers::Error);
  EXPECT_THROW(parse({"positional"}), memlayers::Error);
  try {
    parse({"--dtype", "fp16"});
  } catch (const memlayers::Error& e) {
    EXPECT_NE(std::string(e.what()).find("accepted are fp32, bf16"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dim, 1024);
  testing::internal::CaptureStdout();
  EXPECT_FALSE(parse({"--help"}));
  const std::string help = testing::internal::GetCapturedStdout();
  EXPECT_NE(help.find("--dim (default: 1024)"), std::string::npos) << help;
  EXPECT_NE(help.find("{fp32,bf16}"), std::string::npos) << help;
}

TEST(BenchSizing, TableIsAtLeast8xCacheAnd1GiB) {
  constexpr int64_t kGiB = int64_t{1} << 30;
  const int64_t row = 4096;
  const auto small = mb::size_table(row, 32 << 20);  // 8 x 32 MiB < 1 GiB
  EXPECT_EQ(small.rows, kGiB / row);
  EXPECT_NE(small.why.find("1 GiB"), std::string::npos);
  const auto large = mb::size_table(row, 256 << 20);  // 8 x 256 MiB = 2 GiB
  if (mb::host_physical_memory_bytes() / 4 >= 2 * kGiB) {
    EXPECT_EQ(large.rows, 2 * kGiB / row);
    EXPECT_NE(large.why.find("8 x last-level cache"), std::string::npos);
  }
  const auto huge = mb::size_table(row, int64_t{1} << 50);
  EXPECT_LE(huge.bytes, double(mb::host_physical_memory_bytes()) / 4 + row);
  EXPECT_NE(huge.why.find("capped"), std::string::npos);
  EXPECT_THROW(mb::size_table(0, 1), memlayers::Error);
}

TEST(BenchMachine, CacheSizesParseAndTheHostReportsSome) {
  EXPECT_EQ(mb::parse_cache_size("32768K"), int64_t{32} << 20);
  EXPECT_EQ(mb::parse_cache_size("1M\n"), int64_t{1} << 20);
  EXPECT_EQ(mb::parse_cache_size("512"), 512);
  EXPECT_EQ(mb::parse_cache_size("abc"), 0);
  EXPECT_EQ(mb::parse_cache_size(""), 0);
  EXPECT_GT(mb::host_physical_memory_bytes(), 0);
  EXPECT_GE(mb::host_threads(), 1);
}

TEST(BenchStats, Median) {
  EXPECT_DOUBLE_EQ(mb::median({3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(mb::median({4, 1, 3, 2}), 2.5);
  EXPECT_DOUBLE_EQ(mb::median({7}), 7);
  EXPECT_DOUBLE_EQ(mb::median({}), 0);
}

// Frequencies of the first ranks follow r^-s, and every draw is in range.
TEST(BenchZipf, FollowsThePowerLaw) {
  for (double s : {0.8, 1.0, 1.3}) {
    const int64_t n = 100000;
    mb::Zipf zipf(n, s);
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> unit(0, 1);
    std::vector<int64_t> count(4, 0);
    const int draws = 400000;
    for (int i = 0; i < draws; ++i) {
      const int64_t r = zipf([&] { return unit(rng); });
      ASSERT_GE(r, 1);
      ASSERT_LE(r, n);
      if (r <= 3) ++count[r];
    }
    double norm = 0;
    for (int64_t r = 1; r <= n; ++r) norm += std::pow(double(r), -s);
    for (int r = 1; r <= 3; ++r) {
      const double expected = draws * std::pow(double(r), -s) / norm;
      EXPECT_NEAR(double(count[r]), expected, 5 * std::sqrt(expected) + 1)
          << "s " << s << " r " << r;
    }
  }
  mb::Zipf one(1, 1.0);
  EXPECT_EQ(one([] { return 0.5; }), 1);
  EXPECT_THROW(mb::Zipf(10, 0.0), memlayers::Error);
}

TEST(BenchCeiling, StreamReadTakesTimeAndCeilingIsMedianOfPasses) {
  std::vector<uint64_t> buf(1 << 20, 1);
  const double s = mb::host_stream_read_seconds(buf.data(), buf.size() * 8, 2);
  EXPECT_GT(s, 0);
  int passes = 0;
  const double times[] = {2, 1, 4, 1, 1, 2};  // seconds of successive passes
  mb::Ceiling c("ceiling/test", 1e9, [&] { return times[passes++ % 6]; });
  // One warm-up pass, then five: 1, 4, 1, 1, 2 s -> 1, 0.25, 1, 1, 0.5 GB/s, median 1.
  EXPECT_DOUBLE_EQ(c.gbs(), 1.0);
  EXPECT_EQ(passes, 6);
}

// The gather reads each drawn row once, whole: groups of 8 (SIMD), the rows after the last group,
// the bytes past a row's last whole word, rows off an 8-byte boundary. The table is exactly its
// rows, so AddressSanitizer sees a read past its end.
TEST(BenchCeiling, GatherReadsEveryDrawnRowOnce) {
  for (const int64_t row_bytes : {int64_t{4}, int64_t{12}, int64_t{400}, int64_t{2050}}) {
    const int64_t table_rows = 97;
    std::vector<unsigned char> table(static_cast<std::size_t>(table_rows * row_bytes));
    std::mt19937_64 gen(static_cast<uint64_t>(row_bytes));
    for (auto& b : table) b = static_cast<unsigned char>(gen());
    for (const int64_t n : {int64_t{5}, int64_t{8}, int64_t{203}}) {
      const uint64_t seed = 7 + static_cast<uint64_t>(n);
      uint64_t want = 0;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t o = mb::gather_row(seed, j, table_rows) * row_bytes;
        int64_t b = 0;
        for (; b + 8 <= row_bytes; b += 8) {
          uint64_t w;
          std::memcpy(&w, table.data() + o + b, 8);
          want += w;
        }
        for (; b < row_bytes; ++b) want += table[static_cast<std::size_t>(o + b)];
      }
      for (const int threads : {1, 3}) {
        uint64_t got = 0;
        EXPECT_GE(
            mb::host_gather_seconds(table.data(), table_rows, row_bytes, n, seed, threads, &got),
            0);
        EXPECT_EQ(got, want) << "row_bytes " << row_bytes << ", rows " << n << ", threads "
                             << threads;
      }
    }
  }
  // gather_row: in range, and spread over the table (each of 97 rows drawn about 1000 times)
  std::vector<int64_t> hits(97, 0);
  for (int64_t j = 0; j < 97000; ++j) {
    const int64_t r = mb::gather_row(3, j, 97);
    ASSERT_GE(r, 0);
    ASSERT_LT(r, 97);
    ++hits[static_cast<std::size_t>(r)];
  }
  EXPECT_GT(*std::min_element(hits.begin(), hits.end()), 850);
  EXPECT_LT(*std::max_element(hits.begin(), hits.end()), 1150);
  // each pass of the ceiling draws other rows
  EXPECT_NE(mb::gather_row(1, 0, 1 << 30), mb::gather_row(2, 0, 1 << 30));
  const std::vector<unsigned char> table(64 * 40);
  const auto c = mb::host_gather_ceiling(table.data(), 40, 64, 1000, 2);
  EXPECT_EQ(c->name(), "ceiling/host/gather_64B_rows");
  EXPECT_DOUBLE_EQ(c->bytes_per_pass(), 64000.0);
  EXPECT_GT(c->gbs(), 0);
  EXPECT_THROW(mb::host_gather_ceiling(table.data(), 0, 64, 10, 1), memlayers::Error);
}

}  // namespace
