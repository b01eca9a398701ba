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
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "harness/ops.h"
#include "harness/ops_reference.h"
#include "tests/common/buffer.h"
#include "tests/common/check.h"
#include "tests/common/random.h"
#include "tests/harness/expect_error.h"

namespace memlayers::harness {
namespace {

using test::DeviceBuffer;
using test::expect_error;
using test::Rng;

std::vector<float> random_floats(Rng& rng, int64_t n, float scale = 1.0f) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = scale * rng.signed_unit();
  return v;
}

std::vector<int32_t> random_ids(Rng& rng, int64_t n, int64_t range) {
  std::vector<int32_t> v(static_cast<std::size_t>(n));
  for (int32_t& x : v) x = static_cast<int32_t>(rng.index(range));
  return v;
}

double dot(const std::vector<double>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

std::string current_test() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::string(info->test_suite_name()) + "." + info->name();
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

using Outputs = std::vector<std::pair<std::string, std::vector<float>>>;

// The buffers of one run in a backend's memory: inputs uploaded, outputs poisoned (or set to
// given values where the entry accumulates), every output read back by results().
class BackendRun {
 public:
  explicit BackendRun(const Ops& ops) : ops_(ops) {}
  const Ops& ops() const { return ops_; }

  template <class T>
  T* input(const std::vector<T>& host) {
    held_.push_back(std::make_unique<DeviceBuffer>(*ops_.memory, host));
    return held_.back()->as<T>();
  }
  float* output(const std::string& name, int64_t n) {
    held_.push_back(std::make_unique<DeviceBuffer>(*ops_.memory, n * sizeof(float)));
    held_.back()->poison();
    outputs_.emplace_back(name, held_.back().get());
    return held_.back()->as<float>();
  }
  // An output the entry adds to: starts from `initial`.
  float* accumulated(const std::string& name, const std::vector<float>& initial) {
    float* p = input(initial);
    outputs_.emplace_back(name, held_.back().get());
    return p;
  }
  Outputs results() const {
    Outputs out;
    for (const auto& [name, buf] : outputs_) out.emplace_back(name, buf->to_host<float>());
    return out;
  }

 private:
  const Ops& ops_;
  std::vector<std::unique_ptr<DeviceBuffer>> held_;
  std::vector<std::pair<std::string, DeviceBuffer*>> outputs_;
};

// Runs `body` on the reference and on the cpu backend from the same seeded inputs (`body` draws
// them from the Rng it is given) and compares every output it declared.
void expect_cpu_matches_reference(const std::function<void(BackendRun&, Rng&)>& body) {
  auto run_on = [&](Backend b) {
    Rng rng(current_test());
    BackendRun run(ops_for(b));
    body(run, rng);
    return run.results();
  };
  const Outputs want = run_on(Backend::reference), got = run_on(Backend::cpu);
  ASSERT_EQ(want.size(), got.size());
  ASSERT_FALSE(want.empty());
  for (std::size_t i = 0; i < want.size(); ++i) {
    const auto& name = want[i].first;
    const std::vector<double> r =
        test::to_doubles(want[i].second.data(), DType::f32, want[i].second.size());
    const std::vector<double> o =
        test::to_doubles(got[i].second.data(), DType::f32, got[i].second.size());
    ASSERT_GT(test::norm(r), 0) << name << ": the reference output is all zeros";
    const test::CheckResult c = test::compare(name, o, r, test::tolerance_for(DType::f32, r));
    EXPECT_TRUE(c.ok) << c.message;
  }
}

// Tiny odd shapes and one large enough to split over threads and column blocks.
struct CpuShape {
  int64_t batch, seq, heads, d, hidden, vocab;
};
const CpuShape kCpuShapes[] = {{1, 2, 1, 2, 1, 2}, {2, 5, 3, 12, 7, 11}, {3, 37, 6, 96, 130, 257}};

std::string shape_name(const CpuShape& s) {
  return fmt::format("b{}_t{}_h{}_d{}_f{}_v{}", s.batch, s.seq, s.heads, s.d, s.hidden, s.vocab);
}

void PrintTo(const CpuShape& s, std::ostream* os) { *os << shape_name(s); }

class CpuVsReference : public ::testing::TestWithParam<CpuShape> {};

TEST_P(CpuVsReference, Embedding) {
  const CpuShape s = GetParam();
  const int64_t rows = s.batch * s.seq;
  for (bool accumulate : {false, true})
    expect_cpu_matches_reference([&](BackendRun& run, Rng& rng) {
      const int32_t* ids = run.input(random_ids(rng, rows, s.vocab));
      const float* table = run.input(random_floats(rng, s.vocab * s.d));
      const std::vector<float> base = random_floats(rng, rows * s.d);
      float* out = accumulate ? run.accumulated("out", base) : run.output("out", rows * s.d);
      run.ops().embedding_fwd({ids, table, out, rows, s.vocab, s.d, accumulate});
      float* dtable = run.accumulated("dtable", random_floats(rng, s.vocab * s.d));
      run.ops().embedding_bwd(
          {ids, run.input(random_floats(rng, rows * s.d)), dtable, rows, s.vocab, s.d});
    });
}

TEST_P(CpuVsReference, RmsNorm) {
  const CpuShape s = GetParam();
  const int64_t rows = s.batch * s.seq;
  for (bool accumulate : {false, true})
    expect_cpu_matches_reference([&](BackendRun& run, Rng& rng) {
      const float* x = run.input(random_floats(rng, rows * s.d));
      const float* scale = run.input(random_floats(rng, s.d));
      float* y = run.output("y", rows * s.d);
      float* inv = run.output("inv_rms", rows);
      run.ops().rmsnorm_fwd({x, scale, y, inv, rows, s.d});
      const float* dy = run.input(random_floats(rng, rows * s.d));
      const std::vector<float> dx0 = random_floats(rng, rows * s.d);
      float* dx = accumulate ? run.accumulated("dx", dx0) : run.output("dx", rows * s.d);
      float* dscale = run.accumulated("dscale", random_floats(rng, s.d));
      run.ops().rmsnorm_bwd({x, scale, inv, dy, dx, dscale, rows, s.d, accumulate});
    });
}

TEST_P(CpuVsReference, Linear) {
  const CpuShape s = GetParam();
  const int64_t rows = s.batch * s.seq, in = s.d, out = s.hidden;
  for (bool transposed : {false, true})
    for (bool bias : {false, true})
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(
            fmt::format("transposed_w {} bias {} accumulate_dx {}", transposed, bias, accumulate));
        expect_cpu_matches_reference([&](BackendRun& run, Rng& rng) {
          const float* x = run.input(random_floats(rng, rows * in));
          const float* w = run.input(random_floats(rng, in * out));
          const float* b = bias ? run.input(random_floats(rng, out)) : nullptr;
          float* y = run.output("y", rows * out);
          run.ops().linear_fwd({x, w, b, y, rows, in, out, transposed});
          const float* dy = run.input(random_floats(rng, rows * out));
          const std::vector<float> dx0 = random_floats(rng, rows * in);
          float* dx = accumulate ? run.accumulated("dx", dx0) : run.output("dx", rows * in);
          float* dw = run.accumulated("dw", random_floats(rng, in * out));
          float* db = bias ? run.accumulated("db", random_floats(rng, out)) : nullptr;
          run.ops().linear_bwd({x, w, dy, dx, dw, db, rows, in, out, transposed, accumulate});
        });
      }
}

TEST_P(CpuVsReference, Attention) {
  const CpuShape s = GetParam();
  const int64_t rows = s.batch * s.seq;
  for (bool packed : {true, false}) {
    SCOPED_TRACE(packed ? "packed qkv" : "separate q, k, v");
    expect_cpu_matches_reference([&](BackendRun& run, Rng& rng) {
      const int64_t ld = packed ? 3 * s.d : s.d;
      PackedQkv in{}, g{};
      if (packed) {
        in = packed_qkv(run.input(random_floats(rng, rows * 3 * s.d)), s.d);
        g = packed_qkv(run.output("dqkv", rows * 3 * s.d), s.d);
      } else {
        in = {run.input(random_floats(rng, rows * s.d)), run.input(random_floats(rng, rows * s.d)),
              run.input(random_floats(rng, rows * s.d)), s.d};
        g = {run.output("dq", rows * s.d), run.output("dk", rows * s.d),
             run.output("dv", rows * s.d), s.d};
      }
      float* out = run.output("out", rows * s.d);
      float* lse = run.output("lse", s.batch * s.heads * s.seq);
      run.ops().attention_fwd({in.q, in.k, in.v, ld, out, lse, s.batch, s.seq, s.heads, s.d});
      const float* dout = run.input(random_floats(rng, rows * s.d));
      run.ops().attention_bwd(
          {in.q, in.k, in.v, ld, out, lse, dout, g.q, g.k, g.v, s.batch, s.seq, s.heads, s.d});
    });
  }
}

TEST_P(CpuVsReference, Swiglu) {
  const CpuShape s = GetParam();
  const int64_t rows = s.batch * s.seq, H = s.hidden;
  expect_cpu_matches_reference([&](BackendRun& run, Rng& rng) {
    float* ab = run.input(random_floats(rng, rows * 2 * H, 3.0f));
    float* out = run.output("out", rows * H);
    run.ops().swiglu_fwd({ab, ab + H, 2 * H, out, rows, H});
    float* dab = run.output("dab", rows * 2 * H);
    run.ops().swiglu_bwd(
        {ab, ab + H, 2 * H, run.input(random_floats(rng, rows * H)), dab, dab + H, rows, H});
  });
}

TEST_P(CpuVsReference, AddInPlace) {
  const CpuShape s = GetParam();
  const int64_t n = s.batch * s.seq * s.d;
  expect_cpu_matches_reference([&](BackendRun& run, Rng& rng) {
    float* x = run.accumulated("x", random_floats(rng, n));
    run.ops().add({x, run.input(random_floats(rng, n)), x, n});
  });
}

TEST_P(CpuVsReference, CrossEntropy) {
  const CpuShape s = GetParam();
  const int64_t rows = s.batch * s.seq;
  for (bool weighted : {false, true})
    expect_cpu_matches_reference([&](BackendRun& run, Rng& rng) {
      const float* logits = run.input(random_floats(rng, rows * s.vocab, 4.0f));
      const int32_t* targets = run.input(random_ids(rng, rows, s.vocab));
      std::vector<float> w(static_cast<std::size_t>(rows));
      for (std::size_t r = 0; r < w.size(); ++r) w[r] = r % 3 == 1 ? 0.0f : 0.5f + float(r % 4);
      const float* weights = weighted ? run.input(w) : nullptr;
      float* loss = run.output("loss", 1);
      run.ops().cross_entropy_fwd({logits, targets, weights, loss, rows, s.vocab});
      float* dlogits = run.output("dlogits", rows * s.vocab);
      run.ops().cross_entropy_bwd({logits, targets, weights, 0.5f, dlogits, rows, s.vocab});
    });
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuVsReference, ::testing::ValuesIn(kCpuShapes),
                         [](const auto& i) { return shape_name(i.param); });

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
  const Ops& ops = ops_for(GetParam());
  std::vector<float> buf(64, 1.0f), out(64);
  std::vector<int32_t> ids = {0, 4, 5, 1};
  float* f = buf.data();
  expect_error(
      [&] {
        ops.attention_fwd({f, f, f, 12, out.data(), nullptr, 1, 2, 5, 12});
      },
      "d 12 is not divisible by heads 5");
  expect_error(
      [&] {
        ops.attention_fwd({f, f, f, 8, out.data(), nullptr, 1, 2, 3, 12});
      },
      "ld_qkv 8 is narrower than d 12");
  expect_error(
      [&] {
        ops.attention_bwd({f, f, f, 12, f, nullptr, f, f, f, f, 1, 2, 3, 12});
      },
      "attention_bwd: lse is null");
  expect_error(
      [&] {
        ops.rmsnorm_fwd({f, f, out.data(), nullptr, 0, 4});
      },
      "rmsnorm_fwd: rows is 0: accepted are rows ≥ 1");
  expect_error(
      [&] {
        ops.embedding_fwd({ids.data(), f, out.data(), 4, 5, 2});
      },
      "id 5 out of range [0, 5) at row 2");
  expect_error(
      [&] {
        ops.embedding_bwd({ids.data(), f, out.data(), 4, 5, 2});
      },
      "id 5 out of range [0, 5) at row 2");
  expect_error(
      [&] {
        ops.linear_fwd({f, nullptr, nullptr, out.data(), 2, 3, 4});
      },
      "linear_fwd: w is null");
  expect_error(
      [&] {
        ops.linear_bwd({f, f, f, nullptr, nullptr, nullptr, 2, 3, 4});
      },
      "dx, dw and db are all null");
  expect_error(
      [&] {
        ops.swiglu_fwd({f, f, 3, out.data(), 2, 4});
      },
      "ld_ab 3 is narrower than hidden 4");
  expect_error([&] { ops.add({f, f, out.data(), -1}); }, "add: n is -1");
  float loss = 0;
  expect_error(
      [&] {
        ops.cross_entropy_fwd({f, ids.data(), nullptr, &loss, 4, 5});
      },
      "target 5 out of range [0, 5) at row 2");
  std::vector<float> zeros(4, 0.0f), negative = {1.0f, -0.5f, 1.0f, 1.0f};
  expect_error(
      [&] {
        ops.cross_entropy_fwd({f, ids.data(), zeros.data(), &loss, 4, 6});
      },
      "the weights of all 4 rows are 0");
  expect_error(
      [&] {
        ops.cross_entropy_bwd({f, ids.data(), negative.data(), 1.0f, out.data(), 4, 6});
      },
      "weight -0.5 at row 1: accepted are finite weights ≥ 0");
  // A padding row (weight 0) may hold any target.
  std::vector<float> pad = {1.0f, 1.0f, 0.0f, 1.0f};
  EXPECT_NO_THROW(ops.cross_entropy_fwd({f, ids.data(), pad.data(), &loss, 4, 5}));
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
