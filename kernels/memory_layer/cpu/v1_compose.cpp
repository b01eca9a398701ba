// v1_compose — the memory layer's forward and backward on the CPU, composed from the suite's
// parts (the first optimised backend of the layer; the reference is fp64 loops):
//  - the GEMMs (query projection, memory+'s W1 and W2, and their data and weight gradients) by
//    OpenBLAS sgemm over the pool (common/blas.h), biases broadcast into the output first
//    (beta = 1);
//  - the search and its backward by the best registered CPU pk_topk variant, looked up at launch:
//    pk_topk_fwd "v3_amx_rescored" on a CPU with AMX where the shape is the paper's size or larger
//    (SearchPreference), else "v2_fused_pruned", else the highest-numbered deterministic cpu
//    variant that supports the input (parts::find_part), else the reference; pk_topk_bwd the
//    highest-numbered deterministic cpu variant, else the reference (v1_compose_parts() says which
//    ran);
//  - memory+'s SiLU gating by SIMD passes with a vector exp (common/silu.h); the softmax, its
//    backward, PEER's GELU and the scalar gate in plain loops; all threaded over tokens
//    (kernels/common/parallel.h);
//  - the bag by the CPU EmbeddingBag (embbag_fwd "v2_hwy_threads", embbag_bwd "v2_bwd_sorted"):
//    one bag of heads·k rows per token, weighted by the softmax; dV (dense and/or compact) comes
//    straight from the bag's backward. PEER reuses it three ways: U[I]·x is the bag backward's dw
//    with dy = x and values = U; dU is the bag backward's dV with weights dz and dy = x; Σ dz·U[I]
//    (the experts' share of dx) is the bag forward over U with weights dz.
// Bottleneck it targets: none yet, it is the composition every later variant is measured
// against; its intermediates (scores, weights, bag sums) round-trip through memory between stages.
// Measured (a scratch timing, not bench_memory_layer, which is the second half of issue 6; the
// shared 2-core VM had a load average of 60-110, so these are upper bounds): d 1024, h 4,
// n_keys 512, n 512, k 32, bf16 values, B 256 — forward 108 ms (423 us/token), backward (dx, dWq,
// dbq, dK1, dK2, compact dV) 123 ms; search by pk_topk cpu/v2_fused_pruned and cpu/v1_bwd_compose.
#include "memory_layer/cpu/v1_compose.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <numbers>
#include <string>
#include <type_traits>
#include <vector>

#include "common/blas.h"
#include "common/parallel.h"
#include "common/silu.h"
#include "common/stages.h"
#include "embbag/embbag.h"
#include "memory_layer/memory_layer.h"
#include "memory_layer/parts.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::memory_layer::cpu {

namespace {

// ---- which parts run ----

std::mutex parts_mu;
std::string fwd_parts = "forward not run yet", bwd_parts = "backward not run yet";

std::string label(const std::string& op, Backend b, const std::string& name) {
  return fmt::format("{} {}/{}", op, to_string(b), name);
}

// The variant of Op to run on p: parts::find_part on cpu (`preferred` when set and it supports
// p, else the highest-numbered deterministic cpu variant that does), else the reference. `why`
// notes a fallback.
template <class Op>
const Variant<typename Op::Params>& pick(const typename Op::Params& p, const char* preferred,
                                         std::string& why) {
  std::string none;
  if (const auto* v = parts::find_part<Op>(Backend::cpu, p, preferred, none)) {
    if (preferred && v->name != preferred)
      why = fmt::format(" ({} not registered or unsupported here)", preferred);
    return *v;
  }
  why = " (no cpu variant registered or supporting this input)";
  return Registry<Op>::find(Backend::reference, "reference");
}

// The forward search to prefer: v3's AMX tiles pay where the scoring is large (n_keys 1024,
// n 512: the layer's B-256 search stage 4.45-4.64 against v2's 5.82-6.02 ms, alternating); at
// the training harness's n_keys 128, n 16 its bf16 padding (a half width of 8 runs as 32) and
// the rescoring band make it slower (0.65 against 0.44 ms).
// Whether v3 runs here at all (a CPU with AMX) is its own supports()' to say.
const char* SearchPreference(const pk_topk::FwdParams& p) {
  constexpr const char* kAmx = "v3_amx_rescored";
  const bool large = p.n_keys >= 512 && p.k_dim >= 256;
  return large && Registry<pk_topk::Fwd>::find(Backend::cpu, kAmx).supports(p).empty()
             ? kAmx
             : "v2_fused_pruned";
}

template <class Op>
void run_part(const typename Op::Params& p, const char* preferred, std::string& parts) {
  std::string why;
  const auto& v = pick<Op>(p, preferred, why);
  parts += (parts.empty() ? "" : "; ") + label(Op::name, v.backend, v.name) + why;
  Registry<Op>::run(v, p);
}

// The value read of memory and memory+: the caller's bag override (memory_layer.h) when it gave
// one, else the registered part.
template <class Op>
void run_bag(BagOverride* bag, const typename Op::Params& p, const char* preferred,
             std::string& parts) {
  if (!bag) return run_part<Op>(p, preferred, parts);
  parts += (parts.empty() ? "" : "; ") + std::string(Op::name) + " by the caller's bag override";
  if constexpr (std::is_same_v<Op, embbag::Fwd>)
    bag->forward(p);
  else
    bag->backward(p);
}

// ---- small helpers ----

float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }
float normal_cdf(float z) { return 0.5f * std::erfc(-z * float(1 / std::numbers::sqrt2)); }
float gelu(float z) { return z * normal_cdf(z); }
float gelu_grad(float z) {
  return normal_cdf(z) + z * std::exp(-0.5f * z * z) * float(1 / std::sqrt(2 * std::numbers::pi));
}

// `saved` when the caller keeps it, else a scratch buffer of n floats.
template <class T>
T* keep_or_scratch(T* saved, std::vector<T>& scratch, int64_t n) {
  if (saved) return saved;
  scratch.resize(static_cast<std::size_t>(n));
  return scratch.data();
}

// Every row of the (rows, cols) c = bias.
void broadcast_rows(float* c, const float* bias, int64_t rows, int64_t cols) {
  parallel_rows(rows, cols, [&](int64_t b) { std::copy(bias, bias + cols, c + b * cols); });
}

// out[j] = Σ_b a[b, j] over a (rows, cols) array, threaded over column blocks.
void column_sums(const float* a, int64_t rows, int64_t cols, float* out) {
  constexpr int64_t kBlock = 256;
  parallel_for(cols, balanced_grain(cols, kBlock), [&](int64_t j0, int64_t j1) {
    std::fill(out + j0, out + j1, 0.0f);
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t j = j0; j < j1; ++j) out[j] += a[b * cols + j];
  });
}

// C (m, n) = op(A) · op(B) + beta · C, row-major.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  host_blas::gemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

using host_blas::gemv;

using parts::any_output;
using parts::bag_bwd;
using parts::bag_fwd;

// ---- forward ----

void forward(const FwdParams& p, Stream stream) {
  const Config& c = p.config;
  const Weights& W = p.weights;
  const Saved& s = p.saved;
  const int64_t B = p.batch, d = c.d_model, hn = c.heads * c.k_dim, hk = c.heads * c.k,
                v = c.value_dim;
  std::string parts;
  std::vector<float> q_, scores_, w_, y_, hid_, z_, gate_, m_, coef_;
  std::vector<int64_t> idx_;
  float* q = keep_or_scratch(s.q, q_, B * hn);
  float* scores = keep_or_scratch(s.scores, scores_, B * hk);
  int64_t* idx = keep_or_scratch(s.indices, idx_, B * hk);
  float* w = keep_or_scratch(s.weights, w_, B * hk);

  StageSequence stage(kStageOp, stream);
  stage.to("projection");  // q = x·Wq + bq
  broadcast_rows(q, W.bq, B, hn);
  gemm(false, false, B, hn, d, p.x, d, W.wq, hn, 1.0f, q, hn);

  const pk_topk::FwdParams sp = parts::search_fwd(c, W, q, scores, idx, B);
  stage.to("search");
  run_part<pk_topk::Fwd>(sp, SearchPreference(sp), parts);

  stage.to("softmax");  // per (token, head), in fp32
  parallel_rows(B * c.heads, c.k, [&](int64_t r) {
    const float* sr = scores + r * c.k;
    float* wr = w + r * c.k;
    const float mx = *std::max_element(sr, sr + c.k);
    float sum = 0;
    for (int64_t j = 0; j < c.k; ++j) sum += wr[j] = std::exp(sr[j] - mx);
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < c.k; ++j) wr[j] *= inv;
  });

  // The output before the gate: straight into out without a gate, unless y is kept.
  float* pre;
  if (c.kind == Kind::memory_plus)
    pre = c.scalar_gate ? keep_or_scratch<float>(nullptr, y_, B * d) : p.out;
  else
    pre = s.y ? s.y : (c.scalar_gate ? keep_or_scratch<float>(nullptr, y_, B * d) : p.out);

  stage.to("bag");
  if (c.kind == Kind::memory) {
    run_bag<embbag::Fwd>(p.bag, bag_fwd(c, W.values, d, idx, w, pre, B), "v2_hwy_threads", parts);
  } else if (c.kind == Kind::memory_plus) {
    std::vector<float> bag_;
    float* y = keep_or_scratch(s.y, bag_, B * v);
    float* hid = keep_or_scratch(s.hidden, hid_, B * v);
    run_bag<embbag::Fwd>(p.bag, bag_fwd(c, W.values, v, idx, w, y, B), "v2_hwy_threads", parts);
    stage.to("gating");
    broadcast_rows(hid, W.b1, B, v);
    gemm(false, false, B, v, d, p.x, d, W.w1, v, 1.0f, hid, v);
    m_.resize(static_cast<std::size_t>(B * v));
    parallel_rows(B, v, [&](int64_t b) { silu_product(y + b * v, hid + b * v, &m_[b * v], v); });
    broadcast_rows(pre, W.b2, B, d);
    gemm(false, false, B, d, v, m_.data(), v, W.w2, d, 1.0f, pre, d);
  } else {  // peer
    float* z = keep_or_scratch(s.peer_pre, z_, B * hk);
    embbag::BwdParams dots = bag_bwd(c, W.down, d, idx, w, p.x, B);
    dots.grad_weights = z;  // U[I]·x
    run_part<embbag::Bwd>(dots, "v2_bwd_sorted", parts);
    stage.to("gating");
    coef_.resize(static_cast<std::size_t>(B * hk));
    parallel_rows(B, hk, [&](int64_t b) {
      for (int64_t j = b * hk; j < (b + 1) * hk; ++j) coef_[j] = w[j] * gelu(z[j]);
    });
    stage.to("bag");
    run_part<embbag::Fwd>(bag_fwd(c, W.values, d, idx, coef_.data(), pre, B), "v2_hwy_threads",
                          parts);
  }

  if (c.scalar_gate) {
    stage.to("gating");
    float* g = keep_or_scratch(s.gate, gate_, B);
    gemv(false, B, d, p.x, W.wg, g);  // g = x·wg
    parallel_rows(B, d, [&](int64_t b) {
      const float sg = sigmoid(g[b]);
      for (int64_t e = b * d; e < (b + 1) * d; ++e) p.out[e] = pre[e] * sg;
    });
  } else if (pre != p.out) {
    std::copy(pre, pre + B * d, p.out);
  }
  stage.done();
  std::lock_guard lock(parts_mu);
  fwd_parts = "forward: " + parts;
}

// ---- backward ----

void backward(const BwdParams& p, Stream stream) {
  const Config& c = p.config;
  const Weights& W = p.weights;
  const Saved& s = p.saved;
  const Grads& G = p.grads;
  const int64_t B = p.batch, d = c.d_model, hn = c.heads * c.k_dim, hk = c.heads * c.k,
                v = c.value_dim;
  std::string parts;
  const bool need_dq = G.x || G.wq || G.bq, need_ds = need_dq || G.keys1 || G.keys2;
  StageSequence stage(kStageOp, stream);
  stage.to("gating_bwd");
  if (G.x) std::fill(G.x, G.x + B * d, 0.0f);

  // ---- the gate: dpre = dout·σ(g), dg = σ'(g)·(dout·pre) ----
  std::vector<float> dpre_, dg_, u_, m_;
  const float* dpre = p.grad_out;
  if (c.scalar_gate) {
    dpre_.resize(static_cast<std::size_t>(B * d));
    dg_.resize(static_cast<std::size_t>(B));
    if (c.kind == Kind::memory_plus) {
      // pre = m·W2 + b2 is not kept: dout·pre = m·(dout·W2ᵀ) + dout·b2, and dout·W2ᵀ is what
      // dm needs anyway (scaled by σ).
      u_.resize(static_cast<std::size_t>(B * v));
      m_.resize(static_cast<std::size_t>(B * v));
      gemm(false, true, B, v, d, p.grad_out, d, W.w2, d, 0.0f, u_.data(), v);
    }
    parallel_rows(B, d, [&](int64_t b) {
      const float sg = sigmoid(s.gate[b]);
      const float* dout = p.grad_out + b * d;
      double dot = 0;
      if (c.kind == Kind::memory_plus) {
        silu_product(s.y + b * v, s.hidden + b * v, &m_[b * v], v);
        for (int64_t e = 0; e < v; ++e) {
          const int64_t i = b * v + e;
          dot += double{m_[i]} * u_[i];
          u_[i] *= sg;  // now dm
        }
        for (int64_t e = 0; e < d; ++e) dot += double{dout[e]} * W.b2[e];
      } else {
        for (int64_t e = 0; e < d; ++e) dot += double{dout[e]} * s.y[b * d + e];
      }
      dg_[b] = sg * (1.0f - sg) * static_cast<float>(dot);
      for (int64_t e = 0; e < d; ++e) dpre_[b * d + e] = dout[e] * sg;
    });
    dpre = dpre_.data();
    if (G.wg) gemv(true, B, d, p.x, dg_.data(), G.wg);  // dwg = xᵀ·dg
    if (G.x)
      parallel_rows(B, d, [&](int64_t b) {
        for (int64_t e = 0; e < d; ++e) G.x[b * d + e] += dg_[b] * W.wg[e];
      });
  }

  // ---- the value read: dw (to the softmax), dV, and the gating's own gradients ----
  std::vector<float> dw_(need_ds ? static_cast<std::size_t>(B * hk) : 0);
  float* dw = need_ds ? dw_.data() : nullptr;
  if (c.kind == Kind::peer) {
    std::vector<float> a(static_cast<std::size_t>(B * hk)), coef(a.size()), dc(a.size()),
        dz(a.size());
    parallel_rows(B, hk, [&](int64_t b) {
      for (int64_t j = b * hk; j < (b + 1) * hk; ++j) {
        a[j] = gelu(s.peer_pre[j]);
        coef[j] = s.weights[j] * a[j];
      }
    });
    const bool need_dz = G.x || G.down_dense || G.down_rows;
    embbag::BwdParams up = bag_bwd(c, W.values, d, s.indices, coef.data(), dpre, B);
    up.grad_weights = need_ds || need_dz ? dc.data() : nullptr;
    up.grad_values_dense = G.values_dense;
    up.unique_rows = G.value_rows, up.grad_values_compact = G.values_compact;
    up.num_unique = G.num_value_rows;
    stage.to("bag_bwd");
    if (any_output(up)) run_part<embbag::Bwd>(up, "v2_bwd_sorted", parts);
    stage.to("gating_bwd");
    if (need_ds || need_dz)
      parallel_rows(B, hk, [&](int64_t b) {
        for (int64_t j = b * hk; j < (b + 1) * hk; ++j) {
          if (dw) dw[j] = a[j] * dc[j];
          dz[j] = s.weights[j] * dc[j] * gelu_grad(s.peer_pre[j]);
        }
      });
    stage.to("bag_bwd");
    if (G.down_dense || G.down_rows) {
      embbag::BwdParams down = bag_bwd(c, W.down, d, s.indices, dz.data(), p.x, B);
      down.grad_values_dense = G.down_dense;
      down.unique_rows = G.down_rows, down.grad_values_compact = G.down_compact;
      down.num_unique = G.num_down_rows;
      run_part<embbag::Bwd>(down, "v2_bwd_sorted", parts);
    }
    if (G.x) {  // Σ dz·U[I], the experts' share of dx
      std::vector<float> ux(static_cast<std::size_t>(B * d));
      run_part<embbag::Fwd>(bag_fwd(c, W.down, d, s.indices, dz.data(), ux.data(), B),
                            "v2_hwy_threads", parts);
      parallel_rows(B, d, [&](int64_t b) {
        for (int64_t e = b * d; e < (b + 1) * d; ++e) G.x[e] += ux[e];
      });
    }
  } else {
    const int64_t width = c.value_width();
    std::vector<float> dy_;
    const float* dy = dpre;
    if (c.kind == Kind::memory_plus) {
      // dm = dpre·W2ᵀ (already in u_ with the gate), dy = dm ⊙ silu(h), dh = dm ⊙ y ⊙ silu'(h).
      if (!c.scalar_gate) {
        u_.resize(static_cast<std::size_t>(B * v));
        m_.resize(static_cast<std::size_t>(B * v));
        gemm(false, true, B, v, d, dpre, d, W.w2, d, 0.0f, u_.data(), v);
        parallel_rows(
            B, v, [&](int64_t b) { silu_product(s.y + b * v, s.hidden + b * v, &m_[b * v], v); });
      }
      if (G.w2) gemm(true, false, v, d, B, m_.data(), v, dpre, d, 0.0f, G.w2, d);
      if (G.b2) column_sums(dpre, B, d, G.b2);
      dy_.resize(static_cast<std::size_t>(B * v));
      std::vector<float> dh(dy_.size());
      parallel_rows(B, v, [&](int64_t b) {
        const int64_t o = b * v;
        silu_backward(&u_[o], s.y + o, s.hidden + o, &dy_[o], &dh[o], v);
      });
      dy = dy_.data();
      if (G.w1) gemm(true, false, d, v, B, p.x, d, dh.data(), v, 0.0f, G.w1, v);
      if (G.b1) column_sums(dh.data(), B, v, G.b1);
      if (G.x) gemm(false, true, B, d, v, dh.data(), v, W.w1, v, 1.0f, G.x, d);
    }
    embbag::BwdParams bag = bag_bwd(c, W.values, width, s.indices, s.weights, dy, B);
    bag.grad_weights = dw;
    bag.grad_values_dense = G.values_dense;
    bag.unique_rows = G.value_rows, bag.grad_values_compact = G.values_compact;
    bag.num_unique = G.num_value_rows;
    stage.to("bag_bwd");
    if (any_output(bag) || p.bag) run_bag<embbag::Bwd>(p.bag, bag, "v2_bwd_sorted", parts);
  }
  if (!need_ds) {
    stage.done();
    std::lock_guard lock(parts_mu);
    bwd_parts = "backward: " + parts;
    return;
  }

  stage.to("softmax_bwd");  // ds = w ⊙ (dw − Σ_head w·dw), in place
  parallel_rows(B * c.heads, c.k, [&](int64_t r) {
    const float* wr = s.weights + r * c.k;
    float* g = dw + r * c.k;
    float sum = 0;
    for (int64_t j = 0; j < c.k; ++j) sum += wr[j] * g[j];
    for (int64_t j = 0; j < c.k; ++j) g[j] = wr[j] * (g[j] - sum);
  });

  // ---- the search backward, then the projection's ----
  std::vector<float> dq_(need_dq ? static_cast<std::size_t>(B * hn) : 0);
  pk_topk::BwdParams sp = parts::search_bwd(c, W, s.q, s.indices, dw, B);
  sp.grad_queries = need_dq ? dq_.data() : nullptr;
  sp.grad_keys1.dense = G.keys1;
  sp.grad_keys2.dense = G.keys2;
  stage.to("search_bwd");
  run_part<pk_topk::Bwd>(sp, nullptr, parts);
  stage.to("projection_bwd");
  if (G.wq) gemm(true, false, d, hn, B, p.x, d, dq_.data(), hn, 0.0f, G.wq, hn);
  if (G.bq) column_sums(dq_.data(), B, hn, G.bq);
  if (G.x) gemm(false, true, B, d, hn, dq_.data(), hn, W.wq, hn, 1.0f, G.x, d);
  stage.done();

  std::lock_guard lock(parts_mu);
  bwd_parts = "backward: " + parts;
}

std::string supports(const Config& c, int64_t batch) {
  const int64_t hk = c.heads * c.k;
  if (hk > embbag::kMaxK)
    return fmt::format("heads·k = {} exceeds the EmbeddingBag's bag of at most {} rows", hk,
                       embbag::kMaxK);
  if (c.value_width() > embbag::kMaxDim || c.d_model > embbag::kMaxDim)
    return fmt::format("value width {} / d_model {} exceeds the EmbeddingBag's dim limit {}",
                       c.value_width(), c.d_model, embbag::kMaxDim);
  for (int64_t dim : {batch, c.d_model, c.heads * c.k_dim, c.value_dim})
    if (dim > INT_MAX)
      return fmt::format("a GEMM dimension of {} exceeds OpenBLAS's 32-bit int", dim);
  return {};
}

MEMLAYERS_REGISTER(Fwd,
                   Variant<FwdParams>{
                       .name = "v1_compose",
                       .backend = Backend::cpu,
                       .launch = forward,
                       .supports = [](const FwdParams& p) { return supports(p.config, p.batch); },
                       .summary = "OpenBLAS GEMMs + registered cpu pk_topk and EmbeddingBag "
                                  "variants, threaded softmax and gating",
                       .deterministic = true,
                   });
MEMLAYERS_REGISTER(Bwd,
                   Variant<BwdParams>{
                       .name = "v1_compose",
                       .backend = Backend::cpu,
                       .launch = backward,
                       .supports = [](const BwdParams& p) { return supports(p.config, p.batch); },
                       .summary = "OpenBLAS GEMMs + registered cpu pk_topk and EmbeddingBag "
                                  "backward variants, threaded softmax and gating",
                       .deterministic = true,
                   });

}  // namespace

std::string v1_compose_parts() {
  std::lock_guard lock(parts_mu);
  return fwd_parts + "\n" + bwd_parts;
}

}  // namespace memlayers::memory_layer::cpu
