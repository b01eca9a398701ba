// The dense transformer over harness::Ops (harness/model.h): the forward keeps every activation
// the backward reads; the backward walks the layers in reverse, adding each block's input
// gradient onto the residual stream's (accumulate_dx) instead of through extra adds.
#include "harness/model.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"

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
  MEMLAYERS_CHECK(memory_layers.empty(),
                  "model config: {} memory layer(s) requested: the dense model has none yet "
                  "(accepted: an empty memory_layers)",
                  memory_layers.size());
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

Config model_config(ModelKind kind, const Config& base) {
  base.validate();
  Config c = base;
  switch (kind) {
    case ModelKind::dense:
      return c;
    case ModelKind::dense4x:
      c.ffn_hidden = 4 * base.ffn_hidden;
      return c;
    default:
      throw Error(
          fmt::format("model '{}' is not built yet: built are dense, dense4x", to_string(kind)));
  }
}

double active_flops_per_token(const Config& c, int64_t seq) {
  c.validate();
  const double d = static_cast<double>(c.d_model), f = static_cast<double>(c.ffn_hidden);
  const double per_layer = 2 * d * 3 * d                           // wqkv
                           + 2 * d * d                             // wo
                           + 2 * 2 * static_cast<double>(seq) * d  // QKᵀ and PV, at seq
                           + 2 * d * 2 * f + 2 * f * d;            // w13, w2
  return static_cast<double>(c.layers) * per_layer + 2 * d * static_cast<double>(c.vocab);
}

int64_t parameter_count(const Config& c) { return ParamLayout(c).total(); }

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
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "layer" + std::to_string(l) + ".";
    add(p + "ln1", {d});
    add(p + "wqkv", {d, 3 * d});
    add(p + "wo", {d, d});
    add(p + "ln2", {d});
    add(p + "w13", {d, 2 * f});
    add(p + "w2", {f, d});
  }
  add("lnf", {d});
}

const ParamTensor& ParamLayout::at(const std::string& name) const {
  for (const ParamTensor& t : tensors_)
    if (t.name == name) return t;
  fail(
      "no parameter tensor named '{}' (the layout has wte, wpe, layer<i>.ln1/wqkv/wo/ln2/w13/w2, "
      "lnf)",
      name);
}

std::vector<float> init_params(const Config& c, uint64_t seed) {
  const ParamLayout layout(c);
  std::vector<float> p(static_cast<std::size_t>(layout.total()));
  std::mt19937_64 gen(seed);
  const float residual_scale = 1.0f / std::sqrt(2.0f * float(c.layers));
  for (const ParamTensor& t : layout.tensors()) {
    float* v = p.data() + t.offset;
    const bool norm = t.shape.size() == 1;
    const bool into_residual = t.name.ends_with(".wo") || t.name.ends_with(".w2");
    std::normal_distribution<float> normal(0.0f, 0.02f * (into_residual ? residual_scale : 1.0f));
    for (int64_t i = 0; i < t.size(); ++i) v[i] = norm ? 1.0f : normal(gen);
  }
  return p;
}

// ---- activations ----

namespace {

// A buffer in a backend's memory, released with it.
class Buffer {
 public:
  Buffer(const Memory& mem, std::size_t bytes) : mem_(&mem), ptr_(mem.alloc(bytes ? bytes : 1)) {}
  ~Buffer() { mem_->release(ptr_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  const Memory* mem_;
  void* ptr_;
};

}  // namespace

struct Model::Activations {
  int64_t batch = 0, seq = 0;
  std::vector<std::unique_ptr<Buffer>> held;
  // Forward, per layer l: xs[l] is the residual stream entering layer l (xs[layers]: leaving
  // the last one), mid[l] the stream after layer l's attention block.
  std::vector<float*> xs, mid, ln1, inv1, qkv, att, lse, ln2, inv2, h13, sw;
  float *lnf = nullptr, *invf = nullptr, *logits = nullptr, *loss = nullptr, *tmp = nullptr;
  int32_t* positions = nullptr;
  // Backward scratch.
  float *dx = nullptr, *dln = nullptr, *datt = nullptr, *dqkv = nullptr, *dh13 = nullptr,
        *dsw = nullptr, *dlogits = nullptr;

  Activations(const Config& c, const Memory& mem, int64_t b, int64_t t) : batch(b), seq(t) {
    const int64_t rows = b * t, d = c.d_model, f = c.ffn_hidden;
    auto floats = [&](int64_t n) {
      held.push_back(std::make_unique<Buffer>(mem, static_cast<std::size_t>(n) * sizeof(float)));
      return held.back()->as<float>();
    };
    for (int64_t l = 0; l <= c.layers; ++l) xs.push_back(floats(rows * d));
    for (int64_t l = 0; l < c.layers; ++l) {
      mid.push_back(floats(rows * d)), ln1.push_back(floats(rows * d));
      inv1.push_back(floats(rows)), qkv.push_back(floats(rows * 3 * d));
      att.push_back(floats(rows * d)), lse.push_back(floats(b * c.heads * t));
      ln2.push_back(floats(rows * d)), inv2.push_back(floats(rows));
      h13.push_back(floats(rows * 2 * f)), sw.push_back(floats(rows * f));
    }
    lnf = floats(rows * d), invf = floats(rows), logits = floats(rows * c.vocab);
    loss = floats(1), tmp = floats(rows * d);
    dx = floats(rows * d), dln = floats(rows * d), datt = floats(rows * d);
    dqkv = floats(rows * 3 * d), dh13 = floats(rows * 2 * f), dsw = floats(rows * f);
    dlogits = floats(rows * c.vocab);
    std::vector<int32_t> pos(static_cast<std::size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) pos[r] = static_cast<int32_t>(r % t);
    held.push_back(std::make_unique<Buffer>(mem, pos.size() * sizeof(int32_t)));
    positions = held.back()->as<int32_t>();
    mem.to_device(positions, pos.data(), pos.size() * sizeof(int32_t));
  }
};

// ---- the model ----

Model::Model(const Config& c, const Ops& ops) : config_(c), layout_(c), ops_(ops) {}
Model::~Model() = default;

std::vector<float> init_values(const Config& c, uint64_t /*seed*/) {
  c.validate();
  return {};  // no model has a value table yet: memory layers are refused by validate()
}

const float* Model::logits() const {
  MEMLAYERS_CHECK(acts_ != nullptr, "model logits: no loss() has run yet");
  return acts_->logits;
}

double Model::loss(const float* params, const float* values, const Batch& bt, float* grads,
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
  Activations& a = *acts_;
  const int64_t B = bt.batch, T = bt.seq, rows = B * T, d = c.d_model, f = c.ffn_hidden,
                V = c.vocab, L = c.layers;
  auto P = [&](const std::string& name) { return params + layout_.at(name).offset; };
  auto G = [&](const std::string& name) { return grads + layout_.at(name).offset; };
  auto layer = [](int64_t l) { return "layer" + std::to_string(l) + "."; };

  // ---- forward ----
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
    ops_.linear_fwd({a.ln2[l], P(p + "w13"), nullptr, a.h13[l], rows, d, 2 * f});
    ops_.swiglu_fwd({a.h13[l], a.h13[l] + f, 2 * f, a.sw[l], rows, f});
    ops_.linear_fwd({a.sw[l], P(p + "w2"), nullptr, a.tmp, rows, f, d});
    ops_.add({a.mid[l], a.tmp, a.xs[l + 1], rows * d});
  }
  ops_.rmsnorm_fwd({a.xs[L], P("lnf"), a.lnf, a.invf, rows, d});
  ops_.linear_fwd({a.lnf, P("wte"), nullptr, a.logits, rows, d, V, /*transposed_w=*/true});
  ops_.cross_entropy_fwd({a.logits, bt.targets, bt.weights, a.loss, rows, V});
  float loss = 0;
  ops_.memory->synchronize();
  ops_.memory->to_host(&loss, a.loss, sizeof(float));
  if (!grads) return loss;

  // ---- backward ----
  ops_.memory->fill_bytes(grads, 0, static_cast<std::size_t>(layout_.total()) * sizeof(float));
  ops_.cross_entropy_bwd({a.logits, bt.targets, bt.weights, 1.0f, a.dlogits, rows, V});
  ops_.linear_bwd(
      {a.lnf, P("wte"), a.dlogits, a.dln, G("wte"), nullptr, rows, d, V, /*transposed_w=*/true});
  ops_.rmsnorm_bwd({a.xs[L], P("lnf"), a.invf, a.dln, a.dx, G("lnf"), rows, d});
  // a.dx holds d(loss)/d(stream) below the current block throughout.
  for (int64_t l = L - 1; l >= 0; --l) {
    const std::string p = layer(l);
    ops_.linear_bwd({a.sw[l], P(p + "w2"), a.dx, a.dsw, G(p + "w2"), nullptr, rows, f, d});
    ops_.swiglu_bwd({a.h13[l], a.h13[l] + f, 2 * f, a.dsw, a.dh13, a.dh13 + f, rows, f});
    ops_.linear_bwd({a.ln2[l], P(p + "w13"), a.dh13, a.dln, G(p + "w13"), nullptr, rows, d, 2 * f});
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
  ops_.memory->synchronize();
  return loss;
}

}  // namespace memlayers::harness
