// The reference backend of harness::Ops: obvious loops, fp64 accumulation, each output rounded
// once to fp32. The truth the cpu backend and the finite-difference checks are measured against.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "harness/ops.h"
#include "harness/ops_internal.h"
#include "harness/ops_reference.h"

namespace memlayers::harness::reference {

namespace {

using Vec = std::vector<double>;

void store(const Vec& v, float* out) {
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i]);
}

double sigmoid(double z) { return 1 / (1 + std::exp(-z)); }

// W[i, o] of a linear layer in either layout.
double weight(const float* w, bool transposed, int64_t in, int64_t out, int64_t i, int64_t o) {
  return transposed ? w[o * in + i] : w[i * out + o];
}

// ---- backwards ----

void embedding_bwd(const EmbeddingBwd& p) {
  detail::check_ids(p.ids, p.rows, p.num_rows, "id");
  // Sum every row's contributions in fp64 first, then add once: duplicates round once.
  Vec acc(static_cast<std::size_t>(p.num_rows * p.dim), 0.0);
  std::vector<char> touched(static_cast<std::size_t>(p.num_rows), 0);
  for (int64_t r = 0; r < p.rows; ++r) {
    touched[p.ids[r]] = 1;
    for (int64_t c = 0; c < p.dim; ++c) acc[p.ids[r] * p.dim + c] += p.dout[r * p.dim + c];
  }
  for (int64_t t = 0; t < p.num_rows; ++t)
    if (touched[t])
      for (int64_t c = 0; c < p.dim; ++c)
        p.dtable[t * p.dim + c] = static_cast<float>(p.dtable[t * p.dim + c] + acc[t * p.dim + c]);
}

void rmsnorm_bwd(const RmsNormBwd& p) {
  const int64_t D = p.dim;
  Vec dscale(static_cast<std::size_t>(D), 0.0);
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * D;
    const float* dy = p.dy + r * D;
    const double inv = p.inv_rms[r];
    double m = 0;  // Σ_j scale_j·dy_j·x_j
    for (int64_t j = 0; j < D; ++j) {
      m += double{p.scale[j]} * dy[j] * x[j];
      dscale[j] += double{dy[j]} * x[j] * inv;
    }
    m /= double(D);
    for (int64_t j = 0; j < D; ++j) {
      const double g = inv * p.scale[j] * dy[j] - x[j] * inv * inv * inv * m;
      float& dx = p.dx[r * D + j];
      dx = static_cast<float>(p.accumulate_dx ? dx + g : g);
    }
  }
  for (int64_t j = 0; j < D; ++j) p.dscale[j] = static_cast<float>(p.dscale[j] + dscale[j]);
}

void linear_bwd(const LinearBwd& p) {
  const int64_t I = p.in, O = p.out;
  if (p.dx)
    for (int64_t r = 0; r < p.rows; ++r)
      for (int64_t i = 0; i < I; ++i) {
        double s = 0;
        for (int64_t o = 0; o < O; ++o)
          s += double{p.dy[r * O + o]} * weight(p.w, p.transposed_w, I, O, i, o);
        float& dx = p.dx[r * I + i];
        dx = static_cast<float>(p.accumulate_dx ? dx + s : s);
      }
  if (p.dw)
    for (int64_t i = 0; i < I; ++i)
      for (int64_t o = 0; o < O; ++o) {
        double s = 0;
        for (int64_t r = 0; r < p.rows; ++r) s += double{p.x[r * I + i]} * p.dy[r * O + o];
        float& dw = p.transposed_w ? p.dw[o * I + i] : p.dw[i * O + o];
        dw = static_cast<float>(dw + s);
      }
  if (p.db)
    for (int64_t o = 0; o < O; ++o) {
      double s = 0;
      for (int64_t r = 0; r < p.rows; ++r) s += p.dy[r * O + o];
      p.db[o] = static_cast<float>(p.db[o] + s);
    }
}

void attention_bwd(const AttentionBwd& p) {
  const int64_t T = p.seq, H = p.heads, dh = p.d / p.heads, ld = p.ld_qkv;
  const double scale = 1 / std::sqrt(double(dh));
  Vec dq(static_cast<std::size_t>(T * dh)), dk(dq.size()), dv(dq.size());
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::fill(dq.begin(), dq.end(), 0.0), std::fill(dk.begin(), dk.end(), 0.0);
      std::fill(dv.begin(), dv.end(), 0.0);
      auto at = [&](const float* base, int64_t t, int64_t stride) {
        return base + (b * T + t) * stride + h * dh;
      };
      for (int64_t i = 0; i < T; ++i) {
        const float* qi = at(p.q, i, ld);
        const float* oi = at(p.out, i, p.d);
        const float* doi = at(p.dout, i, p.d);
        const double lse = p.lse[(b * H + h) * T + i];
        double D = 0;  // Σ_c dout·out = Σ_j p_j·(dout·v_j)
        for (int64_t c = 0; c < dh; ++c) D += double{doi[c]} * oi[c];
        for (int64_t j = 0; j <= i; ++j) {
          const float* kj = at(p.k, j, ld);
          const float* vj = at(p.v, j, ld);
          double s = 0, dP = 0;
          for (int64_t c = 0; c < dh; ++c) s += double{qi[c]} * kj[c], dP += double{doi[c]} * vj[c];
          const double pij = std::exp(s * scale - lse), dS = pij * (dP - D) * scale;
          for (int64_t c = 0; c < dh; ++c) {
            dq[i * dh + c] += dS * kj[c];
            dk[j * dh + c] += dS * qi[c];
            dv[j * dh + c] += pij * doi[c];
          }
        }
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < dh; ++c) {
          const int64_t o = (b * T + t) * ld + h * dh + c, s = t * dh + c;
          p.dq[o] = static_cast<float>(dq[s]);
          p.dk[o] = static_cast<float>(dk[s]);
          p.dv[o] = static_cast<float>(dv[s]);
        }
    }
}

void swiglu_bwd(const SwigluBwd& p) {
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t c = 0; c < p.hidden; ++c) {
      const int64_t i = r * p.ld_ab + c;
      const double a = p.a[i], b = p.b[i], g = p.dout[r * p.hidden + c], s = sigmoid(a);
      p.da[i] = static_cast<float>(g * b * s * (1 + a * (1 - s)));
      p.db[i] = static_cast<float>(g * a * s);
    }
}

void add(const Add& p) {
  for (int64_t i = 0; i < p.n; ++i) p.out[i] = static_cast<float>(double{p.x[i]} + p.y[i]);
}

double logsumexp(const float* row, int64_t n) {
  const double mx = *std::max_element(row, row + n);
  double s = 0;
  for (int64_t c = 0; c < n; ++c) s += std::exp(row[c] - mx);
  // cppcheck-suppress invalidFunctionArg ; s >= 1: the largest element adds exp(0)
  return mx + std::log(s);
}

void cross_entropy_bwd(const CrossEntropyBwd& p) {
  const double total = detail::check_targets(p.targets, p.weights, p.rows, p.vocab);
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* row = p.logits + r * p.vocab;
    const double w = (p.weights ? p.weights[r] : 1.0) * p.dloss / total;
    const double lse = w != 0 ? logsumexp(row, p.vocab) : 0;
    for (int64_t c = 0; c < p.vocab; ++c) {
      const double g = w != 0 ? w * (std::exp(row[c] - lse) - (c == p.targets[r] ? 1 : 0)) : 0;
      p.dlogits[r * p.vocab + c] = static_cast<float>(g);
    }
  }
}

}  // namespace

// ---- forwards (fp64 outputs) ----

Vec embedding_fwd64(const EmbeddingFwd& p) {
  detail::check_ids(p.ids, p.rows, p.num_rows, "id");
  Vec out(static_cast<std::size_t>(p.rows * p.dim));
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t c = 0; c < p.dim; ++c)
      out[r * p.dim + c] =
          double{p.table[p.ids[r] * p.dim + c]} + (p.accumulate ? p.out[r * p.dim + c] : 0.0);
  return out;
}

Vec rmsnorm_fwd64(const RmsNormFwd& p, Vec* inv_rms) {
  Vec y(static_cast<std::size_t>(p.rows * p.dim));
  if (inv_rms) inv_rms->resize(static_cast<std::size_t>(p.rows));
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.dim;
    double ss = 0;
    for (int64_t j = 0; j < p.dim; ++j) ss += double{x[j]} * x[j];
    const double inv = 1 / std::sqrt(ss / double(p.dim) + double{kRmsNormEps});
    for (int64_t j = 0; j < p.dim; ++j) y[r * p.dim + j] = x[j] * inv * p.scale[j];
    if (inv_rms) (*inv_rms)[r] = inv;
  }
  return y;
}

Vec linear_fwd64(const LinearFwd& p) {
  Vec y(static_cast<std::size_t>(p.rows * p.out));
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t o = 0; o < p.out; ++o) {
      double s = p.b ? double{p.b[o]} : 0.0;
      for (int64_t i = 0; i < p.in; ++i)
        s += double{p.x[r * p.in + i]} * weight(p.w, p.transposed_w, p.in, p.out, i, o);
      y[r * p.out + o] = s;
    }
  return y;
}

Vec attention_fwd64(const AttentionFwd& p, Vec* lse) {
  const int64_t T = p.seq, H = p.heads, dh = p.d / p.heads, ld = p.ld_qkv;
  const double scale = 1 / std::sqrt(double(dh));
  Vec out(static_cast<std::size_t>(p.batch * T * p.d)), s(static_cast<std::size_t>(T));
  if (lse) lse->resize(static_cast<std::size_t>(p.batch * H * T));
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const float* qi = p.q + (b * T + i) * ld + h * dh;
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          const float* kj = p.k + (b * T + j) * ld + h * dh;
          double dot = 0;
          for (int64_t c = 0; c < dh; ++c) dot += double{qi[c]} * kj[c];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += s[j] = std::exp(s[j] - mx);
        double* oi = out.data() + (b * T + i) * p.d + h * dh;
        for (int64_t j = 0; j <= i; ++j) {
          const float* vj = p.v + (b * T + j) * ld + h * dh;
          for (int64_t c = 0; c < dh; ++c) oi[c] += s[j] / sum * vj[c];
        }
        if (lse) (*lse)[(b * H + h) * T + i] = mx + std::log(sum);
      }
  return out;
}

Vec swiglu_fwd64(const SwigluFwd& p) {
  Vec out(static_cast<std::size_t>(p.rows * p.hidden));
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t c = 0; c < p.hidden; ++c) {
      const double a = p.a[r * p.ld_ab + c];
      out[r * p.hidden + c] = a * sigmoid(a) * p.b[r * p.ld_ab + c];
    }
  return out;
}

double cross_entropy_fwd64(const CrossEntropyFwd& p) {
  const double total = detail::check_targets(p.targets, p.weights, p.rows, p.vocab);
  double loss = 0;
  for (int64_t r = 0; r < p.rows; ++r) {
    const double w = p.weights ? p.weights[r] : 1.0;
    if (w == 0) continue;
    const float* row = p.logits + r * p.vocab;
    loss += w * (logsumexp(row, p.vocab) - row[p.targets[r]]);
  }
  return loss / total;
}

}  // namespace memlayers::harness::reference

namespace memlayers::harness::detail {

Ops reference_ops() {
  using namespace harness::reference;
  Ops t;
  t.backend = Backend::reference;
  t.memory = &host_memory();
  t.embedding_fwd = [](const EmbeddingFwd& p) { store(embedding_fwd64(p), p.out); };
  t.embedding_bwd = embedding_bwd;
  t.rmsnorm_fwd = [](const RmsNormFwd& p) {
    std::vector<double> inv;
    store(rmsnorm_fwd64(p, &inv), p.y);
    if (p.inv_rms) store(inv, p.inv_rms);
  };
  t.rmsnorm_bwd = rmsnorm_bwd;
  t.linear_fwd = [](const LinearFwd& p) { store(linear_fwd64(p), p.y); };
  t.linear_bwd = linear_bwd;
  t.attention_fwd = [](const AttentionFwd& p) {
    std::vector<double> lse;
    store(attention_fwd64(p, &lse), p.out);
    if (p.lse) store(lse, p.lse);
  };
  t.attention_bwd = attention_bwd;
  t.swiglu_fwd = [](const SwigluFwd& p) { store(swiglu_fwd64(p), p.out); };
  t.swiglu_bwd = swiglu_bwd;
  t.add = add;
  t.cross_entropy_fwd = [](const CrossEntropyFwd& p) {
    *p.loss = static_cast<float>(cross_entropy_fwd64(p));
  };
  t.cross_entropy_bwd = cross_entropy_bwd;
  return t;
}

}  // namespace memlayers::harness::detail
