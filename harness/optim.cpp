// The harness's optimiser (harness/optim.h): the host steps (threaded, elementwise), their
// checks, clipping, the schedule and the Optimizer that drives them.
#include "harness/optim.h"

#include <cmath>
#include <numbers>
#include <string>
#include <string_view>

#include "common/error.h"
#include "common/parallel.h"
#include "harness/cuda/tables.h"

namespace memlayers::harness {

namespace {

// The per-step constants of the AdamW formula (optim.h), bias corrections computed in fp64 once.
struct AdamConstants {
  float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, grad_scale;
  float step_size;     // lr / (1 − β1ᵗ)
  float inv_sqrt_bc2;  // 1 / sqrt(1 − β2ᵗ)
  float decay_factor;  // 1 − lr·wd
  explicit AdamConstants(const AdamHyper& h)
      : beta1(h.beta1),
        beta2(h.beta2),
        one_minus_beta1(1.0f - h.beta1),
        one_minus_beta2(1.0f - h.beta2),
        eps(h.eps),
        grad_scale(h.grad_scale) {
    const double t = static_cast<double>(h.step);
    step_size = static_cast<float>(h.lr / (1.0 - std::pow(double(h.beta1), t)));
    inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(double(h.beta2), t)));
    decay_factor = static_cast<float>(1.0 - double(h.lr) * double(h.weight_decay));
  }
};

// One element of AdamW; the dense and the sparse steps both call it, so a sparse step over every
// row is bitwise the dense step.
inline void adam_element(const AdamConstants& k, float& p, float grad, float& m, float& v) {
  const float g = grad * k.grad_scale;
  m = k.beta1 * m + k.one_minus_beta1 * g;
  v = k.beta2 * v + k.one_minus_beta2 * g * g;
  const float denom = std::sqrt(v) * k.inv_sqrt_bc2 + k.eps;
  p = p * k.decay_factor - k.step_size * m / denom;
}

void host_adamw(const AdamWStep& s) {
  const AdamConstants k(s.h);
  parallel_for(s.n, balanced_grain(s.n, 4096), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) adam_element(k, s.params[i], s.grads[i], s.m[i], s.v[i]);
  });
}

void host_sparse_adam(const SparseAdamStep& s) {
  detail::check_sparse_row_ids(s.row_ids, s.n_rows, s.rows);
  const AdamConstants k(s.h);
  const int64_t dim = s.dim;
  parallel_rows(s.n_rows, dim, [&](int64_t j) {
    const int64_t base = s.row_ids[j] * dim;
    const float* g = s.grad_rows + j * dim;
    for (int64_t c = 0; c < dim; ++c)
      adam_element(k, s.table[base + c], g[c], s.m[base + c], s.v[base + c]);
  });
}

void host_sum_squares(const SumSquares& s) {
  constexpr int64_t kChunk = 1 << 14;  // fixed, so the sum's order is too
  const int64_t chunks = (s.n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
  parallel_for(chunks, balanced_grain(chunks), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double acc = 0;
      const int64_t end = std::min(s.n, (c + 1) * kChunk);
      for (int64_t i = c * kChunk; i < end; ++i) acc += double(s.x[i]) * double(s.x[i]);
      partial[static_cast<std::size_t>(c)] = acc;
    }
  });
  double total = 0;
  for (double p : partial) total += p;
  *s.out = total;
}

template <class P>
OptimOp<P> checked(void (*raw)(const P&)) {
  return [raw](const P& p) {
    validate(p);
    raw(p);
  };
}

OptimOps host_table(Backend b) {
  OptimOps t;
  t.backend = b;
  t.memory = &host_memory();
  t.adamw = checked(&host_adamw);
  t.sparse_adam = checked(&host_sparse_adam);
  t.sum_squares = checked(&host_sum_squares);
  return t;
}

void finite_in(double v, double lo, double hi, std::string_view what, std::string_view accepted) {
  MEMLAYERS_CHECK(std::isfinite(v) && v >= lo && v <= hi, "optimiser: {} is {}: accepted are {}",
                  what, v, accepted);
}

}  // namespace

// ---- checks ----

void detail::check_sparse_row_ids(const int64_t* row_ids, int64_t n_rows, int64_t rows) {
  for (int64_t j = 0; j < n_rows; ++j) {
    const int64_t r = row_ids[j];
    MEMLAYERS_CHECK(r >= 0 && r < rows, "sparse adam: row id {} out of range [0, {}) at {}", r,
                    rows, j);
    MEMLAYERS_CHECK(j == 0 || r > row_ids[j - 1],
                    "sparse adam: row id {} at {} follows {} at {}: accepted are strictly "
                    "ascending (unique) row ids",
                    r, j, row_ids[j - 1], j - 1);
  }
}

void validate(const AdamHyper& h) {
  finite_in(h.lr, 0, INFINITY, "lr", "finite lr ≥ 0");
  finite_in(h.beta1, 0, 1, "beta1", "0 ≤ beta1 < 1");
  MEMLAYERS_CHECK(h.beta1 < 1, "optimiser: beta1 is 1: accepted are 0 ≤ beta1 < 1");
  finite_in(h.beta2, 0, 1, "beta2", "0 ≤ beta2 < 1");
  MEMLAYERS_CHECK(h.beta2 < 1, "optimiser: beta2 is 1: accepted are 0 ≤ beta2 < 1");
  MEMLAYERS_CHECK(std::isfinite(h.eps) && h.eps > 0,
                  "optimiser: eps is {}: accepted are finite eps > 0", h.eps);
  finite_in(h.weight_decay, 0, INFINITY, "weight_decay", "finite weight_decay ≥ 0");
  finite_in(h.grad_scale, 0, INFINITY, "grad_scale", "finite grad_scale ≥ 0");
  MEMLAYERS_CHECK(h.step >= 1, "optimiser: step is {}: accepted are steps t ≥ 1", h.step);
}

void validate(const AdamWStep& p) {
  validate(p.h);
  MEMLAYERS_CHECK(p.n >= 1, "adamw: n is {}: accepted are n ≥ 1", p.n);
  MEMLAYERS_CHECK(p.params && p.grads && p.m && p.v,
                  "adamw: a null pointer among params, grads, m, v");
}

void validate(const SparseAdamStep& p) {
  validate(p.h);
  MEMLAYERS_CHECK(p.rows >= 1 && p.dim >= 1,
                  "sparse adam: table {} × {}: accepted are rows ≥ 1 and dim ≥ 1", p.rows, p.dim);
  MEMLAYERS_CHECK(p.n_rows >= 0 && p.n_rows <= p.rows,
                  "sparse adam: {} gradient rows for a table of {}: accepted are 0 ≤ n_rows ≤ rows "
                  "(ids unique)",
                  p.n_rows, p.rows);
  MEMLAYERS_CHECK(p.table && p.m && p.v, "sparse adam: a null pointer among table, m, v");
  MEMLAYERS_CHECK(p.n_rows == 0 || (p.row_ids && p.grad_rows),
                  "sparse adam: {} gradient rows but row_ids or grad_rows is null", p.n_rows);
}

void validate(const SumSquares& p) {
  MEMLAYERS_CHECK(p.n >= 0, "sum of squares: n is {}: accepted are n ≥ 0", p.n);
  MEMLAYERS_CHECK(p.out != nullptr, "sum of squares: out is null");
  MEMLAYERS_CHECK(p.n == 0 || p.x != nullptr, "sum of squares: x is null with n {}", p.n);
}

const OptimOps& optim_ops_for(Backend b) {
  static const OptimOps reference = host_table(Backend::reference);
  static const OptimOps cpu = host_table(Backend::cpu);
  if (b == Backend::reference) return reference;
  if (b == Backend::cpu) return cpu;
  if (b == Backend::simt) {
    static const OptimOps simt = detail::simt_optim_ops();
    return simt;
  }
#if defined(MEMLAYERS_HAVE_CUDA)
  const std::string why = usable(Backend::cuda);
  MEMLAYERS_CHECK(why.empty(), "optimiser: backend cuda is not usable here: {}", why);
  static const OptimOps cuda = detail::cuda_optim_ops();
  return cuda;
#else
  fail(
      "optimiser: backend {} is not built (no nvcc when configured): built are reference, cpu, "
      "simt",
      to_string(b));
#endif
}

// ---- clipping and schedule ----

float clip_scale(double norm, double max_norm) {
  MEMLAYERS_CHECK(std::isfinite(norm) && norm >= 0,
                  "gradient clipping: the global gradient norm is {}: accepted is a finite norm "
                  "(a NaN or inf gradient upstream)",
                  norm);
  if (max_norm <= 0 || norm <= max_norm) return 1.0f;
  return static_cast<float>(max_norm / norm);
}

void Schedule::validate() const {
  MEMLAYERS_CHECK(warmup >= 0 && total >= 1 && warmup <= total,
                  "schedule: warmup {}, total {}: accepted are 0 ≤ warmup ≤ total and total ≥ 1",
                  warmup, total);
  finite_in(floor, 0, 1, "the schedule's floor", "0 ≤ floor ≤ 1");
}

double Schedule::at(int64_t s) const {
  validate();
  MEMLAYERS_CHECK(s >= 0, "schedule: step {}: accepted are steps ≥ 0", s);
  if (s < warmup) return double(s + 1) / double(warmup);
  if (s >= total) return floor;
  const double progress = double(s - warmup) / double(total - warmup);
  return floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

// ---- the optimiser ----

std::vector<ParamGroup> param_groups(const ParamLayout& layout) {
  std::vector<ParamGroup> g;
  for (const ParamTensor& t : layout.tensors()) {
    const bool norm = t.shape.size() == 1;
    const bool embedding = t.name == "wte" || t.name == "wpe";
    g.push_back({t.name, t.offset, t.size(), !norm && !embedding});
  }
  return g;
}

void OptimConfig::validate() const {
  AdamHyper h;
  h.lr = lr, h.beta1 = beta1, h.beta2 = beta2, h.eps = eps, h.weight_decay = weight_decay;
  harness::validate(h);
  h.lr = values_lr, h.weight_decay = values_weight_decay;
  harness::validate(h);
  MEMLAYERS_CHECK(!std::isnan(max_grad_norm),
                  "optimiser: max_grad_norm is NaN: accepted are > 0, or ≤ 0 for no clipping");
  schedule.validate();
}

Optimizer::Optimizer(const OptimConfig& c, const OptimOps& ops, std::vector<ParamGroup> groups,
                     int64_t dense, int64_t values_rows, int64_t values_dim)
    : config_(c),
      ops_(ops),
      groups_(std::move(groups)),
      dense_(dense),
      values_rows_(values_rows),
      values_dim_(values_dim) {
  c.validate();
  MEMLAYERS_CHECK(dense >= 1, "optimiser: {} dense parameters: accepted are ≥ 1", dense);
  int64_t next = 0;
  for (const ParamGroup& g : groups_) {
    MEMLAYERS_CHECK(g.offset == next && g.size >= 1,
                    "optimiser: group '{}' covers [{}, {}) but the next element is {}: accepted "
                    "are non-empty groups tiling [0, {}) in order",
                    g.name, g.offset, g.offset + g.size, next, dense);
    next += g.size;
  }
  MEMLAYERS_CHECK(next == dense, "optimiser: the groups cover {} of {} dense parameters", next,
                  dense);
  MEMLAYERS_CHECK((values_rows == 0 && values_dim == 0) || (values_rows >= 1 && values_dim >= 1),
                  "optimiser: value table {} × {}: accepted are 0 × 0 (none) or both ≥ 1",
                  values_rows, values_dim);
  const Memory& mem = *ops_.memory;
  auto zeros = [&](int64_t n) {
    const auto bytes = static_cast<std::size_t>(n) * sizeof(float);
    auto* p = static_cast<float*>(mem.alloc(bytes));
    mem.fill_bytes(p, 0, bytes);
    return p;
  };
  m_ = zeros(dense), v_ = zeros(dense);
  if (values_rows_ > 0)
    vm_ = zeros(values_rows_ * values_dim_), vv_ = zeros(values_rows_ * values_dim_);
}

Optimizer::~Optimizer() {
  for (float* p : {m_, v_, vm_, vv_})
    if (p) ops_.memory->release(p);
}

StepStats Optimizer::step(float* params, const float* grads, float* values,
                          const SparseRows& vgrad) {
  MEMLAYERS_CHECK(values_rows_ > 0 || (values == nullptr && vgrad.n_rows == 0),
                  "optimiser: a value-table step given, but the optimiser has no value table");
  MEMLAYERS_CHECK(values_rows_ == 0 || values != nullptr,
                  "optimiser: the value table is null: accepted is the table of {} × {}",
                  values_rows_, values_dim_);
  StepStats st;
  double sq = 0, vsq = 0;
  ops_.sum_squares({grads, dense_, &sq});
  if (vgrad.n_rows > 0) ops_.sum_squares({vgrad.rows, vgrad.n_rows * values_dim_, &vsq});
  if (table_norm_sum_) vsq = table_norm_sum_(vsq);
  st.grad_norm = std::sqrt(sq + vsq);
  st.clip = clip_scale(st.grad_norm, config_.max_grad_norm);
  st.lr_scale = config_.schedule.at(t_);

  AdamHyper h;
  h.beta1 = config_.beta1, h.beta2 = config_.beta2, h.eps = config_.eps;
  h.grad_scale = st.clip, h.step = t_ + 1;
  // The table first: the host step checks its row ids before it writes anything, so bad ids
  // leave every parameter and moment as it was.
  if (values_rows_ > 0 && vgrad.n_rows > 0) {
    h.lr = static_cast<float>(config_.values_lr * st.lr_scale);
    h.weight_decay = config_.values_weight_decay;
    ops_.sparse_adam(
        {values, vm_, vv_, values_rows_, values_dim_, vgrad.row_ids, vgrad.rows, vgrad.n_rows, h});
  }
  h.lr = static_cast<float>(config_.lr * st.lr_scale);
  for (const ParamGroup& g : groups_) {
    h.weight_decay = g.decay ? config_.weight_decay : 0.0f;
    ops_.adamw({params + g.offset, grads + g.offset, m_ + g.offset, v_ + g.offset, g.size, h});
  }
  ++t_;
  return st;
}

}  // namespace memlayers::harness
