// The host ceiling's inner loop: a sum over 64-bit words with the widest vectors the CPU has
// (Highway, chosen at run time). On AVX2 machines 256-bit loads read measurably faster than the
// 128-bit ones a portable build vectorises to, and a ceiling must not be the slower of the two.
#include <cstddef>
#include <cstdint>

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

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memlayers::bench {
HWY_EXPORT(SumWords);
uint64_t sum_words_simd(const uint64_t* p, size_t n) {
  return HWY_DYNAMIC_DISPATCH(SumWords)(p, n);
}
}  // namespace memlayers::bench
#endif  // HWY_ONCE
