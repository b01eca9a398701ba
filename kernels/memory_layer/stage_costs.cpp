// The memory layer's per-stage floors (stage_costs.h): the ops' declarations for the search and
// the bag, GEMMs and elementwise passes counted here.
#include "memory_layer/stage_costs.h"

#include "common/error.h"
#include "embbag/embbag.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::memory_layer {

namespace {

constexpr double kF32 = 4;

// C (m × n) = A (m × k) · B (k × n): A and B read, C written (read too when accumulated into),
// 2·m·n·k flops. `extra_floats` read besides (a bias row).
StageCost gemm(double m, double n, double k, bool accumulate = false, double extra_floats = 0) {
  return {"", kF32 * (m * k + k * n + m * n * (accumulate ? 2 : 1) + extra_floats), 2 * m * n * k};
}

// An elementwise pass reading `read` floats and writing `written` floats; no flops counted.
StageCost pass(double read, double written) { return {"", kF32 * (read + written), 0}; }

void add(StageCost& s, const StageCost& part) {
  s.bytes += part.bytes;
  s.flops += part.flops;
}

pk_topk::FwdParams search_shape(const Config& c, int64_t batch) {
  pk_topk::FwdParams p;
  p.batch = batch, p.heads = c.heads, p.n_keys = c.n_keys, p.k_dim = c.k_dim, p.k = c.k;
  p.dtype = DType::f32, p.index_dtype = DType::i64, p.qk_norm = c.qk_norm;
  return p;
}

// The bag as the compositions run it: one bag of h·k rows per token, int64 indices, fp32 out.
embbag::FwdParams bag_shape(const Config& c, int64_t batch, int64_t dim) {
  embbag::FwdParams p;
  p.batch = batch, p.k = c.heads * c.k, p.dim = dim, p.num_rows = c.num_values();
  p.values_dtype = c.values_dtype, p.index_dtype = DType::i64, p.out_dtype = DType::f32;
  return p;
}

// Only the outputs' presence matters to the declarations: a stand-in marks them requested.
float g_stand_in[1];
int64_t g_stand_in_rows[1];

embbag::BwdParams bag_bwd_shape(const Config& c, int64_t batch, int64_t dim, bool dw, bool dv) {
  const embbag::FwdParams f = bag_shape(c, batch, dim);
  embbag::BwdParams p;
  p.batch = f.batch, p.k = f.k, p.dim = f.dim, p.num_rows = f.num_rows;
  p.values_dtype = f.values_dtype, p.index_dtype = f.index_dtype;
  if (dw) p.grad_weights = g_stand_in;
  if (dv) {
    p.unique_rows = g_stand_in_rows, p.grad_values_compact = g_stand_in;
    p.num_unique = g_stand_in_rows;
  }
  return p;
}

StageCost bag_fwd_cost(const Config& c, int64_t batch, int64_t dim) {
  const embbag::FwdParams p = bag_shape(c, batch, dim);
  return {"", embbag::Fwd::bytes_moved(p), embbag::Fwd::flops(p)};
}

StageCost bag_bwd_cost(const Config& c, int64_t batch, int64_t dim, bool dw, bool dv) {
  const embbag::BwdParams p = bag_bwd_shape(c, batch, dim, dw, dv);
  const double unique = embbag::expected_unique_rows(batch * c.heads * c.k, c.num_values());
  return {"", embbag::Bwd::bytes_moved(p, unique), embbag::Bwd::flops(p)};
}

std::vector<StageCost> forward(const Config& c, int64_t batch) {
  const double B = double(batch), d = double(c.d_model), hn = double(c.heads * c.k_dim),
               hk = double(c.heads * c.k), v = double(c.value_dim);
  std::vector<StageCost> out;

  StageCost projection{"projection"};  // q = x·Wq + bq
  add(projection, gemm(B, hn, d, false, hn));
  out.push_back(projection);

  const pk_topk::FwdParams sp = search_shape(c, batch);
  out.push_back({"search", pk_topk::Fwd::bytes_moved(sp), pk_topk::Fwd::flops(sp)});

  StageCost softmax{"softmax"};  // scores in, weights out
  add(softmax, pass(B * hk, B * hk));
  out.push_back(softmax);

  StageCost bag{"bag"};
  add(bag, bag_fwd_cost(c, batch, c.value_width()));
  if (c.kind == Kind::peer)  // U[I]·x: the bag backward's dw over U with dy = x
    add(bag, bag_bwd_cost(c, batch, c.d_model, true, false));
  out.push_back(bag);

  StageCost gating{"gating"};
  if (c.kind == Kind::memory_plus) {
    add(gating, gemm(B, v, d, false, v));  // hidden = x·W1 + b1
    add(gating, pass(2 * B * v, B * v));   // m = y ⊙ silu(hidden)
    add(gating, gemm(B, d, v, false, d));  // pre = m·W2 + b2
  } else if (c.kind == Kind::peer) {
    add(gating, pass(2 * B * hk, B * hk));  // coef = w · gelu(U[I]·x)
  }
  if (c.scalar_gate) {
    add(gating, gemm(B, 1, d));           // g = x·wg
    add(gating, pass(B * d + B, B * d));  // out = pre · σ(g)
  }
  if (c.kind != Kind::memory || c.scalar_gate) out.push_back(gating);
  return out;
}

std::vector<StageCost> backward(const Config& c, int64_t batch) {
  const double B = double(batch), d = double(c.d_model), hn = double(c.heads * c.k_dim),
               hk = double(c.heads * c.k), v = double(c.value_dim);
  std::vector<StageCost> out;

  StageCost gating{"gating_bwd"};
  add(gating, pass(0, B * d));  // dx zeroed: several stages add into it
  if (c.scalar_gate) {
    // dpre = dout·σ(g), dg = σ'(g)·(dout·pre); memory+ forms dout·pre from m and dout·W2ᵀ.
    if (c.kind == Kind::memory_plus)
      add(gating, pass(B * d + 3 * B * v + B + d, B * d + 2 * B * v + B));
    else
      add(gating, pass(2 * B * d + B, B * d + B));
    add(gating, gemm(1, d, B));                   // dwg = dgᵀ·x
    add(gating, pass(2 * B * d + B + d, B * d));  // dx += dg ⊗ wg
  }
  if (c.kind == Kind::memory_plus) {
    add(gating, gemm(B, v, d));                               // u = dpre·W2ᵀ
    if (!c.scalar_gate) add(gating, pass(2 * B * v, B * v));  // m = y ⊙ silu(hidden)
    add(gating, gemm(v, d, B));                               // dW2 = mᵀ·dpre
    add(gating, pass(B * d, d));                              // db2
    add(gating, pass(3 * B * v, 2 * B * v));  // dy = u ⊙ silu(h), dh = u ⊙ y ⊙ silu'(h)
    add(gating, gemm(d, v, B));               // dW1 = xᵀ·dh
    add(gating, pass(B * v, v));              // db1
    add(gating, gemm(B, d, v, true));         // dx += dh·W1ᵀ
  } else if (c.kind == Kind::peer) {
    add(gating, pass(2 * B * hk, 2 * B * hk));  // a = gelu(z), coef = w·a
    add(gating, pass(4 * B * hk, 2 * B * hk));  // dw = a·dc, dz = w·dc·gelu'(z)
  }
  out.push_back(gating);

  StageCost bag{"bag_bwd"};
  add(bag, bag_bwd_cost(c, batch, c.value_width(), true, true));  // dw (or dc) and compact dV
  if (c.kind == Kind::peer) {
    add(bag, bag_bwd_cost(c, batch, c.d_model, false, true));  // compact dU: weights dz, dy = x
    add(bag, bag_fwd_cost(c, batch, c.d_model));               // Σ dz·U[I], the experts' dx
    add(bag, pass(2 * B * d, B * d));                          // added into dx
  }
  out.push_back(bag);

  StageCost softmax{"softmax_bwd"};  // ds = w ⊙ (dw − Σ w·dw)
  add(softmax, pass(2 * B * hk, B * hk));
  out.push_back(softmax);

  pk_topk::BwdParams sp;
  const pk_topk::FwdParams f = search_shape(c, batch);
  sp.batch = f.batch, sp.heads = f.heads, sp.n_keys = f.n_keys, sp.k_dim = f.k_dim, sp.k = f.k;
  sp.dtype = f.dtype, sp.index_dtype = f.index_dtype, sp.qk_norm = f.qk_norm;
  sp.grad_queries = g_stand_in;
  sp.grad_keys1.dense = sp.grad_keys2.dense = g_stand_in;
  out.push_back({"search_bwd", pk_topk::Bwd::bytes_moved(sp), pk_topk::Bwd::flops(sp)});

  StageCost projection{"projection_bwd"};
  add(projection, gemm(d, hn, B));        // dWq = xᵀ·dq
  add(projection, pass(B * hn, hn));      // dbq
  add(projection, gemm(B, d, hn, true));  // dx += dq·Wqᵀ
  out.push_back(projection);
  return out;
}

}  // namespace

std::vector<StageCost> stage_costs(const Config& c, int64_t batch, bool backward_stages) {
  if (std::string e = validate(c); !e.empty()) fail("stage_costs: {}", e);
  MEMLAYERS_CHECK(batch >= 1, "stage_costs: batch = {}: accepted batch >= 1", batch);
  return backward_stages ? backward(c, batch) : forward(c, batch);
}

}  // namespace memlayers::memory_layer
