// The memory layer's per-stage floors (kernels/memory_layer/stage_costs.h) against the layer's
// declared totals: the stages' flops add up to memory_layer::Fwd / Bwd::flops (plus the scalar
// gate's own 2·B·d), the search and bag stages are the ops' declarations, every stage moves
// bytes, and the stages come in the composition's order.
#include "memory_layer/stage_costs.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

#include "common/error.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::memory_layer {
namespace {

struct Case {
  Kind kind;
  bool gate, qk_norm;
  DType dtype;
};

Config config_of(const Case& k) {
  Config c;
  c.kind = k.kind, c.d_model = 96, c.heads = 3, c.n_keys = 50, c.k_dim = 22, c.k = 7;
  c.value_dim = k.kind == Kind::memory_plus ? 40 : 96;
  c.scalar_gate = k.gate, c.qk_norm = k.qk_norm, c.values_dtype = k.dtype;
  return c;
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (Kind kind : {Kind::memory, Kind::memory_plus, Kind::peer})
    for (bool gate : {false, true})
      out.push_back({kind, gate, gate, gate ? DType::bf16 : DType::f32});
  return out;
}

std::string name_of(const Case& k) {
  return to_string(k.kind) + (k.gate ? "_gate_qknorm_bf16" : "_fp32");
}

template <std::size_t N>
std::vector<std::string> names_in(const char* const (&all)[N], const std::vector<StageCost>& s) {
  std::vector<std::string> order(std::begin(all), std::end(all)), out;
  for (const auto& n : order)
    if (std::any_of(s.begin(), s.end(), [&](const StageCost& c) { return c.name == n; }))
      out.push_back(n);
  return out;
}

double sum(const std::vector<StageCost>& s, double StageCost::*field) {
  double t = 0;
  for (const auto& c : s) t += c.*field;
  return t;
}

constexpr int64_t kBatch = 37;

TEST(StageCosts, ForwardCoversTheDeclaredFlopsAndBytes) {
  for (const Case& k : cases()) {
    SCOPED_TRACE(name_of(k));
    const Config c = config_of(k);
    const auto stages = stage_costs(c, kBatch, false);
    FwdParams p;
    p.config = c, p.batch = kBatch;
    const double gate_flops = c.scalar_gate ? 2.0 * kBatch * double(c.d_model) : 0;
    EXPECT_DOUBLE_EQ(sum(stages, &StageCost::flops), Fwd::flops(p) + gate_flops);
    // The stages also move the intermediates: never less than the layer's own floor.
    EXPECT_GT(sum(stages, &StageCost::bytes), Fwd::bytes_moved(p));
    for (const auto& s : stages) EXPECT_GT(s.bytes, 0) << s.name;

    // In the composition's order; gating only where the config has one.
    std::vector<std::string> names;
    for (const auto& s : stages) names.push_back(s.name);
    EXPECT_EQ(names, names_in(kFwdStages, stages));
    const bool gating = c.kind != Kind::memory || c.scalar_gate;
    EXPECT_EQ(names.size(), gating ? 5u : 4u);

    pk_topk::FwdParams sp;
    sp.batch = kBatch, sp.heads = c.heads, sp.n_keys = c.n_keys, sp.k_dim = c.k_dim, sp.k = c.k;
    EXPECT_DOUBLE_EQ(stages[1].bytes, pk_topk::Fwd::bytes_moved(sp));
    EXPECT_DOUBLE_EQ(stages[1].flops, pk_topk::Fwd::flops(sp));
  }
}

TEST(StageCosts, BackwardCoversTheDeclaredFlops) {
  for (const Case& k : cases()) {
    SCOPED_TRACE(name_of(k));
    const Config c = config_of(k);
    const auto stages = stage_costs(c, kBatch, true);
    BwdParams p;
    p.config = c, p.batch = kBatch;
    const double gate_flops = c.scalar_gate ? 2.0 * kBatch * double(c.d_model) : 0;
    EXPECT_DOUBLE_EQ(sum(stages, &StageCost::flops), Bwd::flops(p) + gate_flops);
    std::vector<std::string> names;
    for (const auto& s : stages) names.push_back(s.name);
    EXPECT_EQ(names, std::vector<std::string>(std::begin(kBwdStages), std::end(kBwdStages)));
    for (const auto& s : stages) EXPECT_GT(s.bytes, 0) << s.name;
  }
}

TEST(StageCosts, BagAndSearchScaleWithTheirShapes) {
  Config c = config_of({Kind::memory, false, false, DType::f32});
  const auto f32 = stage_costs(c, kBatch, false);
  c.values_dtype = DType::bf16;
  const auto bf16 = stage_costs(c, kBatch, false);
  // The gathered rows are the bag's only term that depends on the value dtype: B·h·k·v·2 less.
  EXPECT_DOUBLE_EQ(f32[3].bytes - bf16[3].bytes,
                   double(kBatch) * double(c.heads * c.k) * double(c.value_dim) * 2);
  EXPECT_DOUBLE_EQ(f32[1].bytes, bf16[1].bytes);
  const auto twice = stage_costs(c, 2 * kBatch, false);
  EXPECT_DOUBLE_EQ(twice[0].flops, 2 * bf16[0].flops);  // projection 2·B·d·h·n
  EXPECT_DOUBLE_EQ(twice[1].flops, 2 * bf16[1].flops);  // search 2·B·h·n_keys·n
}

TEST(StageCosts, RejectsBadInput) {
  Config c = config_of({Kind::memory, false, false, DType::f32});
  try {
    stage_costs(c, 0, false);
    FAIL() << "batch 0 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("accepted batch >= 1"), std::string::npos) << e.what();
  }
  c.k_dim = 21;
  try {
    stage_costs(c, kBatch, true);
    FAIL() << "odd k_dim accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k_dim = 21"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace memlayers::memory_layer
