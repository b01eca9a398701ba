// The harness's optimiser (harness/optim.h): AdamW against a plain fp64 implementation over
// several steps (weight decay, bias correction, gradient scale), with a planted wrong one the
// check must reject; the sparse Adam touches only the given rows, is lazy (untouched moments not
// decayed, bias correction by the table's step count) and equals AdamW when every row is given;
// the global norm and clipping; the schedule; the Optimizer end to end against the fp64 model
// (groups, clipping over dense and sparse gradients, schedule, two learning rates); errors.
// Build and run: cmake --build build --target harness_optim_test && ctest --test-dir build -L
// harness
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <vector>

#include "common/error.h"
#include "harness/model.h"
#include "harness/optim.h"
#include "tests/common/check.h"
#include "tests/common/random.h"
#include "tests/harness/expect_error.h"

namespace memlayers::harness {
namespace {

using test::expect_error;
using test::Rng;

std::vector<float> random_floats(Rng& rng, int64_t n, float scale = 1.0f) {
  std::vector<float> x(static_cast<std::size_t>(n));
  for (float& v : x) v = scale * rng.signed_unit();
  return x;
}

std::vector<double> widen(std::span<const float> x) { return {x.begin(), x.end()}; }

// The AdamW formula of optim.h in fp64, element by element; `bias_correction` off plants the
// classic mistake the comparison must catch.
struct Fp64Adam {
  std::vector<double> p, m, v;
  bool bias_correction = true;
  explicit Fp64Adam(std::span<const float> p0) : p(widen(p0)), m(p.size()), v(p.size()) {}
  void step_element(std::size_t i, double grad, const AdamHyper& h) {
    const double g = grad * double(h.grad_scale), t = double(h.step);
    const double b1 = h.beta1, b2 = h.beta2;
    m[i] = b1 * m[i] + (1 - b1) * g;
    v[i] = b2 * v[i] + (1 - b2) * g * g;
    const double bc1 = bias_correction ? 1 - std::pow(b1, t) : 1.0;
    const double bc2 = bias_correction ? 1 - std::pow(b2, t) : 1.0;
    p[i] = p[i] * (1 - double(h.lr) * double(h.weight_decay)) -
           double(h.lr) * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + double(h.eps));
  }
  void step(std::span<const float> grads, const AdamHyper& h) {
    for (std::size_t i = 0; i < p.size(); ++i) step_element(i, grads[i], h);
  }
};

void expect_close(std::string_view what, std::span<const float> got, std::span<const double> want) {
  const std::vector<double> g = widen(got);
  const test::CheckResult c = test::compare(what, g, want, test::tolerance_for(DType::f32, want));
  EXPECT_TRUE(c.ok) << c.message;
}

AdamHyper hyper(int64_t t) {
  AdamHyper h;
  h.lr = 0.02f, h.beta1 = 0.9f, h.beta2 = 0.95f, h.eps = 1e-8f, h.weight_decay = 0.1f;
  h.grad_scale = 0.75f, h.step = t;
  return h;
}

// ---- AdamW ----

TEST(AdamW, MatchesFp64OverSeveralSteps) {
  Rng rng("AdamW.MatchesFp64OverSeveralSteps");
  const int64_t n = 20011;  // several chunks of the threaded loop (≥ 4096 each), a prime
  std::vector<float> p = random_floats(rng, n), m(n, 0.0f), v(n, 0.0f);
  const std::vector<float> p0 = p;
  Fp64Adam ref(p), wrong(p);
  wrong.bias_correction = false;
  const OptimOps& ops = optim_ops_for(Backend::cpu);
  for (int64_t t = 1; t <= 6; ++t) {
    const std::vector<float> g = random_floats(rng, n);
    ops.adamw({p.data(), g.data(), m.data(), v.data(), n, hyper(t)});
    ref.step(g, hyper(t));
    wrong.step(g, hyper(t));
  }
  // The updates, not only the parameters: p0 would hide an error of the step's size.
  std::vector<double> moved(n), want(n), wrong_moved(n);
  for (int64_t i = 0; i < n; ++i) {
    moved[i] = double(p[i]) - p0[i];
    want[i] = ref.p[i] - p0[i];
    wrong_moved[i] = wrong.p[i] - p0[i];
  }
  ASSERT_GT(test::norm(want), 0.1);
  const test::Tolerance tol = test::tolerance_for(DType::f32, want);
  const test::CheckResult c = test::compare("p − p0", moved, want, tol);
  EXPECT_TRUE(c.ok) << c.message;
  expect_close("m", m, ref.m);
  expect_close("v", v, ref.v);
  EXPECT_FALSE(test::compare("p − p0 without bias correction", moved, wrong_moved, tol).ok)
      << "the check cannot tell a missing bias correction";
}

TEST(AdamW, WeightDecayIsDecoupledAndScaledByLr) {
  // Zero gradient: Adam's step is 0, so only the decay moves p: p·(1 − lr·wd), exactly.
  std::vector<float> p = {1.0f, -2.0f, 0.5f}, g(3, 0.0f), m(3, 0.0f), v(3, 0.0f);
  AdamHyper h = hyper(1);
  optim_ops_for(Backend::reference).adamw({p.data(), g.data(), m.data(), v.data(), 3, h});
  const float f = static_cast<float>(1.0 - double(h.lr) * double(h.weight_decay));
  EXPECT_EQ(p, (std::vector<float>{f, -2.0f * f, 0.5f * f}));
  EXPECT_EQ(m, std::vector<float>(3, 0.0f));
}

TEST(AdamW, BadStepsAreRefused) {
  std::vector<float> x(4, 1.0f);
  const OptimOps& ops = optim_ops_for(Backend::cpu);
  AdamWStep s{x.data(), x.data(), x.data(), x.data(), 4, hyper(1)};
  s.h.step = 0;
  expect_error([&] { ops.adamw(s); }, "step is 0: accepted are steps t ≥ 1");
  s.h = hyper(1), s.h.beta2 = 1.0f;
  expect_error([&] { ops.adamw(s); }, "accepted are 0 ≤ beta2 < 1");
  s.h = hyper(1), s.h.eps = 0.0f;
  expect_error([&] { ops.adamw(s); }, "eps is 0");
  s.h = hyper(1), s.m = nullptr;
  expect_error([&] { ops.adamw(s); }, "null pointer");
}

// ---- sparse Adam ----

struct Table {
  int64_t rows, dim;
  std::vector<float> p, m, v;
};

Table random_table(Rng& rng, int64_t rows, int64_t dim) {
  Table t{rows, dim, random_floats(rng, rows * dim), {}, {}};
  // Non-zero moments, as after earlier steps: an untouched row must keep them as they are.
  t.m = random_floats(rng, rows * dim, 0.1f);
  t.v = random_floats(rng, rows * dim, 0.01f);
  for (float& x : t.v) x = std::abs(x);
  return t;
}

SparseAdamStep sparse_step(Table& t, const std::vector<int64_t>& ids, const std::vector<float>& g,
                           const AdamHyper& h) {
  return {t.p.data(), t.m.data(), t.v.data(),          t.rows, t.dim,
          ids.data(), g.data(),   int64_t(ids.size()), h};
}

TEST(SparseAdam, TouchesOnlyTheGivenRows) {
  Rng rng("SparseAdam.TouchesOnlyTheGivenRows");
  Table t = random_table(rng, 50, 13);
  const Table before = t;
  const std::vector<int64_t> ids = {0, 3, 7, 8, 49};
  const std::vector<float> g = random_floats(rng, int64_t(ids.size()) * t.dim);
  optim_ops_for(Backend::cpu).sparse_adam(sparse_step(t, ids, g, hyper(4)));
  // Each given row equals AdamW on that row alone (bitwise: the same element update).
  for (std::size_t j = 0; j < ids.size(); ++j) {
    const int64_t o = ids[j] * t.dim;
    std::vector<float> p(before.p.begin() + o, before.p.begin() + o + t.dim);
    std::vector<float> m(before.m.begin() + o, before.m.begin() + o + t.dim);
    std::vector<float> v(before.v.begin() + o, before.v.begin() + o + t.dim);
    optim_ops_for(Backend::cpu)
        .adamw({p.data(), g.data() + j * t.dim, m.data(), v.data(), t.dim, hyper(4)});
    for (int64_t c = 0; c < t.dim; ++c) {
      ASSERT_EQ(t.p[o + c], p[c]) << "row " << ids[j];
      ASSERT_EQ(t.m[o + c], m[c]) << "row " << ids[j];
      ASSERT_EQ(t.v[o + c], v[c]) << "row " << ids[j];
    }
  }
  int64_t changed = 0, untouched_changed = 0;
  for (int64_t r = 0; r < t.rows; ++r) {
    const bool given = std::find(ids.begin(), ids.end(), r) != ids.end();
    for (int64_t c = 0; c < t.dim; ++c) {
      const int64_t k = r * t.dim + c;
      const bool same = t.p[k] == before.p[k] && t.m[k] == before.m[k] && t.v[k] == before.v[k];
      changed += given && !same;
      untouched_changed += !given && !same;
    }
  }
  EXPECT_EQ(changed, int64_t(ids.size()) * t.dim) << "a given row's element did not move";
  EXPECT_EQ(untouched_changed, 0) << "an untouched row moved";
}

TEST(SparseAdam, EqualsAdamWWhenEveryRowHasGradient) {
  Rng rng("SparseAdam.EqualsAdamWWhenEveryRowHasGradient");
  // 700 × 37: both steps run on several threads' chunks.
  const int64_t rows = 700, dim = 37;
  Table sparse = random_table(rng, rows, dim);
  Table dense = sparse;
  std::vector<int64_t> all(rows);
  for (int64_t r = 0; r < rows; ++r) all[r] = r;
  const OptimOps& ops = optim_ops_for(Backend::cpu);
  for (int64_t t = 1; t <= 4; ++t) {
    const std::vector<float> g = random_floats(rng, rows * dim);
    ops.sparse_adam(sparse_step(sparse, all, g, hyper(t)));
    ops.adamw({dense.p.data(), g.data(), dense.m.data(), dense.v.data(), rows * dim, hyper(t)});
  }
  EXPECT_EQ(sparse.p, dense.p);
  EXPECT_EQ(sparse.m, dense.m);
  EXPECT_EQ(sparse.v, dense.v);
}

TEST(SparseAdam, IsLazyAcrossSteps) {
  // Row 2 has gradient at steps 1 and 3 only: at step 3 its moments decay once (not twice) and
  // the bias correction uses t = 3, as torch.optim.SparseAdam does.
  Rng rng("SparseAdam.IsLazyAcrossSteps");
  Table t{4, 5, random_floats(rng, 20), std::vector<float>(20, 0.0f), std::vector<float>(20, 0.0f)};
  Fp64Adam ref(t.p);
  const OptimOps& ops = optim_ops_for(Backend::cpu);
  const std::vector<std::vector<int64_t>> ids = {{0, 2}, {0, 1}, {2, 3}};
  for (int64_t s = 1; s <= 3; ++s) {
    const auto& rows = ids[s - 1];
    const std::vector<float> g = random_floats(rng, int64_t(rows.size()) * 5);
    ops.sparse_adam(sparse_step(t, rows, g, hyper(s)));
    for (std::size_t j = 0; j < rows.size(); ++j)
      for (int64_t c = 0; c < 5; ++c) ref.step_element(rows[j] * 5 + c, g[j * 5 + c], hyper(s));
  }
  expect_close("table", t.p, ref.p);
  expect_close("m", t.m, ref.m);
  expect_close("v", t.v, ref.v);
}

TEST(SparseAdam, BadRowIdsAreRefusedBeforeAnyWrite) {
  Rng rng("SparseAdam.BadRowIdsAreRefusedBeforeAnyWrite");
  Table t = random_table(rng, 10, 3);
  const Table before = t;
  const std::vector<float> g = random_floats(rng, 9);
  const OptimOps& ops = optim_ops_for(Backend::cpu);
  expect_error(
      [&] {
        ops.sparse_adam(sparse_step(t, {1, 5, 4}, g, hyper(1)));
      },
      "row id 4 at 2 follows 5 at 1: accepted are strictly ascending");
  expect_error(
      [&] {
        ops.sparse_adam(sparse_step(t, {1, 5, 5}, g, hyper(1)));
      },
      "row id 5 at 2 follows 5 at 1");
  expect_error(
      [&] {
        ops.sparse_adam(sparse_step(t, {1, 5, 10}, g, hyper(1)));
      },
      "row id 10 out of range [0, 10) at 2");
  EXPECT_EQ(t.p, before.p);
  EXPECT_EQ(t.m, before.m);
  EXPECT_EQ(t.v, before.v);
}

// ---- clipping and schedule ----

TEST(Clipping, SumOfSquaresAndScaleToMaxNorm) {
  Rng rng("Clipping.SumOfSquaresAndScaleToMaxNorm");
  const int64_t n = 100003;  // several fixed chunks and a partial one
  const std::vector<float> g = random_floats(rng, n);
  double want = 0;
  for (float x : g) want += double(x) * x;
  double got = -1;
  optim_ops_for(Backend::cpu).sum_squares({g.data(), n, &got});
  EXPECT_NEAR(got, want, 1e-12 * want);
  double again = -1;
  optim_ops_for(Backend::cpu).sum_squares({g.data(), n, &again});
  EXPECT_EQ(got, again);

  const double norm = std::sqrt(got);
  const float s = clip_scale(norm, 2.0);
  double scaled = 0;
  for (float x : g) scaled += double(x * s) * double(x * s);
  EXPECT_NEAR(std::sqrt(scaled), 2.0, 2.0 * 1e-6);
  EXPECT_EQ(clip_scale(1.5, 2.0), 1.0f) << "a norm below the limit is left alone";
  EXPECT_EQ(clip_scale(50.0, 0.0), 1.0f) << "max_norm ≤ 0 turns clipping off";
  expect_error([] { clip_scale(std::nan(""), 1.0); }, "the global gradient norm is nan");
  expect_error([] { clip_scale(INFINITY, 1.0); }, "the global gradient norm is inf");
}

TEST(Schedule, WarmupThenCosineToTheFloor) {
  const Schedule s{10, 100, 0.1};
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);  // warm-up start: 1/warmup, the first step moves
  EXPECT_DOUBLE_EQ(s.at(4), 0.5);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);  // warm-up end
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_DOUBLE_EQ(s.at(55), 0.55);  // half-way down the cosine
  EXPECT_DOUBLE_EQ(s.at(99), 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * 89 / 90)));
  EXPECT_DOUBLE_EQ(s.at(100), 0.1);  // the end
  EXPECT_DOUBLE_EQ(s.at(5000), 0.1);
  for (int64_t i = 10; i < 100; ++i) ASSERT_LT(s.at(i + 1), s.at(i)) << "step " << i;
  EXPECT_DOUBLE_EQ((Schedule{0, 10, 0.0}.at(0)), 1.0);
  EXPECT_DOUBLE_EQ((Schedule{0, 10, 0.0}.at(10)), 0.0);
  expect_error([] { Schedule{11, 10, 0.1}.at(0); }, "accepted are 0 ≤ warmup ≤ total");
  expect_error([] { Schedule{1, 10, 1.5}.at(0); }, "accepted are 0 ≤ floor ≤ 1");
  expect_error([] { Schedule{1, 10, 0.1}.at(-1); }, "step -1");
}

// ---- the optimiser ----

TEST(Optimizer, GroupsOfTheDenseModel) {
  Config c;
  c.vocab = 11, c.ctx = 6, c.d_model = 12, c.layers = 2, c.heads = 3, c.ffn_hidden = 8;
  const ParamLayout layout(c);
  const std::vector<ParamGroup> g = param_groups(layout);
  ASSERT_EQ(g.size(), layout.tensors().size());
  int64_t next = 0;
  for (const ParamGroup& x : g) {
    EXPECT_EQ(x.offset, next) << x.name;
    next += x.size;
    const bool linear = x.name.ends_with(".wqkv") || x.name.ends_with(".wo") ||
                        x.name.ends_with(".w13") || x.name.ends_with(".w2");
    EXPECT_EQ(x.decay, linear) << x.name;
  }
  EXPECT_EQ(next, layout.total());
}

TEST(Optimizer, StepsMatchFp64WithClippingScheduleAndTable) {
  Rng rng("Optimizer.StepsMatchFp64WithClippingScheduleAndTable");
  OptimConfig oc;
  oc.lr = 0.05f, oc.values_lr = 0.01f, oc.weight_decay = 0.2f, oc.values_weight_decay = 0.0f;
  oc.max_grad_norm = 3.0;  // below the gradients' norm (~sqrt(700/3)): clipping acts
  oc.schedule = {2, 5, 0.2};
  const std::vector<ParamGroup> groups = {{"a", 0, 300, true}, {"b", 300, 100, false}};
  const int64_t rows = 40, dim = 6;
  const OptimOps& ops = optim_ops_for(Backend::cpu);
  Optimizer opt(oc, ops, groups, 400, rows, dim);
  std::vector<float> params = random_floats(rng, 400), table = random_floats(rng, rows * dim);
  Fp64Adam dense_ref(params), table_ref(table);
  const std::vector<std::vector<int64_t>> ids = {{1, 5, 39}, {0, 5}, {5, 6, 7, 8}, {2}};
  for (int64_t s = 0; s < 4; ++s) {
    const std::vector<float> g = random_floats(rng, 400);
    const std::vector<float> vg = random_floats(rng, int64_t(ids[s].size()) * dim);
    const StepStats st = opt.step(params.data(), g.data(), table.data(),
                                  {ids[s].data(), vg.data(), int64_t(ids[s].size())});
    double sq = 0;
    for (float x : g) sq += double(x) * x;
    for (float x : vg) sq += double(x) * x;
    const double norm = std::sqrt(sq), clip = std::min(1.0, 3.0 / norm);
    ASSERT_NEAR(st.grad_norm, norm, 1e-12 * norm) << "step " << s;
    ASSERT_NEAR(st.clip, clip, 1e-7) << "step " << s;
    ASSERT_LT(st.clip, 1.0f) << "step " << s << ": clipping did not act";
    ASSERT_DOUBLE_EQ(st.lr_scale, oc.schedule.at(s));
    AdamHyper h;
    h.beta1 = oc.beta1, h.beta2 = oc.beta2, h.eps = oc.eps, h.step = s + 1;
    h.grad_scale = st.clip;  // the fp32 scale the steps apply, checked above
    h.lr = static_cast<float>(oc.lr * st.lr_scale);
    for (const ParamGroup& grp : groups) {
      h.weight_decay = grp.decay ? oc.weight_decay : 0.0f;
      for (int64_t i = grp.offset; i < grp.offset + grp.size; ++i)
        dense_ref.step_element(std::size_t(i), g[i], h);
    }
    h.lr = static_cast<float>(oc.values_lr * st.lr_scale), h.weight_decay = 0.0f;
    for (std::size_t j = 0; j < ids[s].size(); ++j)
      for (int64_t c = 0; c < dim; ++c)
        table_ref.step_element(std::size_t(ids[s][j] * dim + c), vg[j * dim + c], h);
  }
  EXPECT_EQ(opt.steps_taken(), 4);
  expect_close("dense params", params, dense_ref.p);
  expect_close("dense m", std::span(opt.m(), 400), dense_ref.m);
  expect_close("table", table, table_ref.p);
  expect_close("table v", std::span(opt.values_v(), rows * dim), table_ref.v);
  // Rows never given (3, 4, 9..38) are exactly their initial values.
  Rng again("Optimizer.StepsMatchFp64WithClippingScheduleAndTable");
  random_floats(again, 400);
  const std::vector<float> table0 = random_floats(again, rows * dim);
  for (int64_t r : {3, 4, 9, 20, 38})
    for (int64_t c = 0; c < dim; ++c) ASSERT_EQ(table[r * dim + c], table0[r * dim + c]) << r;
}

TEST(Optimizer, BadSetupsAndStepsAreRefused) {
  OptimConfig oc;
  const OptimOps& ops = optim_ops_for(Backend::cpu);
  expect_error(
      [&] {
        Optimizer o(oc, ops, {{"a", 0, 5, true}, {"b", 6, 4, false}}, 10);
      },
      "group 'b' covers [6, 10) but the next element is 5");
  expect_error(
      [&] {
        Optimizer o(oc, ops, {{"a", 0, 5, true}}, 10);
      },
      "the groups cover 5 of 10 dense parameters");
  expect_error(
      [&] {
        Optimizer o(oc, ops, {{"a", 0, 5, true}}, 5, 3, 0);
      },
      "value table 3 × 0: accepted are 0 × 0 (none) or both ≥ 1");
  OptimConfig bad = oc;
  bad.values_lr = -1.0f;
  expect_error([&] { Optimizer o(bad, ops, {{"a", 0, 5, true}}, 5); }, "lr is -1");

  Optimizer opt(oc, ops, {{"a", 0, 4, true}}, 4, 5, 2);
  std::vector<float> p(4, 1.0f), g(4, 0.5f), table(10, 1.0f), vg(4, 0.5f);
  const std::vector<float> p0 = p, table0 = table;
  const std::vector<int64_t> ids = {3, 1};
  expect_error(
      [&] {
        opt.step(p.data(), g.data(), table.data(), {ids.data(), vg.data(), 2});
      },
      "strictly ascending");
  EXPECT_EQ(p, p0) << "a refused step moved the dense parameters";
  EXPECT_EQ(table, table0);
  EXPECT_EQ(opt.steps_taken(), 0);
  expect_error([&] { opt.step(p.data(), g.data()); }, "the value table is null");
  std::vector<float> inf_g = g;
  inf_g[2] = INFINITY;
  expect_error([&] { opt.step(p.data(), inf_g.data(), table.data()); },
               "the global gradient norm is inf");
}

}  // namespace
}  // namespace memlayers::harness
