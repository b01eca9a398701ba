// Runs `memlayers memory-layer` on small layers and checks what it writes against the fp64
// reference (reference/memory_layer.h) computed in this process: --init's parameter file (shapes,
// scales, the seed), the forward of every kind (qk-norm, the scalar gate, bf16 value tables; the
// search's indices and scores), the backward's gradient file and dx, a value table given apart
// (--values), on the reference backend and the default cpu composition; then the errors a user
// meets — a missing or corrupt parameter file, a missing tensor, a bad config, x of the wrong
// shape, dtype or with a NaN, an unknown backend or variant, missing flags.
// Build and run:
//   cmake --build build --target cli_test && build/tests/cli/cli_test
//   --gtest_filter='MemoryLayerCli*'
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cli_helpers.h"
#include "common/backend.h"
#include "common/registry.h"
#include "common/safetensors.h"
#include "memory_layer/memory_layer.h"
#include "memory_layer/weights_io.h"
#include "npy/convert.h"
#include "npy/npy.h"
#include "reference/memory_layer.h"
#include "tests/common/random.h"

namespace {

namespace fs = std::filesystem;
namespace npy = memlayers::npy;
namespace ml = memlayers::memory_layer;
namespace st = memlayers::safetensors;
using memlayers::Backend;
using memlayers::DType;
using memlayers::Registry;
using namespace memlayers::cli_test;  // NOLINT: the shared CLI test helpers
using ::testing::HasSubstr;
using ::testing::StartsWith;

// ---- layers ----

struct Shape {
  ml::Kind kind;
  bool qk_norm, gate;
  DType values_dtype;
};

std::string name_of(const Shape& s) {
  return ml::to_string(s.kind) + (s.qk_norm ? "_norm" : "") + (s.gate ? "_gate" : "") +
         (s.values_dtype == DType::bf16 ? "_bf16" : "");
}

// d 12, heads 2, n_keys 6 (36 rows), k_dim 8, k 3, memory+'s value width 10: a few hundred
// parameters, so every run stays fast under the sanitizers.
std::string init_flags(const Shape& s, unsigned seed) {
  return " --init --kind " + ml::to_string(s.kind) +
         " --d-model 12 --heads 2 --n-keys 6 --k-dim 8 --k 3" +
         (s.kind == ml::Kind::memory_plus ? " --value-dim 10" : "") +
         (s.qk_norm ? " --qk-norm" : "") + (s.gate ? " --gate" : "") +
         (s.values_dtype == DType::bf16 ? " --values-dtype bf16" : "") + " --seed " +
         std::to_string(seed);
}

// (batch, d) values in [-1, -0.05] ∪ [0.05, 1], seeded by `name`.
std::vector<float> random_rows(const std::string& name, std::int64_t batch, std::int64_t d) {
  memlayers::test::Rng rng(name);
  std::vector<float> v(static_cast<std::size_t>(batch * d));
  for (float& e : v) e = rng.signed_unit();
  return v;
}

// The layer's value table as float32 (widened when stored as bf16).
std::vector<float> values_fp32(const ml::HostWeights& w) {
  const std::size_t n = w.values.size() / memlayers::dtype_size(w.config.values_dtype);
  std::vector<float> out(n);
  if (w.config.values_dtype == DType::bf16) {
    std::vector<std::uint16_t> bits(n);
    std::memcpy(bits.data(), w.values.data(), n * 2);
    npy::bf16_to_fp32(bits, out);
  } else {
    std::memcpy(out.data(), w.values.data(), n * 4);
  }
  return out;
}

// ---- the reference ----

struct Forward {
  std::vector<float> out, scores;
  std::vector<std::int64_t> indices;
};

// The reference forward, on its own selection or (when `fixed` is set) on the one given.
Forward reference_fwd(const ml::HostWeights& w, const std::vector<float>& x, std::int64_t batch,
                      const std::vector<std::int64_t>* fixed = nullptr) {
  const ml::Config& c = w.config;
  const auto hk = static_cast<std::size_t>(batch * c.heads * c.k);
  Forward f{std::vector<float>(static_cast<std::size_t>(batch * c.d_model)), std::vector<float>(hk),
            std::vector<std::int64_t>(hk)};
  ml::FwdParams p;
  p.config = c, p.weights = w.view(), p.x = x.data(), p.out = f.out.data(), p.batch = batch;
  p.saved.scores = f.scores.data();
  p.saved.indices = f.indices.data();
  if (fixed) {
    f.indices = *fixed;
    p.saved.indices = nullptr;
    memlayers::reference::memory_layer_fwd_fixed(p, fixed->data());
  } else {
    memlayers::reference::memory_layer_fwd(p);
  }
  return f;
}

// The selection rule of the layer's tests (DESIGN.md §4): per token and head, indices distinct
// and in range, each one's score (`fixed_scores`, the reference on this selection) no worse than
// the reference's own k-th best — near-ties may reorder.
void expect_selection(const ml::Config& c, std::int64_t batch,
                      const std::vector<std::int64_t>& indices,
                      const std::vector<float>& fixed_scores, const Forward& ref,
                      const std::string& what) {
  ASSERT_EQ(indices.size(), ref.indices.size()) << what;
  std::int64_t bad = 0;
  std::ostringstream first;
  for (std::int64_t row = 0; row < batch * c.heads; ++row) {
    std::set<std::int64_t> seen;
    const double kth = ref.scores[row * c.k + c.k - 1];
    for (std::int64_t t = 0; t < c.k; ++t) {
      const std::int64_t at = row * c.k + t, m = indices[at];
      const bool ok = m >= 0 && m < c.num_values() && seen.insert(m).second &&
                      fixed_scores[at] >= kth - 1e-5 * (1 + std::fabs(kth));
      if (!ok && bad++ < 5)
        first << " token " << row / c.heads << " head " << row % c.heads << " slot " << t
              << " index " << m << ";";
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad
                    << " selected rows are not among the k best:" << first.str();
}

std::vector<std::int64_t> read_indices(const fs::path& p, const std::vector<std::int64_t>& shape) {
  const npy::Array a = npy::read(p);
  EXPECT_EQ(a.dtype, DType::i64) << p;
  EXPECT_EQ(a.shape, shape) << p;
  return a.to_vector<std::int64_t>();
}

// Every dense gradient of the reference on the selection `indices`, by parameter name, and dx.
struct Gradients {
  std::vector<std::pair<std::string, std::vector<float>>> params;
  std::vector<float> x;
};

Gradients reference_bwd(const ml::HostWeights& w, const std::vector<float>& x,
                        const std::vector<float>& dout, std::int64_t batch,
                        const std::vector<std::int64_t>& indices) {
  const ml::Config& c = w.config;
  Gradients g;
  g.x.resize(x.size());
  for (const ml::TensorSpec& s : ml::weight_specs(c)) {
    std::int64_t n = 1;
    for (std::int64_t e : s.shape) n *= e;
    g.params.emplace_back(s.name, std::vector<float>(static_cast<std::size_t>(n)));
  }
  auto grad = [&](const std::string& name) -> float* {
    for (auto& [n, v] : g.params)
      if (n == name) return v.data();
    return nullptr;
  };
  ml::BwdParams p;
  p.config = c, p.weights = w.view(), p.x = x.data(), p.grad_out = dout.data(), p.batch = batch;
  p.saved.indices = const_cast<std::int64_t*>(indices.data());
  ml::Grads& d = p.grads;
  d.x = g.x.data(), d.wq = grad("wq"), d.bq = grad("bq"), d.keys1 = grad("keys1");
  d.keys2 = grad("keys2"), d.values_dense = grad("values"), d.down_dense = grad("down");
  d.w1 = grad("w1"), d.b1 = grad("b1"), d.w2 = grad("w2"), d.b2 = grad("b2"), d.wg = grad("wg");
  memlayers::reference::memory_layer_bwd(p);
  return g;
}

// ---- the fixture ----

class MemoryLayerCli : public TempDirTest {
 protected:
  MemoryLayerCli() : TempDirTest("memlayers_memory_layer_cli_") {}

  // Random parameters through --init, loaded back; x and dout for `batch` tokens.
  ml::HostWeights init(const Shape& s, unsigned seed, std::int64_t batch = 5) {
    ok("memory-layer --params " + arg("p.safetensors") + init_flags(s, seed), {"p.safetensors"});
    ml::HostWeights w = ml::load_weights(file("p.safetensors").string());
    x_ = random_rows("x_" + name_of(s), batch, w.config.d_model);
    dout_ = random_rows("dout_" + name_of(s), batch, w.config.d_model);
    batch_ = batch;
    npy::write(file("x.npy"), npy::Array::from<float>({batch, w.config.d_model}, x_));
    npy::write(file("dout.npy"), npy::Array::from<float>({batch, w.config.d_model}, dout_));
    return w;
  }

  std::string forward() const {
    return "memory-layer --params " + arg("p.safetensors") + " --input " + arg("x.npy") +
           " --out " + arg("out.npy");
  }
  std::string backward() const {
    return "memory-layer --params " + arg("p.safetensors") + " --input " + arg("x.npy") +
           " --backward --grad-out " + arg("dout.npy") + " --grads " + arg("g.safetensors");
  }
  std::string search_outputs() const {
    return " --indices " + arg("i.npy") + " --scores " + arg("s.npy");
  }

  // The forward's out, indices and scores against the reference.
  void expect_forward(const ml::HostWeights& w, const std::string& what) {
    const ml::Config& c = w.config;
    const std::vector<std::int64_t> search{batch_, c.heads, c.k};
    const auto indices = read_indices(file("i.npy"), search);
    const Forward ref = reference_fwd(w, x_, batch_);
    const Forward fixed = reference_fwd(w, x_, batch_, &indices);
    expect_selection(c, batch_, indices, fixed.scores, ref, what);
    expect_close(read_floats(file("out.npy"), {batch_, c.d_model}), fixed.out, 1e-5, what + " out");
    expect_close(read_floats(file("s.npy"), search), fixed.scores, 1e-5, what + " scores");
  }

  // The gradient file: the parameters' names, shapes and config, float32, equal to the
  // reference's on the run's selection; and dx.
  void expect_backward(const ml::HostWeights& w, const std::string& what) {
    const ml::Config& c = w.config;
    const auto indices = read_indices(file("i.npy"), {batch_, c.heads, c.k});
    const Gradients want = reference_bwd(w, x_, dout_, batch_, indices);
    const st::File got = st::load(file("g.safetensors").string());
    EXPECT_EQ(got.metadata, st::load(file("p.safetensors").string()).metadata)
        << what << ": the gradients' config differs from the parameters'";
    std::set<std::string> names;
    for (const auto& [name, t] : got.tensors) names.insert(name);
    std::set<std::string> want_names;
    for (const auto& [name, v] : want.params) want_names.insert(name);
    EXPECT_EQ(names, want_names) << what;
    for (const ml::TensorSpec& s : ml::weight_specs(c)) {
      if (!got.has(s.name)) continue;
      const st::Tensor& t = got.at(s.name);
      EXPECT_EQ(t.dtype, DType::f32) << what << " " << s.name;
      EXPECT_EQ(t.shape, s.shape) << what << " " << s.name;
      if (t.dtype != DType::f32 || t.shape != s.shape) continue;
      const std::vector<float> g(t.as<float>(), t.as<float>() + t.numel());
      for (const auto& [name, v] : want.params)
        if (name == s.name) expect_close(g, v, 1e-5, what + " d" + s.name);
    }
    expect_close(read_floats(file("dx.npy"), {batch_, c.d_model}), want.x, 1e-5, what + " dx");
  }

  // A run that must fail with `code`, writing no output and nothing on stdout.
  Result fails(const std::string& args, int code) {
    return fails_writing_none(args, code, {"out.npy", "i.npy", "s.npy", "g.safetensors", "dx.npy"});
  }

  std::vector<float> x_, dout_;
  std::int64_t batch_ = 0;
};

const Shape kShapes[] = {
    {ml::Kind::memory, false, false, DType::f32},
    {ml::Kind::memory, true, true, DType::bf16},
    {ml::Kind::memory_plus, false, true, DType::f32},
    {ml::Kind::memory_plus, true, false, DType::bf16},
    {ml::Kind::peer, true, false, DType::f32},
    {ml::Kind::peer, false, true, DType::bf16},
};

// The backends a test runs: the reference, the cpu composition by default (no --backend), and
// where one is registered the CUDA composition under simt, on the gated shapes only (one per
// kind: a simt run takes ~0.5 s of CPU threads).
std::vector<std::string> backends(const Shape& s) {
  std::vector<std::string> out{" --backend reference"};
  if (!Registry<ml::Fwd>::of(Backend::cpu).empty()) out.emplace_back("");
  if (s.gate && !Registry<ml::Fwd>::of(Backend::simt).empty()) out.emplace_back(" --backend simt");
  return out;
}

// "cpu/v1_compose" for "" (the default), "reference/reference" for " --backend reference", ...
std::string ran(const std::string& backend_flag) {
  if (backend_flag.empty()) return "cpu/" + Registry<ml::Fwd>::of(Backend::cpu).front()->name;
  const std::string b = backend_flag.substr(std::string(" --backend ").size());
  return b + "/" + Registry<ml::Fwd>::of(*memlayers::parse_backend(b)).front()->name;
}

// ---- --init ----

TEST_F(MemoryLayerCli, InitWritesTheConfigAndScaledRandomParameters) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(name_of(s));
    const Result r =
        ok("memory-layer --params " + arg("p.safetensors") + init_flags(s, 7), {"p.safetensors"});
    EXPECT_THAT(r.err, StartsWith("memory-layer init: " + ml::to_string(s.kind) +
                                  " d_model 12, heads 2, n_keys 6, k_dim 8, k 3"));
    const ml::HostWeights w = ml::load_weights(file("p.safetensors").string());
    const ml::Config& c = w.config;
    EXPECT_EQ(c.kind, s.kind);
    EXPECT_EQ(c.d_model, 12);
    EXPECT_EQ(c.heads, 2);
    EXPECT_EQ(c.n_keys, 6);
    EXPECT_EQ(c.k_dim, 8);
    EXPECT_EQ(c.k, 3);
    EXPECT_EQ(c.value_dim, s.kind == ml::Kind::memory_plus ? 10 : 12);
    EXPECT_EQ(c.qk_norm, s.qk_norm);
    EXPECT_EQ(c.scalar_gate, s.gate);
    EXPECT_EQ(c.values_dtype, s.values_dtype);
    EXPECT_FALSE(w.values.empty());
    // Within the tests' scales (|wq| <= 1/sqrt(d), |V| <= 1), not constant, not all zero.
    const auto spread = [](const std::vector<float>& v, double scale, const char* what) {
      ASSERT_FALSE(v.empty()) << what;
      const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
      EXPECT_GE(*lo, -scale) << what;
      EXPECT_LE(*hi, scale) << what;
      EXPECT_GT(*hi - *lo, scale / 2) << what << ": hardly random";
    };
    spread(w.wq, 1 / std::sqrt(12.0), "wq");
    spread(w.keys1, 0.5, "keys1");
    spread(w.keys2, 0.5, "keys2");
    spread(values_fp32(w), 1.0, "values");
    EXPECT_NE(w.keys1, w.keys2);
    if (s.kind == ml::Kind::memory_plus) spread(w.w2, 1 / std::sqrt(10.0), "w2");
    if (s.gate) spread(w.wg, 1 / std::sqrt(12.0), "wg");
    EXPECT_EQ(w.down.empty(), s.kind != ml::Kind::peer);
  }
  // The seed decides the file; another seed another one.
  const Shape s = kShapes[2];
  ok("memory-layer --params " + arg("p.safetensors") + init_flags(s, 3), {"p.safetensors"});
  ok("memory-layer --params " + arg("q.safetensors") + init_flags(s, 3), {"q.safetensors"});
  EXPECT_EQ(slurp(file("p.safetensors")), slurp(file("q.safetensors")));
  ok("memory-layer --params " + arg("q.safetensors") + init_flags(s, 4), {"q.safetensors"});
  EXPECT_NE(slurp(file("p.safetensors")), slurp(file("q.safetensors")));
}

// ---- forward and backward against the reference ----

TEST_F(MemoryLayerCli, ForwardMatchesReference) {
  for (const Shape& s : kShapes) {
    const ml::HostWeights w = init(s, 11);
    for (const std::string& b : backends(s)) {
      const std::string what = name_of(s) + (b.empty() ? " default" : b);
      SCOPED_TRACE(what);
      const Result r = ok(forward() + search_outputs() + b, {"out.npy", "i.npy", "s.npy"});
      EXPECT_THAT(r.err, StartsWith("memory-layer forward: " + ran(b) + ", "));
      EXPECT_THAT(r.err, HasSubstr("; x (5, 12) fp32 -> out (5, 12) fp32, scores (5, 2, 3) fp32, "
                                   "indices (5, 2, 3) int64"));
      expect_forward(w, what);
    }
  }
}

TEST_F(MemoryLayerCli, BackwardMatchesReference) {
  for (const Shape& s : kShapes) {
    const ml::HostWeights w = init(s, 12);
    for (const std::string& b : backends(s)) {
      const std::string what = name_of(s) + (b.empty() ? " default" : b);
      SCOPED_TRACE(what);
      const Result r =
          ok(backward() + " --grad-input " + arg("dx.npy") + " --indices " + arg("i.npy") + b,
             {"g.safetensors", "dx.npy", "i.npy"});
      EXPECT_THAT(r.err, HasSubstr("memory-layer backward: " + ran(b) + ", "));
      EXPECT_THAT(r.err, HasSubstr("grad-out (5, 12) fp32 -> grads"));
      EXPECT_FALSE(fs::exists(file("out.npy"))) << "no --out given";
      expect_backward(w, what);
    }
  }
  // --out with --backward writes the forward's output too, equal to a forward run's.
  init(kShapes[0], 13);
  fs::remove(file("dx.npy"));
  ok(forward() + " --backend reference", {"out.npy"});
  const std::string fwd_only = slurp(file("out.npy"));
  ok(backward() + " --backend reference --out " + arg("out.npy"), {"out.npy", "g.safetensors"});
  EXPECT_EQ(slurp(file("out.npy")), fwd_only);
  EXPECT_FALSE(fs::exists(file("dx.npy"))) << "no --grad-input given";
}

TEST_F(MemoryLayerCli, SharedValuesFromTheirOwnFile) {
  // A peer layer with bf16 tables: --values is narrowed to the file's bf16.
  for (const Shape& s : {kShapes[2], kShapes[5]}) {
    SCOPED_TRACE(name_of(s));
    const ml::HostWeights w = init(s, 14);
    const std::vector<float> table = values_fp32(w);
    ml::save_weights(file("p.safetensors").string(), w.config, w.view(), /*values=*/false);
    EXPECT_FALSE(st::load(file("p.safetensors").string()).has("values"));
    npy::write(file("V.npy"), npy::Array::from<float>({36, w.config.value_width()}, table));
    ok(forward() + search_outputs() + " --values " + arg("V.npy"), {"out.npy", "i.npy", "s.npy"});
    expect_forward(w, name_of(s) + " --values");

    // Without --values, or with a table of the wrong width, nothing runs.
    Result r = fails(forward(), 1);
    EXPECT_THAT(r.err, HasSubstr("--params (" + arg("p.safetensors") +
                                 ") holds no 'values' tensor (the shared value table): give it "
                                 "with --values, a (36, " +
                                 std::to_string(w.config.value_width()) + ") float32 .npy file"));
    npy::write(file("V.npy"), npy::Array::zeros(DType::f32, {36, 3}));
    r = fails(forward() + " --values " + arg("V.npy"), 1);
    EXPECT_THAT(r.err, HasSubstr("--values (" + arg("V.npy") + "): shape (36, 3) does not match"));
  }
  // A file that holds its table refuses a second one.
  init(kShapes[0], 15);
  const Result r = fails(forward() + " --values " + arg("V.npy"), 1);
  EXPECT_THAT(r.err, HasSubstr("holds its own 'values' tensor"));
}

// ---- errors ----

TEST_F(MemoryLayerCli, MissingOrCorruptParameterFile) {
  init(kShapes[0], 16);
  Result r = fails("memory-layer --params " + arg("none.safetensors") + " --input " + arg("x.npy") +
                       " --out " + arg("out.npy"),
                   1);
  EXPECT_THAT(r.err, StartsWith("memlayers: error: --params: cannot open '" +
                                file("none.safetensors").string() + "'"));

  const std::string whole = slurp(file("p.safetensors"));
  std::ofstream(file("p.safetensors"), std::ios::binary | std::ios::trunc)
      << whole.substr(0, whole.size() / 2);
  r = fails(forward(), 1);
  EXPECT_THAT(r.err, StartsWith("memlayers: error: --params: " + file("p.safetensors").string()));

  std::ofstream(file("p.safetensors"), std::ios::binary | std::ios::trunc) << "not safetensors";
  r = fails(forward(), 1);
  EXPECT_THAT(r.err, HasSubstr("--params: " + file("p.safetensors").string()));
}

TEST_F(MemoryLayerCli, MissingTensorOrBadConfigIsNamed) {
  init(kShapes[2], 17);  // memory+ with the gate
  const st::File good = st::load(file("p.safetensors").string());
  st::File f = good;
  f.tensors.erase("w1");
  st::save(file("p.safetensors").string(), f);
  Result r = fails(forward(), 1);
  EXPECT_EQ(r.err, "memlayers: error: --params (" + arg("p.safetensors") +
                       "): no tensor 'w1': a memory_plus layer needs it\n");

  f = good;
  f.tensors.erase("wg");
  st::save(file("p.safetensors").string(), f);
  EXPECT_THAT(fails(forward(), 1).err, HasSubstr("no tensor 'wg': a memory_plus layer with "
                                                 "scalar_gate needs it"));

  f = good;
  f.metadata["memlayers.k"] = "40";
  st::save(file("p.safetensors").string(), f);
  r = fails(forward(), 1);
  EXPECT_THAT(r.err, HasSubstr("--params (" + arg("p.safetensors") +
                               "): config in __metadata__: k = 40: accepted 1 <= k <= "
                               "min(n_keys = 6, 1024)"));

  f = good;
  f.metadata["memlayers.kind"] = "swilu";
  st::save(file("p.safetensors").string(), f);
  EXPECT_THAT(fails(forward(), 1).err, HasSubstr("'swilu': accepted memory, memory_plus, peer"));

  // --init checks the config before writing anything.
  r = fails_writing_none(
      "memory-layer --params " + arg("n.safetensors") +
          " --init --kind memory --d-model 8 --heads 1 --n-keys 4 --k-dim 6 --k 5 --seed 1",
      1, {"n.safetensors"});
  EXPECT_EQ(r.err, "memlayers: error: --init: k = 5: accepted 1 <= k <= min(n_keys = 4, 1024)\n");
  r = fails_writing_none(
      "memory-layer --params " + arg("n.safetensors") +
          " --init --kind memory --d-model 8 --heads 1 --n-keys 4 --k-dim 7 --k 2 --seed 1",
      1, {"n.safetensors"});
  EXPECT_THAT(r.err, HasSubstr("--init: k_dim = 7: accepted even k_dim"));
  r = fails_writing_none(
      "memory-layer --params " + arg("n.safetensors") +
          " --init --kind peer --d-model 8 --heads 1 --n-keys 4 --k-dim 6 --k 2 --value-dim 5 "
          "--seed 1",
      1, {"n.safetensors"});
  EXPECT_THAT(r.err, HasSubstr("--value-dim 5 with --kind peer: only memory_plus"));
}

TEST_F(MemoryLayerCli, InputOfTheWrongShapeOrDtypeIsNamed) {
  init(kShapes[0], 18);
  npy::write(file("x.npy"), npy::Array::zeros(DType::f32, {5, 13}));
  Result r = fails(forward(), 1);
  EXPECT_EQ(r.err, "memlayers: error: --input (" + arg("x.npy") +
                       "): shape (5, 13) does not match the expected (5, 12): (batch, d_model), "
                       "d_model = 12 from the config in --params '" +
                       file("p.safetensors").string() + "'\n");
  npy::write(file("x.npy"), npy::Array::zeros(DType::f32, {5, 2, 6}));
  EXPECT_THAT(fails(forward(), 1).err, HasSubstr("--input (" + arg("x.npy") + "): has rank 3"));
  npy::write(file("x.npy"), npy::Array::zeros(DType::i32, {5, 12}));
  EXPECT_THAT(fails(forward(), 1).err,
              HasSubstr("--input (" + arg("x.npy") +
                        "): dtype int32 is not accepted here; accepted: fp32"));
  npy::write(file("x.npy"), npy::Array::zeros(DType::f32, {0, 12}));
  EXPECT_THAT(fails(forward(), 1).err, HasSubstr("holds no token: accepted batch >= 1"));

  std::vector<float> x = random_rows("nan", 5, 12);
  x[3 * 12 + 7] = std::numeric_limits<float>::quiet_NaN();
  npy::write(file("x.npy"), npy::Array::from<float>({5, 12}, x));
  EXPECT_EQ(fails(forward() + " --backend reference", 1).err,
            "memlayers: error: --input (" + arg("x.npy") +
                "): element [3, 7] is nan: the layer needs finite inputs\n");

  init(kShapes[0], 18);
  npy::write(file("dout.npy"), npy::Array::zeros(DType::f32, {4, 12}));
  EXPECT_THAT(fails(backward(), 1).err,
              HasSubstr("--grad-out (" + arg("dout.npy") +
                        "): shape (4, 12) does not match the expected (5, 12)"));
}

TEST_F(MemoryLayerCli, UnknownVariantOrBackendWithoutOne) {
  init(kShapes[0], 19);
  Result r = fails(forward() + " --variant v9_bogus", 1);
  EXPECT_THAT(r.err, HasSubstr("memory_layer_fwd: no variant 'v9_bogus' on backend cpu; "
                               "registered there: v1_compose"));
  if (Registry<ml::Fwd>::of(Backend::simt).empty()) {
    r = fails(forward() + " --backend simt", 1);
    EXPECT_THAT(r.err, HasSubstr("memory_layer_fwd: no variant on backend simt supports this "
                                 "input (none is registered there)"));
  }
  if (!memlayers::usable(Backend::cuda).empty()) {
    r = fails(forward() + " --backend cuda", 1);
    EXPECT_THAT(r.err, HasSubstr("backend cuda is not usable here: "));
  }
  r = fails(forward() + " --backend gpu", 2);
  EXPECT_THAT(r.err, HasSubstr("--backend"));
}

TEST_F(MemoryLayerCli, UsageErrors) {
  init(kShapes[0], 20);
  const std::string params = "memory-layer --params " + arg("p.safetensors");
  struct Case {
    std::string args, says;
  };
  const Case cases[] = {
      {params + " --input " + arg("x.npy"), "--out is required"},
      {params + " --out " + arg("out.npy"), "--input is required"},
      {"memory-layer --input " + arg("x.npy") + " --out " + arg("out.npy"), "--params"},
      {forward() + " --backward --grad-out " + arg("dout.npy"), "--grads"},
      {forward() + " --backward --grads " + arg("g.safetensors"), "--grad-out"},
      {forward() + " --grad-input " + arg("dx.npy"), "--backward"},
      {forward() + " --kind memory", "--init"},
      {params + " --init --d-model 8 --heads 1 --n-keys 4 --k-dim 6 --k 2 --seed 1",
       "--kind is required with --init"},
      {params + " --init --kind memory --heads 1 --n-keys 4 --k-dim 6 --k 2 --d-model 8",
       "--seed is required with --init"},
      {params + " --init --kind swilu --d-model 8 --heads 1 --n-keys 4 --k-dim 6 --k 2 --seed 1",
       "--kind"},
      {params +
           " --init --kind memory --d-model 8 --heads 1 --n-keys 4 --k-dim 6 --k 2 --seed 1 "
           "--input " +
           arg("x.npy"),
       "--input"},
      {params + " --init --kind memory --d-model 8 --heads 1 --n-keys 4 --k-dim 6 --k 2 --seed 1 "
                "--values-dtype fp16",
       "--values-dtype"},
  };
  const std::string before = slurp(file("p.safetensors"));
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const Result r = fails(c.args, 2);
    EXPECT_THAT(r.err, StartsWith("memlayers: usage error:"));
    EXPECT_THAT(r.err, HasSubstr(c.says));
  }
  EXPECT_EQ(slurp(file("p.safetensors")), before) << "a refused --init wrote the parameters";
}

TEST_F(MemoryLayerCli, HelpNamesEveryOption) {
  const Result r = run("memory-layer --help");
  EXPECT_EQ(r.code, 0) << r.err;
  for (const char* o :
       {"--params",  "--input",     "--out",      "--values",   "--indices",      "--scores",
        "--backend", "--variant",   "--backward", "--grad-out", "--grads",        "--grad-input",
        "--init",    "--kind",      "--d-model",  "--heads",    "--n-keys",       "--k-dim",
        "--k",       "--value-dim", "--qk-norm",  "--gate",     "--values-dtype", "--seed"})
    EXPECT_THAT(r.out, HasSubstr(std::string(o) + " ")) << o;
  EXPECT_THAT(run("--help").out, HasSubstr("memory-layer"));
}

}  // namespace
