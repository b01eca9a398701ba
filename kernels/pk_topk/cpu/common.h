// Pieces shared by the CPU variants of the product-key top-k search (host only): typed views of
// the Params' untyped pointers, the fp32 RMS norm, the ranking, the sorted per-half list and the
// pruned k×k candidate step. The scoring engines differ between variants; these do not.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "common/bf16.h"
#include "common/dtype.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::pk_topk::cpu {

inline int64_t load_index(const void* indices, DType t, int64_t i) {
  return t == DType::i32 ? int64_t{static_cast<const int32_t*>(indices)[i]}
                         : static_cast<const int64_t*>(indices)[i];
}

inline void store_index(void* indices, DType t, int64_t i, int64_t v) {
  if (t == DType::i32)
    static_cast<int32_t*>(indices)[i] = static_cast<int32_t>(v);
  else
    static_cast<int64_t*>(indices)[i] = v;
}

// dst[0, n) = src[off, off + n) widened to fp32 (bf16 is exact in fp32).
inline void widen(const void* src, DType t, int64_t off, int64_t n, float* dst) {
  if (t == DType::bf16) {
    const auto* s = static_cast<const uint16_t*>(src) + off;
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_float(s[i]);
  } else {
    std::copy_n(static_cast<const float*>(src) + off, n, dst);
  }
}

// 1 / sqrt(mean(x²) + kNormEps), summed in fp32 in a fixed order (so every variant that calls it
// normalises bitwise alike: the forward and the backward see the same x̂).
inline float inv_rms(const float* x, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return 1.0f / std::sqrt(s / static_cast<float>(n) + kNormEps);
}

// dst = widened src, RMS-normalised when norm is set.
inline void load_row(const void* src, DType t, int64_t off, int64_t n, bool norm, float* dst) {
  widen(src, t, off, n, dst);
  if (norm) {
    const float r = inv_rms(dst, n);
    for (int64_t i = 0; i < n; ++i) dst[i] *= r;
  }
}

// Ranking of pk_topk.h: higher score first; NaN below every number (-inf included); equal scores
// (and NaN against NaN) by the lower index. A strict weak order, so std algorithms may use it.
inline bool ranks_before(float sa, int64_t ia, float sb, int64_t ib) {
  const bool na = std::isnan(sa), nb = std::isnan(sb);
  if (na || nb) return na == nb ? ia < ib : nb;
  return sa != sb ? sa > sb : ia < ib;
}

// A half's candidate: its score and key index (n_keys <= 2^20 fits int32).
struct Entry {
  float score;
  int32_t index;
};
inline bool operator<(const Entry& a, const Entry& b) {
  return ranks_before(a.score, a.index, b.score, b.index);
}

// A combined candidate: score and index i1·n_keys + i2.
struct Scored {
  float score;
  int64_t index;
};
inline bool operator<(const Scored& a, const Scored& b) {
  return ranks_before(a.score, a.index, b.score, b.index);
}

// (score, index) as one integer that orders as the ranking does, for index < 2^32: the score's
// bits made monotone in the high word (NaN lowest, -0 as +0), the complemented index in the low
// word (the lower index wins a tie). Selections on these need one compare and no NaN branches.
inline uint64_t rank_key(float s, int64_t index) {
  const float c = s + 0.0f;  // -0 becomes +0
  uint32_t u = std::bit_cast<uint32_t>(c);
  // cppcheck-suppress shiftTooManyBitsSigned ; an arithmetic shift since C++20
  u ^= static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u;  // negatives flipped
  u = c != c ? 0u : u;                                                      // NaN lowest
  return (uint64_t{u} << 32) | (0xffffffffu - static_cast<uint32_t>(index));
}
inline float key_score(uint64_t key) {
  const auto u = static_cast<uint32_t>(key >> 32);
  if (u == 0) return std::numeric_limits<float>::quiet_NaN();
  return std::bit_cast<float>((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}
inline int64_t key_index(uint64_t key) { return 0xffffffffu - static_cast<uint32_t>(key); }

// The k largest of keys[0, n) (n >= k), in descending order at keys[0, k).
inline void largest_sorted(uint64_t* keys, int64_t n, int64_t k) {
  std::nth_element(keys, keys + (k - 1), keys + n, std::greater<>());
  std::sort(keys, keys + k, std::greater<>());
}

// The pruned candidate step (pk_topk.h): the pairs (i, j) of the two sorted half lists with
// (i+1)(j+1) <= k, summed in fp32, and the k best of them written to scores/indices at `out`.
// `cand` is scratch the caller keeps between rows. Combined indices below 2^32 (n_keys <= 65536)
// are ranked as rank_key integers, put in order by `select(keys, n, k)` (as largest_sorted does),
// larger ones with the comparator.
template <class Select>
void combine_with(Select&& select, const Entry* h1, const Entry* h2, int64_t k, int64_t n_keys,
                  std::vector<uint64_t>& cand, float* scores, void* indices, DType index_dtype,
                  int64_t out) {
  if (n_keys > 65536) {
    std::vector<Scored> all;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k / (i + 1); ++j)
        all.push_back({h1[i].score + h2[j].score, int64_t{h1[i].index} * n_keys + h2[j].index});
    std::partial_sort(all.begin(), all.begin() + k, all.end());
    for (int64_t t = 0; t < k; ++t) {
      scores[out + t] = all[t].score;
      store_index(indices, index_dtype, out + t, all[t].index);
    }
    return;
  }
  // Row i = 0 and column j = 0 are k candidates each, so the better of their k-th sums is a lower
  // bound on the k-th best: a pair below it (strictly: an equal sum may win its tie) is dropped,
  // and each row stops at its first such pair (h2 is sorted). A NaN bound filters nothing.
  const float lb = std::max(h1[0].score + h2[k - 1].score, h1[k - 1].score + h2[0].score);
  cand.clear();
  for (int64_t i = 0; i < k; ++i) {
    const int64_t jn = k / (i + 1);
    for (int64_t j = 0; j < jn; ++j) {
      const float sum = h1[i].score + h2[j].score;
      if (sum < lb) break;
      cand.push_back(rank_key(sum, int64_t{h1[i].index} * n_keys + h2[j].index));
    }
  }
  // At least k candidates (row i = 0 or column j = 0 in full), all distinct indices.
  select(cand.data(), static_cast<int64_t>(cand.size()), k);
  for (int64_t t = 0; t < k; ++t) {
    scores[out + t] = key_score(cand[t]);
    store_index(indices, index_dtype, out + t, key_index(cand[t]));
  }
}
inline void combine(const Entry* h1, const Entry* h2, int64_t k, int64_t n_keys,
                    std::vector<uint64_t>& cand, float* scores, void* indices, DType index_dtype,
                    int64_t out) {
  combine_with(largest_sorted, h1, h2, k, n_keys, cand, scores, indices, index_dtype, out);
}

}  // namespace memlayers::pk_topk::cpu
