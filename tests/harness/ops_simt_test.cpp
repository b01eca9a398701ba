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
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "harness/model.h"
#include "harness/ops.h"
#include "harness/optim.h"
#include "tests/common/mapped.h"
#include "tests/common/random.h"
#include "tests/harness/expect_error.h"
#include "tests/harness/ops_cases.h"

namespace memlayers::harness {
namespace {

using ops_cases::BackendRun;
using ops_cases::current_test;
using ops_cases::OpsShape;
using ops_cases::Outputs;
using ops_cases::random_floats;
using ops_cases::random_ids;
using test::expect_error;
using test::Rng;

// A kernel backend's output against the cpu backend's, at the fp32 policy.
void expect_close(const std::string& what, const std::vector<float>& got,
                  const std::vector<float>& want) {
  ops_cases::expect_close(what, got, want, "cpu");
}

// ---- every entry against the cpu backend ----

// The backends of harness/cuda/*.cu runnable here: simt, and cuda where a GPU is usable.
std::vector<Backend> kernel_backends() {
  std::vector<Backend> b = {Backend::simt};
  if (usable(Backend::cuda).empty()) b.push_back(Backend::cuda);
  return b;
}

// Runs `body` on the cpu backend and on each kernel backend from the same seeded inputs and
// compares every output it declared at the fp32 policy.
void expect_simt_matches_cpu(const ops_cases::Case& body) {
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

// One element per head; the harness's tiny shape; a head wider than a warp's first pass of 128
// columns (two passes) and a vocabulary over 32 lanes. Under the sanitizers (simt much slower)
// the second only.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
const OpsShape kShapes[] = {{2, 5, 3, 12, 7, 11}};
#else
const OpsShape kShapes[] = {{1, 2, 1, 2, 1, 2}, {2, 5, 3, 12, 7, 11}, {1, 3, 1, 130, 5, 40}};
#endif

class OpsSimt : public ::testing::TestWithParam<OpsShape> {};

TEST_P(OpsSimt, Embedding) { ops_cases::embedding_variants(GetParam(), expect_simt_matches_cpu); }

TEST_P(OpsSimt, RmsNorm) { ops_cases::rmsnorm_variants(GetParam(), expect_simt_matches_cpu); }

TEST_P(OpsSimt, Linear) { ops_cases::linear_variants(GetParam(), expect_simt_matches_cpu); }

TEST_P(OpsSimt, Attention) { ops_cases::attention_variants(GetParam(), expect_simt_matches_cpu); }

TEST_P(OpsSimt, Swiglu) {
  for (bool packed : {true, false}) {
    SCOPED_TRACE(packed ? "packed [a | b]" : "separate a, b");
    expect_simt_matches_cpu(ops_cases::swiglu(GetParam(), packed));
  }
}

TEST_P(OpsSimt, AddInPlace) {
  expect_simt_matches_cpu(ops_cases::add(GetParam(), /*out_of_place=*/true));
}

TEST_P(OpsSimt, CrossEntropy) {
  for (bool weighted : {false, true})
    expect_simt_matches_cpu(
        ops_cases::cross_entropy(GetParam(), weighted, /*padding_target=*/true));
}

INSTANTIATE_TEST_SUITE_P(Shapes, OpsSimt, ::testing::ValuesIn(kShapes),
                         [](const auto& i) { return ops_cases::shape_name(i.param); });

// ---- determinism ----

// The attention backward and the embedding's scatter twice on simt: the same bytes.
TEST(OpsSimtDeterminism, BackwardTwiceIsBitwiseEqual) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "arithmetic order, checked in the release build (simt is slow under sanitizers)";
#endif
  Rng rng(current_test());
  const OpsShape s{2, 5, 3, 12, 7, 11};
  const int64_t rows = s.batch * s.seq;
  const Ops& ops = ops_for(Backend::simt);
  std::vector<float> qkv = random_floats(rng, rows * 3 * s.d), out(rows * s.d),
                     lse(s.batch * s.heads * s.seq), dout = random_floats(rng, rows * s.d);
  const std::vector<int32_t> ids = random_ids(rng, rows, s.vocab);
  std::vector<float> first(qkv.size()), second(qkv.size());
  std::vector<float> t1(s.vocab * s.d, 0.5f), t2 = t1;
  const test::MappedHost mapped(qkv, out, lse, dout, ids, first, second, t1, t2);
  const PackedQkv in = packed_qkv(qkv.data(), s.d);
  ops.attention_fwd(
      {in.q, in.k, in.v, in.ld, out.data(), lse.data(), s.batch, s.seq, s.heads, s.d});
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
  ops_cases::expect_bad_params_refused(ops_for(Backend::simt));
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
  const test::MappedHost mapped(p, m, v);
  for (int64_t t = 1; t <= 3; ++t) {
    const std::vector<float> g = random_floats(rng, n);
    const test::MappedHost mapped_g(g);
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
  test::MappedHost mapped(t, m, v, ids, g);
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
  mapped.add(unsorted);
  mapped.add(outside);
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
  const test::MappedHost mapped(x);
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
  const test::MappedHost mapped(params, tokens, targets, weights, g_simt, g_again);
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
