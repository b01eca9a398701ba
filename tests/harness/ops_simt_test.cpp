// The harness's cuda/simt backends (harness/cuda/*.cu) run on CPU threads under simt, against the
// cpu backend: every Ops entry on the same seeded inputs (on the GPU too where one is usable)
// (DESIGN.md §4: fp32 policy, outputs poisoned first, accumulating outputs starting from non-zero
// values, packed and separate layouts, padding rows of the cross-entropy), the optimiser's entries
// (AdamW and the sparse step bitwise, the sum of squares in fp64), the errors of bad params, the
// dense model's loss and gradients for one batch, and the bitwise determinism of the backward.
// Build and run: cmake --build build --target harness_ops_simt_test && ctest --test-dir build -R
// OpsSimt
#include <gtest/gtest.h>

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
#include "harness/model.h"
#include "harness/ops.h"
#include "harness/optim.h"
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

std::string current_test() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::string(info->test_suite_name()) + "." + info->name();
}

void expect_close(const std::string& what, const std::vector<float>& got,
                  const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const auto w = test::to_doubles(want.data(), DType::f32, want.size());
  const auto g = test::to_doubles(got.data(), DType::f32, got.size());
  ASSERT_GT(test::norm(w), 0) << what << ": the cpu output is all zeros";
  const test::CheckResult c = test::compare(what, g, w, test::tolerance_for(DType::f32, w));
  EXPECT_TRUE(c.ok) << c.message;
}

// ---- every entry against the cpu backend ----

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

// The backends of harness/cuda/*.cu runnable here: simt, and cuda where a GPU is usable.
std::vector<Backend> kernel_backends() {
  std::vector<Backend> b = {Backend::simt};
  if (usable(Backend::cuda).empty()) b.push_back(Backend::cuda);
  return b;
}

// Runs `body` on the cpu backend and on each kernel backend from the same seeded inputs and
// compares every output it declared at the fp32 policy.
void expect_simt_matches_cpu(const std::function<void(BackendRun&, Rng&)>& body) {
  auto run_on = [&](Backend b) {
    Rng rng(current_test());
    BackendRun run(ops_for(b));
    body(run, rng);
    return run.results();
  };
  const Outputs want = run_on(Backend::cpu);
  ASSERT_FALSE(want.empty());
  for (Backend b : kernel_backends()) {
    SCOPED_TRACE(fmt::format("backend {}", to_string(b)));
    const Outputs got = run_on(b);
    ASSERT_EQ(want.size(), got.size());
    for (std::size_t i = 0; i < want.size(); ++i)
      expect_close(want[i].first, got[i].second, want[i].second);
  }
}

struct Shape {
  int64_t batch, seq, heads, d, hidden, vocab;
};
// One element per head; the harness's tiny shape; a head wider than a warp's first pass of 128
// columns (two passes) and a vocabulary over 32 lanes. Under the sanitizers (simt much slower)
// the second only.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
const Shape kShapes[] = {{2, 5, 3, 12, 7, 11}};
#else
const Shape kShapes[] = {{1, 2, 1, 2, 1, 2}, {2, 5, 3, 12, 7, 11}, {1, 3, 1, 130, 5, 40}};
#endif

std::string shape_name(const Shape& s) {
  return fmt::format("b{}_t{}_h{}_d{}_f{}_v{}", s.batch, s.seq, s.heads, s.d, s.hidden, s.vocab);
}
void PrintTo(const Shape& s, std::ostream* os) { *os << shape_name(s); }

class OpsSimt : public ::testing::TestWithParam<Shape> {};

TEST_P(OpsSimt, Embedding) {
  const Shape s = GetParam();
  const int64_t rows = s.batch * s.seq;
  for (bool accumulate : {false, true})
    expect_simt_matches_cpu([&](BackendRun& run, Rng& rng) {
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

TEST_P(OpsSimt, RmsNorm) {
  const Shape s = GetParam();
  const int64_t rows = s.batch * s.seq;
  for (bool accumulate : {false, true})
    expect_simt_matches_cpu([&](BackendRun& run, Rng& rng) {
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

TEST_P(OpsSimt, Linear) {
  const Shape s = GetParam();
  const int64_t rows = s.batch * s.seq, in = s.d, out = s.hidden;
  for (bool transposed : {false, true})
    for (bool bias : {false, true})
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(
            fmt::format("transposed_w {} bias {} accumulate_dx {}", transposed, bias, accumulate));
        expect_simt_matches_cpu([&](BackendRun& run, Rng& rng) {
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

TEST_P(OpsSimt, Attention) {
  const Shape s = GetParam();
  const int64_t rows = s.batch * s.seq;
  for (bool packed : {true, false}) {
    SCOPED_TRACE(packed ? "packed qkv" : "separate q, k, v");
    expect_simt_matches_cpu([&](BackendRun& run, Rng& rng) {
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

TEST_P(OpsSimt, Swiglu) {
  const Shape s = GetParam();
  const int64_t rows = s.batch * s.seq, H = s.hidden;
  for (bool packed : {true, false}) {
    SCOPED_TRACE(packed ? "packed [a | b]" : "separate a, b");
    expect_simt_matches_cpu([&](BackendRun& run, Rng& rng) {
      const int64_t ld = packed ? 2 * H : H;
      float *a, *b, *da, *db;
      if (packed) {
        a = run.input(random_floats(rng, rows * 2 * H, 3.0f)), b = a + H;
        da = run.output("dab", rows * 2 * H), db = da + H;
      } else {
        a = run.input(random_floats(rng, rows * H, 3.0f));
        b = run.input(random_floats(rng, rows * H));
        da = run.output("da", rows * H), db = run.output("db", rows * H);
      }
      float* out = run.output("out", rows * H);
      run.ops().swiglu_fwd({a, b, ld, out, rows, H});
      run.ops().swiglu_bwd({a, b, ld, run.input(random_floats(rng, rows * H)), da, db, rows, H});
    });
  }
}

TEST_P(OpsSimt, AddInPlace) {
  const Shape s = GetParam();
  const int64_t n = s.batch * s.seq * s.d;
  expect_simt_matches_cpu([&](BackendRun& run, Rng& rng) {
    float* x = run.accumulated("x", random_floats(rng, n));
    run.ops().add({x, run.input(random_floats(rng, n)), x, n});
    float* out = run.output("out", n);
    run.ops().add({run.input(random_floats(rng, n)), x, out, n});
  });
}

TEST_P(OpsSimt, CrossEntropy) {
  const Shape s = GetParam();
  const int64_t rows = s.batch * s.seq;
  for (bool weighted : {false, true})
    expect_simt_matches_cpu([&](BackendRun& run, Rng& rng) {
      const float* logits = run.input(random_floats(rng, rows * s.vocab, 4.0f));
      std::vector<int32_t> t = random_ids(rng, rows, s.vocab);
      std::vector<float> w(static_cast<std::size_t>(rows));
      for (std::size_t r = 0; r < w.size(); ++r) w[r] = r % 3 == 1 ? 0.0f : 0.5f + float(r % 4);
      if (weighted && rows > 1) t[1] = -7;  // a padding row (weight 0) holds any target
      const int32_t* targets = run.input(t);
      const float* weights = weighted ? run.input(w) : nullptr;
      float* loss = run.output("loss", 1);
      run.ops().cross_entropy_fwd({logits, targets, weights, loss, rows, s.vocab});
      float* dlogits = run.output("dlogits", rows * s.vocab);
      run.ops().cross_entropy_bwd({logits, targets, weights, 0.5f, dlogits, rows, s.vocab});
    });
}

INSTANTIATE_TEST_SUITE_P(Shapes, OpsSimt, ::testing::ValuesIn(kShapes),
                         [](const auto& i) { return shape_name(i.param); });

// ---- determinism ----

// The attention backward and the embedding's scatter twice on simt: the same bytes.
TEST(OpsSimtDeterminism, BackwardTwiceIsBitwiseEqual) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "arithmetic order, checked in the release build (simt is slow under sanitizers)";
#endif
  Rng rng(current_test());
  const Shape s{2, 5, 3, 12, 7, 11};
  const int64_t rows = s.batch * s.seq;
  const Ops& ops = ops_for(Backend::simt);
  std::vector<float> qkv = random_floats(rng, rows * 3 * s.d), out(rows * s.d),
                     lse(s.batch * s.heads * s.seq), dout = random_floats(rng, rows * s.d);
  const PackedQkv in = packed_qkv(qkv.data(), s.d);
  ops.attention_fwd(
      {in.q, in.k, in.v, in.ld, out.data(), lse.data(), s.batch, s.seq, s.heads, s.d});
  const std::vector<int32_t> ids = random_ids(rng, rows, s.vocab);
  std::vector<float> first(qkv.size()), second(qkv.size());
  std::vector<float> t1(s.vocab * s.d, 0.5f), t2 = t1;
  for (auto [d, t] : {std::pair{&first, &t1}, std::pair{&second, &t2}}) {
    const PackedQkv g = packed_qkv(d->data(), s.d);
    ops.attention_bwd({in.q, in.k, in.v, in.ld, out.data(), lse.data(), dout.data(), g.q, g.k, g.v,
                       s.batch, s.seq, s.heads, s.d});
    ops.embedding_bwd({ids.data(), dout.data(), t->data(), rows, s.vocab, s.d});
  }
  EXPECT_EQ(0, std::memcmp(first.data(), second.data(), first.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(t1.data(), t2.data(), t1.size() * sizeof(float)));
}

// ---- errors and the table ----

TEST(OpsSimtErrors, BadParamsAreRefused) {
  const Ops& ops = ops_for(Backend::simt);
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
  // Nothing was written by the refused calls: out still holds what it held.
  EXPECT_EQ(out, std::vector<float>(64, 0.0f));
}

TEST(OpsSimtTable, BackendAndMemory) {
  EXPECT_EQ(ops_for(Backend::simt).backend, Backend::simt);
  EXPECT_EQ(ops_for(Backend::simt).memory, backend_info(Backend::simt).memory);
  EXPECT_EQ(optim_ops_for(Backend::simt).backend, Backend::simt);
  EXPECT_EQ(optim_ops_for(Backend::simt).memory, backend_info(Backend::simt).memory);
  // cuda: its table where a GPU is usable, else an error saying why.
  if (usable(Backend::cuda).empty()) {
    EXPECT_EQ(ops_for(Backend::cuda).backend, Backend::cuda);
    EXPECT_EQ(ops_for(Backend::cuda).memory, backend_info(Backend::cuda).memory);
  } else {
    const std::string why = backend_info(Backend::cuda).compiled ? "not usable here" : "not built";
    expect_error([] { ops_for(Backend::cuda); }, "backend cuda is " + why);
    expect_error([] { optim_ops_for(Backend::cuda); }, "backend cuda is " + why);
  }
}

// ---- the optimiser ----

AdamHyper hyper(int64_t t) {
  AdamHyper h;
  h.lr = 0.02f, h.beta1 = 0.9f, h.beta2 = 0.95f, h.eps = 1e-8f, h.weight_decay = 0.1f;
  h.grad_scale = 0.75f, h.step = t;
  return h;
}

// simt's AdamW uses the host step's operation order: the same bits over several steps.
TEST(OptimSimt, AdamWEqualsHostBitwise) {
  Rng rng(current_test());
  const int64_t n = 1031;
  std::vector<float> p = random_floats(rng, n), m(n, 0.0f), v(n, 0.0f);
  const std::vector<float> p0 = p;
  std::vector<float> hp = p, hm = m, hv = v;
  for (int64_t t = 1; t <= 3; ++t) {
    const std::vector<float> g = random_floats(rng, n);
    optim_ops_for(Backend::simt).adamw({p.data(), g.data(), m.data(), v.data(), n, hyper(t)});
    optim_ops_for(Backend::cpu).adamw({hp.data(), g.data(), hm.data(), hv.data(), n, hyper(t)});
  }
  ASSERT_NE(p, p0) << "nothing moved";
  EXPECT_EQ(0, std::memcmp(p.data(), hp.data(), n * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(m.data(), hm.data(), n * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(v.data(), hv.data(), n * sizeof(float)));
}

TEST(OptimSimt, SparseAdamEqualsHostBitwiseAndChecksIds) {
  Rng rng(current_test());
  const int64_t rows = 9, dim = 5;
  std::vector<float> t = random_floats(rng, rows * dim), m(t.size(), 0.25f), v(t.size(), 0.5f);
  std::vector<float> ht = t, hm = m, hv = v;
  const std::vector<int64_t> ids = {0, 3, 4, 8};
  const std::vector<float> g = random_floats(rng, 4 * dim);
  const int64_t n_rows = 4;
  for (int64_t step = 1; step <= 2; ++step) {
    optim_ops_for(Backend::simt)
        .sparse_adam(
            {t.data(), m.data(), v.data(), rows, dim, ids.data(), g.data(), n_rows, hyper(step)});
    optim_ops_for(Backend::cpu)
        .sparse_adam({ht.data(), hm.data(), hv.data(), rows, dim, ids.data(), g.data(), n_rows,
                      hyper(step)});
  }
  EXPECT_EQ(0, std::memcmp(t.data(), ht.data(), t.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(m.data(), hm.data(), m.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(v.data(), hv.data(), v.size() * sizeof(float)));
  EXPECT_EQ(m[dim], 0.25f) << "row 1 is not given: its moment stays";

  const std::vector<float> before = t;
  const std::vector<int64_t> unsorted = {0, 4, 3, 8}, outside = {0, 3, 4, 9};
  expect_error(
      [&] {
        optim_ops_for(Backend::simt)
            .sparse_adam(
                {t.data(), m.data(), v.data(), rows, dim, unsorted.data(), g.data(), 4, hyper(3)});
      },
      "row id 3 at 2 follows 4 at 1: accepted are strictly ascending");
  expect_error(
      [&] {
        optim_ops_for(Backend::simt)
            .sparse_adam(
                {t.data(), m.data(), v.data(), rows, dim, outside.data(), g.data(), 4, hyper(3)});
      },
      "row id 9 out of range [0, 9) at 3");
  EXPECT_EQ(t, before) << "a refused step wrote the table";
  expect_error(
      [&] {
        optim_ops_for(Backend::simt).adamw({t.data(), g.data(), nullptr, v.data(), 4, hyper(1)});
      },
      "adamw: a null pointer");
}

TEST(OptimSimt, SumSquaresMatchesHost) {
  Rng rng(current_test());
  // Two chunks of 2^14 and a partial third; the sanitizers' build one partial chunk.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  const int64_t n = 5003;
#else
  const int64_t n = 2 * 16384 + 777;
#endif
  const std::vector<float> x = random_floats(rng, n);
  double simt = -1, host = -1, again = -1, empty = -1;
  optim_ops_for(Backend::simt).sum_squares({x.data(), n, &simt});
  optim_ops_for(Backend::cpu).sum_squares({x.data(), n, &host});
  optim_ops_for(Backend::simt).sum_squares({x.data(), n, &again});
  optim_ops_for(Backend::simt).sum_squares({x.data(), 0, &empty});
  ASSERT_GT(host, 0);
  EXPECT_NEAR(simt, host, 1e-12 * host);
  EXPECT_EQ(simt, again);
  EXPECT_EQ(empty, 0.0);
}

// ---- the dense model ----

Config tiny_config() {
  Config c;
  c.vocab = 11, c.ctx = 6, c.d_model = 12, c.layers = 2, c.heads = 3, c.ffn_hidden = 8;
  return c;
}

// Weights ±[0.05, 0.5], norm scales in [0.6, 1.4]: every path carries gradient.
std::vector<float> random_params(const ParamLayout& layout, Rng& rng) {
  std::vector<float> p(static_cast<std::size_t>(layout.total()));
  for (const ParamTensor& t : layout.tensors())
    for (int64_t i = 0; i < t.size(); ++i)
      p[t.offset + i] =
          t.shape.size() == 1 ? 1.0f + 0.4f * rng.signed_unit() : 0.5f * rng.signed_unit();
  return p;
}

TEST(ModelSimt, LossAndGradientsMatchCpuAndRepeatBitwise) {
  const Config c = tiny_config();
  Rng rng(current_test());
  Model cpu(c, ops_for(Backend::cpu)), simt(c, ops_for(Backend::simt));
  const std::vector<float> params = random_params(cpu.layout(), rng);
  // Under the sanitizers (simt's threads much slower) one shorter sequence, and no second run.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  const int64_t batch = 1, seq = 4;
  constexpr bool kRepeat = false;
#else
  const int64_t batch = 2, seq = 5;
  constexpr bool kRepeat = true;
#endif
  std::vector<int32_t> tokens, targets;
  std::vector<float> weights;
  for (int64_t i = 0; i < batch * seq; ++i) {
    tokens.push_back(static_cast<int32_t>(rng.index(c.vocab)));
    targets.push_back(static_cast<int32_t>(rng.index(c.vocab)));
    weights.push_back(i % 4 == 2 ? 0.0f : 1.0f);  // some positions not counted
  }
  const Batch b{tokens.data(), targets.data(), weights.data(), batch, seq};
  std::vector<float> g_cpu(params.size()), g_simt(params.size(), std::nanf("")),
      g_again(params.size(), std::nanf(""));
  const double l_cpu = cpu.loss(params.data(), nullptr, b, g_cpu.data());
  const double l_simt = simt.loss(params.data(), nullptr, b, g_simt.data());
  EXPECT_NEAR(l_simt, l_cpu, 1e-5 * std::abs(l_cpu));
  for (const ParamTensor& t : cpu.layout().tensors())
    expect_close(t.name, {g_simt.begin() + t.offset, g_simt.begin() + t.offset + t.size()},
                 {g_cpu.begin() + t.offset, g_cpu.begin() + t.offset + t.size()});
  if (!kRepeat) return;
  const double l_again = simt.loss(params.data(), nullptr, b, g_again.data());
  EXPECT_EQ(l_simt, l_again);
  EXPECT_EQ(0, std::memcmp(g_simt.data(), g_again.data(), g_simt.size() * sizeof(float)));
}

}  // namespace
}  // namespace memlayers::harness
