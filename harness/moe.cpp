// The mixture-of-experts block over harness::Ops and the registered weighted EmbeddingBag
// (harness/moe.h). Device work goes through the backend's entries; the routing decisions, small
// (rows × experts), run on the host between them, so every backend makes the same decisions from
// the same logits.
#include "harness/moe.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/registry.h"
#include "embbag/embbag.h"
#include "harness/arena.h"
#include "memory_layer/parts.h"

namespace memlayers::harness {

// ---- config ----

void MoeConfig::validate() const {
  MEMLAYERS_CHECK(experts >= 2, "moe config: experts is {}: accepted are experts ≥ 2", experts);
  MEMLAYERS_CHECK(top >= 2 && top <= experts,
                  "moe config: top is {} with {} experts: accepted are 2 ≤ top ≤ experts (with one "
                  "pick the renormalised gate is always 1 and carries no gradient to the router)",
                  top, experts);
  MEMLAYERS_CHECK(expert_hidden >= 1,
                  "moe config: expert_hidden is {}: accepted are expert_hidden ≥ 1", expert_hidden);
  MEMLAYERS_CHECK(std::isfinite(balance) && balance >= 0,
                  "moe config: balance is {}: accepted is a finite α ≥ 0", balance);
}

int64_t MoeBlock::param_floats(const MoeConfig& c, int64_t d) {
  c.validate();
  MEMLAYERS_CHECK(d >= 1, "moe: d_model is {}: accepted are d_model ≥ 1", d);
  const int64_t E = c.experts, h = c.expert_hidden;
  return d * E + E * d * 2 * h + E * h * d;
}

double MoeBlock::active_flops_per_token(const MoeConfig& c, int64_t d) {
  c.validate();
  MEMLAYERS_CHECK(d >= 1, "moe: d_model is {}: accepted are d_model ≥ 1", d);
  const double dd = static_cast<double>(d), h = static_cast<double>(c.expert_hidden);
  const double expert = 2 * dd * 2 * h + 2 * h * dd;  // w13, w2
  return static_cast<double>(c.top) * expert + 2 * dd * static_cast<double>(c.experts);
}

// ---- buffers ----

namespace {

// The deterministic EmbeddingBag variant of the ops' backend: the reference on `reference`, else
// the highest-numbered deterministic one that supports the bag (the block's runs are then
// bitwise repeatable on every backend).
template <class Op>
const Variant<typename Op::Params>& bag_variant(Backend b, const typename Op::Params& p) {
  std::string why;
  const auto* v = memory_layer::parts::find_part<Op>(
      b, p, b == Backend::reference ? "reference" : nullptr, why);
  MEMLAYERS_CHECK(v != nullptr, "moe: {}", why);
  return *v;
}

}  // namespace

// Sized for `rows` tokens (A = top·rows gathered rows).
struct MoeBlock::Buffers {
  int64_t rows = 0;
  Arena arena;
  float *logits, *dlogits, *gates, *dgates;  // (rows, E), (rows, E), (rows, top) twice
  int32_t* gather_ids;                       // (A)
  int64_t* slots;                            // (rows, top)
  float *xg, *h13, *sw, *y;                  // (A, d), (A, 2h), (A, h), (A, d)
  float *dy, *dsw, *dh13, *dxg;              // (A, d), (A, h), (A, 2h), (A, d)

  Buffers(const MoeConfig& c, int64_t d, const Memory& mem, int64_t r) : rows(r), arena(mem) {
    const int64_t E = c.experts, h = c.expert_hidden, K = c.top, A = K * r;
    auto floats = [&](int64_t n) { return arena.floats(n); };
    logits = floats(r * E), dlogits = floats(r * E), gates = floats(r * K), dgates = floats(r * K);
    gather_ids = arena.alloc<int32_t>(A);
    slots = arena.alloc<int64_t>(r * K);
    xg = floats(A * d), h13 = floats(A * 2 * h), sw = floats(A * h), y = floats(A * d);
    dy = floats(A * d), dsw = floats(A * h), dh13 = floats(A * 2 * h), dxg = floats(A * d);
  }
};

// ---- the block ----

MoeBlock::MoeBlock(const MoeConfig& c, int64_t d_model, const Ops& ops)
    : config_(c), d_(d_model), ops_(ops) {
  c.validate();
  MEMLAYERS_CHECK(d_model >= 1, "moe: d_model is {}: accepted are d_model ≥ 1", d_model);
  MEMLAYERS_CHECK(ops.memory != nullptr, "moe: the ops table has no memory");
}

MoeBlock::~MoeBlock() = default;

const std::vector<int64_t>& MoeBlock::tokens_per_expert() const { return routing_.tokens; }
const MoeRouting& MoeBlock::routing() const { return routing_; }

namespace {

// Softmax, top-k by logit (ties to the lower expert index), renormalised gates, the per-expert
// token lists (ascending tokens) and the balancing loss, from the router logits (host).
void route(const MoeConfig& c, const float* logits, int64_t rows, MoeRouting& r) {
  const int64_t E = c.experts, K = c.top;
  r.rows = rows, r.experts = E, r.top = K;
  r.probs.assign(static_cast<std::size_t>(rows * E), 0.0f);
  r.picks.assign(static_cast<std::size_t>(rows * K), 0);
  r.gates.assign(static_cast<std::size_t>(rows * K), 0.0f);
  r.tokens.assign(static_cast<std::size_t>(E), 0);
  std::vector<double> mean_prob(static_cast<std::size_t>(E), 0.0);
  for (int64_t t = 0; t < rows; ++t) {
    const float* z = logits + t * E;
    double zmax = z[0];
    for (int64_t e = 0; e < E; ++e) {
      MEMLAYERS_CHECK(std::isfinite(z[e]),
                      "moe: router logit {} at row {}, expert {}: accepted are finite logits", z[e],
                      t, e);
      zmax = std::max(zmax, double{z[e]});
    }
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(z[e] - zmax);
    float* p = r.probs.data() + t * E;
    for (int64_t e = 0; e < E; ++e) {
      p[e] = static_cast<float>(std::exp(z[e] - zmax) / sum);
      mean_prob[e] += p[e];
    }
    // Selection by repeated argmax over the experts not yet taken: a strict > keeps the lower
    // index on a tie. The logits, not the rounded probabilities, decide, so two different logits
    // never tie through rounding.
    int32_t* pick = r.picks.data() + t * K;
    double picked = 0;
    for (int64_t j = 0; j < K; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t i = 0; i < j; ++i) taken = taken || pick[i] == e;
        if (!taken && (best < 0 || z[e] > z[best])) best = e;
      }
      pick[j] = static_cast<int32_t>(best);
      picked += p[best];
      // cppcheck-suppress negativeContainerIndex ; top <= experts (checked): one is always left
      ++r.tokens[best];
    }
    for (int64_t j = 0; j < K; ++j) r.gates[t * K + j] = static_cast<float>(p[pick[j]] / picked);
  }
  // Gathered rows grouped by expert, each expert's tokens ascending: a token's slot for expert e
  // is e's offset plus the count of earlier tokens that picked e.
  r.offsets.assign(static_cast<std::size_t>(E + 1), 0);
  for (int64_t e = 0; e < E; ++e) r.offsets[e + 1] = r.offsets[e] + r.tokens[e];
  std::vector<int64_t> next(r.offsets.begin(), r.offsets.end() - 1);
  r.gather_ids.assign(static_cast<std::size_t>(rows * K), 0);
  r.slots.assign(static_cast<std::size_t>(rows * K), 0);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t j = 0; j < K; ++j) {
      const int64_t slot = next[r.picks[t * K + j]]++;
      r.gather_ids[slot] = static_cast<int32_t>(t);
      r.slots[t * K + j] = slot;
    }
  double balance = 0;
  for (int64_t e = 0; e < E; ++e) {
    const double f = static_cast<double>(r.tokens[e]) / static_cast<double>(rows * K);
    balance += f * mean_prob[e] / static_cast<double>(rows);
  }
  r.balance = c.balance * static_cast<double>(E) * balance;
}

embbag::FwdParams bag_fwd(const float* values, const int64_t* slots, const float* gates, float* out,
                          int64_t rows, int64_t top, int64_t d) {
  embbag::FwdParams p;
  p.values = values, p.indices = slots, p.weights = gates, p.out = out;
  p.batch = rows, p.k = top, p.dim = d, p.num_rows = rows * top;
  p.values_dtype = DType::f32, p.index_dtype = DType::i64, p.out_dtype = DType::f32;
  return p;
}

}  // namespace

double MoeBlock::forward(const MoeWeights& w, const float* x, float* out, int64_t rows) {
  MEMLAYERS_CHECK(w.router && w.w13 && w.w2, "moe forward: a weight pointer is null");
  MEMLAYERS_CHECK(x && out, "moe forward: x or out is null");
  MEMLAYERS_CHECK(rows >= 1 && rows <= INT32_MAX,
                  "moe forward: rows is {}: accepted are 1 ≤ rows ≤ 2³¹ − 1 (int32 token ids)",
                  rows);
  const int64_t E = config_.experts, K = config_.top, h = config_.expert_hidden, d = d_,
                A = K * rows;
  const Memory& mem = *ops_.memory;
  if (!bufs_ || bufs_->rows < rows) {
    bufs_.reset();  // release the old buffers first
    bufs_ = std::make_unique<Buffers>(config_, d, mem, rows);
  }
  Buffers& b = *bufs_;
  last_x_ = nullptr;  // a failed routing leaves no forward for the backward to use
  routing_.rows = 0;

  ops_.linear_fwd({x, w.router, nullptr, b.logits, rows, d, E});
  std::vector<float> logits(static_cast<std::size_t>(rows * E));
  mem.synchronize();
  mem.to_host(logits.data(), b.logits, logits.size() * sizeof(float));
  route(config_, logits.data(), rows, routing_);
  mem.to_device(b.gather_ids, routing_.gather_ids.data(), A * sizeof(int32_t));
  mem.to_device(b.slots, routing_.slots.data(), A * sizeof(int64_t));
  mem.to_device(b.gates, routing_.gates.data(), A * sizeof(float));

  ops_.embedding_fwd({b.gather_ids, x, b.xg, A, rows, d});
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = routing_.tokens[e], o = routing_.offsets[e];
    if (n == 0) continue;  // its rows are empty; the bag reads none of them
    float* h13 = b.h13 + o * 2 * h;
    ops_.linear_fwd({b.xg + o * d, w.w13 + e * d * 2 * h, nullptr, h13, n, d, 2 * h});
    ops_.swiglu_fwd({h13, h13 + h, 2 * h, b.sw + o * h, n, h});
    ops_.linear_fwd({b.sw + o * h, w.w2 + e * h * d, nullptr, b.y + o * d, n, h, d});
  }
  const embbag::FwdParams bag = bag_fwd(b.y, b.slots, b.gates, out, rows, K, d);
  Registry<embbag::Fwd>::run(bag_variant<embbag::Fwd>(ops_.backend, bag), bag);
  mem.synchronize();
  last_x_ = x;
  return routing_.balance;
}

void MoeBlock::backward(const MoeWeights& w, const float* x, const float* dout, float* dx,
                        const MoeGrads& g, int64_t rows, bool accumulate_dx, float dbalance) {
  MEMLAYERS_CHECK(w.router && w.w13 && w.w2, "moe backward: a weight pointer is null");
  MEMLAYERS_CHECK(g.router && g.w13 && g.w2, "moe backward: a gradient pointer is null");
  MEMLAYERS_CHECK(x && dout && dx, "moe backward: x, dout or dx is null");
  MEMLAYERS_CHECK(std::isfinite(dbalance), "moe backward: dbalance {} is not finite", dbalance);
  MEMLAYERS_CHECK(bufs_ && last_x_ == x && routing_.rows == rows,
                  "moe backward: no forward of this x with {} rows precedes it: accepted is the "
                  "backward of the last forward",
                  rows);
  const int64_t E = config_.experts, K = config_.top, h = config_.expert_hidden, d = d_,
                A = K * rows;
  const Memory& mem = *ops_.memory;
  Buffers& b = *bufs_;
  const MoeRouting& r = routing_;

  // The combine's backward: d(expert outputs) (every gathered row is one bag slot, so the dense
  // dV is all of it) and d(gates).
  embbag::BwdParams bag;
  bag.values = b.y, bag.indices = b.slots, bag.weights = b.gates, bag.grad_out = dout;
  bag.batch = rows, bag.k = K, bag.dim = d, bag.num_rows = A;
  bag.values_dtype = DType::f32, bag.index_dtype = DType::i64;
  bag.grad_weights = b.dgates, bag.grad_values_dense = b.dy;
  Registry<embbag::Bwd>::run(bag_variant<embbag::Bwd>(ops_.backend, bag), bag);

  // Router logits' gradient (host, fp64): the gates g_j = p_j / S (S = Σ picked p) give
  // dp_j = (dg_j − Σ_i g_i·dg_i) / S on the picks; the balancing loss adds
  // dbalance·α·E·f_e / rows to every p[t, e]; the softmax then gives
  // dz_e = p_e·(dp_e − Σ_i p_i·dp_i).
  std::vector<float> dgates(static_cast<std::size_t>(A));
  mem.synchronize();
  mem.to_host(dgates.data(), b.dgates, dgates.size() * sizeof(float));
  std::vector<double> dp_balance(static_cast<std::size_t>(E));
  for (int64_t e = 0; e < E; ++e)
    dp_balance[e] = double{dbalance} * config_.balance * static_cast<double>(E) *
                    (static_cast<double>(r.tokens[e]) / static_cast<double>(A)) /
                    static_cast<double>(rows);
  std::vector<float> dlogits(static_cast<std::size_t>(rows * E));
  std::vector<double> dp(static_cast<std::size_t>(E));
  for (int64_t t = 0; t < rows; ++t) {
    const float* p = r.probs.data() + t * E;
    const int32_t* pick = r.picks.data() + t * K;
    double picked = 0, gdg = 0;
    for (int64_t j = 0; j < K; ++j) {
      picked += p[pick[j]];
      gdg += double{r.gates[t * K + j]} * dgates[t * K + j];
    }
    dp = dp_balance;
    for (int64_t j = 0; j < K; ++j) dp[pick[j]] += (dgates[t * K + j] - gdg) / picked;
    double pdp = 0;
    for (int64_t e = 0; e < E; ++e) pdp += p[e] * dp[e];
    for (int64_t e = 0; e < E; ++e) dlogits[t * E + e] = static_cast<float>(p[e] * (dp[e] - pdp));
  }
  mem.to_device(b.dlogits, dlogits.data(), dlogits.size() * sizeof(float));
  ops_.linear_bwd({x, w.router, b.dlogits, dx, g.router, nullptr, rows, d, E,
                   /*transposed_w=*/false, accumulate_dx});

  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = r.tokens[e], o = r.offsets[e];
    if (n == 0) continue;  // no tokens: its weights get no gradient
    const float* h13 = b.h13 + o * 2 * h;
    float* dh13 = b.dh13 + o * 2 * h;
    ops_.linear_bwd({b.sw + o * h, w.w2 + e * h * d, b.dy + o * d, b.dsw + o * h, g.w2 + e * h * d,
                     nullptr, n, h, d});
    ops_.swiglu_bwd({h13, h13 + h, 2 * h, b.dsw + o * h, dh13, dh13 + h, n, h});
    ops_.linear_bwd({b.xg + o * d, w.w13 + e * d * 2 * h, dh13, b.dxg + o * d,
                     g.w13 + e * d * 2 * h, nullptr, n, d, 2 * h});
  }
  // Each token's gathered rows' gradients back onto its row of dx (adds: the router's part is
  // already there).
  ops_.embedding_bwd({b.gather_ids, b.dxg, dx, A, rows, d});
  mem.synchronize();
}

}  // namespace memlayers::harness
