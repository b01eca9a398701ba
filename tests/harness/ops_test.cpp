// harness::Ops against their definitions: each reference backward against central finite
// differences of the reference forward computed in fp64 (harness/ops_reference.h), on tiny odd
// shapes; each cpu entry against the reference, forward and backward, on the same seeded inputs
// (DESIGN.md §4: outputs poisoned first, accumulating outputs start from non-zero values, inputs
// and references non-trivial, fp32 tolerances); a planted wrong backward the checker must
// reject; and the errors bad params get.
// Build and run: cmake --build build --target harness_ops_test && ctest --test-dir build -L harness
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "harness/ops.h"
#include "harness/ops_reference.h"
#include "tests/common/random.h"
#include "tests/harness/ops_cases.h"

namespace memlayers::harness {
namespace {

using ops_cases::BackendRun;
using ops_cases::current_test;
using ops_cases::OpsShape;
using ops_cases::Outputs;
using ops_cases::random_floats;
using ops_cases::random_ids;
using test::Rng;

double dot(const std::vector<double>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ---- finite differences ----

struct FdResult {
  bool ok = true;
  std::string message;
};

// Central differences of `loss` in every element of `x` against `grad`. The step is h in fp32
// (the difference actually taken is used), the loss fp64 and unrounded, so the truncation error
// O(h²) ≈ 1e-8 of the scale dominates; the analytic gradient is fp32-rounded.
FdResult finite_differences(const std::string& what, std::vector<float>& x,
                            const std::vector<float>& grad, const std::function<double()>& loss) {
  FdResult r;
  if (grad.size() != x.size()) {
    r.ok = false;
    r.message =
        fmt::format("{}: gradient has {} elements, the tensor {}", what, grad.size(), x.size());
    return r;
  }
  double worst = 0, scale = 0;
  int64_t worst_at = -1;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float x0 = x[i], h = 1e-4f;
    x[i] = x0 + h;
    const double up = loss(), step_up = double{x[i]} - x0;
    x[i] = x0 - h;
    const double down = loss(), step = step_up + (x0 - double{x[i]});
    x[i] = x0;
    const double fd = (up - down) / step, err = std::abs(fd - grad[i]);
    if (!(err <= worst)) worst = err, worst_at = int64_t(i);
    scale = std::max(scale, std::abs(fd));
  }
  if (!(scale > 0)) {
    r.ok = false;
    r.message = fmt::format("{}: every finite difference is zero", what);
  } else if (!(worst <= 2e-6 * scale + 1e-7)) {
    r.ok = false;
    r.message =
        fmt::format("{}: worst |fd − analytic| {:.3g} at [{}] (analytic {:.8g}), scale {:.3g}",
                    what, worst, worst_at, grad[worst_at], scale);
  }
  return r;
}

void expect_fd(const std::string& what, std::vector<float>& x, const std::vector<float>& grad,
               const std::function<double()>& loss) {
  const FdResult r = finite_differences(what, x, grad, loss);
  EXPECT_TRUE(r.ok) << r.message;
}

const Ops& ref() { return ops_for(Backend::reference); }

// ---- the reference backward against finite differences ----

TEST(OpsGradCheck, Embedding) {
  Rng rng(current_test());
  const int64_t rows = 9, num_rows = 5, dim = 12;  // 9 ids over 5 rows: duplicates
  const std::vector<int32_t> ids = random_ids(rng, rows, num_rows);
  std::vector<float> table = random_floats(rng, num_rows * dim),
                     base = random_floats(rng, rows * dim);
  const std::vector<float> R = random_floats(rng, rows * dim);
  for (bool accumulate : {false, true}) {
    EmbeddingFwd f{ids.data(), table.data(), base.data(), rows, num_rows, dim, accumulate};
    std::vector<float> dtable(table.size(), 0.0f);
    ref().embedding_bwd({ids.data(), R.data(), dtable.data(), rows, num_rows, dim});
    expect_fd(accumulate ? "table (accumulate)" : "table", table, dtable,
              [&] { return dot(reference::embedding_fwd64(f), R); });
  }
}

TEST(OpsGradCheck, RmsNorm) {
  Rng rng(current_test());
  const int64_t rows = 5, dim = 12;
  std::vector<float> x = random_floats(rng, rows * dim), scale = random_floats(rng, dim);
  const std::vector<float> R = random_floats(rng, rows * dim);
  std::vector<float> y(x.size()), inv(rows), dx(x.size()), dscale(dim, 0.0f);
  const RmsNormFwd f{x.data(), scale.data(), y.data(), inv.data(), rows, dim};
  ref().rmsnorm_fwd(f);
  ref().rmsnorm_bwd(
      {x.data(), scale.data(), inv.data(), R.data(), dx.data(), dscale.data(), rows, dim});
  auto loss = [&] { return dot(reference::rmsnorm_fwd64(f), R); };
  expect_fd("x", x, dx, loss);
  expect_fd("scale", scale, dscale, loss);
}

TEST(OpsGradCheck, Linear) {
  Rng rng(current_test());
  const int64_t rows = 5, in = 7, out = 12;
  for (bool transposed : {false, true})
    for (bool bias : {false, true}) {
      SCOPED_TRACE(fmt::format("transposed_w {} bias {}", transposed, bias));
      std::vector<float> x = random_floats(rng, rows * in), w = random_floats(rng, in * out);
      std::vector<float> b = random_floats(rng, out);
      const std::vector<float> R = random_floats(rng, rows * out);
      std::vector<float> y(rows * out), dx(x.size()), dw(w.size(), 0.0f), db(out, 0.0f);
      const LinearFwd f{x.data(), w.data(),  bias ? b.data() : nullptr, y.data(), rows, in,
                        out,      transposed};
      ref().linear_bwd({x.data(), w.data(), R.data(), dx.data(), dw.data(),
                        bias ? db.data() : nullptr, rows, in, out, transposed});
      auto loss = [&] { return dot(reference::linear_fwd64(f), R); };
      expect_fd("x", x, dx, loss);
      expect_fd("w", w, dw, loss);
      if (bias) expect_fd("b", b, db, loss);
    }
}

struct AttentionShape {
  int64_t batch, seq, heads, d;
};

TEST(OpsGradCheck, Attention) {
  Rng rng(current_test());
  const AttentionShape s{2, 5, 3, 12};
  const int64_t rows = s.batch * s.seq;
  for (bool packed : {true, false}) {
    SCOPED_TRACE(packed ? "packed qkv" : "separate q, k, v");
    const int64_t ld = packed ? 3 * s.d : s.d;
    std::vector<float> q, k, v, dq, dk, dv;
    std::vector<float> qkv = random_floats(rng, rows * 3 * s.d), dqkv(qkv.size());
    if (!packed) {
      q = random_floats(rng, rows * s.d), k = random_floats(rng, rows * s.d);
      v = random_floats(rng, rows * s.d);
      dq.resize(q.size()), dk.resize(q.size()), dv.resize(q.size());
    }
    auto qp = [&] { return packed ? qkv.data() : q.data(); };
    auto kp = [&] { return packed ? qkv.data() + s.d : k.data(); };
    auto vp = [&] { return packed ? qkv.data() + 2 * s.d : v.data(); };
    const std::vector<float> R = random_floats(rng, rows * s.d);
    std::vector<float> out(rows * s.d), lse(s.batch * s.heads * s.seq);
    const AttentionFwd f{qp(),       kp(),    vp(),  ld,      out.data(),
                         lse.data(), s.batch, s.seq, s.heads, s.d};
    ref().attention_fwd(f);
    const PackedQkv g =
        packed ? packed_qkv(dqkv.data(), s.d) : PackedQkv{dq.data(), dk.data(), dv.data(), s.d};
    ref().attention_bwd({qp(), kp(), vp(), ld, out.data(), lse.data(), R.data(), g.q, g.k, g.v,
                         s.batch, s.seq, s.heads, s.d});
    auto loss = [&] { return dot(reference::attention_fwd64(f), R); };
    if (packed) {
      expect_fd("qkv", qkv, dqkv, loss);
    } else {
      expect_fd("q", q, dq, loss);
      expect_fd("k", k, dk, loss);
      expect_fd("v", v, dv, loss);
    }
  }
}

// The causal mask: position i's output does not move when a later position's k or v does.
TEST(OpsGradCheck, AttentionIsCausal) {
  Rng rng(current_test());
  const AttentionShape s{1, 5, 3, 12};
  std::vector<float> qkv = random_floats(rng, s.seq * 3 * s.d), out(s.seq * s.d);
  const AttentionFwd f{qkv.data(),
                       qkv.data() + s.d,
                       qkv.data() + 2 * s.d,
                       3 * s.d,
                       out.data(),
                       nullptr,
                       s.batch,
                       s.seq,
                       s.heads,
                       s.d};
  const std::vector<double> before = reference::attention_fwd64(f);
  for (int64_t c = s.d; c < 3 * s.d; ++c) qkv[(s.seq - 1) * 3 * s.d + c] += 0.5f;
  const std::vector<double> after = reference::attention_fwd64(f);
  for (int64_t i = 0; i < (s.seq - 1) * s.d; ++i) ASSERT_EQ(before[i], after[i]) << "at " << i;
  EXPECT_NE(before.back(), after.back());
}

TEST(OpsGradCheck, Swiglu) {
  Rng rng(current_test());
  const int64_t rows = 5, hidden = 7;
  for (bool packed : {true, false}) {
    SCOPED_TRACE(packed ? "packed [a | b]" : "separate a, b");
    const int64_t ld = packed ? 2 * hidden : hidden;
    std::vector<float> ab = random_floats(rng, rows * 2 * hidden, 2.0f), dab(ab.size());
    std::vector<float> a = random_floats(rng, rows * hidden, 2.0f), da(a.size());
    std::vector<float> b = random_floats(rng, rows * hidden), db(b.size());
    const std::vector<float> R = random_floats(rng, rows * hidden);
    float* ap = packed ? ab.data() : a.data();
    float* bp = packed ? ab.data() + hidden : b.data();
    float* dap = packed ? dab.data() : da.data();
    float* dbp = packed ? dab.data() + hidden : db.data();
    std::vector<float> out(rows * hidden);
    const SwigluFwd f{ap, bp, ld, out.data(), rows, hidden};
    ref().swiglu_bwd({ap, bp, ld, R.data(), dap, dbp, rows, hidden});
    auto loss = [&] { return dot(reference::swiglu_fwd64(f), R); };
    if (packed) {
      expect_fd("ab", ab, dab, loss);
    } else {
      expect_fd("a", a, da, loss);
      expect_fd("b", b, db, loss);
    }
  }
}

TEST(OpsGradCheck, CrossEntropy) {
  Rng rng(current_test());
  const int64_t rows = 5, vocab = 11;
  std::vector<float> logits = random_floats(rng, rows * vocab, 3.0f), dlogits(logits.size());
  std::vector<int32_t> targets = random_ids(rng, rows, vocab);
  for (bool weighted : {false, true}) {
    SCOPED_TRACE(weighted ? "weights, one padding row" : "no weights");
    std::vector<float> w = {0.5f, 1.0f, 0.0f, 2.0f, 1.0f};
    if (weighted) targets[2] = -1;  // padding: weight 0, any target
    const float* wp = weighted ? w.data() : nullptr;
    const float dloss = 0.75f;
    ref().cross_entropy_bwd(
        {logits.data(), targets.data(), wp, dloss, dlogits.data(), rows, vocab});
    const CrossEntropyFwd f{logits.data(), targets.data(), wp, nullptr, rows, vocab};
    expect_fd("logits", logits, dlogits, [&] { return dloss * reference::cross_entropy_fwd64(f); });
    if (weighted) {
      for (int64_t c = 0; c < vocab; ++c) EXPECT_EQ(dlogits[2 * vocab + c], 0.0f);
    }
    targets[2] = 3;
  }
}

// A planted wrong backward — SwiGLU's da without σ's derivative term — must be rejected by the
// finite-difference check above.
TEST(OpsGradCheck, RejectsPlantedWrongBackward) {
  Rng rng(current_test());
  const int64_t rows = 5, hidden = 7;
  std::vector<float> a = random_floats(rng, rows * hidden, 2.0f), b = random_floats(rng, a.size());
  const std::vector<float> R = random_floats(rng, rows * hidden);
  std::vector<float> da(a.size()), out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    const float s = 1.0f / (1.0f + std::exp(-a[i]));
    da[i] = R[i] * b[i] * s;  // missing (1 + a·(1 − σ(a)))
  }
  const SwigluFwd f{a.data(), b.data(), hidden, out.data(), rows, hidden};
  const FdResult r =
      finite_differences("a", a, da, [&] { return dot(reference::swiglu_fwd64(f), R); });
  EXPECT_FALSE(r.ok) << "the planted wrong gradient passed the finite-difference check";
}

// ---- cpu against the reference ----

// Runs `body` on the reference and on the cpu backend from the same seeded inputs (`body` draws
// them from the Rng it is given) and compares every output it declared.
void expect_cpu_matches_reference(const ops_cases::Case& body) {
  auto run_on = [&](Backend b) {
    Rng rng(current_test());
    BackendRun run(ops_for(b));
    body(run, rng);
    return run.results();
  };
  const Outputs want = run_on(Backend::reference), got = run_on(Backend::cpu);
  ASSERT_EQ(want.size(), got.size());
  ASSERT_FALSE(want.empty());
  for (std::size_t i = 0; i < want.size(); ++i)
    ops_cases::expect_close(want[i].first, got[i].second, want[i].second, "reference");
}

// Tiny odd shapes and one large enough to split over threads and column blocks.
const OpsShape kCpuShapes[] = {{1, 2, 1, 2, 1, 2}, {2, 5, 3, 12, 7, 11}, {3, 37, 6, 96, 130, 257}};

class CpuVsReference : public ::testing::TestWithParam<OpsShape> {};

TEST_P(CpuVsReference, Embedding) {
  ops_cases::embedding_variants(GetParam(), expect_cpu_matches_reference);
}

TEST_P(CpuVsReference, RmsNorm) {
  ops_cases::rmsnorm_variants(GetParam(), expect_cpu_matches_reference);
}

TEST_P(CpuVsReference, Linear) {
  ops_cases::linear_variants(GetParam(), expect_cpu_matches_reference);
}

TEST_P(CpuVsReference, Attention) {
  ops_cases::attention_variants(GetParam(), expect_cpu_matches_reference);
}

TEST_P(CpuVsReference, Swiglu) {
  expect_cpu_matches_reference(ops_cases::swiglu(GetParam(), /*packed=*/true));
}

TEST_P(CpuVsReference, AddInPlace) {
  expect_cpu_matches_reference(ops_cases::add(GetParam(), /*out_of_place=*/false));
}

TEST_P(CpuVsReference, CrossEntropy) {
  for (bool weighted : {false, true})
    expect_cpu_matches_reference(
        ops_cases::cross_entropy(GetParam(), weighted, /*padding_target=*/false));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuVsReference, ::testing::ValuesIn(kCpuShapes),
                         [](const auto& i) { return ops_cases::shape_name(i.param); });

// The cpu backend is bitwise deterministic: the attention backward twice, same bytes.
TEST(CpuOps, AttentionBackwardIsDeterministic) {
  Rng rng(current_test());
  const AttentionShape s{3, 37, 6, 96};
  const int64_t rows = s.batch * s.seq;
  const Ops& cpu = ops_for(Backend::cpu);
  std::vector<float> qkv = random_floats(rng, rows * 3 * s.d), out(rows * s.d),
                     lse(s.batch * s.heads * s.seq), dout = random_floats(rng, rows * s.d);
  const PackedQkv in = packed_qkv(qkv.data(), s.d);
  cpu.attention_fwd(
      {in.q, in.k, in.v, in.ld, out.data(), lse.data(), s.batch, s.seq, s.heads, s.d});
  std::vector<float> first(qkv.size()), second(qkv.size());
  for (auto* d : {&first, &second}) {
    const PackedQkv g = packed_qkv(d->data(), s.d);
    cpu.attention_bwd({in.q, in.k, in.v, in.ld, out.data(), lse.data(), dout.data(), g.q, g.k, g.v,
                       s.batch, s.seq, s.heads, s.d});
  }
  EXPECT_EQ(0, std::memcmp(first.data(), second.data(), first.size() * sizeof(float)));
}

// ---- errors ----

class OpsErrors : public ::testing::TestWithParam<Backend> {};

TEST_P(OpsErrors, BadParamsAreRefused) {
  ops_cases::expect_bad_params_refused(ops_for(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Backends, OpsErrors, ::testing::Values(Backend::reference, Backend::cpu),
                         [](const auto& i) { return std::string(to_string(i.param)); });

// cuda (its table, or why it is not usable or not built) is checked by ops_simt_test.cpp.
TEST(OpsFor, BuiltBackendsAreReturned) {
  for (Backend b : {Backend::reference, Backend::cpu, Backend::simt})
    EXPECT_EQ(ops_for(b).backend, b);
}

}  // namespace
}  // namespace memlayers::harness
