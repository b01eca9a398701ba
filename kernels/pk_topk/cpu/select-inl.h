// The selection passes of the fused CPU searches (v2_fused_pruned, v3_amx_rescored), per SIMD
// target: a chunk's lower bound on the k-th best from per-lane running maxima, the threshold filter
// that feeds a row half's TopKBuffer, and the ordering of the k best by counting. Per-target header
// (Highway's -inl.h convention): each file that runs foreach_target includes it after
// <hwy/highway.h>.
#if defined(MEMLAYERS_PK_TOPK_CPU_SELECT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MEMLAYERS_PK_TOPK_CPU_SELECT_INL_H_
#undef MEMLAYERS_PK_TOPK_CPU_SELECT_INL_H_
#else
#define MEMLAYERS_PK_TOPK_CPU_SELECT_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/error.h"
#include "common/parallel.h"
#include "pk_topk/cpu/select.h"
#include "pk_topk/pk_topk.h"

HWY_BEFORE_NAMESPACE();
namespace memlayers::pk_topk::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// A lower bound on the k-th largest of the m·lanes values held[0, m·lanes) (held[j·lanes, ...): the
// j-th largest of each lane, so each block of lanes is at or below the one before; m·lanes > k).
// A value x with at least k held values >= x is one (those are distinct elements). The smallest
// lane's ⌈k/lanes⌉-th value is such an x; bisecting between it and the largest held value, keeping
// that property, closes in on the k-th largest: 8 rounds of m compares and counts, where finding
// it exactly took one round per held value (~19% of v3_amx_rescored at m 4). Unfilled slots (-inf)
// and infinite scores take that exact search, which stays valid for them. Out of line: inlined
// into each LaneBoundM it ran v2 84.2-89.6 against 81.9-83.7 ms at the default shape and
// 0.73-0.78 against 0.73 ms at memlayers train's memory+ search (the builds alternating).
HWY_NOINLINE inline float HeldBound(const float* held, int64_t m, int64_t k) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const float inf = std::numeric_limits<float>::infinity();
  auto at_least = [&](float x) {
    const auto v = hn::Set(df, x);
    int64_t count = 0;
    for (int64_t r = 0; r < m; ++r)
      count += static_cast<int64_t>(hn::CountTrue(df, hn::Ge(hn::Load(df, held + r * N), v)));
    return count;
  };
  const int64_t need = (k + N - 1) / N;
  float lo = hn::GetLane(hn::MinOfLanes(df, hn::Load(df, held + (need - 1) * N)));
  float hi = hn::GetLane(hn::MaxOfLanes(df, hn::Load(df, held)));
  if (lo > -inf && hi < inf) {
    for (int round = 0; round < 8; ++round) {
      const float mid = lo * 0.5f + hi * 0.5f;  // halves first: no overflow near FLT_MAX
      (at_least(mid) >= k ? lo : hi) = mid;
    }
    return lo;
  }
  float best = -inf;
  for (int64_t j = 0; j < m * N; ++j)
    best = at_least(held[j]) >= k ? std::max(best, held[j]) : best;
  return best;
}

// A lower bound on the k-th best of s[0, n), from the m largest scores of each lane (m·lanes >= k):
// these are distinct elements, so the k-th largest of them bounds the k-th best from below. NaN
// when a score is NaN (then nothing is filtered), -inf when too few scores or k too large for the
// registers.
template <int M>
HWY_INLINE float LaneBoundM(const float* s, int64_t n, int64_t k) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto ninf = hn::Set(df, -std::numeric_limits<float>::infinity());
  hn::Vec<hn::ScalableTag<float>> t[M];
  for (int i = 0; i < M; ++i) t[i] = ninf;
  auto nan = hn::Zero(df);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    auto x = hn::LoadU(df, s + i);
    nan = hn::Or(nan, hn::VecFromMask(df, hn::Ne(x, x)));
    for (int j = 0; j < M; ++j) {  // insert x into the sorted per-lane list t
      const auto hi = hn::Max(t[j], x);
      x = hn::Min(t[j], x);
      t[j] = hi;
    }
  }
  for (; i < n; ++i)
    if (std::isnan(s[i])) return std::numeric_limits<float>::quiet_NaN();
  if (!hn::AllTrue(df, hn::Eq(nan, hn::Zero(df)))) return std::numeric_limits<float>::quiet_NaN();
  if (M * N <= k) return hn::GetLane(hn::MinOfLanes(df, t[M - 1]));
  HWY_ALIGN float held[M * hn::MaxLanes(df)];
  for (int j = 0; j < M; ++j) hn::Store(t[j], df, held + j * N);
  return HeldBound(held, M, k);
}

// LaneBoundM with twice the ⌈k/lanes⌉ values a lane that the bound needs, while that is at most 8
// (else ⌈k/lanes⌉): a bound closer to the k-th best, so fewer scores pass it to the selection, or
// to v3_amx_rescored's fp32 rescoring. With HeldBound's bisection, against ⌈k/lanes⌉ (the builds
// alternating): v2_fused_pruned 88.4-90.2 against 93.2-95.2 ms at the default shape, 106-109
// against 119-123 at k 64, 6.0-6.3 against 6.5 at B 256, 0.79-0.81 against 0.96-0.99 ms at the
// search of `memlayers train --model memory+` (B 768, h 2, n_keys 256, n 32, k 16) and 0.43
// against 0.46 at that of the harness comparison's smaller base (n_keys 128, n 16, k 8). v3 let
// ~60 keys of 1024 through to its rescoring with it, ~130 without (62 against 81 ms, its first
// error bound). Three times ran slower for v3 (53.7-54.6 against 48.6-50.9 ms), no faster for v2.
inline float LaneBound(const float* s, int64_t n, int64_t k) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t need = (k + N - 1) / N;
  const int64_t m = 2 * need <= 8 ? 2 * need : need;
  switch (m) {  // 2, 4, 5, 6, 7 or 8; above 8 a lane: the default (no bound)
    case 2:
      return LaneBoundM<2>(s, n, k);
    case 4:
      return LaneBoundM<4>(s, n, k);
    case 5:
      return LaneBoundM<5>(s, n, k);
    case 6:
      return LaneBoundM<6>(s, n, k);
    case 7:
      return LaneBoundM<7>(s, n, k);
    case 8:
      return LaneBoundM<8>(s, n, k);
    default:
      return -std::numeric_limits<float>::infinity();
  }
}

// take(i) for each i in [0, n), ascending, where at_least(s[i]) holds, with at_least(x) =
// !(x < cut) and, when `thr` is set, !(x <= thr) (a NaN cut or thr passes everything). The
// survivors of 64 scores as one bit mask, then one call per set bit: a branch per 64 scores
// instead of one per vector (which survivors, few and random, would mispredict).
template <bool kThr, class Take>
HWY_INLINE void ForEachKept(const float* s, int64_t n, float cut, float thr, Take&& take) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto cv = hn::Set(df, cut), tv = hn::Set(df, thr);
  const int64_t span = 64 / N * N;
  int64_t i = 0;
  for (; i + span <= n; i += span) {
    uint64_t bits = 0;
    for (int64_t v = 0; v < span; v += N) {
      const auto x = hn::LoadU(df, s + i + v);
      auto keep = hn::Not(hn::Lt(x, cv));
      if constexpr (kThr) keep = hn::And(keep, hn::Not(hn::Le(x, tv)));
      uint8_t bytes[8] = {};
      hn::StoreMaskBits(df, keep, bytes);
      uint64_t m;
      std::memcpy(&m, bytes, sizeof(m));
      bits |= m << v;
    }
    for (; bits; bits &= bits - 1) take(i + std::countr_zero(bits));
  }
  for (; i < n; ++i)
    if (!(s[i] < cut) && !(kThr && s[i] <= thr)) take(i);
}

// Feeds one row's chunk of scores s[0, n) (keys base + i) into its top-k: keeps a score when it
// can still be among the k best, i.e. !(s < bound) (the chunk's own lower bound; an equal score
// may still win its tie) and !(s <= threshold) (the k best of the earlier chunks, which win ties);
// a NaN bound or threshold passes everything. One comparison pair per vector rejects most scores.
inline void SelectChunk(const float* s, int64_t n, int64_t base, TopKBuffer& l) {
  ForEachKept<true>(s, n, LaneBound(s, n, l.k), l.threshold,
                    [&](int64_t i) { l.append(s[i], base + i); });
}

constexpr int64_t kRankMax = 128;  // LargestSorted ranks by counting up to this many keys

// As largest_sorted (the k largest of the distinct keys[0, n), n >= k, in descending order at
// keys[0, k)), by counting for n <= kRankMax: a key's place is the number of keys above it, n
// SIMD compares a key and no data-dependent branch, where nth_element and sort mispredicted over
// the ~k-sized lists of the harness's shapes (~30% of its searches).
inline void LargestSorted(uint64_t* keys, int64_t n, int64_t k) {
  if (k > kRankMax) return largest_sorted(keys, n, k);
  if (n > kRankMax) {
    std::nth_element(keys, keys + (k - 1), keys + n, std::greater<>());
    n = k;
  }
  const hn::ScalableTag<uint64_t> du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(du));
  HWY_ALIGN uint64_t held[kRankMax + hn::MaxLanes(du)];
  HWY_ALIGN uint64_t placed[kRankMax];
  std::copy_n(keys, n, held);
  std::fill(held + n, held + (n + N - 1) / N * N, uint64_t{0});  // above no key
  for (int64_t i = 0; i < n; ++i) {
    const auto key = hn::Set(du, held[i]);
    std::size_t above = 0;
    for (int64_t j = 0; j < n; j += N)
      above += hn::CountTrue(du, hn::Gt(hn::Load(du, held + j), key));
    placed[above] = held[i];  // distinct keys: the places are a permutation of [0, n)
  }
  std::copy_n(placed, k, keys);
}

// The k best of a row half's list, in ranking order, into out[0, k). Needs at least k appends,
// which a right lower bound guarantees: a list short of them is a bug in a bound, reported here
// rather than read past its end.
inline void FinishList(TopKBuffer& l, Entry* out) {
  if (l.size < l.k)
    fail("pk_topk cpu: a row half's list kept {} keys of the {} it needs (a wrong bound)", l.size,
         l.k);
  LargestSorted(l.keys, l.size, l.k);
  for (int64_t t = 0; t < l.k; ++t)
    out[t] = {key_score(l.keys[t]), static_cast<int32_t>(key_index(l.keys[t]))};
}

// The last step of a block of `rows` queries from b0, head h: each row's two half lists put in
// order (`lists` by row, then half), then the pruned candidate step into the outputs.
inline void FinishRows(const FwdParams& p, int64_t h, int64_t b0, int64_t rows,
                       std::vector<TopKBuffer>& lists, std::vector<Entry>& best,
                       std::vector<uint64_t>& cand) {
  const int64_t k = p.k;
  best.resize(static_cast<std::size_t>(2 * k));
  for (int64_t r = 0; r < rows; ++r) {
    FinishList(lists[r * 2], best.data());
    FinishList(lists[r * 2 + 1], best.data() + k);
    combine_with(LargestSorted, best.data(), best.data() + k, k, p.n_keys, cand, p.scores,
                 p.indices, p.index_dtype, ((b0 + r) * p.heads + h) * k);
  }
}

// block(head, b0, rows, state) for every (head, block of up to mb queries), threaded over the
// pool; one State per chunk of blocks, reused from block to block.
template <class State, class Block>
void ForEachBlock(const FwdParams& p, int64_t mb, Block&& block) {
  const int64_t blocks = (p.batch + mb - 1) / mb, tasks = p.heads * blocks;
  parallel_for(tasks, balanced_grain(tasks, 1, 8), [&](int64_t t0, int64_t t1) {
    State st;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t % p.heads, b0 = t / p.heads * mb;
      block(h, b0, std::min(mb, p.batch - b0), st);
    }
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::pk_topk::cpu
HWY_AFTER_NAMESPACE();

#endif  // include guard
