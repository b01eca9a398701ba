// The cuda and simt backends of harness::Ops (harness/ops.h), written once: nvcc compiles this
// file for the GPU (backend cuda) and the host compiler compiles it against simt/ (backend simt,
// the same kernels on CPU threads, where the tests run them; DESIGN.md §3).
//  - linear layers: the GEMMs by common/blas.cuh (cuBLAS; a plain kernel of ours under simt),
//    the bias broadcast into y first and beta = 1, weight gradients accumulated with beta = 1;
//  - row reductions (RMSNorm, cross-entropy, attention's dot products): a warp per row, each lane
//    summing its columns in order, then a fixed shuffle butterfly;
//  - column reductions (dtable, dscale, db): one thread per output element walking the rows in
//    order onto the accumulating output — the cpu backend's order, and no atomics;
//  - attention: a warp per (sequence, head, query position) with an online softmax over the
//    causal prefix (no (seq, seq) matrix), saving the log-sum-exp; the backward recomputes the
//    probabilities in two kernels, dq per query row, then dk and dv per key row (each a gather,
//    so no two warps write the same element);
//  - cross-entropy: the loss of each row by a warp, summed in fp64 by one block in a fixed tree.
// Every kernel is deterministic: two runs give the same bytes.
// Index values are checked on the host, with the host backends' checks and messages: the
// launcher copies the embedding ids, or the targets and weights, to host memory first (a
// synchronising copy of rows·4 bytes, ≤ 16 KiB at the harness's shapes); the cross-entropy's
// Σ weights comes from that copy too, summed in fp64 in row order as the cpu backend does.
// Bottleneck: none targeted; at the harness's sizes (rows ≤ 4096, d ≤ 128, vocab ≤ 512,
// seq ≤ 8) the GEMMs and the launch latencies dominate. Measured: not yet on a GPU (simt-correct).
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/blas.cuh"
#include "common/cuda.cuh"
#include "harness/cuda/device.cuh"
#include "harness/cuda/tables.h"
#include "harness/ops.h"
#include "harness/ops_internal.h"

namespace memlayers::harness {
inline namespace MEMLAYERS_TARGET_NS {
namespace {

using device::for_each;
using device::per_warp;
using device::sigmoid;
using device::warp_max;
using device::warp_sum;

// Columns a lane holds in registers per pass of an attention row: a head of ≤ 128 columns in one
// pass; wider heads take several passes, each recomputing the scores.
constexpr int kLaneCols = 4;
constexpr int64_t kPassCols = 32 * kLaneCols;

// ---- embedding ----

// out[r, c] (=|+=) table[ids[r], c]; i runs over rows·dim.
struct EmbeddingGather {
  const int32_t* ids;
  const float* table;
  float* out;
  int64_t dim;
  bool accumulate;
  __device__ void operator()(int64_t i) const {
    const int64_t r = i / dim, c = i - r * dim;
    const float v = table[int64_t{ids[r]} * dim + c];
    out[i] = accumulate ? out[i] + v : v;
  }
};

// dtable[t, c] += Σ_{r: ids[r] = t} dout[r, c], one thread per element of the table walking the
// ids in row order: the cpu backend's sums, no atomics. For dim ≥ 32 a warp's lanes span at most
// two rows t, so the branch on ids[r] barely diverges and ids[r] is a broadcast load.
struct EmbeddingScatter {
  const int32_t* ids;
  const float* dout;
  float* dtable;
  int64_t rows, dim;
  __device__ void operator()(int64_t i) const {
    const int64_t t = i / dim, c = i - t * dim;
    float acc = dtable[i];
    for (int64_t r = 0; r < rows; ++r)
      if (ids[r] == t) acc += dout[r * dim + c];
    dtable[i] = acc;
  }
};

void check_ids(const int32_t* ids, int64_t rows, int64_t num_rows) {
  const std::vector<int32_t> h = device::to_host(ids, rows);
  detail::check_ids(h.data(), rows, num_rows, "id");
}

void embedding_fwd(const EmbeddingFwd& p) {
  check_ids(p.ids, p.rows, p.num_rows);
  for_each("harness_embedding_fwd", p.rows * p.dim,
           EmbeddingGather{p.ids, p.table, p.out, p.dim, p.accumulate});
}

void embedding_bwd(const EmbeddingBwd& p) {
  check_ids(p.ids, p.rows, p.num_rows);
  for_each("harness_embedding_bwd", p.num_rows * p.dim,
           EmbeddingScatter{p.ids, p.dout, p.dtable, p.rows, p.dim});
}

// ---- RMSNorm ----

struct RmsNormRow {
  const float *x, *scale;
  float *y, *inv_rms;
  int64_t dim;
  __device__ void operator()(int64_t r, int lane) const {
    const float* xr = x + r * dim;
    float ss = 0.f;
    for (int64_t c = lane; c < dim; c += 32) ss += xr[c] * xr[c];
    ss = warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / float(dim) + kRmsNormEps);
    for (int64_t c = lane; c < dim; c += 32) y[r * dim + c] = xr[c] * inv * scale[c];
    if (inv_rms && lane == 0) inv_rms[r] = inv;
  }
};

// dx = inv·scale·dy − x·(Σ scale·dy·x)/dim·inv³ per row.
struct RmsNormBwdRow {
  const float *x, *scale, *inv_rms, *dy;
  float* dx;
  int64_t dim;
  bool accumulate;
  __device__ void operator()(int64_t r, int lane) const {
    const float *xr = x + r * dim, *dyr = dy + r * dim;
    float* dxr = dx + r * dim;
    const float inv = inv_rms[r];
    float m = 0.f;
    for (int64_t c = lane; c < dim; c += 32) m += scale[c] * dyr[c] * xr[c];
    m = warp_sum(m);
    const float k = m / float(dim) * inv * inv * inv;
    for (int64_t c = lane; c < dim; c += 32) {
      const float g = inv * scale[c] * dyr[c] - xr[c] * k;
      dxr[c] = accumulate ? dxr[c] + g : g;
    }
  }
};

// dscale[c] += Σ_r dy[r, c]·x[r, c]·inv_rms[r], rows in order.
struct RmsNormScaleGrad {
  const float *x, *inv_rms, *dy;
  float* dscale;
  int64_t rows, dim;
  __device__ void operator()(int64_t c) const {
    float acc = dscale[c];
    for (int64_t r = 0; r < rows; ++r) acc += dy[r * dim + c] * x[r * dim + c] * inv_rms[r];
    dscale[c] = acc;
  }
};

void rmsnorm_fwd(const RmsNormFwd& p) {
  per_warp("harness_rmsnorm_fwd", p.rows, RmsNormRow{p.x, p.scale, p.y, p.inv_rms, p.dim});
}

void rmsnorm_bwd(const RmsNormBwd& p) {
  per_warp("harness_rmsnorm_bwd", p.rows,
           RmsNormBwdRow{p.x, p.scale, p.inv_rms, p.dy, p.dx, p.dim, p.accumulate_dx});
  for_each("harness_rmsnorm_dscale", p.dim,
           RmsNormScaleGrad{p.x, p.inv_rms, p.dy, p.dscale, p.rows, p.dim});
}

// ---- linear ----

struct BroadcastRows {
  const float* bias;
  float* y;
  int64_t cols;
  __device__ void operator()(int64_t i) const { y[i] = bias[i % cols]; }
};

// db[c] += Σ_r dy[r, c], rows in order.
struct ColumnSumsInto {
  const float* a;
  float* out;
  int64_t rows, cols;
  __device__ void operator()(int64_t c) const {
    float acc = out[c];
    for (int64_t r = 0; r < rows; ++r) acc += a[r * cols + c];
    out[c] = acc;
  }
};

// C (m, n) = op(A)·op(B) + beta·C, row-major; cuBLAS takes 32-bit sizes.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const std::string why = blas::gemm_supports({m, n, k, lda, ldb, ldc});
  MEMLAYERS_CHECK(why.empty(), "harness linear: {}: accepted are sizes below 2^31", why);
  blas::gemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc, device::kStream);
}

void linear_fwd(const LinearFwd& p) {
  const int64_t O = p.out;
  if (p.b) for_each("harness_linear_bias", p.rows * O, BroadcastRows{p.b, p.y, O});
  ::memlayers::harness::detail::linear_fwd_gemm(p, gemm);
}

void linear_bwd(const LinearBwd& p) {
  const int64_t O = p.out;
  ::memlayers::harness::detail::linear_bwd_gemms(p, gemm);
  if (p.db) for_each("harness_linear_db", O, ColumnSumsInto{p.dy, p.db, p.rows, O});
}

// ---- attention ----

// Where (sequence, head, position) n = (b·heads + h)·seq + i reads and writes: its lse index is n.
struct HeadRow {
  int64_t i, base, col;  // position in the sequence, the sequence's first row, the head's column
  __device__ HeadRow(int64_t n, int64_t seq, int64_t heads, int64_t head_dim) {
    i = n % seq;
    const int64_t bh = n / seq;
    base = (bh / heads) * seq;
    col = (bh % heads) * head_dim;
  }
};

// The dot of two rows of head_dim over the warp (lane c, c + 32, ...; then the butterfly).
__device__ __forceinline__ float warp_dot(const float* a, const float* b, int64_t n, int lane) {
  float s = 0.f;
  for (int64_t c = lane; c < n; c += 32) s += a[c] * b[c];
  return warp_sum(s);
}

struct AttentionFwdRow {
  const float *q, *k, *v;
  float *out, *lse;
  int64_t ld, seq, heads, head_dim, d;
  float scale;
  __device__ void operator()(int64_t n, int lane) const {
    const HeadRow at(n, seq, heads, head_dim);
    const float* qi = q + (at.base + at.i) * ld + at.col;
    float* oi = out + (at.base + at.i) * d + at.col;
    float m = -INFINITY, l = 0.f;
    for (int64_t c0 = 0; c0 < head_dim; c0 += kPassCols) {
      float acc[kLaneCols] = {};
      m = -INFINITY, l = 0.f;
      for (int64_t j = 0; j <= at.i; ++j) {
        const int64_t row = (at.base + j) * ld + at.col;
        const float s = warp_dot(qi, k + row, head_dim, lane) * scale;
        const float m_new = fmaxf(m, s);
        const float rescale = expf(m - m_new);  // 0 at j = 0 (m = −∞)
        const float pj = expf(s - m_new);
        l = l * rescale + pj;
        const float* vj = v + row;
#pragma unroll
        for (int t = 0; t < kLaneCols; ++t) {
          const int64_t c = c0 + lane + 32 * t;
          acc[t] = acc[t] * rescale + (c < head_dim ? pj * vj[c] : 0.f);
        }
        m = m_new;
      }
      const float inv = 1.0f / l;
#pragma unroll
      for (int t = 0; t < kLaneCols; ++t) {
        const int64_t c = c0 + lane + 32 * t;
        if (c < head_dim) oi[c] = acc[t] * inv;
      }
    }
    if (lse && lane == 0) lse[n] = m + logf(l);
  }
};

// dq_i = scale·Σ_{j≤i} dS_ij·k_j with dS_ij = p_ij·(dout_i·v_j − D_i), D_i = dout_i·out_i (saved
// in dsum for the key-row kernel).
struct AttentionBwdQuery {
  const float *q, *k, *v, *out, *lse, *dout;
  float *dq, *dsum;
  int64_t ld, seq, heads, head_dim, d;
  float scale;
  __device__ void operator()(int64_t n, int lane) const {
    const HeadRow at(n, seq, heads, head_dim);
    const float* qi = q + (at.base + at.i) * ld + at.col;
    const float* doi = dout + (at.base + at.i) * d + at.col;
    float* dqi = dq + (at.base + at.i) * ld + at.col;
    const float L = lse[n];
    const float D = warp_dot(doi, out + (at.base + at.i) * d + at.col, head_dim, lane);
    if (lane == 0) dsum[n] = D;
    for (int64_t c0 = 0; c0 < head_dim; c0 += kPassCols) {
      float acc[kLaneCols] = {};
      for (int64_t j = 0; j <= at.i; ++j) {
        const int64_t row = (at.base + j) * ld + at.col;
        const float pij = expf(warp_dot(qi, k + row, head_dim, lane) * scale - L);
        const float dS = pij * (warp_dot(doi, v + row, head_dim, lane) - D) * scale;
        const float* kj = k + row;
#pragma unroll
        for (int t = 0; t < kLaneCols; ++t) {
          const int64_t c = c0 + lane + 32 * t;
          if (c < head_dim) acc[t] += dS * kj[c];
        }
      }
#pragma unroll
      for (int t = 0; t < kLaneCols; ++t) {
        const int64_t c = c0 + lane + 32 * t;
        if (c < head_dim) dqi[c] = acc[t];
      }
    }
  }
};

// dk_j = scale·Σ_{i≥j} dS_ij·q_i and dv_j = Σ_{i≥j} p_ij·dout_i, for key row n.
struct AttentionBwdKey {
  const float *q, *k, *v, *lse, *dout, *dsum;
  float *dk, *dv;
  int64_t ld, seq, heads, head_dim, d;
  float scale;
  __device__ void operator()(int64_t n, int lane) const {
    const HeadRow at(n, seq, heads, head_dim);
    const int64_t row_j = (at.base + at.i) * ld + at.col;
    const float *kj = k + row_j, *vj = v + row_j;
    const int64_t first = n - at.i;  // lse index of the sequence's position 0 for this head
    for (int64_t c0 = 0; c0 < head_dim; c0 += kPassCols) {
      float acc_k[kLaneCols] = {}, acc_v[kLaneCols] = {};
      for (int64_t i = at.i; i < seq; ++i) {
        const float* qi = q + (at.base + i) * ld + at.col;
        const float* doi = dout + (at.base + i) * d + at.col;
        const float pij = expf(warp_dot(qi, kj, head_dim, lane) * scale - lse[first + i]);
        const float dS = pij * (warp_dot(doi, vj, head_dim, lane) - dsum[first + i]) * scale;
#pragma unroll
        for (int t = 0; t < kLaneCols; ++t) {
          const int64_t c = c0 + lane + 32 * t;
          if (c < head_dim) {
            acc_k[t] += dS * qi[c];
            acc_v[t] += pij * doi[c];
          }
        }
      }
#pragma unroll
      for (int t = 0; t < kLaneCols; ++t) {
        const int64_t c = c0 + lane + 32 * t;
        if (c < head_dim) dk[row_j + c] = acc_k[t], dv[row_j + c] = acc_v[t];
      }
    }
  }
};

void attention_fwd(const AttentionFwd& p) {
  const int64_t dh = p.d / p.heads;
  per_warp("harness_attention_fwd", p.batch * p.heads * p.seq,
           AttentionFwdRow{p.q, p.k, p.v, p.out, p.lse, p.ld_qkv, p.seq, p.heads, dh, p.d,
                           1.0f / std::sqrt(float(dh))});
}

void attention_bwd(const AttentionBwd& p) {
  const int64_t dh = p.d / p.heads, n = p.batch * p.heads * p.seq;
  const float scale = 1.0f / std::sqrt(float(dh));
  dev::Buffer<float> dsum(static_cast<std::size_t>(n), device::kStream);
  per_warp("harness_attention_bwd_dq", n,
           AttentionBwdQuery{p.q, p.k, p.v, p.out, p.lse, p.dout, p.dq, dsum.get(), p.ld_qkv, p.seq,
                             p.heads, dh, p.d, scale});
  per_warp("harness_attention_bwd_dkv", n,
           AttentionBwdKey{p.q, p.k, p.v, p.lse, p.dout, dsum.get(), p.dk, p.dv, p.ld_qkv, p.seq,
                           p.heads, dh, p.d, scale});
}

// ---- SwiGLU, add ----

struct SwigluFwdElem {
  const float *a, *b;
  float* out;
  int64_t ld, hidden;
  __device__ void operator()(int64_t i) const {
    const int64_t r = i / hidden, o = r * ld + (i - r * hidden);
    out[i] = a[o] * sigmoid(a[o]) * b[o];
  }
};

struct SwigluBwdElem {
  const float *a, *b, *dout;
  float *da, *db;
  int64_t ld, hidden;
  __device__ void operator()(int64_t i) const {
    const int64_t r = i / hidden, o = r * ld + (i - r * hidden);
    const float av = a[o], bv = b[o], s = sigmoid(av);
    da[o] = dout[i] * bv * s * (1.0f + av * (1.0f - s));
    db[o] = dout[i] * av * s;
  }
};

struct AddElem {
  const float *x, *y;
  float* out;
  __device__ void operator()(int64_t i) const { out[i] = x[i] + y[i]; }
};

void swiglu_fwd(const SwigluFwd& p) {
  for_each("harness_swiglu_fwd", p.rows * p.hidden,
           SwigluFwdElem{p.a, p.b, p.out, p.ld_ab, p.hidden});
}

void swiglu_bwd(const SwigluBwd& p) {
  for_each("harness_swiglu_bwd", p.rows * p.hidden,
           SwigluBwdElem{p.a, p.b, p.dout, p.da, p.db, p.ld_ab, p.hidden});
}

void add(const Add& p) { for_each("harness_add", p.n, AddElem{p.x, p.y, p.out}); }

// ---- cross-entropy ----

__device__ __forceinline__ float warp_logsumexp(const float* row, int64_t vocab, int lane) {
  float mx = -INFINITY;
  for (int64_t c = lane; c < vocab; c += 32) mx = fmaxf(mx, row[c]);
  mx = warp_max(mx);
  float s = 0.f;
  for (int64_t c = lane; c < vocab; c += 32) s += expf(row[c] - mx);
  return mx + logf(warp_sum(s));
}

// row_loss[r] = w_r·(logsumexp(logits[r]) − logits[r, t_r]), 0 for an uncounted row.
struct CrossEntropyRow {
  const float* logits;
  const int32_t* targets;
  const float* weights;
  double* row_loss;
  int64_t vocab;
  __device__ void operator()(int64_t r, int lane) const {
    const float w = weights ? weights[r] : 1.0f;
    if (w == 0.f) {
      if (lane == 0) row_loss[r] = 0.0;
      return;
    }
    const float* row = logits + r * vocab;
    const float lse = warp_logsumexp(row, vocab, lane);
    if (lane == 0) row_loss[r] = double(w) * double(lse - row[targets[r]]);
  }
};

// *loss = Σ row_loss / total, by one block: each thread sums rows t, t + kThreads, ... in order,
// then the block's fixed tree.
__global__ void __launch_bounds__(device::kThreads)
    cross_entropy_sum_kernel(const double* row_loss, int64_t rows, double total, float* loss) {
  __shared__ double sh[device::kThreads];
  double acc = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += device::kThreads) acc += row_loss[r];
  acc = device::block_sum(acc, sh);
  if (threadIdx.x == 0) *loss = static_cast<float>(acc / total);
}

// dlogits[r] = w_r·(softmax(logits[r]) − onehot(t_r)), w_r = dloss·weight_r / Σ weights.
struct CrossEntropyBwdRow {
  const float* logits;
  const int32_t* targets;
  const float* weights;
  float* dlogits;
  float dloss;
  double total;
  int64_t vocab;
  __device__ void operator()(int64_t r, int lane) const {
    const float w = static_cast<float>((weights ? weights[r] : 1.0f) * dloss / total);
    float* d = dlogits + r * vocab;
    if (w == 0.f) {
      for (int64_t c = lane; c < vocab; c += 32) d[c] = 0.f;
      return;
    }
    const float* row = logits + r * vocab;
    const float lse = warp_logsumexp(row, vocab, lane);
    const int64_t t = targets[r];
    for (int64_t c = lane; c < vocab; c += 32) {
      const float g = w * expf(row[c] - lse);
      d[c] = c == t ? g - w : g;
    }
  }
};

// Σ weights after the host backends' checks of the targets and weights, on a host copy.
double checked_total(const int32_t* targets, const float* weights, int64_t rows, int64_t vocab) {
  const std::vector<int32_t> t = device::to_host(targets, rows);
  const std::vector<float> w = weights ? device::to_host(weights, rows) : std::vector<float>();
  return detail::check_targets(t.data(), weights ? w.data() : nullptr, rows, vocab);
}

void cross_entropy_fwd(const CrossEntropyFwd& p) {
  const double total = checked_total(p.targets, p.weights, p.rows, p.vocab);
  dev::Buffer<double> row_loss(static_cast<std::size_t>(p.rows), device::kStream);
  per_warp("harness_cross_entropy_fwd", p.rows,
           CrossEntropyRow{p.logits, p.targets, p.weights, row_loss.get(), p.vocab});
  launch_kernel("harness_cross_entropy_sum", cross_entropy_sum_kernel, dim3(1),
                dim3(device::kThreads), 0, device::kStream, row_loss.get(), p.rows, total, p.loss);
}

void cross_entropy_bwd(const CrossEntropyBwd& p) {
  const double total = checked_total(p.targets, p.weights, p.rows, p.vocab);
  per_warp("harness_cross_entropy_bwd", p.rows,
           CrossEntropyBwdRow{p.logits, p.targets, p.weights, p.dlogits, p.dloss, total, p.vocab});
}

Ops make_ops() {
  Ops t;
  t.backend = MEMLAYERS_KERNEL_BACKEND;
  t.memory = &device::memory();
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

}  // namespace
}  // namespace MEMLAYERS_TARGET_NS

namespace detail {
#if defined(__CUDACC__)
Ops cuda_ops() { return make_ops(); }
#else
Ops simt_ops() { return make_ops(); }
#endif
}  // namespace detail

}  // namespace memlayers::harness
