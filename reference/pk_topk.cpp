#include "reference/pk_topk.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <vector>

#include "common/bf16.h"
#include "common/error.h"
#include "reference/fp64.h"

namespace memlayers::reference {

namespace {

using fp64::dot;
using fp64::element;
using fp64::index_at;
using fp64::norm_backward;
using fp64::normalised;
using fp64::Vec;

// `width` elements from offset `off` of row `row` of an array with rows `stride` apart (a query
// half: width k_dim/2, stride k_dim, off 0 or k_dim/2; a sub-key: width = stride = k_dim/2),
// RMS-normalised when norm is set.
Vec load_half(const void* data, DType t, int64_t row, int64_t width, int64_t stride, int64_t off,
              bool norm) {
  Vec x(static_cast<std::size_t>(width));
  for (int64_t d = 0; d < width; ++d) x[d] = element(data, t, row * stride + off + d);
  return normalised(std::move(x), norm);
}

// Ranking: higher score first, NaN below every number, then lower index first.
bool before(double sa, int64_t ia, double sb, int64_t ib) {
  const double a = std::isnan(sa) ? -std::numeric_limits<double>::infinity() : sa;
  const double b = std::isnan(sb) ? -std::numeric_limits<double>::infinity() : sb;
  return a != b ? a > b : ia < ib;
}

struct Scored {
  double score;
  int64_t index;
};

// The k best of `all`, in ranking order.
std::vector<Scored> top(std::vector<Scored> all, int64_t k) {
  MEMLAYERS_CHECK(k >= 1 && k <= static_cast<int64_t>(all.size()),
                  "pk_topk reference: k = {} of {} candidates", k, all.size());
  std::partial_sort(all.begin(), all.begin() + k, all.end(), [](const Scored& a, const Scored& b) {
    return before(a.score, a.index, b.score, b.index);
  });
  all.resize(std::size_t(k));
  return all;
}

void store_index(void* indices, DType t, int64_t i, int64_t v) {
  if (t == DType::i32)
    static_cast<int32_t*>(indices)[i] = static_cast<int32_t>(v);
  else
    static_cast<int64_t*>(indices)[i] = v;
}

void refuse_nonfinite(const void* q, DType t, int64_t batch, int64_t heads, int64_t k_dim) {
  const std::string why = pk_topk::find_nonfinite(q, t, batch, heads, k_dim);
  if (!why.empty()) fail("pk_topk reference: {}", why);
}

// The normalised (or plain) sub-keys of one half, all heads: (heads·n_keys) rows of n/2.
std::vector<Vec> load_keys(const void* keys, DType t, int64_t heads, int64_t n_keys, int64_t half,
                           bool norm) {
  std::vector<Vec> rows(std::size_t(heads * n_keys));
  for (int64_t r = 0; r < heads * n_keys; ++r) rows[r] = load_half(keys, t, r, half, half, 0, norm);
  return rows;
}

void write_result(const pk_topk::FwdParams& p, int64_t b, int64_t h,
                  const std::vector<Scored>& best) {
  const int64_t base = (b * p.heads + h) * p.k;
  for (int64_t t = 0; t < p.k; ++t) {
    p.scores[base + t] = static_cast<float>(best[t].score);
    store_index(p.indices, p.index_dtype, base + t, best[t].index);
  }
}

}  // namespace

void pk_topk_fwd(const pk_topk::FwdParams& p) {
  refuse_nonfinite(p.queries, p.dtype, p.batch, p.heads, p.k_dim);
  const int64_t half = p.k_dim / 2;
  const auto k1 = load_keys(p.keys1, p.dtype, p.heads, p.n_keys, half, p.qk_norm);
  const auto k2 = load_keys(p.keys2, p.dtype, p.heads, p.n_keys, half, p.qk_norm);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t row = b * p.heads + h;
      const Vec q1 = load_half(p.queries, p.dtype, row, half, p.k_dim, 0, p.qk_norm);
      const Vec q2 = load_half(p.queries, p.dtype, row, half, p.k_dim, half, p.qk_norm);
      std::vector<Scored> s1(std::size_t(p.n_keys)), s2(std::size_t(p.n_keys));
      for (int64_t i = 0; i < p.n_keys; ++i) {
        s1[i] = {dot(q1, k1[h * p.n_keys + i]), i};
        s2[i] = {dot(q2, k2[h * p.n_keys + i]), i};
      }
      const auto t1 = top(std::move(s1), p.k), t2 = top(std::move(s2), p.k);
      std::vector<Scored> pairs;
      pairs.reserve(std::size_t(p.k * p.k));
      for (const Scored& a : t1)
        for (const Scored& c : t2)
          pairs.push_back({a.score + c.score, a.index * p.n_keys + c.index});
      write_result(p, b, h, top(std::move(pairs), p.k));
    }
}

void pk_topk_brute_force(const pk_topk::FwdParams& p) {
  refuse_nonfinite(p.queries, p.dtype, p.batch, p.heads, p.k_dim);
  const int64_t n = p.n_keys * p.n_keys;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h) {
      std::vector<Scored> all(static_cast<std::size_t>(n));
      for (int64_t m = 0; m < n; ++m) all[m] = {pk_topk_score(p, b, h, m), m};
      write_result(p, b, h, top(std::move(all), p.k));
    }
}

double pk_topk_score(const pk_topk::FwdParams& p, int64_t b, int64_t h, int64_t m) {
  const int64_t half = p.k_dim / 2, row = b * p.heads + h;
  MEMLAYERS_CHECK(m >= 0 && m < p.n_keys * p.n_keys, "index {} out of range [0, {})", m,
                  p.n_keys * p.n_keys);
  // One k_dim-wide dot product of the query with the full key [K1[i1], K2[i2]].
  Vec q = load_half(p.queries, p.dtype, row, half, p.k_dim, 0, p.qk_norm);
  const Vec q2 = load_half(p.queries, p.dtype, row, half, p.k_dim, half, p.qk_norm);
  q.insert(q.end(), q2.begin(), q2.end());
  Vec key = load_half(p.keys1, p.dtype, h * p.n_keys + m / p.n_keys, half, half, 0, p.qk_norm);
  const Vec key2 =
      load_half(p.keys2, p.dtype, h * p.n_keys + m % p.n_keys, half, half, 0, p.qk_norm);
  key.insert(key.end(), key2.begin(), key2.end());
  return dot(q, key);
}

namespace {

void write_key_grad(const pk_topk::BwdParams& p, const pk_topk::BwdParams::KeyGrad& g,
                    const void* keys, const std::map<int64_t, Vec>& grad) {
  const int64_t half = p.k_dim / 2;
  auto final_row = [&](int64_t id, const Vec& dhat) {
    return p.qk_norm ? norm_backward(load_half(keys, p.dtype, id, half, half, 0, false), dhat)
                     : dhat;
  };
  if (g.dense) {
    std::fill(g.dense, g.dense + p.heads * p.n_keys * half, 0.0f);
    for (const auto& [id, dhat] : grad) {
      const Vec d = final_row(id, dhat);
      for (int64_t e = 0; e < half; ++e) g.dense[id * half + e] = static_cast<float>(d[e]);
    }
  }
  if (g.has_compact()) {
    int64_t i = 0;
    for (const auto& [id, dhat] : grad) {
      const Vec d = final_row(id, dhat);
      g.rows[i] = id;
      for (int64_t e = 0; e < half; ++e) g.compact[i * half + e] = static_cast<float>(d[e]);
      ++i;
    }
    *g.num_rows = i;
  }
}

}  // namespace

void pk_topk_bwd(const pk_topk::BwdParams& p) {
  refuse_nonfinite(p.queries, p.dtype, p.batch, p.heads, p.k_dim);
  const int64_t half = p.k_dim / 2, n = p.n_keys * p.n_keys;
  std::map<int64_t, Vec> g1, g2;  // ordered: the compact forms list rows ascending
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t row = b * p.heads + h;
      const Vec q1 = load_half(p.queries, p.dtype, row, half, p.k_dim, 0, p.qk_norm);
      const Vec q2 = load_half(p.queries, p.dtype, row, half, p.k_dim, half, p.qk_norm);
      Vec dq1(std::size_t(half), 0.0), dq2(std::size_t(half), 0.0);
      for (int64_t t = 0; t < p.k; ++t) {
        const int64_t m = index_at(p.indices, p.index_dtype, row * p.k + t);
        MEMLAYERS_CHECK(m >= 0 && m < n, "index {} out of range [0, {}) at b={}, h={}, slot {}", m,
                        n, b, h, t);
        const double ds = p.grad_scores[row * p.k + t];
        const int64_t r1 = h * p.n_keys + m / p.n_keys, r2 = h * p.n_keys + m % p.n_keys;
        const Vec k1 = load_half(p.keys1, p.dtype, r1, half, half, 0, p.qk_norm);
        const Vec k2 = load_half(p.keys2, p.dtype, r2, half, half, 0, p.qk_norm);
        Vec& a = g1.try_emplace(r1, std::size_t(half), 0.0).first->second;
        Vec& c = g2.try_emplace(r2, std::size_t(half), 0.0).first->second;
        for (int64_t e = 0; e < half; ++e) {
          dq1[e] += ds * k1[e];
          dq2[e] += ds * k2[e];
          a[e] += ds * q1[e];
          c[e] += ds * q2[e];
        }
      }
      if (p.grad_queries) {
        if (p.qk_norm) {
          dq1 = norm_backward(load_half(p.queries, p.dtype, row, half, p.k_dim, 0, false), dq1);
          dq2 = norm_backward(load_half(p.queries, p.dtype, row, half, p.k_dim, half, false), dq2);
        }
        for (int64_t e = 0; e < half; ++e) {
          p.grad_queries[row * p.k_dim + e] = static_cast<float>(dq1[e]);
          p.grad_queries[row * p.k_dim + half + e] = static_cast<float>(dq2[e]);
        }
      }
    }
  write_key_grad(p, p.grad_keys1, p.keys1, g1);
  write_key_grad(p, p.grad_keys2, p.keys2, g2);
}

}  // namespace memlayers::reference
