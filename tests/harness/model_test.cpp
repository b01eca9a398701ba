// The dense model (harness/model.h) against its definition: on the reference backend, the loss
// gradient with respect to every parameter tensor against central finite differences of the
// loss; the cpu backend's loss and gradients against the reference's; the initial loss of
// init_params near ln(vocab); the layout; errors for bad configs and batches.
// Build and run: cmake --build build --target harness_model_test && ctest --test-dir build -L
// harness
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "harness/model.h"
#include "tests/common/check.h"
#include "tests/common/random.h"
#include "tests/harness/expect_error.h"

namespace memlayers::harness {
namespace {

using test::expect_error;
using test::Rng;

Config tiny_config() {
  Config c;
  c.vocab = 11, c.ctx = 6, c.d_model = 12, c.layers = 2, c.heads = 3, c.ffn_hidden = 8;
  return c;
}

// Parameters large enough that every path carries gradient: weights ±[0.05, 0.5], norm scales
// in [0.6, 1.4].
std::vector<float> random_params(const ParamLayout& layout, Rng& rng) {
  std::vector<float> p(static_cast<std::size_t>(layout.total()));
  for (const ParamTensor& t : layout.tensors())
    for (int64_t i = 0; i < t.size(); ++i)
      p[t.offset + i] =
          t.shape.size() == 1 ? 1.0f + 0.4f * rng.signed_unit() : 0.5f * rng.signed_unit();
  return p;
}

// A batch in host memory (the backends tested here are host backends).
struct HostBatch {
  std::vector<int32_t> tokens, targets;
  std::vector<float> weights;
  int64_t batch, seq;
  Batch view() const { return {tokens.data(), targets.data(), weights.data(), batch, seq}; }
};

HostBatch random_batch(const Config& c, Rng& rng, int64_t batch, int64_t seq) {
  HostBatch b{{}, {}, {}, batch, seq};
  for (int64_t i = 0; i < batch * seq; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng.index(c.vocab)));
    b.targets.push_back(static_cast<int32_t>(rng.index(c.vocab)));
    b.weights.push_back(i % 4 == 2 ? 0.0f : 1.0f);  // some positions not counted
  }
  return b;
}

double rel_norm(const std::vector<double>& got, const std::vector<double>& want) {
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    diff += (got[i] - want[i]) * (got[i] - want[i]), ref += want[i] * want[i];
  return std::sqrt(diff / ref);
}

TEST(DenseModel, ReferenceGradientsMatchFiniteDifferences) {
  const Config c = tiny_config();
  Rng rng("DenseModel.ReferenceGradientsMatchFiniteDifferences");
  Model model(c, ops_for(Backend::reference));
  std::vector<float> params = random_params(model.layout(), rng);
  const HostBatch b = random_batch(c, rng, 2, 5);
  std::vector<float> grads(params.size());
  const double l0 = model.loss(params.data(), nullptr, b.view(), grads.data());
  ASSERT_TRUE(std::isfinite(l0));
  // The forward runs in fp32 between ops, so the loss carries ~1e-7 relative rounding: the step
  // is large (h = 1e-2) to keep that below the gradient, the truncation O(h²) stays ~1e-4.
  const float h = 1e-2f;
  for (const ParamTensor& t : model.layout().tensors()) {
    std::vector<double> fd(static_cast<std::size_t>(t.size())), an(fd.size());
    for (int64_t i = 0; i < t.size(); ++i) {
      float& x = params[t.offset + i];
      const float x0 = x;
      x = x0 + h;
      const double up = model.loss(params.data(), nullptr, b.view()), step_up = double{x} - x0;
      x = x0 - h;
      const double down = model.loss(params.data(), nullptr, b.view()),
                   step = step_up + (x0 - double{x});
      x = x0;
      fd[i] = (up - down) / step;
      an[i] = grads[t.offset + i];
    }
    ASSERT_GT(test::norm(an), 0) << t.name << ": the gradient is all zeros";
    const double err = rel_norm(an, fd);
    EXPECT_LE(err, 2e-3) << t.name << ": ‖analytic − fd‖ / ‖fd‖ = " << err;
  }
}

TEST(DenseModel, CpuMatchesReference) {
  const Config c = tiny_config();
  Rng rng("DenseModel.CpuMatchesReference");
  Model ref(c, ops_for(Backend::reference)), cpu(c, ops_for(Backend::cpu));
  const std::vector<float> params = random_params(ref.layout(), rng);
  const HostBatch b = random_batch(c, rng, 3, 6);
  std::vector<float> g_ref(params.size()), g_cpu(params.size(), std::nanf(""));
  const double l_ref = ref.loss(params.data(), nullptr, b.view(), g_ref.data());
  const double l_cpu = cpu.loss(params.data(), nullptr, b.view(), g_cpu.data());
  EXPECT_NEAR(l_cpu, l_ref, 1e-5 * std::abs(l_ref));
  for (const ParamTensor& t : ref.layout().tensors()) {
    const auto want = test::to_doubles(g_ref.data() + t.offset, DType::f32, t.size());
    const auto got = test::to_doubles(g_cpu.data() + t.offset, DType::f32, t.size());
    ASSERT_GT(test::norm(want), 0) << t.name;
    const test::CheckResult r =
        test::compare(t.name, got, want, test::tolerance_for(DType::f32, want));
    EXPECT_TRUE(r.ok) << r.message;
  }
}

// Twice the same step on the cpu backend, at a size that splits over threads: the same bytes.
TEST(DenseModel, CpuIsDeterministic) {
  Config c;
  c.vocab = 257, c.ctx = 37, c.d_model = 96, c.layers = 2, c.heads = 6, c.ffn_hidden = 130;
  Rng rng("DenseModel.CpuIsDeterministic");
  Model model(c, ops_for(Backend::cpu));
  const std::vector<float> params = random_params(model.layout(), rng);
  const HostBatch b = random_batch(c, rng, 3, 37);
  std::vector<float> first(params.size()), second(params.size());
  const double l1 = model.loss(params.data(), nullptr, b.view(), first.data());
  const double l2 = model.loss(params.data(), nullptr, b.view(), second.data());
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(0, std::memcmp(first.data(), second.data(), first.size() * sizeof(float)));
}

TEST(DenseModel, InitialLossIsNearUniform) {
  Config c = tiny_config();
  c.vocab = 101, c.ctx = 16;
  Model model(c, ops_for(Backend::cpu));
  const std::vector<float> params = init_params(c, 7);
  Rng rng("DenseModel.InitialLossIsNearUniform");
  const HostBatch b = random_batch(c, rng, 2, 16);
  EXPECT_NEAR(model.loss(params.data(), nullptr, b.view()), std::log(101.0), 0.05);
}

TEST(DenseModel, Layout) {
  const Config c = tiny_config();
  const ParamLayout layout(c);
  const int64_t d = c.d_model, f = c.ffn_hidden;
  const int64_t per_layer = d + 3 * d * d + d * d + d + 2 * d * f + f * d;
  EXPECT_EQ(layout.total(), c.vocab * d + c.ctx * d + c.layers * per_layer + d);
  int64_t next = 0;  // contiguous, in order, no gaps
  for (const ParamTensor& t : layout.tensors()) {
    EXPECT_EQ(t.offset, next) << t.name;
    next += t.size();
  }
  EXPECT_EQ(layout.at("layer1.w13").shape, (std::vector<int64_t>{d, 2 * f}));
  EXPECT_THROW(layout.at("layer2.w13"), Error);
}

TEST(ModelKinds, NamesRoundTripAndUnknownNamesAreRefused) {
  for (ModelKind k : kModelKinds) EXPECT_EQ(parse_model_kind(to_string(k)), k);
  expect_error([] { parse_model_kind("memory_plus"); },
               "unknown model 'memory_plus': accepted are dense, dense4x, moe, peer, memory, "
               "memory+");
}

TEST(ModelKinds, Dense4xHasFourTimesTheFeedForward) {
  const Config c = tiny_config();
  const Config x4 = model_config(ModelKind::dense4x, c);
  EXPECT_EQ(x4.ffn_hidden, 4 * c.ffn_hidden);
  const double d = c.d_model, f = c.ffn_hidden, L = c.layers;
  // Only the feed-forward's 6·d·f per layer grows, by 3·6·d·f.
  EXPECT_DOUBLE_EQ(active_flops_per_token(x4, 4) - active_flops_per_token(c, 4), L * 3 * 6 * d * f);
  EXPECT_EQ(parameter_count(x4) - parameter_count(c), static_cast<int64_t>(L * 3 * 3 * d * f));
}

TEST(DenseModel, BadConfigsAndBatchesAreRefused) {
  Config c = tiny_config();
  c.heads = 5;
  expect_error([&] { c.validate(); }, "d_model 12 is not divisible by heads 5");
  c = tiny_config();
  c.memory_layers = {1};
  expect_error([&] { Model m(c, ops_for(Backend::reference)); }, "the dense model has none yet");
  c = tiny_config();
  c.layers = 0;
  expect_error([&] { c.validate(); }, "layers is 0: accepted are layers ≥ 1");

  c = tiny_config();
  Model model(c, ops_for(Backend::reference));
  const std::vector<float> params = init_params(c, 1);
  Rng rng("DenseModel.BadConfigsAndBatchesAreRefused");
  HostBatch b = random_batch(c, rng, 1, 7);
  expect_error([&] { model.loss(params.data(), nullptr, b.view()); },
               "seq 7 out of range: accepted are 1 ≤ seq ≤ ctx 6");
  b = random_batch(c, rng, 1, 4);
  b.tokens[3] = 11;
  expect_error([&] { model.loss(params.data(), nullptr, b.view()); },
               "id 11 out of range [0, 11) at row 3");
}

}  // namespace
}  // namespace memlayers::harness
