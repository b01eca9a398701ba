// The host ceilings' inner loops: a sum over 64-bit words with the widest vectors the CPU has
// (Highway, chosen at run time), and the same over a group of gathered rows. On AVX2 machines
// 256-bit loads read measurably faster than the 128-bit ones a portable build vectorises to, and a
// ceiling must not be the slower of the two.
#include <cstddef>
#include <cstdint>
#include <cstring>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/common/stream_read.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace memlayers::bench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

uint64_t SumWords(const uint64_t* HWY_RESTRICT p, size_t n) {
  const hn::ScalableTag<uint64_t> d;
  const size_t lanes = hn::Lanes(d);
  // Four independent sums keep enough loads in flight.
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * lanes <= n; i += 4 * lanes) {
    a0 = hn::Add(a0, hn::LoadU(d, p + i));
    a1 = hn::Add(a1, hn::LoadU(d, p + i + lanes));
    a2 = hn::Add(a2, hn::LoadU(d, p + i + 2 * lanes));
    a3 = hn::Add(a3, hn::LoadU(d, p + i + 3 * lanes));
  }
  uint64_t s = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) s += p[i];
  return s;
}

// Σ of the first `words` 64-bit words of 8 rows, a vector of each row in turn (the order in which
// the EmbeddingBag forward folds 8 rows); at each multiple of pf_step bytes of the rows (a power of
// two of at least 64: every line, or each page's first), the same offset of the 8 rows of `next`
// is prefetched into L2 (none when null).
uint64_t SumRowGroup(const uint64_t* const* rows, const uint64_t* const* next, size_t words,
                     size_t pf_step) {
  const hn::ScalableTag<uint64_t> d;
  const size_t lanes = hn::Lanes(d);
  const size_t step = pf_step / 8;  // words
  auto a0 = hn::Zero(d), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + lanes <= words; i += lanes) {
    if (next && (i & (step - 1)) < lanes)
      for (int g = 0; g < 8; ++g) __builtin_prefetch(next[g] + i, 0, 2);
    a0 = hn::Add(a0, hn::Add(hn::LoadU(d, rows[0] + i), hn::LoadU(d, rows[1] + i)));
    a1 = hn::Add(a1, hn::Add(hn::LoadU(d, rows[2] + i), hn::LoadU(d, rows[3] + i)));
    a2 = hn::Add(a2, hn::Add(hn::LoadU(d, rows[4] + i), hn::LoadU(d, rows[5] + i)));
    a3 = hn::Add(a3, hn::Add(hn::LoadU(d, rows[6] + i), hn::LoadU(d, rows[7] + i)));
  }
  uint64_t s = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < words; ++i)
    for (int g = 0; g < 8; ++g) {
      uint64_t w;  // a row may start off an 8-byte boundary (rows of odd byte lengths)
      std::memcpy(&w, rows[g] + i, sizeof(w));
      s += w;
    }
  return s;
}

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memlayers::bench {
HWY_EXPORT(SumWords);
HWY_EXPORT(SumRowGroup);
uint64_t sum_words_simd(const uint64_t* p, size_t n) {
  return HWY_DYNAMIC_DISPATCH(SumWords)(p, n);
}
uint64_t sum_row_group_simd(const uint64_t* const* rows, const uint64_t* const* next, size_t words,
                            size_t pf_step) {
  return HWY_DYNAMIC_DISPATCH(SumRowGroup)(rows, next, words, pf_step);
}
}  // namespace memlayers::bench
#endif  // HWY_ONCE
