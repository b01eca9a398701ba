// The transformer over harness::Ops and the memory layer (harness/model.h): the forward keeps
// every activation the backward reads; the backward walks the layers in reverse, adding each
// block's input gradient onto the residual stream's (accumulate_dx) instead of through extra adds.
#include "harness/model.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "dist/sharded_embbag.h"
#include "harness/arena.h"
#include "harness/memory_block.h"

namespace memlayers::harness {

// ---- config and layout ----

void Config::validate() const {
  auto positive = [](int64_t v, const char* name) {
    MEMLAYERS_CHECK(v >= 1, "model config: {} is {}: accepted are {} ≥ 1", name, v, name);
  };
  positive(vocab, "vocab"), positive(ctx, "ctx"), positive(d_model, "d_model");
  positive(layers, "layers"), positive(heads, "heads"), positive(ffn_hidden, "ffn_hidden");
  MEMLAYERS_CHECK(vocab <= INT32_MAX, "model config: vocab {} does not fit int32 token ids", vocab);
  MEMLAYERS_CHECK(d_model % heads == 0,
                  "model config: d_model {} is not divisible by heads {}: accepted are d_model = "
                  "heads·head_dim",
                  d_model, heads);
  for (std::size_t i = 0; i < moe_layers.size(); ++i) {
    const int64_t l = moe_layers[i];
    MEMLAYERS_CHECK(l >= 0 && l < layers,
                    "model config: moe layer {} is outside the model's depth {}: accepted are 0 ≤ "
                    "index < layers",
                    l, layers);
    for (std::size_t j = 0; j < i; ++j)
      MEMLAYERS_CHECK(moe_layers[j] != l,
                      "model config: moe layer {} is listed twice: accepted are distinct indices",
                      l);
    MEMLAYERS_CHECK(!is_memory_layer(l),
                    "model config: layer {} is both a memory layer and a moe layer: accepted is "
                    "one feed-forward block per layer",
                    l);
  }
  if (!moe_layers.empty()) moe.validate();
  if (memory_layers.empty()) return;
  for (std::size_t i = 0; i < memory_layers.size(); ++i) {
    const int64_t l = memory_layers[i];
    MEMLAYERS_CHECK(
        l >= 0, "model config: memory layer {} is negative: accepted are 0 ≤ index < layers", l);
    MEMLAYERS_CHECK(l < layers,
                    "model config: memory layer {} is past the model's depth {}: accepted are 0 ≤ "
                    "index < layers",
                    l, layers);
    for (std::size_t j = 0; j < i; ++j)
      MEMLAYERS_CHECK(memory_layers[j] != l,
                      "model config: memory layer {} is listed twice: accepted are distinct "
                      "indices",
                      l);
  }
  const MemoryConfig& m = memory;
  MEMLAYERS_CHECK(m.k <= m.n_keys,
                  "model config: memory.k {} exceeds memory.n_keys {}: accepted are 1 ≤ k ≤ n_keys "
                  "(each half's top-k is taken over n_keys sub-keys)",
                  m.k, m.n_keys);
  MEMLAYERS_CHECK(m.k_dim % 2 == 0,
                  "model config: memory.k_dim {} is odd: accepted are even k_dim (the query's two "
                  "halves of k_dim/2)",
                  m.k_dim);
  MEMLAYERS_CHECK(m.kind != memory_layer::Kind::memory || m.value_dim == d_model,
                  "model config: memory.value_dim {} with kind memory differs from d_model {}: "
                  "the plain memory layer's output is the bag itself, so accepted is value_dim = "
                  "d_model (memory_plus takes any value_dim)",
                  m.value_dim, d_model);
  MEMLAYERS_CHECK(m.values_dtype == DType::f32 || m.values_dtype == DType::bf16,
                  "model config: memory.values_dtype is {}: accepted are fp32 and bf16",
                  to_string(m.values_dtype));
  if (std::string why = memory_layer::validate(layer_config()); !why.empty())
    fail("model config: memory layer: {}", why);
}

bool Config::is_memory_layer(int64_t layer) const {
  return std::find(memory_layers.begin(), memory_layers.end(), layer) != memory_layers.end();
}

bool Config::is_moe_layer(int64_t layer) const {
  return std::find(moe_layers.begin(), moe_layers.end(), layer) != moe_layers.end();
}

memory_layer::Config Config::layer_config() const {
  memory_layer::Config c;
  c.kind = memory.kind, c.d_model = d_model, c.heads = memory.heads, c.n_keys = memory.n_keys;
  c.k_dim = memory.k_dim, c.k = memory.k;
  c.value_dim = memory.kind == memory_layer::Kind::peer ? d_model : memory.value_dim;
  c.qk_norm = memory.qk_norm, c.scalar_gate = false, c.values_dtype = memory.values_dtype;
  return c;
}

int64_t Config::table_rows() const {
  if (memory_layers.empty()) return 0;
  const int64_t n = memory.n_keys * memory.n_keys;
  return memory.kind == memory_layer::Kind::peer ? 2 * n : n;
}

int64_t Config::table_dim() const {
  if (memory_layers.empty()) return 0;
  return memory.kind == memory_layer::Kind::peer ? d_model : memory.value_dim;
}

// ---- kinds ----

std::string to_string(ModelKind k) {
  switch (k) {
    case ModelKind::dense:
      return "dense";
    case ModelKind::dense4x:
      return "dense4x";
    case ModelKind::moe:
      return "moe";
    case ModelKind::peer:
      return "peer";
    case ModelKind::memory:
      return "memory";
    case ModelKind::memory_plus:
      return "memory+";
  }
  return "?";
}

ModelKind parse_model_kind(std::string_view name) {
  std::string names;
  for (ModelKind k : kModelKinds) {
    if (name == to_string(k)) return k;
    names += (names.empty() ? "" : ", ") + to_string(k);
  }
  throw Error(fmt::format("unknown model '{}': accepted are {}", name, names));
}

std::vector<int64_t> memory_plus_layers(int64_t layers) {
  MEMLAYERS_CHECK(layers >= 1, "memory+ layers: layers is {}: accepted are layers ≥ 1", layers);
  std::vector<int64_t> out;
  if (layers < 4) {
    for (int64_t l = 0; l < layers; ++l) out.push_back(l);
    return out;
  }
  // round((2i+1)·layers/6), halves up, in integers.
  for (int64_t i = 0; i < 3; ++i) out.push_back(((2 * i + 1) * layers + 3) / 6);
  return out;
}

namespace {

memory_layer::Kind layer_kind(ModelKind kind) {
  switch (kind) {
    case ModelKind::memory:
      return memory_layer::Kind::memory;
    case ModelKind::memory_plus:
      return memory_layer::Kind::memory_plus;
    case ModelKind::peer:
      return memory_layer::Kind::peer;
    default:
      fail("model '{}' has no memory layer: accepted are peer, memory, memory+", to_string(kind));
  }
}

// Forward FLOPs per token of one memory layer: the op's own declaration at batch 1.
double memory_layer_flops(const memory_layer::Config& mc) {
  memory_layer::FwdParams p;
  p.config = mc, p.batch = 1;
  return memory_layer::Fwd::flops(p);
}

// Forward FLOPs per token of a SwiGLU block, w13 (d, 2·ffn_hidden) and w2 (ffn_hidden, d): the
// budget a memory layer that replaces it must fit.
double swiglu_flops(const Config& c) {
  const double d = static_cast<double>(c.d_model), f = static_cast<double>(c.ffn_hidden);
  return 2 * d * 2 * f + 2 * f * d;
}

}  // namespace

MemoryConfig memory_settings(ModelKind kind, const Config& base) {
  const memory_layer::Kind lk = layer_kind(kind);
  Config dense = base;
  dense.memory_layers.clear();
  dense.validate();
  const int64_t d = base.d_model;
  const double budget = swiglu_flops(base);
  MemoryConfig m;
  m.kind = lk, m.qk_norm = false;
  m.values_dtype = base.memory.values_dtype;  // storage only: the FLOPs do not depend on it
  m.n_keys = std::min<int64_t>(4 * d, 1024);
  const int64_t widest = std::max<int64_t>(2, (d / 2) / 2 * 2);  // even n ≤ d/2 (at least 2)
  const int64_t k_max = std::clamp<int64_t>(m.n_keys / 16, 1, 32);
  // (h, k) pairs, the most rows a token reads first (h·k), then the more heads.
  std::vector<std::pair<int64_t, int64_t>> reads;
  for (int64_t h : {4, 2, 1})
    for (int64_t k = k_max; k >= 1; k /= 2) reads.emplace_back(h, k);
  std::stable_sort(reads.begin(), reads.end(), [](const auto& a, const auto& b) {
    return a.first * a.second > b.first * b.second;
  });
  auto cost = [&](const MemoryConfig& s) {
    Config c = dense;
    c.memory = s, c.memory_layers = {0};
    return memory_layer_flops(c.layer_config());
  };
  std::vector<int64_t> values{d};
  if (lk == memory_layer::Kind::memory_plus)
    for (int64_t v = d / 2; v >= 1; v /= 2) values.push_back(v);
  for (int64_t v : values) {
    for (int64_t n = widest; n >= 2; n -= 2) {
      for (const auto& [h, k] : reads) {
        m.value_dim = v, m.k_dim = n, m.heads = h, m.k = k;
        if (cost(m) <= budget) return m;
      }
    }
  }
  m.heads = 1, m.k = 1, m.k_dim = 2;
  fail(
      "model '{}' on d_model {}, ffn_hidden {}: no memory layer fits the SwiGLU block's {} FLOPs "
      "per token (the smallest, h 1, k 1, k_dim 2, n_keys {}, costs {}): accepted are bases with "
      "a wider ffn_hidden",
      to_string(kind), d, base.ffn_hidden, budget, m.n_keys, cost(m));
}

Config model_config(ModelKind kind, const Config& base) {
  MEMLAYERS_CHECK(base.memory_layers.empty() && base.moe_layers.empty(),
                  "model '{}': the base has {} memory and {} moe layer(s): accepted is a dense "
                  "base",
                  to_string(kind), base.memory_layers.size(), base.moe_layers.size());
  base.validate();
  Config c = base;
  switch (kind) {
    case ModelKind::dense:
      return c;
    case ModelKind::dense4x:
      c.ffn_hidden = 4 * base.ffn_hidden;
      return c;
    case ModelKind::memory:
    case ModelKind::peer:
      c.memory = memory_settings(kind, base);
      c.memory_layers = {base.layers / 2};
      c.validate();
      return c;
    case ModelKind::memory_plus:
      c.memory = memory_settings(kind, base);
      c.memory_layers = memory_plus_layers(base.layers);
      c.validate();
      return c;
    case ModelKind::moe:
      // Top-2 of experts half as wide as the dense block: the same active FLOPs (plus the
      // router's 2·d·E), twice its feed-forward parameters.
      c.moe.experts = 4, c.moe.top = 2, c.moe.balance = 0.01;
      c.moe.expert_hidden = std::max<int64_t>(1, base.ffn_hidden / 2);
      for (int64_t l = 0; l < base.layers; ++l) c.moe_layers.push_back(l);
      c.validate();
      return c;
  }
  throw Error(fmt::format("model kind {} has no config", static_cast<int>(kind)));
}

Config model_config(ModelKind kind, const Config& base, const MemoryOverrides& o) {
  Config c = model_config(kind, base);
  if (!o.any()) return c;
  MEMLAYERS_CHECK(!c.memory_layers.empty(),
                  "model '{}' has no memory layer: accepted are memory settings on peer, memory "
                  "and memory+ only",
                  to_string(kind));
  for (const auto& [name, value] : o.sizes())
    MEMLAYERS_CHECK(value >= 0,
                    "model '{}': memory {} is {}: accepted are ≥ 1, or 0 for the FLOP-matching "
                    "rule's",
                    to_string(kind), name, value);
  MemoryConfig& m = c.memory;
  if (o.heads) m.heads = o.heads;
  if (o.n_keys) m.n_keys = o.n_keys;
  if (o.k_dim) m.k_dim = o.k_dim;
  if (o.k) m.k = o.k;
  if (o.value_dim) m.value_dim = o.value_dim;
  m.qk_norm = m.qk_norm || o.qk_norm;
  c.validate();
  return c;
}

std::string memory_statement(const Config& c) {
  if (c.memory_layers.empty()) return "";
  const MemoryConfig& m = c.memory;
  return fmt::format(
      "{} in layer(s) {}: h {}, n_keys {} ({} rows × {}), k_dim {}, k {}{}; {:.0f} FLOPs/token a "
      "layer, the SwiGLU block's {:.0f}",
      memory_layer::to_string(m.kind), fmt::join(c.memory_layers, ", "), m.heads, m.n_keys,
      c.table_rows(), c.table_dim(), m.k_dim, m.k, m.qk_norm ? ", QK-norm" : "",
      memory_layer_flops(c.layer_config()), swiglu_flops(c));
}

double active_flops_per_token(const Config& c, int64_t seq) {
  c.validate();
  const double d = static_cast<double>(c.d_model);
  const double attention = 2 * d * 3 * d                            // wqkv
                           + 2 * d * d                              // wo
                           + 2 * 2 * static_cast<double>(seq) * d;  // QKᵀ and PV, at seq
  const double swiglu = swiglu_flops(c);
  const double memory = c.memory_layers.empty() ? 0 : memory_layer_flops(c.layer_config());
  const double moe = c.moe_layers.empty() ? 0 : MoeBlock::active_flops_per_token(c.moe, c.d_model);
  double total = 2 * d * static_cast<double>(c.vocab);
  for (int64_t l = 0; l < c.layers; ++l)
    total += attention + (c.is_memory_layer(l) ? memory : c.is_moe_layer(l) ? moe : swiglu);
  return total;
}

int64_t parameter_count(const Config& c) {
  return ParamLayout(c).total() + c.table_rows() * c.table_dim();
}

int64_t ParamTensor::size() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

ParamLayout::ParamLayout(const Config& c) {
  c.validate();
  const int64_t d = c.d_model, f = c.ffn_hidden;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    ParamTensor t{std::move(name), total_, std::move(shape)};
    total_ += t.size();
    tensors_.push_back(std::move(t));
  };
  add("wte", {c.vocab, d});
  add("wpe", {c.ctx, d});
  const MemoryConfig& m = c.memory;
  const int64_t hn = m.heads * m.k_dim, v = m.value_dim;
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "layer" + std::to_string(l) + ".";
    add(p + "ln1", {d});
    add(p + "wqkv", {d, 3 * d});
    add(p + "wo", {d, d});
    add(p + "ln2", {d});
    if (c.is_moe_layer(l)) {
      const int64_t e = c.moe.experts, he = c.moe.expert_hidden;
      add(p + "moe.router", {d, e});
      add(p + "moe.w13", {e, d, 2 * he});
      add(p + "moe.w2", {e, he, d});
      continue;
    }
    if (!c.is_memory_layer(l)) {
      add(p + "w13", {d, 2 * f});
      add(p + "w2", {f, d});
      continue;
    }
    add(p + "mem.wq", {d, hn});
    add(p + "mem.bq", {hn});
    add(p + "mem.keys1", {m.heads, m.n_keys, m.k_dim / 2});
    add(p + "mem.keys2", {m.heads, m.n_keys, m.k_dim / 2});
    if (m.kind == memory_layer::Kind::memory_plus) {
      add(p + "mem.w1", {d, v});
      add(p + "mem.b1", {v});
      add(p + "mem.w2", {v, d});
      add(p + "mem.b2", {d});
    }
  }
  add("lnf", {d});
}

const ParamTensor& ParamLayout::at(const std::string& name) const {
  for (const ParamTensor& t : tensors_)
    if (t.name == name) return t;
  fail(
      "no parameter tensor named '{}' (the layout has wte, wpe, layer<i>.ln1/wqkv/wo/ln2, then "
      "w13/w2 or, in a memory layer, mem.wq/bq/keys1/keys2 and for memory+ mem.w1/b1/w2/b2, "
      "or, in a moe layer, moe.router/w13/w2, lnf)",
      name);
}

std::vector<float> init_params(const Config& c, uint64_t seed) {
  const ParamLayout layout(c);
  std::vector<float> p(static_cast<std::size_t>(layout.total()));
  std::mt19937_64 gen(seed);
  const float residual_scale = 1.0f / std::sqrt(2.0f * float(c.layers));
  const float key_bound = 1.0f / std::sqrt(0.5f * float(c.memory.k_dim));
  for (const ParamTensor& t : layout.tensors()) {
    float* v = p.data() + t.offset;
    const bool norm = t.name == "lnf" || t.name.ends_with(".ln1") || t.name.ends_with(".ln2");
    const bool bias =
        t.name.ends_with(".mem.bq") || t.name.ends_with(".mem.b1") || t.name.ends_with(".mem.b2");
    const bool keys = t.name.ends_with(".mem.keys1") || t.name.ends_with(".mem.keys2");
    if (norm || bias) {
      std::fill(v, v + t.size(), norm ? 1.0f : 0.0f);
    } else if (keys) {
      std::uniform_real_distribution<float> uniform(-key_bound, key_bound);
      for (int64_t i = 0; i < t.size(); ++i) v[i] = uniform(gen);
    } else {
      const bool into_residual = t.name.ends_with(".wo") || t.name.ends_with(".w2");
      std::normal_distribution<float> normal(0.0f, 0.02f * (into_residual ? residual_scale : 1.0f));
      for (int64_t i = 0; i < t.size(); ++i) v[i] = normal(gen);
    }
  }
  return p;
}

std::vector<float> init_values(const Config& c, uint64_t seed) {
  c.validate();
  std::vector<float> v(static_cast<std::size_t>(c.table_rows() * c.table_dim()));
  if (v.empty()) return v;
  std::mt19937_64 gen(seed ^ 0x76616c756573ull);  // "values"
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(float(c.table_dim())));
  for (float& e : v) e = normal(gen);
  return v;
}

// ---- activations ----

struct Model::Activations {
  int64_t batch = 0, seq = 0;
  Arena arena;
  // Forward, per layer l: xs[l] is the residual stream entering layer l (xs[layers]: leaving
  // the last one), mid[l] the stream after layer l's attention block.
  std::vector<float*> xs, mid, ln1, inv1, qkv, att, lse, ln2, inv2, h13, sw;
  float *lnf = nullptr, *invf = nullptr, *logits = nullptr, *loss = nullptr, *tmp = nullptr;
  int32_t* positions = nullptr;
  // Backward scratch.
  float *dx = nullptr, *dln = nullptr, *datt = nullptr, *dqkv = nullptr, *dh13 = nullptr,
        *dsw = nullptr, *dlogits = nullptr;

  Activations(const Config& c, const Memory& mem, int64_t b, int64_t t)
      : batch(b), seq(t), arena(mem) {
    const int64_t rows = b * t, d = c.d_model, f = c.ffn_hidden;
    auto floats = [&](int64_t n) { return arena.floats(n); };
    for (int64_t l = 0; l <= c.layers; ++l) xs.push_back(floats(rows * d));
    for (int64_t l = 0; l < c.layers; ++l) {
      mid.push_back(floats(rows * d)), ln1.push_back(floats(rows * d));
      inv1.push_back(floats(rows)), qkv.push_back(floats(rows * 3 * d));
      att.push_back(floats(rows * d)), lse.push_back(floats(b * c.heads * t));
      ln2.push_back(floats(rows * d)), inv2.push_back(floats(rows));
      // A memory or moe layer's activations are its block's (MemoryBlocks, MoeBlock).
      const bool swiglu = !c.is_memory_layer(l) && !c.is_moe_layer(l);
      h13.push_back(swiglu ? floats(rows * 2 * f) : nullptr);
      sw.push_back(swiglu ? floats(rows * f) : nullptr);
    }
    lnf = floats(rows * d), invf = floats(rows), logits = floats(rows * c.vocab);
    loss = floats(1), tmp = floats(rows * d);
    dx = floats(rows * d), dln = floats(rows * d), datt = floats(rows * d);
    dqkv = floats(rows * 3 * d), dh13 = floats(rows * 2 * f), dsw = floats(rows * f);
    dlogits = floats(rows * c.vocab);
    std::vector<int32_t> pos(static_cast<std::size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) pos[r] = static_cast<int32_t>(r % t);
    positions = arena.alloc<int32_t>(rows);
    mem.to_device(positions, pos.data(), pos.size() * sizeof(int32_t));
  }
};

// ---- the model ----

Model::Model(const Config& c, const Ops& ops, dist::Comm* comm)
    : config_(c),
      layout_(c),
      ops_(ops),
      comm_(comm),
      value_rows_(c.table_rows()),
      value_dim_(c.table_dim()) {
  MEMLAYERS_CHECK(!comm || c.moe_layers.empty(),
                  "model: memory parallelism with MoE layers: their balancing loss is over the "
                  "whole batch, which no rank holds (accepted: a model without moe layers)");
  if (!c.memory_layers.empty()) {
    mem_ = std::make_unique<MemoryBlocks>(config_, layout_, ops_, comm_);
    value_dim_ = mem_->table_width();
  }
  moe_.resize(static_cast<std::size_t>(c.layers));
  for (int64_t l : c.moe_layers) moe_[l] = std::make_unique<MoeBlock>(c.moe, c.d_model, ops_);
}

const MoeRouting& Model::moe_routing(int64_t layer) const {
  MEMLAYERS_CHECK(layer >= 0 && layer < config_.layers && moe_[layer],
                  "model moe_routing: layer {} is not a moe layer", layer);
  return moe_[layer]->routing();
}
Model::~Model() = default;

std::vector<int64_t> Model::selection(int64_t layer) const {
  MEMLAYERS_CHECK(mem_ != nullptr, "model selection: the model has no memory layer");
  return mem_->selection(layer);
}

std::string Model::memory_variants() const {
  return mem_ ? mem_->variants() : "the model has no memory layer";
}

const float* Model::logits() const {
  MEMLAYERS_CHECK(acts_ != nullptr, "model logits: no loss() has run yet");
  return acts_->logits;
}

double Model::loss(const float* params, const void* values, const Batch& bt, float* grads,
                   SparseRows* vgrad) {
  const Config& c = config_;
  MEMLAYERS_CHECK(params != nullptr, "model loss: params is null");
  MEMLAYERS_CHECK(values != nullptr || value_rows_ == 0,
                  "model loss: values is null but the model has a value table");
  if (vgrad) *vgrad = {};
  MEMLAYERS_CHECK(bt.tokens && bt.targets, "model loss: batch tokens or targets is null");
  MEMLAYERS_CHECK(bt.batch >= 1, "model loss: batch is {}: accepted are batch ≥ 1", bt.batch);
  MEMLAYERS_CHECK(bt.seq >= 1 && bt.seq <= c.ctx,
                  "model loss: seq {} out of range: accepted are 1 ≤ seq ≤ ctx {}", bt.seq, c.ctx);
  if (!acts_ || acts_->batch != bt.batch || acts_->seq != bt.seq) {
    acts_.reset();  // release the old buffers first
    acts_ = std::make_unique<Activations>(c, *ops_.memory, bt.batch, bt.seq);
  }
  if (mem_) mem_->resize(bt.batch * bt.seq);
  Activations& a = *acts_;
  const int64_t B = bt.batch, T = bt.seq, rows = B * T, d = c.d_model, f = c.ffn_hidden,
                V = c.vocab, L = c.layers;
  auto P = [&](const std::string& name) { return params + layout_.at(name).offset; };
  auto G = [&](const std::string& name) { return grads + layout_.at(name).offset; };
  auto layer = [](int64_t l) { return "layer" + std::to_string(l) + "."; };
  auto moe_weights = [&](const std::string& p) {
    return MoeWeights{P(p + "moe.router"), P(p + "moe.w13"), P(p + "moe.w2")};
  };

  // ---- forward ----
  balance_loss_ = 0;
  ops_.embedding_fwd({bt.tokens, P("wte"), a.xs[0], rows, V, d});
  ops_.embedding_fwd({a.positions, P("wpe"), a.xs[0], rows, c.ctx, d, /*accumulate=*/true});
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = layer(l);
    ops_.rmsnorm_fwd({a.xs[l], P(p + "ln1"), a.ln1[l], a.inv1[l], rows, d});
    ops_.linear_fwd({a.ln1[l], P(p + "wqkv"), nullptr, a.qkv[l], rows, d, 3 * d});
    const PackedQkv qkv = packed_qkv(a.qkv[l], d);
    ops_.attention_fwd({qkv.q, qkv.k, qkv.v, qkv.ld, a.att[l], a.lse[l], B, T, c.heads, d});
    ops_.linear_fwd({a.att[l], P(p + "wo"), nullptr, a.tmp, rows, d, d});
    ops_.add({a.xs[l], a.tmp, a.mid[l], rows * d});
    ops_.rmsnorm_fwd({a.mid[l], P(p + "ln2"), a.ln2[l], a.inv2[l], rows, d});
    if (c.is_memory_layer(l)) {
      mem_->forward(l, params, values, a.ln2[l], a.tmp);
    } else if (moe_[l]) {
      balance_loss_ += moe_[l]->forward(moe_weights(p), a.ln2[l], a.tmp, rows);
    } else {
      ops_.linear_fwd({a.ln2[l], P(p + "w13"), nullptr, a.h13[l], rows, d, 2 * f});
      ops_.swiglu_fwd({a.h13[l], a.h13[l] + f, 2 * f, a.sw[l], rows, f});
      ops_.linear_fwd({a.sw[l], P(p + "w2"), nullptr, a.tmp, rows, f, d});
    }
    ops_.add({a.mid[l], a.tmp, a.xs[l + 1], rows * d});
  }
  ops_.rmsnorm_fwd({a.xs[L], P("lnf"), a.lnf, a.invf, rows, d});
  ops_.linear_fwd({a.lnf, P("wte"), nullptr, a.logits, rows, d, V, /*transposed_w=*/true});
  // With a group, this rank's share of the group's weight scales its mean (a rank whose rows all
  // weigh 0, the padding of an evaluation, contributes nothing).
  const double share = comm_ ? weight_share(bt) : 1.0;
  float loss = 0;
  if (share > 0) {
    ops_.cross_entropy_fwd({a.logits, bt.targets, bt.weights, a.loss, rows, V});
    ops_.memory->synchronize();
    ops_.memory->to_host(&loss, a.loss, sizeof(float));
  }
  double objective = double{loss} * share + balance_loss_;
  if (comm_) comm_->all_reduce_sum_host(&objective, 1);
  if (!grads) return objective;

  // ---- backward ----
  ops_.memory->fill_bytes(grads, 0, static_cast<std::size_t>(layout_.total()) * sizeof(float));
  if (share > 0)
    ops_.cross_entropy_bwd(
        {a.logits, bt.targets, bt.weights, static_cast<float>(share), a.dlogits, rows, V});
  else
    ops_.memory->fill_bytes(a.dlogits, 0, static_cast<std::size_t>(rows * V) * sizeof(float));
  ops_.linear_bwd(
      {a.lnf, P("wte"), a.dlogits, a.dln, G("wte"), nullptr, rows, d, V, /*transposed_w=*/true});
  ops_.rmsnorm_bwd({a.xs[L], P("lnf"), a.invf, a.dln, a.dx, G("lnf"), rows, d});
  // a.dx holds d(loss)/d(stream) below the current block throughout.
  const bool table_grad = mem_ && vgrad;
  if (mem_) mem_->begin_backward();
  for (int64_t l = L - 1; l >= 0; --l) {
    const std::string p = layer(l);
    if (c.is_memory_layer(l)) {
      mem_->backward(l, params, values, a.ln2[l], a.dx, a.dln, grads, table_grad);
    } else if (moe_[l]) {
      const MoeGrads g{G(p + "moe.router"), G(p + "moe.w13"), G(p + "moe.w2")};
      moe_[l]->backward(moe_weights(p), a.ln2[l], a.dx, a.dln, g, rows, /*accumulate_dx=*/false);
    } else {
      ops_.linear_bwd({a.sw[l], P(p + "w2"), a.dx, a.dsw, G(p + "w2"), nullptr, rows, f, d});
      ops_.swiglu_bwd({a.h13[l], a.h13[l] + f, 2 * f, a.dsw, a.dh13, a.dh13 + f, rows, f});
      ops_.linear_bwd(
          {a.ln2[l], P(p + "w13"), a.dh13, a.dln, G(p + "w13"), nullptr, rows, d, 2 * f});
    }
    ops_.rmsnorm_bwd({a.mid[l], P(p + "ln2"), a.inv2[l], a.dln, a.dx, G(p + "ln2"), rows, d,
                      /*accumulate_dx=*/true});
    ops_.linear_bwd({a.att[l], P(p + "wo"), a.dx, a.datt, G(p + "wo"), nullptr, rows, d, d});
    const PackedQkv qkv = packed_qkv(a.qkv[l], d), dqkv = packed_qkv(a.dqkv, d);
    ops_.attention_bwd({qkv.q, qkv.k, qkv.v, qkv.ld, a.att[l], a.lse[l], a.datt, dqkv.q, dqkv.k,
                        dqkv.v, B, T, c.heads, d});
    ops_.linear_bwd(
        {a.ln1[l], P(p + "wqkv"), a.dqkv, a.dln, G(p + "wqkv"), nullptr, rows, d, 3 * d});
    ops_.rmsnorm_bwd({a.xs[l], P(p + "ln1"), a.inv1[l], a.dln, a.dx, G(p + "ln1"), rows, d,
                      /*accumulate_dx=*/true});
  }
  ops_.embedding_bwd({bt.tokens, a.dx, G("wte"), rows, V, d});
  ops_.embedding_bwd({a.positions, a.dx, G("wpe"), rows, c.ctx, d});
  if (table_grad) *vgrad = mem_->finish_backward();  // synchronizes: it copies to the host
  ops_.memory->synchronize();
  // The group's dense gradient: every rank's share summed (the table's stays the shard's own).
  if (comm_) comm_->all_reduce_sum(grads, layout_.total());
  return objective;
}

int64_t Model::value_column() const {
  if (!comm_ || !mem_) return 0;
  return dist::ColumnSplit{config_.table_dim(), comm_->size()}.begin(comm_->rank());
}

double Model::weight_share(const Batch& bt) const {
  const int64_t rows = bt.batch * bt.seq;
  double mine = static_cast<double>(rows);
  if (bt.weights) {
    std::vector<float> w(static_cast<std::size_t>(rows));
    ops_.memory->synchronize();
    ops_.memory->to_host(w.data(), bt.weights, w.size() * sizeof(float));
    mine = 0;
    for (float x : w) mine += x;
  }
  double total = mine;
  comm_->all_reduce_sum_host(&total, 1);
  MEMLAYERS_CHECK(total > 0, "model loss: every row of the group's batch weighs 0");
  return mine / total;
}

}  // namespace memlayers::harness
