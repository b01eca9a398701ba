// The mixture-of-experts block (harness/moe.h) against its definition: on the reference backend,
// the gradients of x and every parameter against central finite differences of
// Σ dout·out + dbalance·balance (entries whose perturbation changes the routing are skipped and
// counted); the forward and the balancing loss against an fp64 implementation written here; the
// routing's ties, gates and token counts; an expert with no tokens; the cpu backend against the
// reference and bitwise repeatable; the declared FLOPs and parameters; errors.
// Build and run: cmake --build build --target harness_moe_test && ctest --test-dir build -L harness
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/error.h"
#include "harness/moe.h"
#include "tests/common/check.h"
#include "tests/common/random.h"
#include "tests/harness/expect_error.h"

namespace memlayers::harness {
namespace {

using test::expect_error;
using test::Rng;

// A block's inputs on the host (the backends tested here are host backends).
struct Problem {
  MoeConfig c;
  int64_t d = 0, rows = 0;
  std::vector<float> x, router, w13, w2, dout;
  MoeWeights weights() const { return {router.data(), w13.data(), w2.data()}; }
};

// Weights ±[0.05, 0.5] and x, dout ±[0.05, 1]: every path carries gradient and the router's
// probabilities are far from uniform.
Problem random_problem(Rng& rng, int64_t d, int64_t experts, int64_t top, int64_t hidden,
                       int64_t rows, double balance = 0.01) {
  Problem p;
  p.c.experts = experts, p.c.top = top, p.c.expert_hidden = hidden, p.c.balance = balance;
  p.d = d, p.rows = rows;
  auto fill = [&](std::vector<float>& v, int64_t n, float scale) {
    v.resize(static_cast<std::size_t>(n));
    for (float& e : v) e = scale * rng.signed_unit();
  };
  fill(p.x, rows * d, 1.0f), fill(p.dout, rows * d, 1.0f);
  fill(p.router, d * experts, 0.5f);
  fill(p.w13, experts * d * 2 * hidden, 0.5f), fill(p.w2, experts * hidden * d, 0.5f);
  return p;
}

struct Result {
  std::vector<float> out, dx, g_router, g_w13, g_w2;
  double balance = 0;
  MoeRouting routing;
};

// Forward and backward on `backend`. Outputs start poisoned (NaN), or at `dx0` when accumulating;
// the parameter gradients start at 0.25 so that the test sees they are added to.
Result run(Backend backend, const Problem& p, float dbalance = 1.0f,
           const std::vector<float>* dx0 = nullptr) {
  MoeBlock block(p.c, p.d, ops_for(backend));
  Result r;
  r.out.assign(p.x.size(), std::nanf(""));
  r.dx = dx0 ? *dx0 : std::vector<float>(p.x.size(), std::nanf(""));
  r.g_router.assign(p.router.size(), 0.25f);
  r.g_w13.assign(p.w13.size(), 0.25f);
  r.g_w2.assign(p.w2.size(), 0.25f);
  r.balance = block.forward(p.weights(), p.x.data(), r.out.data(), p.rows);
  block.backward(p.weights(), p.x.data(), p.dout.data(), r.dx.data(),
                 {r.g_router.data(), r.g_w13.data(), r.g_w2.data()}, p.rows, dx0 != nullptr,
                 dbalance);
  auto minus = [](std::vector<float>& v) {
    for (float& e : v) e -= 0.25f;
  };
  minus(r.g_router), minus(r.g_w13), minus(r.g_w2);
  r.routing = block.routing();
  return r;
}

// ---- an fp64 implementation of the block's forward, written from its definition ----

struct Forward64 {
  std::vector<double> out;
  std::vector<int32_t> picks;
  std::vector<double> gates;
  double balance = 0;
};

Forward64 forward64(const Problem& p) {
  const int64_t d = p.d, E = p.c.experts, K = p.c.top, h = p.c.expert_hidden;
  Forward64 f;
  f.out.assign(static_cast<std::size_t>(p.rows * d), 0.0);
  std::vector<double> mean_p(static_cast<std::size_t>(E), 0.0), count(mean_p);
  for (int64_t t = 0; t < p.rows; ++t) {
    const float* x = p.x.data() + t * d;
    std::vector<double> z(static_cast<std::size_t>(E), 0.0), prob(z);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = 0; i < d; ++i) z[e] += double{x[i]} * p.router[i * E + e];
    const double zmax = *std::max_element(z.begin(), z.end());
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(z[e] - zmax);
    for (int64_t e = 0; e < E; ++e) prob[e] = std::exp(z[e] - zmax) / s, mean_p[e] += prob[e];
    // Experts ordered by logit, descending, ties to the lower index: a stable sort.
    std::vector<int32_t> order(static_cast<std::size_t>(E));
    for (int64_t e = 0; e < E; ++e) order[e] = static_cast<int32_t>(e);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return z[a] > z[b]; });
    double picked = 0;
    for (int64_t j = 0; j < K; ++j) picked += prob[order[j]];
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = order[j];
      const double g = prob[e] / picked;
      f.picks.push_back(e), f.gates.push_back(g), count[e] += 1;
      const float* w13 = p.w13.data() + e * d * 2 * h;
      const float* w2 = p.w2.data() + e * h * d;
      for (int64_t c = 0; c < h; ++c) {
        double a = 0, b = 0;
        for (int64_t i = 0; i < d; ++i)
          a += double{x[i]} * w13[i * 2 * h + c], b += double{x[i]} * w13[i * 2 * h + h + c];
        const double act = a / (1 + std::exp(-a)) * b;
        for (int64_t o = 0; o < d; ++o) f.out[t * d + o] += g * act * w2[c * d + o];
      }
    }
  }
  for (int64_t e = 0; e < E; ++e)
    f.balance += count[e] / double(K * p.rows) * mean_p[e] / double(p.rows);
  f.balance *= p.c.balance * double(E);
  return f;
}

double rel_norm(const std::vector<double>& got, const std::vector<double>& want) {
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    diff += (got[i] - want[i]) * (got[i] - want[i]), ref += want[i] * want[i];
  return std::sqrt(diff / ref);
}

std::vector<double> doubles(const std::vector<float>& v) {
  return test::to_doubles(v.data(), DType::f32, v.size());
}

void expect_close(const std::string& what, const std::vector<float>& got,
                  const std::vector<float>& want) {
  const std::vector<double> w = doubles(want), g = doubles(got);
  ASSERT_GT(test::norm(w), 0) << what << ": the reference is all zeros";
  const test::CheckResult r = test::compare(what, g, w, test::tolerance_for(DType::f32, w));
  EXPECT_TRUE(r.ok) << r.message;
}

// ---- gradients against finite differences ----

// Checks the reference backend's gradients of x and every parameter against central differences
// of Σ dout·out + dbalance·balance. `with_outputs` false drops the first term (dout = 0), which
// isolates the balancing loss's gradient (then w13 and w2 get none).
void check_gradients(Problem p, float dbalance, bool with_outputs, const std::string& name) {
  if (!with_outputs) std::fill(p.dout.begin(), p.dout.end(), 0.0f);
  const Result an = run(Backend::reference, p, dbalance);
  MoeBlock block(p.c, p.d, ops_for(Backend::reference));
  std::vector<float> out(p.x.size());
  std::vector<int32_t> picks;
  auto objective = [&]() {
    const double balance = block.forward(p.weights(), p.x.data(), out.data(), p.rows);
    picks = block.routing().picks;
    double s = 0;
    for (std::size_t i = 0; i < out.size(); ++i) s += double{p.dout[i]} * out[i];
    return s + double{dbalance} * balance;
  };
  // The forward runs in fp32 between ops, so the objective carries ~1e-7 relative rounding: the
  // step is large (1e-2) to keep that below the gradient; the truncation O(h²) stays ~1e-4. Where
  // that step reroutes a token (a near-tie between the last pick and the next expert), a 10×
  // smaller one is tried before the entry is skipped.
  const float steps[] = {1e-2f, 1e-3f};
  struct Tensor {
    const char* name;
    std::vector<float>* values;
    const std::vector<float>* grad;
  };
  for (const Tensor& t : {Tensor{"x", &p.x, &an.dx}, Tensor{"router", &p.router, &an.g_router},
                          Tensor{"w13", &p.w13, &an.g_w13}, Tensor{"w2", &p.w2, &an.g_w2}}) {
    std::vector<double> fd, a;
    int64_t skipped_here = 0;
    for (std::size_t i = 0; i < t.values->size(); ++i) {
      float& v = (*t.values)[i];
      const float v0 = v;
      bool same_routing = false;
      for (float h : steps) {
        v = v0 + h;
        const double up = objective(), step_up = double{v} - v0;
        const bool up_same = picks == an.routing.picks;
        v = v0 - h;
        const double down = objective(), step = step_up + (v0 - double{v});
        v = v0;
        same_routing = up_same && picks == an.routing.picks;
        if (!same_routing) continue;  // a different routing is a different function
        fd.push_back((up - down) / step);
        a.push_back((*t.grad)[i]);
        break;
      }
      skipped_here += same_routing ? 0 : 1;
    }
    if (!with_outputs && (t.grad == &an.g_w13 || t.grad == &an.g_w2)) {
      EXPECT_EQ(test::norm(a), 0) << name << " " << t.name << ": gradient without a path";
      continue;
    }
    // Each tensor keeps most of its entries, or the check would test little of it.
    EXPECT_LE(skipped_here * 4, static_cast<int64_t>(t.values->size()))
        << name << " " << t.name << ": " << skipped_here << " of " << t.values->size()
        << " entries changed the routing at every step and were skipped";
    if (fd.empty() || test::norm(a) == 0) {
      ADD_FAILURE() << name << " " << t.name
                    << (fd.empty() ? ": every entry changed the routing" : ": the gradient is 0");
      continue;
    }
    const double err = rel_norm(a, fd);
    std::printf("%s %s: ‖analytic − fd‖ / ‖fd‖ = %.2g over %zu entries (%lld skipped)\n",
                name.c_str(), t.name, err, fd.size(), static_cast<long long>(skipped_here));
    EXPECT_LE(err, 2e-3) << name << " " << t.name << ": ‖analytic − fd‖ / ‖fd‖ = " << err;
  }
}

TEST(Moe, ReferenceGradientsMatchFiniteDifferences_top2) {
  Rng rng("Moe.ReferenceGradientsMatchFiniteDifferences_top2");
  // α 0.3 and dbalance 0.7 make the balancing term's gradient as large as the outputs' share.
  const Problem p = random_problem(rng, 8, 4, 2, 6, 9, 0.3);
  check_gradients(p, 0.7f, true, "top2");
}

TEST(Moe, ReferenceGradientsMatchFiniteDifferences_top3) {
  Rng rng("Moe.ReferenceGradientsMatchFiniteDifferences_top3");
  const Problem p = random_problem(rng, 8, 5, 3, 6, 9, 0.3);
  check_gradients(p, 1.0f, true, "top3");
}

TEST(Moe, BalancingLossGradientAloneMatchesFiniteDifferences) {
  Rng rng("Moe.BalancingLossGradientAloneMatchesFiniteDifferences");
  const Problem p = random_problem(rng, 8, 4, 2, 6, 9);  // α 0.01, the default
  check_gradients(p, 1.0f, false, "balance only");
}

// ---- forward and routing ----

TEST(Moe, ForwardMatchesFp64Definition) {
  Rng rng("Moe.ForwardMatchesFp64Definition");
  for (int64_t top : {2, 3}) {
    const Problem p = random_problem(rng, 8, 4, top, 6, 9);
    const Result r = run(Backend::reference, p);
    const Forward64 f = forward64(p);
    ASSERT_EQ(r.routing.picks, f.picks) << "top " << top;
    const std::vector<double> out = doubles(r.out);
    ASSERT_GT(test::norm(f.out), 0);
    const test::CheckResult c =
        test::compare("out", out, f.out, test::tolerance_for(DType::f32, f.out));
    EXPECT_TRUE(c.ok) << "top " << top << ": " << c.message;
    EXPECT_NEAR(r.balance, f.balance, 1e-6 * f.balance) << "top " << top;
    for (std::size_t i = 0; i < f.gates.size(); ++i)
      EXPECT_NEAR(r.routing.gates[i], f.gates[i], 1e-6) << "top " << top << " gate " << i;
  }
}

TEST(Moe, RoutingInvariants) {
  Rng rng("Moe.RoutingInvariants");
  const Problem p = random_problem(rng, 8, 5, 2, 6, 23);
  const Result r = run(Backend::reference, p);
  const MoeRouting& m = r.routing;
  int64_t total = 0;
  for (int64_t n : m.tokens) total += n;
  EXPECT_EQ(total, 2 * p.rows);
  for (int64_t t = 0; t < p.rows; ++t) {
    double prob = 0;
    for (int64_t e = 0; e < 5; ++e) prob += m.probs[t * 5 + e];
    EXPECT_NEAR(prob, 1.0, 1e-6) << "row " << t;
    EXPECT_NEAR(double{m.gates[2 * t]} + m.gates[2 * t + 1], 1.0, 1e-6) << "row " << t;
    EXPECT_NE(m.picks[2 * t], m.picks[2 * t + 1]) << "row " << t;
    EXPECT_GE(m.probs[t * 5 + m.picks[2 * t]], m.probs[t * 5 + m.picks[2 * t + 1]]) << "row " << t;
    for (int64_t j = 0; j < 2; ++j)
      EXPECT_EQ(m.gather_ids[m.slots[2 * t + j]], t) << "row " << t << " pick " << j;
  }
  // Each expert's gathered rows hold its tokens in ascending order.
  for (int64_t e = 0; e < 5; ++e)
    for (int64_t s = m.offsets[e] + 1; s < m.offsets[e + 1]; ++s)
      EXPECT_LT(m.gather_ids[s - 1], m.gather_ids[s]) << "expert " << e;
}

TEST(Moe, TiesGoToTheLowerExpert) {
  Rng rng("Moe.TiesGoToTheLowerExpert");
  Problem p = random_problem(rng, 8, 4, 2, 6, 9, 0.05);
  // Every router column equal: every logit ties, the picks are experts 0 then 1 for every token,
  // p = 1/4 and the gates 1/2. The balancing loss by hand: f = (1/2, 1/2, 0, 0), P = 1/4 each,
  // α·4·(1/2·1/4 + 1/2·1/4) = α.
  for (int64_t i = 0; i < p.d; ++i)
    for (int64_t e = 1; e < 4; ++e) p.router[i * 4 + e] = p.router[i * 4];
  Result r = run(Backend::reference, p);
  for (int64_t t = 0; t < p.rows; ++t) {
    EXPECT_EQ(r.routing.picks[2 * t], 0) << "row " << t;
    EXPECT_EQ(r.routing.picks[2 * t + 1], 1) << "row " << t;
    EXPECT_FLOAT_EQ(r.routing.gates[2 * t], 0.5f);
    EXPECT_FLOAT_EQ(r.routing.probs[4 * t + 3], 0.25f);
  }
  EXPECT_EQ(r.routing.tokens, (std::vector<int64_t>{9, 9, 0, 0}));
  EXPECT_NEAR(r.balance, 0.05, 1e-7);

  // Columns 2 and 3 equal and far above 0 and 1 for x > 0: the picks are 2 then 3.
  for (float& v : p.x) v = std::abs(v);
  for (int64_t i = 0; i < p.d; ++i) {
    p.router[i * 4 + 0] = -0.5f, p.router[i * 4 + 1] = -0.25f;
    p.router[i * 4 + 2] = p.router[i * 4 + 3] = 0.5f;
  }
  r = run(Backend::reference, p);
  for (int64_t t = 0; t < p.rows; ++t) {
    EXPECT_EQ(r.routing.picks[2 * t], 2) << "row " << t;
    EXPECT_EQ(r.routing.picks[2 * t + 1], 3) << "row " << t;
  }
  // f = (0, 0, 1/2, 1/2): α·4·(P_2 + P_3)/2 with P_2 = P_3 from the fp64 definition.
  EXPECT_NEAR(r.balance, forward64(p).balance, 1e-6 * r.balance);
  EXPECT_EQ(r.routing.tokens, (std::vector<int64_t>{0, 0, 9, 9}));
}

// Expert 3's router column is negative and the others positive, with x > 0: expert 3 gets no
// token. The block still matches its definition and finite differences, and expert 3's weights
// get no gradient.
TEST(Moe, ExpertWithNoTokens) {
  Rng rng("Moe.ExpertWithNoTokens");
  Problem p = random_problem(rng, 8, 4, 2, 6, 9, 0.3);
  for (float& v : p.x) v = std::abs(v);
  for (int64_t i = 0; i < p.d; ++i)
    for (int64_t e = 0; e < 4; ++e)
      p.router[i * 4 + e] = (e == 3 ? -1.0f : 1.0f) * std::abs(p.router[i * 4 + e]);
  const Result r = run(Backend::reference, p);
  ASSERT_EQ(r.routing.tokens[3], 0);
  const int64_t h = p.c.expert_hidden, d = p.d;
  for (int64_t i = 3 * d * 2 * h; i < 4 * d * 2 * h; ++i) ASSERT_EQ(r.g_w13[i], 0.0f);
  for (int64_t i = 3 * h * d; i < 4 * h * d; ++i) ASSERT_EQ(r.g_w2[i], 0.0f);
  const Forward64 f = forward64(p);
  const test::CheckResult c =
      test::compare("out", doubles(r.out), f.out, test::tolerance_for(DType::f32, f.out));
  EXPECT_TRUE(c.ok) << c.message;
  check_gradients(p, 1.0f, true, "expert 3 idle");
  const Result cpu = run(Backend::cpu, p);
  expect_close("cpu out", cpu.out, r.out);
  expect_close("cpu dx", cpu.dx, r.dx);
}

// ---- cpu against reference ----

TEST(Moe, CpuMatchesReference) {
  Rng rng("Moe.CpuMatchesReference");
  struct Shape {
    int64_t d, experts, top, hidden, rows;
  };
  for (const Shape s : {Shape{8, 4, 2, 6, 9}, Shape{33, 5, 3, 7, 37}, Shape{64, 8, 2, 48, 70}}) {
    const std::string name =
        fmt::format("d{}_E{}_top{}_h{}_rows{}", s.d, s.experts, s.top, s.hidden, s.rows);
    const Problem p = random_problem(rng, s.d, s.experts, s.top, s.hidden, s.rows, 0.1);
    std::vector<float> dx0(p.x.size());
    for (float& v : dx0) v = rng.signed_unit();
    for (bool accumulate : {false, true}) {
      const std::vector<float>* start = accumulate ? &dx0 : nullptr;
      const Result ref = run(Backend::reference, p, 0.5f, start);
      const Result cpu = run(Backend::cpu, p, 0.5f, start);
      ASSERT_EQ(cpu.routing.picks, ref.routing.picks) << name;
      EXPECT_NEAR(cpu.balance, ref.balance, 1e-5 * ref.balance) << name;
      expect_close(name + " out", cpu.out, ref.out);
      expect_close(name + " dx", cpu.dx, ref.dx);
      expect_close(name + " d router", cpu.g_router, ref.g_router);
      expect_close(name + " d w13", cpu.g_w13, ref.g_w13);
      expect_close(name + " d w2", cpu.g_w2, ref.g_w2);
    }
  }
}

TEST(Moe, CpuIsBitwiseRepeatable) {
  Rng rng("Moe.CpuIsBitwiseRepeatable");
  const Problem p = random_problem(rng, 64, 8, 2, 48, 70);
  const Result a = run(Backend::cpu, p), b = run(Backend::cpu, p);
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.dx, b.dx);
  EXPECT_EQ(a.g_router, b.g_router);
  EXPECT_EQ(a.g_w13, b.g_w13);
  EXPECT_EQ(a.g_w2, b.g_w2);
}

// ---- declarations and errors ----

TEST(Moe, FlopsMatchTheDenseBlockAtHalfWidth) {
  MoeConfig c;
  const int64_t d = 128, ffn = 344;
  c.experts = 4, c.top = 2, c.expert_hidden = ffn / 2;
  EXPECT_DOUBLE_EQ(MoeBlock::active_flops_per_token(c, d), 6.0 * d * ffn + 2.0 * d * 4);
  EXPECT_EQ(MoeBlock::param_floats(c, d), d * 4 + 4 * d * 2 * 172 + 4 * 172 * d);
}

TEST(Moe, Errors) {
  const Ops& ops = ops_for(Backend::reference);
  auto config = [](int64_t experts, int64_t top, int64_t hidden, double balance = 0.01) {
    MoeConfig c;
    c.experts = experts, c.top = top, c.expert_hidden = hidden, c.balance = balance;
    return c;
  };
  expect_error([&] { MoeBlock(config(1, 1, 4), 8, ops); },
               "experts is 1: accepted are experts ≥ 2");
  expect_error([&] { MoeBlock(config(3, 4, 4), 8, ops); }, "accepted are 2 ≤ top ≤ experts");
  expect_error([&] { MoeBlock(config(3, 1, 4), 8, ops); }, "top is 1 with 3 experts");
  expect_error([&] { MoeBlock(config(3, 2, 0), 8, ops); }, "expert_hidden is 0");
  expect_error([&] { MoeBlock(config(3, 2, 4, -1), 8, ops); }, "balance is -1");
  expect_error([&] { MoeBlock(config(3, 2, 4, NAN), 8, ops); }, "accepted is a finite α ≥ 0");
  expect_error([&] { MoeBlock(config(3, 2, 4), 0, ops); }, "d_model is 0");

  Rng rng("Moe.Errors");
  Problem p = random_problem(rng, 8, 4, 2, 6, 9);
  MoeBlock block(p.c, p.d, ops);
  std::vector<float> out(p.x.size()), dx(p.x.size()), g1(p.router.size()), g2(p.w13.size()),
      g3(p.w2.size());
  const MoeGrads grads{g1.data(), g2.data(), g3.data()};
  expect_error(
      [&] {
        block.backward(p.weights(), p.x.data(), p.dout.data(), dx.data(), grads, p.rows, false);
      },
      "no forward of this x with 9 rows precedes it");
  block.forward(p.weights(), p.x.data(), out.data(), p.rows);
  expect_error(
      [&] { block.backward(p.weights(), p.x.data(), p.dout.data(), dx.data(), grads, 8, false); },
      "no forward of this x with 8 rows");
  expect_error([&] { block.forward(p.weights(), p.x.data(), out.data(), 0); }, "rows is 0");
  expect_error([&] { block.forward({}, p.x.data(), out.data(), p.rows); },
               "a weight pointer is null");
  p.x[3 * p.d + 1] = NAN;
  expect_error([&] { block.forward(p.weights(), p.x.data(), out.data(), p.rows); },
               "router logit nan at row 3");
  // The failed forward leaves nothing for a backward.
  expect_error(
      [&] {
        block.backward(p.weights(), p.x.data(), p.dout.data(), dx.data(), grads, p.rows, false);
      },
      "no forward of this x");
}

}  // namespace
}  // namespace memlayers::harness
