// The CPU searches' pruned candidate step (kernels/pk_topk/cpu/common.h, combine_with, which
// drops pairs below a bound and orders the rest with `select`, here largest_sorted): the k best of
// all the pruned pairs ranked plainly, on lists with ties, infinities and NaNs, which the sweep's
// random rows rarely hold.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "pk_topk/cpu/common.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::pk_topk::cpu {
namespace {

// A half list of k entries in ranking order (score descending, NaN last, ties to the lower index),
// scores drawn from few values so that ties are common, some infinite and some NaN.
std::vector<Entry> ranked_list(std::mt19937_64& rng, int64_t k, int64_t n_keys) {
  std::uniform_int_distribution<int> level(-3, 3), kind(0, 19);
  std::vector<int32_t> ids(static_cast<std::size_t>(n_keys));
  for (int64_t i = 0; i < n_keys; ++i) ids[static_cast<std::size_t>(i)] = static_cast<int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<Entry> out(static_cast<std::size_t>(k));
  for (int64_t t = 0; t < k; ++t) {
    const int what = kind(rng);
    const float s = what == 0   ? std::numeric_limits<float>::quiet_NaN()
                    : what == 1 ? std::numeric_limits<float>::infinity()
                    : what == 2 ? -std::numeric_limits<float>::infinity()
                                : 0.5f * static_cast<float>(level(rng));
    out[static_cast<std::size_t>(t)] = {s, ids[static_cast<std::size_t>(t)]};
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(PkTopkCombine, EqualsTheKBestPrunedPairs) {
  std::mt19937_64 rng(7);
  const int64_t n_keys = 300;
  std::vector<uint64_t> cand;
  for (int64_t k : {1, 2, 3, 5, 8, 13, 32, 64, 100, 300})
    for (int rep = 0; rep < 40; ++rep) {
      const auto h1 = ranked_list(rng, k, n_keys), h2 = ranked_list(rng, k, n_keys);
      std::vector<float> scores(static_cast<std::size_t>(k));
      std::vector<int64_t> indices(static_cast<std::size_t>(k));
      combine(h1.data(), h2.data(), k, n_keys, cand, scores.data(), indices.data(), DType::i64, 0);
      std::vector<Scored> all;  // every pruned pair, ranked by the same rule
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k / (i + 1); ++j) {
          const Entry &a = h1[static_cast<std::size_t>(i)], &b = h2[static_cast<std::size_t>(j)];
          all.push_back({a.score + b.score, int64_t{a.index} * n_keys + b.index});
        }
      std::partial_sort(all.begin(), all.begin() + k, all.end());
      for (int64_t t = 0; t < k; ++t) {
        const Scored& want = all[static_cast<std::size_t>(t)];
        const float got = scores[static_cast<std::size_t>(t)];
        ASSERT_EQ(indices[static_cast<std::size_t>(t)], want.index)
            << "k " << k << " rep " << rep << " slot " << t;
        ASSERT_TRUE(got == want.score || (std::isnan(got) && std::isnan(want.score)))
            << "k " << k << " rep " << rep << " slot " << t << ": " << got << " against "
            << want.score;
      }
    }
}

}  // namespace
}  // namespace memlayers::pk_topk::cpu
