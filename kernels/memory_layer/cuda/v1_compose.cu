// v1_compose — the memory layer's forward and backward on the GPU, composed from the suite's
// parts: the GPU twin of cpu/v1_compose.cpp (same stages, same math, same Saved/Grads contract).
//  - the GEMMs (query projection, memory+'s W1 and W2, the scalar gate's x·wg, and their data and
//    weight gradients) by cuBLAS through common/blas.cuh (a plain kernel of our own under simt),
//    biases broadcast into the output first (beta = 1);
//  - the search and its backward by the registered pk_topk variants of this backend, looked up
//    at launch: pk_topk_fwd "v3_fused", pk_topk_bwd "v1_bwd_sorted";
//  - the bag by the registered EmbeddingBag variants: embbag_fwd "v4_persistent_stream" (else
//    "v3_rows_in_flight" for ragged dims or unaligned rows), embbag_bwd "v3_bwd_sorted_fused"
//    (deterministic: sorted runs, no atomics). PEER reuses the bag three ways: U[I]·x is the bag
//    backward's dw with dy = x and values = U; dU is the bag backward's dV with weights dz and
//    dy = x; Σ dz·U[I] (the experts' share of dx) is the bag forward over U with weights dz;
//    a part falls back to another deterministic variant of the same backend that supports the
//    input, or fails naming why;
//  - small kernels of our own for the rest: bias broadcast, bias gradients (column sums, one
//    thread per column in row order: deterministic), the fp32 softmax per (token, head) and its
//    backward ds = w ⊙ (dw − Σ w·dw), memory+'s m = y ⊙ silu(h) and its backward, PEER's GELU
//    coefficients and backward, the scalar gate (a warp per token for its backward's row dot).
// Bottleneck: none targeted yet; it is the baseline the fused variants will be measured against.
// Every stage round-trips its intermediates (scores, weights, bag sums, m, dw) through global
// memory and the elementwise kernels are separate launches; by the op's declared flops and bytes
// the GEMMs, the search and the bag's gathered rows should dominate at the paper's shape.
// Measured: not yet on a GPU (simt-correct).
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "common/blas.cuh"
#include "common/cuda.cuh"
#include "common/for_each.cuh"
#include "common/stages.h"
#include "embbag/embbag.h"
#include "memory_layer/memory_layer.h"
#include "memory_layer/parts.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::memory_layer {
namespace {

constexpr int kThreads = 256;

// ---- which parts run ----

// The part that runs p here (parts::find_part on this backend); null, with `why`, when none does.
template <class Op>
const Variant<typename Op::Params>* find_part(const typename Op::Params& p, const char* preferred,
                                              std::string& why) {
  return parts::find_part<Op>(MEMLAYERS_KERNEL_BACKEND, p, preferred, why);
}

template <class Op>
void run_part(const typename Op::Params& p, const char* preferred, Stream stream) {
  std::string why;
  const auto* v = find_part<Op>(p, preferred, why);
  if (!v) fail("memory_layer v1_compose: {}", why);
  Registry<Op>::run(*v, p, stream);
}

// The value read of memory and memory+: the caller's bag override (memory_layer.h) when it gave
// one, else the registered part. The override runs its work on the default stream, ordered after
// `stream`'s by CUDA's legacy default-stream rule (the harness passes the default stream itself).
template <class Op>
void run_bag(BagOverride* bag, const typename Op::Params& p, const char* preferred, Stream stream) {
  if (!bag) return run_part<Op>(p, preferred, stream);
  if constexpr (std::is_same_v<Op, embbag::Fwd>)
    bag->forward(p);
  else
    bag->backward(p);
}

constexpr const char* kSearchFwd = "v3_fused";
constexpr const char* kSearchBwd = "v1_bwd_sorted";
constexpr const char* kBagFwd = "v4_persistent_stream";
constexpr const char* kBagBwd = "v3_bwd_sorted_fused";

using parts::any_output;
using parts::bag_bwd;
using parts::bag_fwd;
using parts::search_bwd;
using parts::search_fwd;

// ---- scratch ----

// The caller's buffer when it keeps one (a Saved field), else scratch for this call.
template <class T>
class KeptOrScratch {
 public:
  KeptOrScratch(T* kept, int64_t n, Stream stream)
      : scratch_(kept ? 0 : static_cast<std::size_t>(n), stream),
        p_(kept ? kept : scratch_.get()) {}
  T* get() const { return p_; }

 private:
  dev::Buffer<T> scratch_;
  T* p_;
};

template <class T>
dev::Buffer<T> scratch_if(bool wanted, int64_t n, Stream stream) {
  return dev::Buffer<T>(wanted ? static_cast<std::size_t>(n) : 0, stream);
}

// ---- device math (the cpu composition's formulas, fp32) ----

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
__device__ __forceinline__ float silu(float z) { return z * sigmoid(z); }
__device__ __forceinline__ float silu_grad(float z) {
  const float s = sigmoid(z);
  return s * (1.0f + z * (1.0f - s));
}
__device__ __forceinline__ float normal_cdf(float z) {
  return 0.5f * erfcf(-z * 0.70710678118654752f);  // 1/√2
}
__device__ __forceinline__ float gelu(float z) { return z * normal_cdf(z); }
__device__ __forceinline__ float gelu_grad(float z) {
  return normal_cdf(z) + z * expf(-0.5f * z * z) * 0.39894228040143268f;  // 1/√(2π)
}

// ---- elementwise kernels: a functor applied to every index (common/for_each.cuh) ----

// Every row of the (rows, cols) c = bias; i runs over all rows·cols elements.
struct BroadcastRows {
  float* c;
  const float* bias;
  int64_t cols;
  __device__ void operator()(int64_t i) const { c[i] = bias[i % cols]; }
};

// out[j] = Σ_b a[b, j], summed in row order by one thread per column: deterministic.
struct ColumnSums {
  const float* a;
  float* out;
  int64_t rows, cols;
  __device__ void operator()(int64_t j) const {
    float s = 0.f;
    for (int64_t b = 0; b < rows; ++b) s += a[b * cols + j];
    out[j] = s;
  }
};

// w = softmax(s) over each (token, head) row of k scores, in fp32.
struct Softmax {
  const float* s;
  float* w;
  int64_t k;
  __device__ void operator()(int64_t r) const {
    const float* sr = s + r * k;
    float* wr = w + r * k;
    float mx = sr[0];
    for (int64_t j = 1; j < k; ++j) mx = fmaxf(mx, sr[j]);
    float sum = 0.f;
    for (int64_t j = 0; j < k; ++j) sum += wr[j] = expf(sr[j] - mx);
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < k; ++j) wr[j] *= inv;
  }
};

// In place over a row of k: g ← w ⊙ (g − Σ w·g).
struct SoftmaxBwd {
  const float* w;
  float* g;
  int64_t k;
  __device__ void operator()(int64_t r) const {
    const float* wr = w + r * k;
    float* gr = g + r * k;
    float sum = 0.f;
    for (int64_t j = 0; j < k; ++j) sum += wr[j] * gr[j];
    for (int64_t j = 0; j < k; ++j) gr[j] = wr[j] * (gr[j] - sum);
  }
};

// memory+: m = y ⊙ silu(h).
struct SiluGate {
  const float *y, *h;
  float* m;
  __device__ void operator()(int64_t i) const { m[i] = y[i] * silu(h[i]); }
};

// memory+ backward from u = dm: dy = u ⊙ silu(h), dh = u ⊙ y ⊙ silu'(h).
struct SiluGateBwd {
  const float *u, *y, *h;
  float *dy, *dh;
  __device__ void operator()(int64_t i) const {
    const float z = h[i];
    dy[i] = u[i] * silu(z);
    dh[i] = u[i] * y[i] * silu_grad(z);
  }
};

// PEER: a = gelu(z) (kept when a is set), coef = w ⊙ a.
struct PeerCoef {
  const float *w, *z;
  float *a, *coef;
  __device__ void operator()(int64_t j) const {
    const float g = gelu(z[j]);
    if (a) a[j] = g;
    coef[j] = w[j] * g;
  }
};

// PEER backward from dc = d(coef): dw = a ⊙ dc, dz = w ⊙ dc ⊙ gelu'(z) (each when wanted).
struct PeerBwd {
  const float *w, *z, *a, *dc;
  float *dw, *dz;
  __device__ void operator()(int64_t j) const {
    if (dw) dw[j] = a[j] * dc[j];
    if (dz) dz[j] = w[j] * dc[j] * gelu_grad(z[j]);
  }
};

// The scalar gate: out = pre · σ(g) per token of width d.
struct Gate {
  const float *pre, *g;
  float* out;
  int64_t d;
  __device__ void operator()(int64_t i) const { out[i] = pre[i] * sigmoid(g[i / d]); }
};

struct AddTo {
  float* dst;
  const float* src;
  __device__ void operator()(int64_t i) const { dst[i] += src[i]; }
};

// ---- the scalar gate's backward: a warp per token ----
// dpre = dout·σ(g); dg = σ'(g)·(dout·pre). memory+ does not keep pre = m·W2 + b2, so there
// dout·pre = m·u + dout·b2 with u = dout·W2ᵀ (which dm needs anyway): the warp also writes
// m = y ⊙ silu(h) and scales u by σ(g) into dm. The row dot is summed per lane in column order,
// then by a fixed shuffle tree: deterministic.
struct GateBwdArgs {
  const float *dout, *gate, *pre;  // pre: memory, peer (null for memory+)
  const float *y, *hidden, *b2;    // memory+
  float *u, *m;                    // memory+: in u = dout·W2ᵀ, out u = dm; out m
  float *dpre, *dg;
  int64_t batch, d, v;
};

__global__ void __launch_bounds__(kThreads) gate_bwd_kernel(GateBwdArgs a) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; b < a.batch;
       b += static_cast<int64_t>(gridDim.x) * kWarps) {
    const float sg = sigmoid(a.gate[b]);
    const float* dout = a.dout + b * a.d;
    float dot = 0.f;
    if (a.pre) {
      for (int64_t e = lane; e < a.d; e += 32) dot += dout[e] * a.pre[b * a.d + e];
    } else {
      for (int64_t e = lane; e < a.v; e += 32) {
        const int64_t i = b * a.v + e;
        const float m = a.y[i] * silu(a.hidden[i]);
        a.m[i] = m;
        dot += m * a.u[i];
        a.u[i] *= sg;
      }
      for (int64_t e = lane; e < a.d; e += 32) dot += dout[e] * a.b2[e];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    if (lane == 0) a.dg[b] = sg * (1.0f - sg) * dot;
    for (int64_t e = lane; e < a.d; e += 32) a.dpre[b * a.d + e] = dout[e] * sg;
  }
}

// ---- GEMMs ----

// C (m, n) = op(A)·op(B) + beta·C, row-major, dense leading dimensions.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, const float* b,
          float beta, float* c, Stream stream) {
  blas::gemm(ta, tb, m, n, k, 1.0f, a, ta ? m : k, b, tb ? k : n, beta, c, n, stream);
}

// c (rows, cols) = bias broadcast + x (rows, inner)·w (inner, cols).
void affine(const float* x, const float* w, const float* bias, float* c, int64_t rows,
            int64_t inner, int64_t cols, Stream stream) {
  for_each<kThreads>("memory_layer_broadcast_rows", rows * cols, BroadcastRows{c, bias, cols},
                     stream);
  gemm(false, false, rows, cols, inner, x, w, 1.0f, c, stream);
}

void column_sums(const float* a, int64_t rows, int64_t cols, float* out, Stream stream) {
  for_each<kThreads>("memory_layer_column_sums", cols, ColumnSums{a, out, rows, cols}, stream);
}

// ---- forward ----

void forward(const FwdParams& p, Stream stream) {
  const Config& c = p.config;
  const Weights& W = p.weights;
  const Saved& s = p.saved;
  const int64_t B = p.batch, d = c.d_model, hn = c.heads * c.k_dim, hk = c.heads * c.k,
                v = c.value_dim;
  KeptOrScratch<float> q(s.q, B * hn, stream), scores(s.scores, B * hk, stream),
      w(s.weights, B * hk, stream);
  KeptOrScratch<int64_t> idx(s.indices, B * hk, stream);

  StageSequence stage(kStageOp, stream);
  stage.to("projection");  // q = x·Wq + bq
  affine(p.x, W.wq, W.bq, q.get(), B, d, hn, stream);

  stage.to("search");
  run_part<pk_topk::Fwd>(search_fwd(c, W, q.get(), scores.get(), idx.get(), B), kSearchFwd, stream);

  stage.to("softmax");
  for_each<kThreads>("memory_layer_softmax", B * c.heads, Softmax{scores.get(), w.get(), c.k},
                     stream);

  // The output before the gate: straight into out without a gate, unless y is kept.
  const bool pre_is_y = c.kind != Kind::memory_plus && s.y;
  dev::Buffer<float> pre_(!pre_is_y && c.scalar_gate ? static_cast<std::size_t>(B * d) : 0, stream);
  float* pre = pre_is_y ? s.y : c.scalar_gate ? pre_.get() : p.out;

  stage.to("bag");
  if (c.kind == Kind::memory) {
    run_bag<embbag::Fwd>(p.bag, bag_fwd(c, W.values, d, idx.get(), w.get(), pre, B), kBagFwd,
                         stream);
  } else if (c.kind == Kind::memory_plus) {
    KeptOrScratch<float> y(s.y, B * v, stream), hid(s.hidden, B * v, stream);
    dev::Buffer<float> m(static_cast<std::size_t>(B * v), stream);
    run_bag<embbag::Fwd>(p.bag, bag_fwd(c, W.values, v, idx.get(), w.get(), y.get(), B), kBagFwd,
                         stream);
    stage.to("gating");
    affine(p.x, W.w1, W.b1, hid.get(), B, d, v, stream);
    for_each<kThreads>("memory_layer_silu_gate", B * v, SiluGate{y.get(), hid.get(), m.get()},
                       stream);
    affine(m.get(), W.w2, W.b2, pre, B, v, d, stream);
  } else {  // peer
    KeptOrScratch<float> z(s.peer_pre, B * hk, stream);
    dev::Buffer<float> coef(static_cast<std::size_t>(B * hk), stream);
    embbag::BwdParams dots = bag_bwd(c, W.down, d, idx.get(), w.get(), p.x, B);
    dots.grad_weights = z.get();  // U[I]·x
    run_part<embbag::Bwd>(dots, kBagBwd, stream);
    stage.to("gating");
    for_each<kThreads>("memory_layer_peer_coef", B * hk,
                       PeerCoef{w.get(), z.get(), nullptr, coef.get()}, stream);
    stage.to("bag");
    run_part<embbag::Fwd>(bag_fwd(c, W.values, d, idx.get(), coef.get(), pre, B), kBagFwd, stream);
  }

  if (c.scalar_gate) {
    stage.to("gating");
    KeptOrScratch<float> g(s.gate, B, stream);
    gemm(false, false, B, 1, d, p.x, W.wg, 0.0f, g.get(), stream);  // x·wg
    for_each<kThreads>("memory_layer_gate", B * d, Gate{pre, g.get(), p.out, d}, stream);
  } else if (pre != p.out) {
    dev::copy(p.out, pre, static_cast<std::size_t>(B * d) * sizeof(float), stream);
  }
  stage.done();
}

// ---- backward ----

void backward(const BwdParams& p, Stream stream) {
  const Config& c = p.config;
  const Weights& W = p.weights;
  const Saved& s = p.saved;
  const Grads& G = p.grads;
  const int64_t B = p.batch, d = c.d_model, hn = c.heads * c.k_dim, hk = c.heads * c.k,
                v = c.value_dim;
  const bool need_dq = G.x || G.wq || G.bq, need_ds = need_dq || G.keys1 || G.keys2;
  const bool plus = c.kind == Kind::memory_plus;
  StageSequence stage(kStageOp, stream);
  stage.to("gating_bwd");
  if (G.x) dev::fill_bytes(G.x, 0, static_cast<std::size_t>(B * d) * sizeof(float), stream);

  // memory+: u = dpre·W2ᵀ (becoming dm) and m = y ⊙ silu(h), both (B, v).
  dev::Buffer<float> u = scratch_if<float>(plus, B * v, stream),
                     m = scratch_if<float>(plus, B * v, stream);

  // ---- the gate: dpre = dout·σ(g), dg = σ'(g)·(dout·pre) ----
  dev::Buffer<float> dpre_ = scratch_if<float>(c.scalar_gate, B * d, stream),
                     dg = scratch_if<float>(c.scalar_gate, B, stream);
  const float* dpre = p.grad_out;
  if (c.scalar_gate) {
    if (plus) gemm(false, true, B, v, d, p.grad_out, W.w2, 0.0f, u.get(), stream);
    GateBwdArgs a{p.grad_out, s.gate,  plus ? nullptr : s.y, s.y,      s.hidden, W.b2,
                  u.get(),    m.get(), dpre_.get(),          dg.get(), B,        d,
                  v};
    constexpr int kWarps = kThreads / 32;
    launch_kernel("memory_layer_gate_bwd", gate_bwd_kernel,
                  dim3(grid_cap(ceil_div(B, int64_t{kWarps}))), dim3(kThreads), 0, stream, a);
    dpre = dpre_.get();
    if (G.wg) gemm(true, false, d, 1, B, p.x, dg.get(), 0.0f, G.wg, stream);  // xᵀ·dg
    if (G.x) gemm(false, false, B, d, 1, dg.get(), W.wg, 1.0f, G.x, stream);  // dg ⊗ wg
  }

  // ---- the value read: dw (to the softmax), dV, and the gating's own gradients ----
  dev::Buffer<float> dw = scratch_if<float>(need_ds, B * hk, stream);
  if (c.kind == Kind::peer) {
    const bool need_dz = G.x || G.down_dense || G.down_rows;
    dev::Buffer<float> a(static_cast<std::size_t>(B * hk), stream),
        coef(static_cast<std::size_t>(B * hk), stream),
        dc = scratch_if<float>(need_ds || need_dz, B * hk, stream),
        dz = scratch_if<float>(need_dz, B * hk, stream);
    for_each<kThreads>("memory_layer_peer_coef", B * hk,
                       PeerCoef{s.weights, s.peer_pre, a.get(), coef.get()}, stream);
    embbag::BwdParams up = bag_bwd(c, W.values, d, s.indices, coef.get(), dpre, B);
    up.grad_weights = dc.get();
    up.grad_values_dense = G.values_dense;
    up.unique_rows = G.value_rows, up.grad_values_compact = G.values_compact;
    up.num_unique = G.num_value_rows;
    stage.to("bag_bwd");
    if (any_output(up)) run_part<embbag::Bwd>(up, kBagBwd, stream);
    stage.to("gating_bwd");
    if (need_ds || need_dz)
      for_each<kThreads>("memory_layer_peer_bwd", B * hk,
                         PeerBwd{s.weights, s.peer_pre, a.get(), dc.get(), dw.get(), dz.get()},
                         stream);
    stage.to("bag_bwd");
    if (G.down_dense || G.down_rows) {
      embbag::BwdParams down = bag_bwd(c, W.down, d, s.indices, dz.get(), p.x, B);
      down.grad_values_dense = G.down_dense;
      down.unique_rows = G.down_rows, down.grad_values_compact = G.down_compact;
      down.num_unique = G.num_down_rows;
      run_part<embbag::Bwd>(down, kBagBwd, stream);
    }
    if (G.x) {  // Σ dz·U[I], the experts' share of dx
      dev::Buffer<float> ux(static_cast<std::size_t>(B * d), stream);
      run_part<embbag::Fwd>(bag_fwd(c, W.down, d, s.indices, dz.get(), ux.get(), B), kBagFwd,
                            stream);
      for_each<kThreads>("memory_layer_add", B * d, AddTo{G.x, ux.get()}, stream);
    }
  } else {
    const float* dy = dpre;
    dev::Buffer<float> dy_ = scratch_if<float>(plus, B * v, stream),
                       dh = scratch_if<float>(plus, B * v, stream);
    if (plus) {
      // dm = dpre·W2ᵀ (already in u with the gate), dy = dm ⊙ silu(h), dh = dm ⊙ y ⊙ silu'(h).
      if (!c.scalar_gate) {
        gemm(false, true, B, v, d, dpre, W.w2, 0.0f, u.get(), stream);
        for_each<kThreads>("memory_layer_silu_gate", B * v, SiluGate{s.y, s.hidden, m.get()},
                           stream);
      }
      if (G.w2) gemm(true, false, v, d, B, m.get(), dpre, 0.0f, G.w2, stream);
      if (G.b2) column_sums(dpre, B, d, G.b2, stream);
      for_each<kThreads>("memory_layer_silu_gate_bwd", B * v,
                         SiluGateBwd{u.get(), s.y, s.hidden, dy_.get(), dh.get()}, stream);
      dy = dy_.get();
      if (G.w1) gemm(true, false, d, v, B, p.x, dh.get(), 0.0f, G.w1, stream);
      if (G.b1) column_sums(dh.get(), B, v, G.b1, stream);
      if (G.x) gemm(false, true, B, d, v, dh.get(), W.w1, 1.0f, G.x, stream);
    }
    embbag::BwdParams bag = bag_bwd(c, W.values, c.value_width(), s.indices, s.weights, dy, B);
    bag.grad_weights = dw.get();
    bag.grad_values_dense = G.values_dense;
    bag.unique_rows = G.value_rows, bag.grad_values_compact = G.values_compact;
    bag.num_unique = G.num_value_rows;
    stage.to("bag_bwd");
    if (any_output(bag) || p.bag) run_bag<embbag::Bwd>(p.bag, bag, kBagBwd, stream);
  }
  if (!need_ds) {
    stage.done();
    return;
  }

  stage.to("softmax_bwd");  // ds = w ⊙ (dw − Σ_head w·dw), in place
  for_each<kThreads>("memory_layer_softmax_bwd", B * c.heads, SoftmaxBwd{s.weights, dw.get(), c.k},
                     stream);

  // ---- the search backward, then the projection's ----
  dev::Buffer<float> dq = scratch_if<float>(need_dq, B * hn, stream);
  pk_topk::BwdParams sp = search_bwd(c, W, s.q, s.indices, dw.get(), B);
  sp.grad_queries = dq.get();
  sp.grad_keys1.dense = G.keys1;
  sp.grad_keys2.dense = G.keys2;
  stage.to("search_bwd");
  run_part<pk_topk::Bwd>(sp, kSearchBwd, stream);
  stage.to("projection_bwd");
  if (G.wq) gemm(true, false, d, hn, B, p.x, dq.get(), 0.0f, G.wq, stream);
  if (G.bq) column_sums(dq.get(), B, hn, G.bq, stream);
  if (G.x) gemm(false, true, B, d, hn, dq.get(), W.wq, 1.0f, G.x, stream);
  stage.done();
}

// ---- what the composition takes ----

// The cpu composition's limits, then a variant of this backend for every part the layer runs.
std::string supports(const Config& c, const Weights& W, int64_t batch, bool backward) {
  const int64_t hk = c.heads * c.k, d = c.d_model, width = c.value_width();
  if (hk > embbag::kMaxK)
    return fmt::format("heads·k = {} exceeds the EmbeddingBag's bag of at most {} rows", hk,
                       embbag::kMaxK);
  if (width > embbag::kMaxDim || d > embbag::kMaxDim)
    return fmt::format("value width {} / d_model {} exceeds the EmbeddingBag's dim limit {}", width,
                       d, embbag::kMaxDim);
  if (std::string why = blas::gemm_supports({batch, d, c.heads * c.k_dim, c.value_dim});
      !why.empty())
    return why;
  std::string why;
  auto none = [&](const auto* v) { return v == nullptr; };
  if (!backward) {
    if (none(find_part<pk_topk::Fwd>(search_fwd(c, W, nullptr, nullptr, nullptr, batch), kSearchFwd,
                                     why)) ||
        none(find_part<embbag::Fwd>(bag_fwd(c, W.values, width, nullptr, nullptr, nullptr, batch),
                                    kBagFwd, why)))
      return why;
  } else {
    if (none(find_part<pk_topk::Bwd>(search_bwd(c, W, nullptr, nullptr, nullptr, batch), kSearchBwd,
                                     why)) ||
        none(find_part<embbag::Bwd>(bag_bwd(c, W.values, width, nullptr, nullptr, nullptr, batch),
                                    kBagBwd, why)))
      return why;
  }
  if (c.kind == Kind::peer &&
      (none(find_part<embbag::Bwd>(bag_bwd(c, W.down, d, nullptr, nullptr, nullptr, batch), kBagBwd,
                                   why)) ||
       (backward && none(find_part<embbag::Fwd>(
                        bag_fwd(c, W.down, d, nullptr, nullptr, nullptr, batch), kBagFwd, why)))))
    return why;
  return {};
}

// The GEMM differs by backend, so the summary does too.
#if defined(__CUDACC__)
constexpr const char* kGemms = "cuBLAS GEMMs";
#else
constexpr const char* kGemms = "own-kernel GEMMs (cuBLAS on the GPU)";
#endif

MEMLAYERS_REGISTER(
    Fwd, Variant<FwdParams>{
             "v1_compose", MEMLAYERS_KERNEL_BACKEND, forward,
             [](const FwdParams& p) { return supports(p.config, p.weights, p.batch, false); },
             std::string(kGemms) + " + registered pk_topk and EmbeddingBag kernels of the backend, "
                                   "small softmax and gating kernels",
             true});
MEMLAYERS_REGISTER(
    Bwd, Variant<BwdParams>{
             "v1_compose", MEMLAYERS_KERNEL_BACKEND, backward,
             [](const BwdParams& p) { return supports(p.config, p.weights, p.batch, true); },
             std::string(kGemms) + " + registered pk_topk and EmbeddingBag backward kernels of the "
                                   "backend, small softmax and gating kernels",
             true});

}  // namespace
}  // namespace memlayers::memory_layer
