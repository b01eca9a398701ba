// The cpu backend of harness::Ops: the GEMMs of the linear layers by OpenBLAS sgemm over the
// pool (common/blas.h; bias broadcast into the output first, beta = 1; gradients accumulated with
// beta = 1), the SwiGLU by SIMD passes with a vector exp (common/silu.h), everything else in fp32
// loops threaded with kernels/common/parallel.h. Reductions over rows (dtable, dscale, db) are
// split by column blocks, never by rows, so every sum has one fixed order and the backend is
// deterministic. Attention is per (sequence, head) loops over the causal triangle, its products
// in registers: at the harness's sequence lengths (≤ a few hundred) a GEMM call per (sequence,
// head) costs more than it saves.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/blas.h"
#include "common/error.h"
#include "common/parallel.h"
#include "common/silu.h"
#include "harness/ops.h"
#include "harness/ops_internal.h"

namespace memlayers::harness::cpu {

namespace {

// fn(c0, c1) over column blocks of [0, cols): each block owns its columns for every row.
template <class F>
void each_column_block(int64_t cols, F&& fn) {
  parallel_for(cols, balanced_grain(cols, 64), fn);
}

// ---- embedding ----

void embedding_fwd(const EmbeddingFwd& p) {
  detail::check_ids(p.ids, p.rows, p.num_rows, "id");
  parallel_rows(p.rows, p.dim, [&](int64_t r) {
    const float* src = p.table + int64_t{p.ids[r]} * p.dim;
    float* dst = p.out + r * p.dim;
    if (p.accumulate)
      for (int64_t c = 0; c < p.dim; ++c) dst[c] += src[c];
    else
      std::copy(src, src + p.dim, dst);
  });
}

void embedding_bwd(const EmbeddingBwd& p) {
  detail::check_ids(p.ids, p.rows, p.num_rows, "id");
  each_column_block(p.dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < p.rows; ++r) {
      const float* src = p.dout + r * p.dim;
      float* dst = p.dtable + int64_t{p.ids[r]} * p.dim;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  });
}

// ---- RMSNorm ----

void rmsnorm_fwd(const RmsNormFwd& p) {
  const int64_t D = p.dim;
  parallel_rows(p.rows, D, [&](int64_t r) {
    const float* x = p.x + r * D;
    float* y = p.y + r * D;
    float ss = 0;
    for (int64_t j = 0; j < D; ++j) ss += x[j] * x[j];
    const float inv = 1.0f / std::sqrt(ss / float(D) + kRmsNormEps);
    for (int64_t j = 0; j < D; ++j) y[j] = x[j] * inv * p.scale[j];
    if (p.inv_rms) p.inv_rms[r] = inv;
  });
}

void rmsnorm_bwd(const RmsNormBwd& p) {
  const int64_t D = p.dim;
  parallel_rows(p.rows, D, [&](int64_t r) {
    const float* x = p.x + r * D;
    const float* dy = p.dy + r * D;
    float* dx = p.dx + r * D;
    const float inv = p.inv_rms[r];
    float m = 0;
    for (int64_t j = 0; j < D; ++j) m += p.scale[j] * dy[j] * x[j];
    const float k = m / float(D) * inv * inv * inv;
    for (int64_t j = 0; j < D; ++j) {
      const float g = inv * p.scale[j] * dy[j] - x[j] * k;
      dx[j] = p.accumulate_dx ? dx[j] + g : g;
    }
  });
  each_column_block(D, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < p.rows; ++r) {
      const float inv = p.inv_rms[r];
      for (int64_t j = c0; j < c1; ++j) p.dscale[j] += p.dy[r * D + j] * p.x[r * D + j] * inv;
    }
  });
}

// ---- linear ----

// C (m, n) = op(A) · op(B) + beta · C, row-major.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  host_blas::gemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

void linear_fwd(const LinearFwd& p) {
  const int64_t O = p.out;
  if (p.b) parallel_rows(p.rows, O, [&](int64_t r) { std::copy(p.b, p.b + O, p.y + r * O); });
  detail::linear_fwd_gemm(p, gemm);
}

void linear_bwd(const LinearBwd& p) {
  const int64_t O = p.out;
  detail::linear_bwd_gemms(p, gemm);
  if (p.db)
    each_column_block(O, [&](int64_t c0, int64_t c1) {
      for (int64_t r = 0; r < p.rows; ++r)
        for (int64_t c = c0; c < c1; ++c) p.db[c] += p.dy[r * O + c];
    });
}

// ---- attention ----

// fn(b, h) for every (sequence, head), threaded.
template <class F>
void each_head(int64_t batch, int64_t heads, F&& fn) {
  parallel_for(batch * heads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) fn(i / heads, i % heads);
  });
}

// The reduction pragma lets the compiler split the sum over SIMD lanes (-fopenmp-simd, no OpenMP
// runtime); without it fp32 sums stay scalar. The order is fixed at compile time: deterministic.
float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

void attention_fwd(const AttentionFwd& p) {
  const int64_t T = p.seq, H = p.heads, dh = p.d / H, ld = p.ld_qkv;
  const float scale = 1.0f / std::sqrt(float(dh));
  each_head(p.batch, H, [&](int64_t b, int64_t h) {
    std::vector<float> s(static_cast<std::size_t>(T));
    const int64_t base = b * T;
    for (int64_t i = 0; i < T; ++i) {
      const float* qi = p.q + (base + i) * ld + h * dh;
      float mx = -INFINITY;
      for (int64_t j = 0; j <= i; ++j) {
        s[j] = dot(qi, p.k + (base + j) * ld + h * dh, dh) * scale;
        mx = std::max(mx, s[j]);
      }
      float sum = 0;
      for (int64_t j = 0; j <= i; ++j) sum += s[j] = std::exp(s[j] - mx);
      const float inv = 1.0f / sum;
      float* oi = p.out + (base + i) * p.d + h * dh;
      std::fill(oi, oi + dh, 0.0f);
      for (int64_t j = 0; j <= i; ++j) {
        const float* vj = p.v + (base + j) * ld + h * dh;
        const float w = s[j] * inv;
        for (int64_t c = 0; c < dh; ++c) oi[c] += w * vj[c];
      }
      if (p.lse) p.lse[(b * H + h) * T + i] = mx + std::log(sum);
    }
  });
}

void attention_bwd(const AttentionBwd& p) {
  const int64_t T = p.seq, H = p.heads, dh = p.d / H, ld = p.ld_qkv;
  const float scale = 1.0f / std::sqrt(float(dh));
  each_head(p.batch, H, [&](int64_t b, int64_t h) {
    const int64_t base = b * T, col = h * dh;
    // dk and dv gather from every later position: summed here, written once at the end.
    std::vector<float> dk(static_cast<std::size_t>(T * dh), 0.0f), dv(dk.size(), 0.0f);
    for (int64_t i = 0; i < T; ++i) {
      const float* qi = p.q + (base + i) * ld + col;
      const float* doi = p.dout + (base + i) * p.d + col;
      const float lse = p.lse[(b * H + h) * T + i];
      const float D = dot(doi, p.out + (base + i) * p.d + col, dh);
      float* dqi = p.dq + (base + i) * ld + col;
      std::fill(dqi, dqi + dh, 0.0f);
      for (int64_t j = 0; j <= i; ++j) {
        const float* kj = p.k + (base + j) * ld + col;
        const float* vj = p.v + (base + j) * ld + col;
        const float pij = std::exp(dot(qi, kj, dh) * scale - lse);
        const float dS = pij * (dot(doi, vj, dh) - D) * scale;
        float* dkj = dk.data() + j * dh;
        float* dvj = dv.data() + j * dh;
        for (int64_t c = 0; c < dh; ++c) {
          dqi[c] += dS * kj[c];
          dkj[c] += dS * qi[c];
          dvj[c] += pij * doi[c];
        }
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      std::copy_n(dk.data() + t * dh, dh, p.dk + (base + t) * ld + col);
      std::copy_n(dv.data() + t * dh, dh, p.dv + (base + t) * ld + col);
    }
  });
}

// ---- SwiGLU, add ----

void swiglu_fwd(const SwigluFwd& p) {
  parallel_rows(p.rows, p.hidden, [&](int64_t r) {
    silu_product(p.b + r * p.ld_ab, p.a + r * p.ld_ab, p.out + r * p.hidden, p.hidden);
  });
}

void swiglu_bwd(const SwigluBwd& p) {
  parallel_rows(p.rows, p.hidden, [&](int64_t r) {
    const int64_t o = r * p.ld_ab;  // db = dout·silu(a), da = dout·b·silu'(a)
    silu_backward(p.dout + r * p.hidden, p.b + o, p.a + o, p.db + o, p.da + o, p.hidden);
  });
}

void add(const Add& p) {
  parallel_for(p.n, balanced_grain(p.n, 16384), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) p.out[i] = p.x[i] + p.y[i];
  });
}

// ---- cross-entropy ----

float logsumexp(const float* row, int64_t n) {
  const float mx = *std::max_element(row, row + n);
  float s = 0;
  for (int64_t c = 0; c < n; ++c) s += std::exp(row[c] - mx);
  // cppcheck-suppress invalidFunctionArg ; s >= 1: the largest element adds exp(0)
  return mx + std::log(s);
}

void cross_entropy_fwd(const CrossEntropyFwd& p) {
  const double total = detail::check_targets(p.targets, p.weights, p.rows, p.vocab);
  std::vector<double> row_loss(static_cast<std::size_t>(p.rows), 0.0);
  parallel_rows(p.rows, p.vocab, [&](int64_t r) {
    const float w = p.weights ? p.weights[r] : 1.0f;
    if (w == 0) return;
    const float* row = p.logits + r * p.vocab;
    row_loss[r] = double{w} * (logsumexp(row, p.vocab) - row[p.targets[r]]);
  });
  double loss = 0;  // summed in row order: deterministic
  for (double l : row_loss) loss += l;
  *p.loss = static_cast<float>(loss / total);
}

void cross_entropy_bwd(const CrossEntropyBwd& p) {
  const double total = detail::check_targets(p.targets, p.weights, p.rows, p.vocab);
  parallel_rows(p.rows, p.vocab, [&](int64_t r) {
    const float w = static_cast<float>((p.weights ? p.weights[r] : 1.0f) * p.dloss / total);
    float* d = p.dlogits + r * p.vocab;
    if (w == 0) {
      std::fill(d, d + p.vocab, 0.0f);
      return;
    }
    const float* row = p.logits + r * p.vocab;
    const float lse = logsumexp(row, p.vocab);
    for (int64_t c = 0; c < p.vocab; ++c) d[c] = w * std::exp(row[c] - lse);
    d[p.targets[r]] -= w;
  });
}

}  // namespace

}  // namespace memlayers::harness::cpu

namespace memlayers::harness::detail {

Ops cpu_ops() {
  using namespace harness::cpu;
  Ops t;
  t.backend = Backend::cpu;
  t.memory = &host_memory();
  t.embedding_fwd = embedding_fwd;
  t.embedding_bwd = embedding_bwd;
  t.rmsnorm_fwd = rmsnorm_fwd;
  t.rmsnorm_bwd = rmsnorm_bwd;
  t.linear_fwd = linear_fwd;
  t.linear_bwd = linear_bwd;
  t.attention_fwd = attention_fwd;
  t.attention_bwd = attention_bwd;
  t.swiglu_fwd = swiglu_fwd;
  t.swiglu_bwd = swiglu_bwd;
  t.add = add;
  t.cross_entropy_fwd = cross_entropy_fwd;
  t.cross_entropy_bwd = cross_entropy_bwd;
  return t;
}

}  // namespace memlayers::harness::detail
