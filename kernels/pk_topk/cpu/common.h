// Pieces shared by the CPU variants of the product-key top-k search (host only): typed views of
// the Params' untyped pointers, the fp32 RMS norm, the ranking, the sorted per-half list and the
// pruned k×k candidate step. The scoring engines differ between variants; these do not.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
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

struct Scored {
  float score;
  int64_t index;
};

inline bool operator<(const Scored& a, const Scored& b) {
  return ranks_before(a.score, a.index, b.score, b.index);
}

// The k best of a stream of one half's scores that arrive in ascending index order (so an equal
// score never displaces an earlier one), kept sorted by the ranking. A newcomer enters a full list
// when it ranks before the k-th best: a strictly higher score, or any number over a NaN.
// `filter` is for a vectorised pre-check: a score s can only enter when !(s <= filter), so NaN
// (everything passes to push) until the list is full or while its k-th best is NaN.
struct SortedTopK {
  int64_t k = 0, size = 0;
  float* score = nullptr;  // k slots
  int32_t* index = nullptr;
  float filter = std::numeric_limits<float>::quiet_NaN();

  void reset(int64_t k_, float* s, int32_t* i) {
    k = k_, size = 0, score = s, index = i;
    filter = std::numeric_limits<float>::quiet_NaN();
  }

  void push(float s, int32_t i) {
    if (size == k && !ranks_before(s, i, score[k - 1], index[k - 1])) return;
    int64_t pos = size < k ? size++ : k - 1;
    for (; pos > 0 && ranks_before(s, i, score[pos - 1], index[pos - 1]); --pos) {
      score[pos] = score[pos - 1];
      index[pos] = index[pos - 1];
    }
    score[pos] = s;
    index[pos] = i;
    if (size == k) filter = score[k - 1];  // NaN while the k-th best is NaN: all pass
  }
};

// The pruned candidate step (pk_topk.h): the pairs (i, j) of the two sorted half lists with
// (i+1)(j+1) <= k, summed in fp32, and the k best of them written to scores/indices at `out`.
// `cand` is scratch the caller keeps between rows.
inline void combine(const float* s1, const int32_t* i1, const float* s2, const int32_t* i2,
                    int64_t k, int64_t n_keys, std::vector<Scored>& cand, float* scores,
                    void* indices, DType index_dtype, int64_t out) {
  cand.clear();
  for (int64_t i = 0; i < k; ++i) {
    const int64_t jn = k / (i + 1);
    for (int64_t j = 0; j < jn; ++j)
      cand.push_back({s1[i] + s2[j], int64_t{i1[i]} * n_keys + i2[j]});
  }
  // At least k candidates (the whole row i = 0), all distinct indices.
  std::partial_sort(cand.begin(), cand.begin() + k, cand.end());
  for (int64_t t = 0; t < k; ++t) {
    scores[out + t] = cand[t].score;
    store_index(indices, index_dtype, out + t, cand[t].index);
  }
}

}  // namespace memlayers::pk_topk::cpu
