// The model (harness/model.h) against its definition: on the reference backend, the loss
// gradient with respect to every parameter tensor (and, with memory layers, the value table's
// merged compact gradient) against central finite differences of the loss; the cpu backend's
// loss and gradients against the reference's, and simt's against cpu's when the harness has a
// simt Ops table; a bf16 value table read on reference and cpu; the merge of the layers' compact
// rows; the memory kinds' configs (FLOP matching, layers, table) at the training's default base
// and a tiny one; the initial loss of init_params near ln(vocab); the layout; errors for bad
// configs and batches.
// Build and run: cmake --build build --target harness_model_test && ctest --test-dir build -L
// harness
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "common/bf16.h"
#include "common/error.h"
#include "harness/memory_block.h"
#include "harness/model.h"
#include "tests/common/check.h"
#include "tests/common/mapped.h"
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

// Parameters large enough that every path carries gradient: weights and biases ±[0.025, 0.5],
// norm scales in [0.6, 1.4].
std::vector<float> random_params(const ParamLayout& layout, Rng& rng) {
  std::vector<float> p(static_cast<std::size_t>(layout.total()));
  for (const ParamTensor& t : layout.tensors()) {
    const bool norm = t.name == "lnf" || t.name.ends_with(".ln1") || t.name.ends_with(".ln2");
    for (int64_t i = 0; i < t.size(); ++i)
      p[t.offset + i] = norm ? 1.0f + 0.4f * rng.signed_unit() : 0.5f * rng.signed_unit();
  }
  return p;
}

// A batch in host memory (the backends tested here are host backends).
struct HostBatch {
  std::vector<int32_t> tokens, targets;
  std::vector<float> weights;
  int64_t batch = 0, seq = 0;
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

// Every entry of every dense tensor: `grads` against central differences of the model's loss with
// step h, relative norm ≤ 2e-3 per tensor. With `held`, an entry whose perturbation makes it false
// (a MoE routing changed) is skipped and counted, at most a quarter of a tensor.
void expect_gradients_match_fd(Model& model, std::vector<float>& params, const HostBatch& b,
                               const std::vector<float>& grads, float h,
                               const std::function<bool()>& held = {}) {
  for (const ParamTensor& t : model.layout().tensors()) {
    std::vector<double> fd, an;
    int64_t skipped = 0;
    for (int64_t i = 0; i < t.size(); ++i) {
      float& x = params[t.offset + i];
      const float x0 = x;
      x = x0 + h;
      const double up = model.loss(params.data(), nullptr, b.view());
      const bool held_up = !held || held();
      const double step_up = double{x} - x0;
      x = x0 - h;
      const double down = model.loss(params.data(), nullptr, b.view());
      const bool held_down = !held || held();
      const double step = step_up + (x0 - double{x});
      x = x0;
      if (!held_up || !held_down) {
        ++skipped;
        continue;
      }
      fd.push_back((up - down) / step);
      an.push_back(grads[t.offset + i]);
    }
    EXPECT_LE(skipped * 4, t.size()) << t.name << ": " << skipped << " entries skipped";
    ASSERT_GT(test::norm(an), 0) << t.name << ": the gradient is all zeros";
    const double err = rel_norm(an, fd);
    EXPECT_LE(err, 2e-3) << t.name << ": ‖analytic − fd‖ / ‖fd‖ = " << err;
  }
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
  expect_gradients_match_fd(model, params, b, grads, 1e-2f);
}

// Every tensor of `got` against `want` (gradients over one layout) at the fp32 policy; none of
// `want` all zeros.
void expect_grads_match(const ParamLayout& layout, const std::vector<float>& got_all,
                        const std::vector<float>& want_all) {
  for (const ParamTensor& t : layout.tensors()) {
    const auto want = test::to_doubles(want_all.data() + t.offset, DType::f32, t.size());
    const auto got = test::to_doubles(got_all.data() + t.offset, DType::f32, t.size());
    ASSERT_GT(test::norm(want), 0) << t.name;
    const test::CheckResult r =
        test::compare(t.name, got, want, test::tolerance_for(DType::f32, want));
    EXPECT_TRUE(r.ok) << r.message;
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
  expect_grads_match(ref.layout(), g_cpu, g_ref);
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

// ---- memory layers ----

using memory_layer::Kind;

std::string kind_name(Kind k) { return memory_layer::to_string(k); }

// A tiny model with memory layers: N = 25 rows, so a batch of 10 tokens reading 6 rows each per
// layer touches most rows several times, within a layer and across layers. memory+ has two
// Memory+ layers (0 and 2, listed out of order) on one table and a SwiGLU layer between them.
Config tiny_memory_config(Kind kind) {
  Config c = tiny_config();
  c.memory.kind = kind;
  c.memory.heads = 2, c.memory.n_keys = 5, c.memory.k_dim = 8, c.memory.k = 3;
  c.memory.value_dim = kind == Kind::memory_plus ? 10 : c.d_model;
  if (kind == Kind::memory_plus)
    c.layers = 3, c.memory_layers = {2, 0};
  else
    c.memory_layers = {1};
  return c;
}

std::vector<float> random_values(const Model& m, Rng& rng) {
  std::vector<float> v(static_cast<std::size_t>(m.value_rows() * m.value_dim()));
  for (float& e : v) e = 0.5f * rng.signed_unit();
  return v;
}

// The dense (rows, dim) form of a compact gradient, checking its ids are strictly ascending and
// in range.
std::vector<float> dense_table(const SparseRows& g, int64_t rows, int64_t dim) {
  std::vector<float> out(static_cast<std::size_t>(rows * dim), 0.0f);
  for (int64_t i = 0; i < g.n_rows; ++i) {
    const int64_t id = g.row_ids[i];
    EXPECT_TRUE(id >= 0 && id < rows) << "row id " << id << " out of [0, " << rows << ")";
    if (i > 0) {
      EXPECT_LT(g.row_ids[i - 1], id) << "row ids not strictly ascending at " << i;
    }
    if (id < 0 || id >= rows) continue;
    std::copy(g.rows + i * dim, g.rows + (i + 1) * dim, out.begin() + id * dim);
  }
  return out;
}

// A token's h·k rows as one sorted set per (token, head): the selection the loss depends on
// (the order within a head's top-k does not change the bag's value).
std::vector<int64_t> selected_sets(const Model& m) {
  std::vector<int64_t> all;
  const int64_t k = m.config().memory.k;
  for (int64_t l : m.config().memory_layers) {
    std::vector<int64_t> s = m.selection(l);
    for (std::size_t i = 0; i < s.size(); i += static_cast<std::size_t>(k))
      std::sort(s.begin() + i, s.begin() + i + k);
    all.insert(all.end(), s.begin(), s.end());
  }
  return all;
}

// The table rows every memory layer read (PEER: each read row r also touches down row N + r).
std::vector<int64_t> touched_rows(const Model& m) {
  std::set<int64_t> rows;
  const int64_t n = m.config().memory.n_keys * m.config().memory.n_keys;
  for (int64_t l : m.config().memory_layers)
    for (int64_t r : m.selection(l)) {
      rows.insert(r);
      if (m.config().memory.kind == Kind::peer) rows.insert(n + r);
    }
  return {rows.begin(), rows.end()};
}

// Up to `most` indices of [0, n), evenly spread.
std::vector<int64_t> sample(int64_t n, int64_t most) {
  std::vector<int64_t> out;
  for (int64_t j = 0; j < std::min(n, most); ++j) out.push_back(j * n / std::min(n, most));
  return out;
}

class MemoryModel : public ::testing::TestWithParam<Kind> {};

// Every dense tensor's gradient and the value table's (from the merged compact rows) against
// central finite differences on the reference backend. The loss is smooth only while the
// selection holds: an entry whose ±h step changes any layer's selected set is skipped (counted;
// at most a quarter of a tensor's entries may be). Entries are sampled (up to 40 per tensor, 160
// of the table, touched and untouched rows) to keep the test fast.
TEST_P(MemoryModel, ReferenceGradientsMatchFiniteDifferences) {
  const Config c = tiny_memory_config(GetParam());
  Model model(c, ops_for(Backend::reference));
  std::vector<float> params, values;
  HostBatch b;
  // A draw with a near-tie at some token's k-th place (the selection moves under a ±1e-3 step
  // of a query bias entry: scores move by ~1e-4) would make most entries' steps move it; such a
  // draw is replaced by the next one (each attempt seeded by its own name).
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 8) << "every draw had a near-tie in its selection";
    Rng rng(fmt::format("MemoryModel.ReferenceGradientsMatchFiniteDifferences.{}.{}",
                        kind_name(GetParam()), attempt));
    params = random_params(model.layout(), rng);
    values = random_values(model, rng);
    b = random_batch(c, rng, 2, 5);
    model.loss(params.data(), values.data(), b.view());
    const std::vector<int64_t> sel = selected_sets(model);
    bool robust = true;
    for (int64_t l : c.memory_layers) {
      const ParamTensor& bq = model.layout().at(fmt::format("layer{}.mem.bq", l));
      for (int64_t i = 0; i < bq.size() && robust; ++i)
        for (const float h : {1e-3f, -1e-3f}) {
          const float x0 = params[bq.offset + i];
          params[bq.offset + i] = x0 + h;
          model.loss(params.data(), values.data(), b.view());
          params[bq.offset + i] = x0;
          robust = robust && selected_sets(model) == sel;
        }
    }
    if (robust) break;
  }
  std::vector<float> grads(params.size());
  SparseRows vgrad;
  const double l0 = model.loss(params.data(), values.data(), b.view(), grads.data(), &vgrad);
  ASSERT_TRUE(std::isfinite(l0));
  ASSERT_GT(vgrad.n_rows, 0);
  const std::vector<float> vdense = dense_table(vgrad, model.value_rows(), model.value_dim());
  const std::vector<int64_t> sel0 = selected_sets(model);
  const std::vector<int64_t> touched = touched_rows(model);
  EXPECT_EQ(vgrad.n_rows, static_cast<int64_t>(touched.size()));

  // d(loss)/d(x) by central differences with the dense test's step h = 1e-2; where that moves
  // the selection, h = 1e-3; NaN when both do. The loss comes back in fp32, so a difference is
  // known only to its rounding: `noise` is two ulps of the loss over the step, the bound on
  // that error each entry is allowed on top of the relative 2e-3 (the query path's gradients,
  // through the softmax, are ~1e-4 to 1e-3, where the rounding alone is a few percent).
  const double ulp = std::nextafter(float(l0), INFINITY) - float(l0);
  int64_t small_steps = 0;
  struct Fd {
    double value, noise;
  };
  auto fd = [&](float& x) {
    const float x0 = x;
    for (const float h : {1e-2f, 1e-3f}) {
      x = x0 + h;
      const double up = model.loss(params.data(), values.data(), b.view()),
                   step_up = double{x} - x0;
      const bool same_up = selected_sets(model) == sel0;
      x = x0 - h;
      const double down = model.loss(params.data(), values.data(), b.view()),
                   step = step_up + (x0 - double{x});
      const bool same_down = selected_sets(model) == sel0;
      x = x0;
      if (same_up && same_down) {
        small_steps += h < 1e-2f;
        return Fd{(up - down) / step, 2 * ulp / step};
      }
    }
    return Fd{std::nan(""), 0};
  };
  // ‖analytic − fd‖ ≤ 2e-3·‖fd‖ + ‖noise‖ over the entries whose selection held, and the noise
  // small enough (≤ 0.1·‖fd‖) that the check would see a 10% error.
  auto check = [&](const std::string& name, const std::vector<double>& an,
                   const std::vector<Fd>& num) {
    std::vector<double> a, f, n;
    for (std::size_t i = 0; i < num.size(); ++i)
      if (!std::isnan(num[i].value))
        a.push_back(an[i]), f.push_back(num[i].value), n.push_back(num[i].noise);
    const std::size_t skipped = num.size() - f.size();
    EXPECT_LE(4 * skipped, num.size())
        << name << ": the selection moved for " << skipped << " of " << num.size() << " entries";
    EXPECT_GT(test::norm(a), 0) << name << ": the gradient is all zeros at the checked entries";
    std::vector<double> diff(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) diff[i] = a[i] - f[i];
    const double err = test::norm(diff), ref = test::norm(f), noise = test::norm(n);
    EXPECT_LE(noise, 0.1 * ref) << name << ": the loss's rounding (" << noise
                                << ") hides the gradient (" << ref << ")";
    EXPECT_LE(err, 2e-3 * ref + noise)
        << name << ": ‖analytic − fd‖ = " << err << ", ‖fd‖ = " << ref << ", noise " << noise;
    return std::pair{err / ref, skipped};
  };
  double worst = 0;
  std::size_t skipped = 0, checked = 0;
  for (const ParamTensor& t : model.layout().tensors()) {
    std::vector<Fd> num;
    std::vector<double> an;
    for (int64_t i : sample(t.size(), 40)) {
      num.push_back(fd(params[t.offset + i]));
      an.push_back(grads[t.offset + i]);
    }
    const auto [err, skip] = check(t.name, an, num);
    worst = std::max(worst, err), skipped += skip, checked += num.size();
  }
  // The table: entries of touched rows, and of untouched rows, whose loss must not move at all
  // (values never move the selection, so every step counts).
  const int64_t dim = model.value_dim();
  std::vector<int64_t> entries;
  for (int64_t i : sample(static_cast<int64_t>(touched.size()) * dim, 120))
    entries.push_back(touched[i / dim] * dim + i % dim);
  for (int64_t r = 0, added = 0; r < model.value_rows() && added < 40; ++r)
    if (!std::binary_search(touched.begin(), touched.end(), r))
      entries.push_back(r * dim + (added++ % dim));
  std::vector<Fd> num;
  std::vector<double> an;
  for (int64_t e : entries) {
    num.push_back(fd(values[e]));
    an.push_back(vdense[e]);
    if (!std::binary_search(touched.begin(), touched.end(), e / dim)) {
      EXPECT_EQ(num.back().value, 0.0) << "untouched row " << e / dim << " moved the loss";
      EXPECT_EQ(an.back(), 0.0) << "untouched row " << e / dim << " has a gradient";
    }
  }
  const auto [err, skip] = check("values", an, num);
  EXPECT_EQ(skip, 0u) << "a value moved the selection";
  worst = std::max(worst, err), checked += num.size();
  std::cout << kind_name(GetParam()) << ": " << checked << " entries, " << small_steps
            << " at h = 1e-3, " << skipped << " skipped (selection moved), worst ‖analytic − fd‖ "
            << "/ ‖fd‖ " << worst << "\n";
}

// Selected sets, loss, every dense gradient and the merged table rows: cpu against reference.
TEST_P(MemoryModel, CpuMatchesReference) {
  const Config c = tiny_memory_config(GetParam());
  Rng rng("MemoryModel.CpuMatchesReference." + kind_name(GetParam()));
  Model ref(c, ops_for(Backend::reference)), cpu(c, ops_for(Backend::cpu));
  const std::vector<float> params = random_params(ref.layout(), rng);
  const std::vector<float> values = random_values(ref, rng);
  const HostBatch b = random_batch(c, rng, 3, 6);
  std::vector<float> g_ref(params.size()), g_cpu(params.size(), std::nanf(""));
  SparseRows v_ref, v_cpu;
  const double l_ref = ref.loss(params.data(), values.data(), b.view(), g_ref.data(), &v_ref);
  const double l_cpu = cpu.loss(params.data(), values.data(), b.view(), g_cpu.data(), &v_cpu);
  EXPECT_NE(ref.memory_variants().find("memory_layer_bwd reference/reference"), std::string::npos)
      << ref.memory_variants();
  EXPECT_NE(cpu.memory_variants().find("memory_layer_bwd cpu/v1_compose"), std::string::npos)
      << cpu.memory_variants();
  ASSERT_EQ(selected_sets(cpu), selected_sets(ref)) << "the backends selected different rows";
  EXPECT_NEAR(l_cpu, l_ref, 1e-5 * std::abs(l_ref));
  for (const ParamTensor& t : ref.layout().tensors()) {
    const auto want = test::to_doubles(g_ref.data() + t.offset, DType::f32, t.size());
    const auto got = test::to_doubles(g_cpu.data() + t.offset, DType::f32, t.size());
    ASSERT_GT(test::norm(want), 0) << t.name;
    const test::CheckResult r =
        test::compare(t.name, got, want, test::tolerance_for(DType::f32, want));
    EXPECT_TRUE(r.ok) << r.message;
  }
  ASSERT_EQ(std::vector<int64_t>(v_cpu.row_ids, v_cpu.row_ids + v_cpu.n_rows),
            std::vector<int64_t>(v_ref.row_ids, v_ref.row_ids + v_ref.n_rows));
  EXPECT_EQ(std::vector<int64_t>(v_ref.row_ids, v_ref.row_ids + v_ref.n_rows), touched_rows(ref));
  const std::size_t n = static_cast<std::size_t>(v_ref.n_rows * ref.value_dim());
  const auto want = test::to_doubles(v_ref.rows, DType::f32, n);
  const auto got = test::to_doubles(v_cpu.rows, DType::f32, n);
  ASSERT_GT(test::norm(want), 0);
  const test::CheckResult r =
      test::compare("table rows", got, want, test::tolerance_for(DType::f32, want));
  EXPECT_TRUE(r.ok) << r.message;
}

INSTANTIATE_TEST_SUITE_P(Kinds, MemoryModel,
                         ::testing::Values(Kind::memory, Kind::memory_plus, Kind::peer),
                         [](const auto& p) { return kind_name(p.param); });

// ---- a bf16 value table ----

// The table rounded to bf16 (round to nearest even), as bits and widened back to fp32.
struct Bf16Table {
  std::vector<uint16_t> bits;
  std::vector<float> widened;
};
Bf16Table to_bf16(const std::vector<float>& v) {
  Bf16Table t;
  for (float x : v) {
    t.bits.push_back(float_to_bf16_bits(x));
    t.widened.push_back(bf16_bits_to_float(t.bits.back()));
  }
  return t;
}

class MemoryModelBf16 : public ::testing::TestWithParam<Kind> {};

// A model whose layers read a bf16 table (memory.values_dtype bf16): on the reference backend
// its loss and gradients equal those of the fp32 model given the same values widened to fp32
// (the reference reads either exactly, so this checks the table is read as bf16, PEER's down
// experts included, at their byte offset); on cpu they match the reference at the bf16 policy of
// DESIGN.md §4, both reading the same bf16 table. Measured: cpu against reference ≤ 1e-6
// relative (both accumulate in fp32 or better from the same bf16 values).
TEST_P(MemoryModelBf16, ReadsTheBf16TableOnReferenceAndCpu) {
  Config c = tiny_memory_config(GetParam());
  Config c16 = c;
  c16.memory.values_dtype = DType::bf16;
  EXPECT_EQ(c16.layer_config().values_dtype, DType::bf16);
  Rng rng("MemoryModelBf16.ReadsTheBf16TableOnReferenceAndCpu." + kind_name(GetParam()));
  Model ref32(c, ops_for(Backend::reference)), ref(c16, ops_for(Backend::reference)),
      cpu(c16, ops_for(Backend::cpu));
  EXPECT_EQ(ref.values_dtype(), DType::bf16);
  const std::vector<float> params = random_params(ref.layout(), rng);
  const Bf16Table table = to_bf16(random_values(ref, rng));
  const HostBatch b = random_batch(c, rng, 3, 6);
  std::vector<float> g32(params.size()), g_ref(params.size(), std::nanf("")),
      g_cpu(params.size(), std::nanf(""));
  SparseRows v32, v_ref, v_cpu;
  const double l32 = ref32.loss(params.data(), table.widened.data(), b.view(), g32.data(), &v32);
  const std::vector<float> rows32(v32.rows, v32.rows + v32.n_rows * ref.value_dim());
  const double l_ref = ref.loss(params.data(), table.bits.data(), b.view(), g_ref.data(), &v_ref);
  const double l_cpu = cpu.loss(params.data(), table.bits.data(), b.view(), g_cpu.data(), &v_cpu);
  EXPECT_NE(cpu.memory_variants().find("memory_layer_bwd cpu/v1_compose"), std::string::npos)
      << cpu.memory_variants();
  ASSERT_EQ(selected_sets(ref), selected_sets(ref32));
  ASSERT_EQ(selected_sets(cpu), selected_sets(ref));
  EXPECT_NEAR(l_ref, l32, 1e-6 * std::abs(l32)) << "bf16 table against its fp32 widening";
  EXPECT_NEAR(l_cpu, l_ref, 1e-2 * std::abs(l_ref));
  double worst = 0;
  for (const ParamTensor& t : ref.layout().tensors()) {
    const auto want32 = test::to_doubles(g32.data() + t.offset, DType::f32, t.size());
    const auto want = test::to_doubles(g_ref.data() + t.offset, DType::f32, t.size());
    const auto got = test::to_doubles(g_cpu.data() + t.offset, DType::f32, t.size());
    ASSERT_GT(test::norm(want), 0) << t.name;
    const test::CheckResult same =
        test::compare(t.name, want, want32, test::tolerance_for(DType::f32, want32));
    EXPECT_TRUE(same.ok) << "reference, bf16 against fp32 table: " << same.message;
    const test::CheckResult r =
        test::compare(t.name, got, want, test::tolerance_for(DType::bf16, want));
    EXPECT_TRUE(r.ok) << r.message;
    worst = std::max(worst, rel_norm(got, want));
  }
  const std::vector<int64_t> ids32(v32.row_ids, v32.row_ids + v32.n_rows),
      ids_ref(v_ref.row_ids, v_ref.row_ids + v_ref.n_rows),
      ids_cpu(v_cpu.row_ids, v_cpu.row_ids + v_cpu.n_rows);
  ASSERT_EQ(ids_ref, ids32);
  ASSERT_EQ(ids_cpu, ids_ref);
  const std::size_t n = static_cast<std::size_t>(v_ref.n_rows * ref.value_dim());
  const auto want = test::to_doubles(v_ref.rows, DType::f32, n);
  const auto got = test::to_doubles(v_cpu.rows, DType::f32, n);
  const auto want32 = test::to_doubles(rows32.data(), DType::f32, n);
  ASSERT_GT(test::norm(want), 0);
  const test::CheckResult same =
      test::compare("table rows", want, want32, test::tolerance_for(DType::f32, want32));
  EXPECT_TRUE(same.ok) << "reference, bf16 against fp32 table: " << same.message;
  const test::CheckResult r =
      test::compare("table rows", got, want, test::tolerance_for(DType::bf16, want));
  EXPECT_TRUE(r.ok) << r.message;
  worst = std::max(worst, rel_norm(got, want));
  std::cout << kind_name(GetParam()) << " bf16 table: cpu against reference, worst relative norm "
            << worst << "\n";
}

INSTANTIATE_TEST_SUITE_P(Kinds, MemoryModelBf16, ::testing::Values(Kind::memory_plus, Kind::peer),
                         [](const auto& p) { return kind_name(p.param); });

TEST(MemoryModelBf16Config, DtypeIsCheckedAndKeptByModelConfig) {
  Config c = tiny_memory_config(Kind::memory_plus);
  c.memory.values_dtype = DType::f16;
  expect_error([&] { c.validate(); }, "memory.values_dtype is fp16: accepted are fp32 and bf16");
  Config base = tiny_config();
  base.ffn_hidden = 24;
  base.memory.values_dtype = DType::bf16;
  for (ModelKind k : {ModelKind::memory, ModelKind::memory_plus, ModelKind::peer})
    EXPECT_EQ(model_config(k, base).layer_config().values_dtype, DType::bf16) << to_string(k);
  base.memory.values_dtype = DType::f32;
  EXPECT_EQ(model_config(ModelKind::peer, base).layer_config().values_dtype, DType::f32);
}

// The memory layer's CUDA composition under simt (the harness's simt Ops around it) against the
// cpu backend: a one-layer memory+ model at a tiny shape.
TEST(MemoryModelSimt, MatchesCpu) {
  const Ops* simt = nullptr;
  try {
    simt = &ops_for(Backend::simt);
  } catch (const Error& e) {
    GTEST_SKIP() << "the harness has no simt Ops table in this build: " << e.what();
  }
  // One layer: the simt Ops run a tiny model's step in ~0.5 s of thread hand-offs (and far more
  // under ThreadSanitizer); the composition's cases are tests/memory_layer's.
  Config c = tiny_memory_config(Kind::memory_plus);
  c.layers = 1, c.memory_layers = {0};
  Rng rng("MemoryModelSimt.MatchesCpu");
  Model cpu(c, ops_for(Backend::cpu)), sim(c, *simt);
  const std::vector<float> params = random_params(cpu.layout(), rng);
  const std::vector<float> values = random_values(cpu, rng);
  const HostBatch b = random_batch(c, rng, 1, 4);
  // Host buffers serve both models: the simt model's kernels reach them as a GPU reaches
  // registered (mapped) host memory.
  std::vector<float> g_cpu(params.size()), g_sim(params.size(), std::nanf(""));
  const test::MappedHost mapped(params, values, g_sim, b.tokens, b.targets, b.weights);
  SparseRows v_cpu, v_sim;
  const double l_cpu = cpu.loss(params.data(), values.data(), b.view(), g_cpu.data(), &v_cpu);
  const double l_sim = sim.loss(params.data(), values.data(), b.view(), g_sim.data(), &v_sim);
  EXPECT_NE(sim.memory_variants().find("memory_layer_bwd simt/v1_compose"), std::string::npos)
      << sim.memory_variants();
  ASSERT_EQ(selected_sets(sim), selected_sets(cpu));
  EXPECT_NEAR(l_sim, l_cpu, 1e-5 * std::abs(l_cpu));
  const auto want = test::to_doubles(g_cpu.data(), DType::f32, g_cpu.size());
  const auto got = test::to_doubles(g_sim.data(), DType::f32, g_sim.size());
  for (const ParamTensor& t : cpu.layout().tensors()) {
    const std::span<const double> w(want.data() + t.offset, t.size()),
        g(got.data() + t.offset, t.size());
    const test::CheckResult r = test::compare(t.name, g, w, test::tolerance_for(DType::f32, w));
    EXPECT_TRUE(r.ok) << r.message;
  }
  // The table's gradient is the model's (device) memory: it comes back through the backend's copy.
  ASSERT_EQ(v_sim.n_rows, v_cpu.n_rows);
  const std::size_t n = static_cast<std::size_t>(v_cpu.n_rows * cpu.value_dim());
  std::vector<int64_t> sim_ids(static_cast<std::size_t>(v_sim.n_rows));
  std::vector<float> sim_rows(n);
  const Memory& mem = *backend_info(Backend::simt).memory;
  mem.to_host(sim_ids.data(), v_sim.row_ids, sim_ids.size() * sizeof(int64_t));
  mem.to_host(sim_rows.data(), v_sim.rows, n * sizeof(float));
  ASSERT_EQ(sim_ids, std::vector<int64_t>(v_cpu.row_ids, v_cpu.row_ids + v_cpu.n_rows));
  const auto vw = test::to_doubles(v_cpu.rows, DType::f32, n);
  const auto vg = test::to_doubles(sim_rows.data(), DType::f32, n);
  const test::CheckResult r =
      test::compare("table rows", vg, vw, test::tolerance_for(DType::f32, vw));
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(MemoryMerge, OverlappingRowsAreSummedInOneAscendingList) {
  const HostRows a{{1, 4, 7}, {1, 2, 4, 5, 7, 8}};
  const HostRows b{{0, 4, 7, 9}, {10, 20, 40, 50, 70, 80, 90, 100}};
  const HostRows c{{4}, {0.5f, 0.25f}};
  const HostRows m = merge_rows({a, b, c}, 2);
  EXPECT_EQ(m.ids, (std::vector<int64_t>{0, 1, 4, 7, 9}));
  EXPECT_EQ(m.rows, (std::vector<float>{10, 20, 1, 2, 44.5f, 55.25f, 77, 88, 90, 100}));
  EXPECT_TRUE(merge_rows({}, 3).ids.empty());
  expect_error(
      [] {
        merge_rows({HostRows{{3, 3}, {1, 2}}}, 1);
      },
      "list 0 is not strictly ascending at 1 (3 after 3)");
  expect_error(
      [] {
        merge_rows({HostRows{{1}, {1, 2}}}, 1);
      },
      "list 0 has 1 ids but 2 floats: accepted are ids × width 1 floats");
}

// Two Memory+ layers reading overlapping rows: one merged list, the union of their rows.
TEST(MemoryMerge, LayersSharingTheTableGiveTheUnionOfTheirRows) {
  const Config c = tiny_memory_config(Kind::memory_plus);
  Rng rng("MemoryMerge.LayersSharingTheTableGiveTheUnionOfTheirRows");
  Model model(c, ops_for(Backend::cpu));
  const std::vector<float> params = random_params(model.layout(), rng);
  const std::vector<float> values = random_values(model, rng);
  const HostBatch b = random_batch(c, rng, 2, 5);
  std::vector<float> grads(params.size());
  SparseRows g;
  model.loss(params.data(), values.data(), b.view(), grads.data(), &g);
  const std::vector<int64_t> s0 = model.selection(0), s2 = model.selection(2);
  const std::set<int64_t> r0(s0.begin(), s0.end()), r2(s2.begin(), s2.end());
  std::vector<int64_t> both;
  std::set_intersection(r0.begin(), r0.end(), r2.begin(), r2.end(), std::back_inserter(both));
  ASSERT_FALSE(both.empty()) << "the layers share no row: the case does not test the sum";
  std::set<int64_t> all = r0;
  all.insert(r2.begin(), r2.end());
  EXPECT_EQ(std::vector<int64_t>(g.row_ids, g.row_ids + g.n_rows),
            std::vector<int64_t>(all.begin(), all.end()));
  // Without vgrad no table gradient is computed, and the dense gradients are the same.
  std::vector<float> again(params.size());
  model.loss(params.data(), values.data(), b.view(), again.data());
  EXPECT_EQ(0, std::memcmp(grads.data(), again.data(), grads.size() * sizeof(float)));
}

// The training's default base (the knowledge base's vocab 393) and a tiny one: every memory kind
// builds, stays within the SwiGLU block's FLOPs, and runs a step from init_params/init_values.
TEST(ModelKinds, MemoryKindsAtTheDefaultAndATinyBase) {
  Config base;
  base.vocab = 393, base.ctx = 4, base.d_model = 64, base.layers = 4, base.heads = 4;
  base.ffn_hidden = 172;
  const Config mem = model_config(ModelKind::memory, base);
  EXPECT_EQ(mem.memory_layers, (std::vector<int64_t>{2}));
  EXPECT_EQ(mem.memory.heads, 2);
  EXPECT_EQ(mem.memory.n_keys, 256);
  EXPECT_EQ(mem.memory.k, 16);
  EXPECT_EQ(mem.memory.k_dim, 32);
  EXPECT_EQ(mem.memory.value_dim, 64);
  EXPECT_EQ(mem.table_rows(), 256 * 256);
  EXPECT_EQ(mem.table_dim(), 64);
  const Config plus = model_config(ModelKind::memory_plus, base);
  EXPECT_EQ(plus.memory_layers, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(plus.memory.heads, 2);
  EXPECT_EQ(plus.memory.k, 16);
  EXPECT_EQ(plus.memory.k_dim, 32);
  EXPECT_EQ(plus.memory.value_dim, 64);
  const Config peer = model_config(ModelKind::peer, base);
  EXPECT_EQ(peer.memory_layers, (std::vector<int64_t>{2}));
  EXPECT_EQ(peer.memory.k_dim, 32);
  EXPECT_EQ(peer.table_rows(), 2 * 256 * 256);
  // The comparison's base (tools/harness_compare.py: d 32, ffn_hidden 86): the widest query
  // (n 16) with 2 heads of 8 rows, rather than the paper's 4 × 32 rows through a 4-wide query.
  Config small = base;
  small.d_model = 32, small.heads = 2, small.ffn_hidden = 86;
  const MemoryConfig s = model_config(ModelKind::memory_plus, small).memory;
  EXPECT_EQ(std::vector<int64_t>({s.heads, s.n_keys, s.k_dim, s.k, s.value_dim}),
            std::vector<int64_t>({2, 128, 16, 8, 32}));
  // The paper's shape (d 1024, a SwiGLU of 8/3·d): its h 4, n_keys 1024, n 512, k 32.
  Config paper = base;
  paper.d_model = 1024, paper.heads = 16, paper.ffn_hidden = 2730;
  const MemoryConfig p = model_config(ModelKind::memory_plus, paper).memory;
  EXPECT_EQ(std::vector<int64_t>({p.heads, p.n_keys, p.k_dim, p.k, p.value_dim}),
            std::vector<int64_t>({4, 1024, 512, 32, 1024}));
  EXPECT_EQ(memory_plus_layers(24), (std::vector<int64_t>{4, 12, 20}));
  EXPECT_EQ(memory_plus_layers(2), (std::vector<int64_t>{0, 1}));

  Config tiny = tiny_config();
  tiny.ffn_hidden = 24;
  for (const bool at_base : {true, false}) {
    const Config& b = at_base ? base : tiny;
    const double dense = active_flops_per_token(b, b.ctx);
    const double budget = 6.0 * double(b.d_model) * double(b.ffn_hidden);
    for (ModelKind k : {ModelKind::memory, ModelKind::memory_plus, ModelKind::peer}) {
      const Config c = model_config(k, b);
      const double flops = active_flops_per_token(c, b.ctx);
      const double per_layer = (flops - dense) / double(c.memory_layers.size()) + budget;
      EXPECT_LE(per_layer, budget) << to_string(k) << " at d " << b.d_model;
      EXPECT_GT(per_layer, 0.5 * budget) << to_string(k) << " at d " << b.d_model;
      EXPECT_EQ(parameter_count(c), ParamLayout(c).total() + c.table_rows() * c.table_dim());
      if (at_base) {
        // At most the dense model's, and close: the rule leaves the layers' FLOPs below the
        // block's when the next (h, k) up does not fit (memory: 45056 of 66048 a layer).
        EXPECT_LE(flops / dense, 1.0) << to_string(k);
        EXPECT_GE(flops / dense, 0.8) << to_string(k);
      }
      Model model(c, ops_for(Backend::cpu));
      const std::vector<float> params = init_params(c, 3), values = init_values(c, 3);
      Rng rng("ModelKinds.MemoryKindsAtTheDefaultAndATinyBase." + to_string(k));
      const HostBatch hb = random_batch(c, rng, 8, b.ctx);
      std::vector<float> grads(params.size());
      SparseRows g;
      const double l = model.loss(params.data(), values.data(), hb.view(), grads.data(), &g);
      // 24 counted positions: the mean's spread is ~0.03 at the default base.
      EXPECT_NEAR(l, std::log(double(c.vocab)), 0.15) << to_string(k);
      EXPECT_GT(g.n_rows, 0) << to_string(k);
    }
  }
}

// Memory settings set in place of the FLOP-matching rule's: each set field replaces the rule's
// and the rest stay; memory_statement says what was built; bad overrides are refused.
TEST(ModelKinds, MemoryOverridesReplaceTheRulesSettings) {
  Config base;
  base.vocab = 393, base.ctx = 4, base.d_model = 32, base.layers = 4, base.heads = 2;
  base.ffn_hidden = 86;
  const Config rule = model_config(ModelKind::memory_plus, base);
  EXPECT_EQ(model_config(ModelKind::memory_plus, base, MemoryOverrides{}).memory.k_dim,
            rule.memory.k_dim);
  MemoryOverrides o;
  o.heads = 2, o.n_keys = 128, o.k_dim = 16, o.k = 8, o.qk_norm = true;
  const Config c = model_config(ModelKind::memory_plus, base, o);
  EXPECT_EQ(c.memory.heads, 2);
  EXPECT_EQ(c.memory.n_keys, 128);
  EXPECT_EQ(c.memory.k_dim, 16);
  EXPECT_EQ(c.memory.k, 8);
  EXPECT_TRUE(c.memory.qk_norm);
  EXPECT_EQ(c.memory.value_dim, rule.memory.value_dim);
  EXPECT_EQ(c.memory_layers, rule.memory_layers);
  EXPECT_EQ(c.table_rows(), 128 * 128);
  EXPECT_TRUE(c.layer_config().qk_norm);
  // 2·32·2·16 + 2·2·128·16 + 2·2·8·32 + 4·32·32: within the SwiGLU block's 6·32·86.
  EXPECT_EQ(memory_statement(c),
            "memory_plus in layer(s) 1, 2, 3: h 2, n_keys 128 (16384 rows × 32), k_dim 16, k 8, "
            "QK-norm; 15360 FLOPs/token a layer, the SwiGLU block's 16512");
  EXPECT_EQ(memory_statement(model_config(ModelKind::dense, base)), "");
  MemoryOverrides wide;
  wide.k = 64;  // the bag alone: 2·4·64·32 > 16512; allowed, and the FLOPs say so
  EXPECT_GT(active_flops_per_token(model_config(ModelKind::memory_plus, base, wide), 3),
            active_flops_per_token(model_config(ModelKind::dense, base), 3));

  MemoryOverrides bad;
  bad.k = 4;
  expect_error([&] { model_config(ModelKind::moe, base, bad); },
               "model 'moe' has no memory layer: accepted are memory settings on peer, memory "
               "and memory+ only");
  bad.k = 0, bad.n_keys = -3;
  expect_error([&] { model_config(ModelKind::memory, base, bad); },
               "model 'memory': memory n_keys is -3: accepted are ≥ 1, or 0 for the "
               "FLOP-matching rule's");
  bad.n_keys = 16, bad.k = 17;
  expect_error([&] { model_config(ModelKind::peer, base, bad); },
               "memory.k 17 exceeds memory.n_keys 16");
  bad = {}, bad.value_dim = 16;
  expect_error([&] { model_config(ModelKind::memory, base, bad); },
               "memory.value_dim 16 with kind memory differs from d_model 32");
}

// ---- MoE layers ----

Config tiny_moe_config() {
  Config c = model_config(ModelKind::moe, tiny_config());
  c.moe.balance = 0.3;  // large, so the balancing term's gradient is well above the rounding
  return c;
}

std::vector<std::vector<int32_t>> moe_picks(const Model& m) {
  std::vector<std::vector<int32_t>> out;
  for (int64_t l : m.config().moe_layers) out.push_back(m.moe_routing(l).picks);
  return out;
}

TEST(MoeModel, ConfigMatchesTheDenseFlopsAndRefusesBadLayers) {
  const Config base = tiny_config(), c = model_config(ModelKind::moe, base);
  EXPECT_EQ(c.moe_layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(c.moe.expert_hidden, base.ffn_hidden / 2);
  // Top 2 of half-width experts: the dense block's FLOPs plus the router's 2·d·E per layer.
  EXPECT_DOUBLE_EQ(active_flops_per_token(c, 4) - active_flops_per_token(base, 4),
                   double(base.layers) * 2 * base.d_model * c.moe.experts);
  EXPECT_EQ(ParamLayout(c).at("layer1.moe.w13").shape,
            (std::vector<int64_t>{4, base.d_model, base.ffn_hidden}));
  Config bad = c;
  bad.moe_layers = {0, 2};
  expect_error([&] { bad.validate(); }, "moe layer 2 is outside the model's depth 2");
  bad = c;
  bad.moe_layers = {1, 1};
  expect_error([&] { bad.validate(); }, "moe layer 1 is listed twice");
  bad = model_config(ModelKind::memory, base);
  bad.moe_layers = bad.memory_layers;
  bad.moe = c.moe;
  expect_error([&] { bad.validate(); }, "is both a memory layer and a moe layer");
  bad = c;
  bad.moe.top = 5;
  expect_error([&] { Model m(bad, ops_for(Backend::reference)); }, "top");
}

// Every dense tensor's gradient of the objective (cross-entropy + balancing losses) against
// central differences, with the routing held: an entry whose perturbation changes any layer's
// picks is skipped and counted (at most a quarter of a tensor). h = 5e-3: at 1e-2 the truncation
// error reaches 2.1e-3 (wpe); at 5e-3 the worst is 4.7e-4 and nothing is skipped.
TEST(MoeModel, ReferenceGradientsMatchFiniteDifferences) {
  const Config c = tiny_moe_config();
  Rng rng("MoeModel.ReferenceGradientsMatchFiniteDifferences");
  Model model(c, ops_for(Backend::reference));
  std::vector<float> params = random_params(model.layout(), rng);
  const HostBatch b = random_batch(c, rng, 2, 5);
  std::vector<float> grads(params.size());
  const double l0 = model.loss(params.data(), nullptr, b.view(), grads.data());
  ASSERT_TRUE(std::isfinite(l0));
  ASSERT_GT(model.balance_loss(), 0);
  const auto picks0 = moe_picks(model);
  expect_gradients_match_fd(model, params, b, grads, 5e-3f,
                            [&] { return moe_picks(model) == picks0; });
}

TEST(MoeModel, CpuMatchesReference) {
  const Config c = tiny_moe_config();
  Rng rng("MoeModel.CpuMatchesReference");
  Model ref(c, ops_for(Backend::reference)), cpu(c, ops_for(Backend::cpu));
  const std::vector<float> params = random_params(ref.layout(), rng);
  const HostBatch b = random_batch(c, rng, 3, 6);
  std::vector<float> g_ref(params.size()), g_cpu(params.size(), std::nanf(""));
  const double l_ref = ref.loss(params.data(), nullptr, b.view(), g_ref.data());
  const double l_cpu = cpu.loss(params.data(), nullptr, b.view(), g_cpu.data());
  ASSERT_EQ(moe_picks(cpu), moe_picks(ref));
  EXPECT_NEAR(l_cpu, l_ref, 1e-5 * std::abs(l_ref));
  EXPECT_NEAR(cpu.balance_loss(), ref.balance_loss(), 1e-6 * ref.balance_loss());
  expect_grads_match(ref.layout(), g_cpu, g_ref);
}

TEST(MemoryModel, LayoutAndInitialValues) {
  const Config c = tiny_memory_config(Kind::memory_plus);
  const ParamLayout layout(c);
  const int64_t d = c.d_model, hn = 2 * 8;
  EXPECT_EQ(layout.at("layer0.mem.wq").shape, (std::vector<int64_t>{d, hn}));
  EXPECT_EQ(layout.at("layer2.mem.keys2").shape, (std::vector<int64_t>{2, 5, 4}));
  EXPECT_EQ(layout.at("layer2.mem.w2").shape, (std::vector<int64_t>{10, d}));
  EXPECT_EQ(layout.at("layer1.w13").shape, (std::vector<int64_t>{d, 2 * c.ffn_hidden}));
  EXPECT_THROW(layout.at("layer0.w13"), Error);
  EXPECT_THROW(layout.at("layer1.mem.wq"), Error);
  EXPECT_EQ(parameter_count(c), layout.total() + 25 * 10);

  // A dense model's initial values do not depend on memory settings it does not use.
  Config dense = tiny_config();
  Config other = dense;
  other.memory.k_dim = 4, other.memory.value_dim = 3;
  EXPECT_EQ(init_params(dense, 5), init_params(other, 5));
  const std::vector<float> p = init_params(c, 5);
  const ParamTensor& bq = layout.at("layer0.mem.bq");
  const ParamTensor& keys = layout.at("layer0.mem.keys1");
  EXPECT_TRUE(std::all_of(p.begin() + bq.offset, p.begin() + bq.offset + bq.size(),
                          [](float v) { return v == 0.0f; }));
  const float bound = 1.0f / std::sqrt(4.0f);
  EXPECT_TRUE(std::all_of(p.begin() + keys.offset, p.begin() + keys.offset + keys.size(),
                          [&](float v) { return std::abs(v) <= bound && v != 0.0f; }));

  const std::vector<float> v = init_values(c, 5);
  ASSERT_EQ(v.size(), 25u * 10u);
  EXPECT_EQ(v, init_values(c, 5));
  EXPECT_NE(v, init_values(c, 6));
  double sq = 0;
  for (float e : v) sq += double(e) * e;
  EXPECT_NEAR(std::sqrt(sq / double(v.size())), 1 / std::sqrt(10.0), 0.02);
  EXPECT_TRUE(init_values(tiny_config(), 5).empty());
}

TEST(MemoryModel, BadConfigsAreRefused) {
  auto refused = [](const std::function<void(Config&)>& edit, const std::string& message) {
    Config c = tiny_memory_config(Kind::memory);
    edit(c);
    expect_error([&] { c.validate(); }, message);
  };
  refused([](Config& c) { c.memory_layers = {2}; },
          "memory layer 2 is past the model's depth 2: accepted are 0 ≤ index < layers");
  refused([](Config& c) { c.memory_layers = {-1}; },
          "memory layer -1 is negative: accepted are 0 ≤ index < layers");
  refused(
      [](Config& c) {
        c.memory_layers = {1, 0, 1};
      },
      "memory layer 1 is listed twice: accepted are distinct indices");
  refused([](Config& c) { c.memory.k = 6; },
          "memory.k 6 exceeds memory.n_keys 5: accepted are 1 ≤ k ≤ n_keys");
  refused([](Config& c) { c.memory.k_dim = 7; }, "memory.k_dim 7 is odd: accepted are even k_dim");
  refused([](Config& c) { c.memory.value_dim = 10; },
          "memory.value_dim 10 with kind memory differs from d_model 12");
  refused([](Config& c) { c.memory.heads = 0; },
          "model config: memory layer: heads = 0: accepted heads >= 1");
  refused([](Config& c) { c.memory.kind = Kind::memory_plus, c.memory.value_dim = 0; },
          "model config: memory layer: value_dim = 0: accepted value_dim >= 1");

  const Config c = tiny_memory_config(Kind::peer);
  Model model(c, ops_for(Backend::reference));
  const std::vector<float> params = init_params(c, 1);
  Rng rng("MemoryModel.BadConfigsAreRefused");
  const HostBatch b = random_batch(c, rng, 1, 3);
  expect_error([&] { model.loss(params.data(), nullptr, b.view()); },
               "values is null but the model has a value table");
  expect_error([&] { model.selection(0); }, "layer 0 has no memory layer (memory_layers: 1)");
  Config deep = tiny_config();
  deep.memory_layers = {0};
  expect_error([&] { model_config(ModelKind::memory, deep); }, "accepted is a dense base");
}

}  // namespace
}  // namespace memlayers::harness
