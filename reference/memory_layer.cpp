#include "reference/memory_layer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numbers>
#include <vector>

#include "common/bf16.h"
#include "common/error.h"
#include "reference/fp64.h"
#include "reference/pk_topk.h"

namespace memlayers::reference {

namespace {

using fp64::dot;
using fp64::element;
using fp64::norm_backward;
using fp64::normalised;
using fp64::Vec;
using memory_layer::BwdParams;
using memory_layer::Config;
using memory_layer::FwdParams;
using memory_layer::Kind;
using memory_layer::Weights;

double sigmoid(double z) { return 1 / (1 + std::exp(-z)); }
double silu(double z) { return z * sigmoid(z); }
double silu_grad(double z) {
  const double s = sigmoid(z);
  return s * (1 + z * (1 - s));
}
double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::numbers::sqrt2); }
double gelu(double z) { return z * normal_cdf(z); }
double gelu_grad(double z) {
  return normal_cdf(z) + z * std::exp(-0.5 * z * z) / std::sqrt(2 * std::numbers::pi);
}

// Row `row` of a (rows, width) fp32 array.
Vec row_of(const float* a, int64_t row, int64_t width) {
  return Vec(a + row * width, a + (row + 1) * width);
}

// Row `row` of the value table (or U), widened exactly.
Vec table_row(const void* table, DType t, int64_t row, int64_t width) {
  Vec r(static_cast<std::size_t>(width));
  for (int64_t e = 0; e < width; ++e) r[e] = element(table, t, row * width + e);
  return r;
}

// q = x·Wq + bq for one token, (heads·k_dim).
Vec project(const Config& c, const Weights& w, const Vec& x) {
  const int64_t hn = c.heads * c.k_dim;
  Vec q(w.bq, w.bq + hn);
  for (int64_t i = 0; i < c.d_model; ++i)
    for (int64_t j = 0; j < hn; ++j) q[j] += x[i] * double{w.wq[i * hn + j]};
  return q;
}

// Half `half` (0, 1) of head h's query, raw.
Vec query_half(const Config& c, const Vec& q, int64_t h, int half) {
  const int64_t n2 = c.k_dim / 2, off = h * c.k_dim + half * n2;
  return Vec(q.begin() + off, q.begin() + off + n2);
}

// Everything the forward computes for one token, fp64.
struct Token {
  Vec x, q;
  std::vector<Vec> q1, q2;  // per head, the (normalised) query halves
  std::vector<int64_t> idx;
  Vec s, w;              // (heads·k) scores of the selection, softmax per head
  Vec y;                 // the bag sum (memory, memory+), width wide
  Vec hid, m;            // memory+: x·W1 + b1, y ⊙ silu(hid)
  Vec z, a;              // peer: U[I]·x, gelu of it
  Vec pre;               // the output before the gate (d)
  double g = 0, sg = 1;  // gate logit and sigmoid
  Vec out;
};

Token run_token(const Config& c, const Weights& W, Vec x, Vec q, const int64_t* sel) {
  Token t;
  t.x = std::move(x);
  t.q = std::move(q);
  const int64_t hk = c.heads * c.k, n2 = c.k_dim / 2, nk = c.n_keys, d = c.d_model,
                width = c.value_width();
  t.idx.assign(sel, sel + hk);
  t.s.assign(std::size_t(hk), 0);
  t.w.assign(std::size_t(hk), 0);
  for (int64_t h = 0; h < c.heads; ++h) {
    t.q1.push_back(normalised(query_half(c, t.q, h, 0), c.qk_norm));
    t.q2.push_back(normalised(query_half(c, t.q, h, 1), c.qk_norm));
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = h * c.k; j < (h + 1) * c.k; ++j) {
      const int64_t m = t.idx[j];
      MEMLAYERS_CHECK(m >= 0 && m < c.num_values(),
                      "memory_layer reference: index {} out of range [0, {}) at head {}, slot {}",
                      m, c.num_values(), h, j - h * c.k);
      const Vec k1 = normalised(row_of(W.keys1, h * nk + m / nk, n2), c.qk_norm);
      const Vec k2 = normalised(row_of(W.keys2, h * nk + m % nk, n2), c.qk_norm);
      t.s[j] = dot(t.q1[h], k1) + dot(t.q2[h], k2);
      mx = std::max(mx, t.s[j]);
    }
    double sum = 0;
    for (int64_t j = h * c.k; j < (h + 1) * c.k; ++j) sum += t.w[j] = std::exp(t.s[j] - mx);
    for (int64_t j = h * c.k; j < (h + 1) * c.k; ++j) t.w[j] /= sum;
  }
  if (c.kind == Kind::peer) {
    t.z.assign(std::size_t(hk), 0);
    t.a.assign(std::size_t(hk), 0);
    t.pre.assign(std::size_t(d), 0);
    for (int64_t j = 0; j < hk; ++j) {
      t.z[j] = dot(table_row(W.down, c.values_dtype, t.idx[j], d), t.x);
      t.a[j] = gelu(t.z[j]);
      const Vec v = table_row(W.values, c.values_dtype, t.idx[j], d);
      for (int64_t e = 0; e < d; ++e) t.pre[e] += t.w[j] * t.a[j] * v[e];
    }
  } else {
    t.y.assign(std::size_t(width), 0);
    for (int64_t j = 0; j < hk; ++j) {
      const Vec v = table_row(W.values, c.values_dtype, t.idx[j], width);
      for (int64_t e = 0; e < width; ++e) t.y[e] += t.w[j] * v[e];
    }
    if (c.kind == Kind::memory) {
      t.pre = t.y;
    } else {
      const int64_t v = c.value_dim;
      t.hid.assign(W.b1, W.b1 + v);
      for (int64_t i = 0; i < d; ++i)
        for (int64_t e = 0; e < v; ++e) t.hid[e] += t.x[i] * double{W.w1[i * v + e]};
      t.m.resize(std::size_t(v));
      for (int64_t e = 0; e < v; ++e) t.m[e] = t.y[e] * silu(t.hid[e]);
      t.pre.assign(W.b2, W.b2 + d);
      for (int64_t e = 0; e < v; ++e)
        for (int64_t o = 0; o < d; ++o) t.pre[o] += t.m[e] * double{W.w2[e * d + o]};
    }
  }
  t.out = t.pre;
  if (c.scalar_gate) {
    t.g = dot(t.x, Vec(W.wg, W.wg + d));
    t.sg = sigmoid(t.g);
    for (double& o : t.out) o *= t.sg;
  }
  return t;
}

void store(float* dst, const Vec& v) {
  for (std::size_t i = 0; i < v.size(); ++i) dst[i] = static_cast<float>(v[i]);
}

void forward(const FwdParams& p, const int64_t* fixed, std::vector<double>* out64) {
  const Config& c = p.config;
  const int64_t B = p.batch, d = c.d_model, hn = c.heads * c.k_dim, hk = c.heads * c.k;
  std::vector<Vec> xs, qs;
  for (int64_t b = 0; b < B; ++b) {
    xs.push_back(row_of(p.x, b, d));
    qs.push_back(project(c, p.weights, xs.back()));
  }
  std::vector<int64_t> sel(std::size_t(B * hk));
  if (out64) out64->assign(std::size_t(B * d), 0.0);
  if (fixed) {
    sel.assign(fixed, fixed + B * hk);
  } else {
    // The search on the queries every backend stores: fp32.
    std::vector<float> q32(std::size_t(B * hn)), scores(sel.size());
    for (int64_t b = 0; b < B; ++b) store(q32.data() + b * hn, qs[b]);
    pk_topk::FwdParams s;
    s.queries = q32.data(), s.keys1 = p.weights.keys1, s.keys2 = p.weights.keys2;
    s.scores = scores.data(), s.indices = sel.data();
    s.batch = B, s.heads = c.heads, s.n_keys = c.n_keys, s.k_dim = c.k_dim, s.k = c.k;
    s.dtype = DType::f32, s.index_dtype = DType::i64, s.qk_norm = c.qk_norm;
    pk_topk_fwd(s);
  }
  for (int64_t b = 0; b < B; ++b) {
    const Token t = run_token(c, p.weights, xs[b], qs[b], sel.data() + b * hk);
    if (p.out) store(p.out + b * d, t.out);
    if (out64) std::copy(t.out.begin(), t.out.end(), out64->begin() + b * d);
    const auto& s = p.saved;
    if (s.q) store(s.q + b * hn, t.q);
    if (s.scores) store(s.scores + b * hk, t.s);
    if (s.indices) std::copy(t.idx.begin(), t.idx.end(), s.indices + b * hk);
    if (s.weights) store(s.weights + b * hk, t.w);
    if (s.y) {
      if (c.kind == Kind::memory_plus)
        store(s.y + b * c.value_dim, t.y);
      else
        store(s.y + b * d, t.pre);
    }
    if (s.hidden && c.kind == Kind::memory_plus) store(s.hidden + b * c.value_dim, t.hid);
    if (s.peer_pre && c.kind == Kind::peer) store(s.peer_pre + b * hk, t.z);
    if (s.gate && c.scalar_gate) s.gate[b] = static_cast<float>(t.g);
  }
}

// A sparse gradient: touched rows, ascending.
using Rows = std::map<int64_t, Vec>;

Vec& row_in(Rows& rows, int64_t id, int64_t width) {
  return rows.try_emplace(id, std::size_t(width), 0.0).first->second;
}

void write_rows(const Rows& rows, int64_t num_rows, int64_t width, float* dense, int64_t* ids,
                float* compact, int64_t* count) {
  if (dense) {
    std::fill(dense, dense + num_rows * width, 0.0f);
    for (const auto& [id, g] : rows) store(dense + id * width, g);
  }
  if (ids) {
    int64_t i = 0;
    for (const auto& [id, g] : rows) {
      ids[i] = id;
      store(compact + i * width, g);
      ++i;
    }
    *count = i;
  }
}

}  // namespace

void memory_layer_fwd(const FwdParams& p) { forward(p, nullptr, nullptr); }

void memory_layer_fwd_fixed(const FwdParams& p, const int64_t* indices,
                            std::vector<double>* out64) {
  MEMLAYERS_CHECK(indices, "memory_layer reference: the fixed selection is null");
  forward(p, indices, out64);
}

void memory_layer_bwd(const BwdParams& p) {
  const Config& c = p.config;
  const Weights& W = p.weights;
  const auto& G = p.grads;
  MEMLAYERS_CHECK(p.saved.indices, "memory_layer reference: saved.indices is null");
  const int64_t B = p.batch, d = c.d_model, hn = c.heads * c.k_dim, hk = c.heads * c.k,
                n2 = c.k_dim / 2, nk = c.n_keys, v = c.value_dim, width = c.value_width();
  Vec gwq(std::size_t(d * hn), 0), gbq(std::size_t(hn), 0), gw1, gb1, gw2, gb2,
      gwg(std::size_t(d), 0);
  if (c.kind == Kind::memory_plus) {
    gw1.assign(std::size_t(d * v), 0), gb1.assign(std::size_t(v), 0);
    gw2.assign(std::size_t(v * d), 0), gb2.assign(std::size_t(d), 0);
  }
  Rows gk1, gk2, gvalues, gdown;  // key gradients w.r.t. the normalised keys, until the end

  for (int64_t b = 0; b < B; ++b) {
    Vec x = row_of(p.x, b, d);
    const Token t = run_token(c, W, x, project(c, W, x), p.saved.indices + b * hk);
    const Vec dout = row_of(p.grad_out, b, d);
    Vec dx(std::size_t(d), 0), dpre = dout;

    if (c.scalar_gate) {
      const double dg = t.sg * (1 - t.sg) * dot(dout, t.pre);
      for (int64_t i = 0; i < d; ++i) {
        dpre[i] = dout[i] * t.sg;
        gwg[i] += dg * t.x[i];
        dx[i] += dg * double{W.wg[i]};
      }
    }

    Vec dw(std::size_t(hk), 0);
    if (c.kind == Kind::peer) {
      for (int64_t j = 0; j < hk; ++j) {
        const int64_t r = t.idx[j];
        const Vec vr = table_row(W.values, c.values_dtype, r, d);
        const Vec ur = table_row(W.down, c.values_dtype, r, d);
        Vec& gv = row_in(gvalues, r, d);
        for (int64_t e = 0; e < d; ++e) gv[e] += t.w[j] * t.a[j] * dpre[e];
        const double dc = dot(dpre, vr);
        dw[j] = t.a[j] * dc;
        const double dz = t.w[j] * dc * gelu_grad(t.z[j]);
        Vec& gu = row_in(gdown, r, d);
        for (int64_t e = 0; e < d; ++e) {
          gu[e] += dz * t.x[e];
          dx[e] += dz * ur[e];
        }
      }
    } else {
      Vec dy = dpre;
      if (c.kind == Kind::memory_plus) {
        dy.assign(std::size_t(v), 0);
        for (int64_t e = 0; e < v; ++e) {
          double dm = 0;
          for (int64_t o = 0; o < d; ++o) {
            gw2[e * d + o] += t.m[e] * dpre[o];
            dm += double{W.w2[e * d + o]} * dpre[o];
          }
          dy[e] = dm * silu(t.hid[e]);
          const double dh = dm * t.y[e] * silu_grad(t.hid[e]);
          gb1[e] += dh;
          for (int64_t i = 0; i < d; ++i) {
            gw1[i * v + e] += t.x[i] * dh;
            dx[i] += double{W.w1[i * v + e]} * dh;
          }
        }
        for (int64_t o = 0; o < d; ++o) gb2[o] += dpre[o];
      }
      for (int64_t j = 0; j < hk; ++j) {
        const int64_t r = t.idx[j];
        const Vec vr = table_row(W.values, c.values_dtype, r, width);
        Vec& gv = row_in(gvalues, r, width);
        for (int64_t e = 0; e < width; ++e) gv[e] += t.w[j] * dy[e];
        dw[j] = dot(dy, vr);
      }
    }

    // Softmax per head, then the search: ds to the normalised query halves and keys.
    Vec dq(std::size_t(hn), 0);
    for (int64_t h = 0; h < c.heads; ++h) {
      double wdw = 0;
      for (int64_t j = h * c.k; j < (h + 1) * c.k; ++j) wdw += t.w[j] * dw[j];
      Vec dq1(std::size_t(n2), 0), dq2(std::size_t(n2), 0);
      for (int64_t j = h * c.k; j < (h + 1) * c.k; ++j) {
        const double ds = t.w[j] * (dw[j] - wdw);
        const int64_t r1 = h * nk + t.idx[j] / nk, r2 = h * nk + t.idx[j] % nk;
        const Vec k1 = normalised(row_of(W.keys1, r1, n2), c.qk_norm);
        const Vec k2 = normalised(row_of(W.keys2, r2, n2), c.qk_norm);
        Vec &a = row_in(gk1, r1, n2), &e2 = row_in(gk2, r2, n2);
        for (int64_t e = 0; e < n2; ++e) {
          dq1[e] += ds * k1[e];
          dq2[e] += ds * k2[e];
          a[e] += ds * t.q1[h][e];
          e2[e] += ds * t.q2[h][e];
        }
      }
      if (c.qk_norm) {
        dq1 = norm_backward(query_half(c, t.q, h, 0), dq1);
        dq2 = norm_backward(query_half(c, t.q, h, 1), dq2);
      }
      std::copy(dq1.begin(), dq1.end(), dq.begin() + h * c.k_dim);
      std::copy(dq2.begin(), dq2.end(), dq.begin() + h * c.k_dim + n2);
    }
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < hn; ++j) {
        gwq[i * hn + j] += t.x[i] * dq[j];
        dx[i] += double{W.wq[i * hn + j]} * dq[j];
      }
    for (int64_t j = 0; j < hn; ++j) gbq[j] += dq[j];
    if (G.x) store(G.x + b * d, dx);
  }

  if (G.wq) store(G.wq, gwq);
  if (G.bq) store(G.bq, gbq);
  if (G.w1) store(G.w1, gw1);
  if (G.b1) store(G.b1, gb1);
  if (G.w2) store(G.w2, gw2);
  if (G.b2) store(G.b2, gb2);
  if (G.wg) store(G.wg, gwg);
  if (c.qk_norm)  // from the normalised keys to the stored ones
    for (auto [rows, keys] : {std::pair{&gk1, W.keys1}, std::pair{&gk2, W.keys2}})
      for (auto& [id, g] : *rows) g = norm_backward(row_of(keys, id, n2), g);
  write_rows(gk1, c.heads * nk, n2, G.keys1, nullptr, nullptr, nullptr);
  write_rows(gk2, c.heads * nk, n2, G.keys2, nullptr, nullptr, nullptr);
  write_rows(gvalues, c.num_values(), width, G.values_dense, G.value_rows, G.values_compact,
             G.num_value_rows);
  if (c.kind == Kind::peer)
    write_rows(gdown, c.num_values(), d, G.down_dense, G.down_rows, G.down_compact,
               G.num_down_rows);
}

}  // namespace memlayers::reference
