#include "memory_layer/weights_io.h"

#include <charconv>
#include <cstring>
#include <set>

#include <fmt/ranges.h>

#include "common/error.h"

namespace memlayers::memory_layer {

namespace {

constexpr const char* kPrefix = "memlayers.";

// The host pointer of field `name` in w (null when not set).
const void* field(const Weights& w, const std::string& name) {
  if (name == "wq") return w.wq;
  if (name == "bq") return w.bq;
  if (name == "keys1") return w.keys1;
  if (name == "keys2") return w.keys2;
  if (name == "values") return w.values;
  if (name == "down") return w.down;
  if (name == "w1") return w.w1;
  if (name == "b1") return w.b1;
  if (name == "w2") return w.w2;
  if (name == "b2") return w.b2;
  if (name == "wg") return w.wg;
  fail("no weight named '{}'", name);
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

int64_t metadata_int(const safetensors::File& f, const std::string& what, const std::string& key) {
  const std::string full = kPrefix + key;
  const auto it = f.metadata.find(full);
  if (it == f.metadata.end())
    fail("{}: __metadata__ has no '{}': not a memory layer's weights file", what, full);
  int64_t v = 0;
  const std::string& s = it->second;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size())
    fail("{}: __metadata__['{}'] = '{}': accepted an integer", what, full, s);
  return v;
}

bool metadata_bool(const safetensors::File& f, const std::string& what, const std::string& key) {
  const std::string full = kPrefix + key;
  const auto it = f.metadata.find(full);
  if (it == f.metadata.end())
    fail("{}: __metadata__ has no '{}': not a memory layer's weights file", what, full);
  if (it->second == "true") return true;
  if (it->second == "false") return false;
  fail("{}: __metadata__['{}'] = '{}': accepted true, false", what, full, it->second);
}

template <class T>
void copy_into(std::vector<T>& dst, const safetensors::Tensor& t) {
  dst.resize(t.data.size() / sizeof(T));
  std::memcpy(dst.data(), t.data.data(), t.data.size());
}

}  // namespace

std::vector<TensorSpec> weight_specs(const Config& c) {
  const int64_t d = c.d_model, h = c.heads, n = c.k_dim, nk = c.n_keys, v = c.value_dim;
  std::vector<TensorSpec> s = {{"wq", DType::f32, {d, h * n}},
                               {"bq", DType::f32, {h * n}},
                               {"keys1", DType::f32, {h, nk, n / 2}},
                               {"keys2", DType::f32, {h, nk, n / 2}},
                               {"values", c.values_dtype, {c.num_values(), c.value_width()}}};
  if (c.kind == Kind::peer) s.push_back({"down", c.values_dtype, {c.num_values(), d}});
  if (c.kind == Kind::memory_plus) {
    s.push_back({"w1", DType::f32, {d, v}});
    s.push_back({"b1", DType::f32, {v}});
    s.push_back({"w2", DType::f32, {v, d}});
    s.push_back({"b2", DType::f32, {d}});
  }
  if (c.scalar_gate) s.push_back({"wg", DType::f32, {d}});
  return s;
}

Weights HostWeights::view() const {
  Weights w;
  auto ptr = [](const auto& v) { return v.empty() ? nullptr : v.data(); };
  w.wq = ptr(wq), w.bq = ptr(bq), w.keys1 = ptr(keys1), w.keys2 = ptr(keys2);
  w.values = ptr(values), w.down = ptr(down);
  w.w1 = ptr(w1), w.b1 = ptr(b1), w.w2 = ptr(w2), w.b2 = ptr(b2), w.wg = ptr(wg);
  return w;
}

safetensors::File weights_to_file(const Config& c, const Weights& w, bool values) {
  if (std::string why = validate(c); !why.empty()) fail("memory layer config: {}", why);
  safetensors::File f;
  f.metadata = {{std::string(kPrefix) + "kind", to_string(c.kind)},
                {std::string(kPrefix) + "d_model", std::to_string(c.d_model)},
                {std::string(kPrefix) + "heads", std::to_string(c.heads)},
                {std::string(kPrefix) + "n_keys", std::to_string(c.n_keys)},
                {std::string(kPrefix) + "k_dim", std::to_string(c.k_dim)},
                {std::string(kPrefix) + "k", std::to_string(c.k)},
                {std::string(kPrefix) + "value_dim", std::to_string(c.value_dim)},
                {std::string(kPrefix) + "qk_norm", c.qk_norm ? "true" : "false"},
                {std::string(kPrefix) + "scalar_gate", c.scalar_gate ? "true" : "false"}};
  for (const TensorSpec& s : weight_specs(c)) {
    if (s.name == "values" && !values) continue;
    const void* p = field(w, s.name);
    if (!p) fail("weights.{} is null: the {} config needs it", s.name, to_string(c.kind));
    f.tensors.emplace(s.name, safetensors::make_tensor(s.dtype, s.shape, p));
  }
  return f;
}

HostWeights weights_from_file(const safetensors::File& f, const std::string& what) {
  HostWeights hw;
  Config& c = hw.config;
  const std::string kind = [&] {
    const auto it = f.metadata.find(std::string(kPrefix) + "kind");
    if (it == f.metadata.end())
      fail("{}: __metadata__ has no 'memlayers.kind': not a memory layer's weights file", what);
    return it->second;
  }();
  const auto k = parse_kind(kind);
  if (!k)
    fail("{}: __metadata__['memlayers.kind'] = '{}': accepted memory, memory_plus, peer", what,
         kind);
  c.kind = *k;
  c.d_model = metadata_int(f, what, "d_model");
  c.heads = metadata_int(f, what, "heads");
  c.n_keys = metadata_int(f, what, "n_keys");
  c.k_dim = metadata_int(f, what, "k_dim");
  c.k = metadata_int(f, what, "k");
  c.value_dim = metadata_int(f, what, "value_dim");
  c.qk_norm = metadata_bool(f, what, "qk_norm");
  c.scalar_gate = metadata_bool(f, what, "scalar_gate");
  // The value tables' dtype is the file's: fp32 or bf16.
  for (const char* table : {"values", "down"})
    if (f.has(table)) c.values_dtype = f.at(table).dtype;
  if (std::string why = validate(c); !why.empty())
    fail("{}: config in __metadata__: {}", what, why);

  std::set<std::string> expected;
  for (const TensorSpec& s : weight_specs(c)) {
    expected.insert(s.name);
    if (!f.has(s.name)) {
      if (s.name == "values") continue;  // shared: the caller supplies it
      fail("{}: no tensor '{}': a {} layer{} needs it", what, s.name, to_string(c.kind),
           s.name == "wg" ? " with scalar_gate" : "");
    }
    const safetensors::Tensor& t = f.at(s.name);
    if (t.dtype != s.dtype || t.shape != s.shape)
      fail("{}: tensor '{}' is {} {}: the config needs {} {}", what, s.name,
           safetensors::dtype_name(t.dtype), fmt::format("[{}]", fmt::join(t.shape, ", ")),
           safetensors::dtype_name(s.dtype), fmt::format("[{}]", fmt::join(s.shape, ", ")));
    if (t.numel() != numel(s.shape)) fail("{}: tensor '{}' has the wrong size", what, s.name);
    if (s.name == "wq") copy_into(hw.wq, t);
    if (s.name == "bq") copy_into(hw.bq, t);
    if (s.name == "keys1") copy_into(hw.keys1, t);
    if (s.name == "keys2") copy_into(hw.keys2, t);
    if (s.name == "values") hw.values = t.data;
    if (s.name == "down") hw.down = t.data;
    if (s.name == "w1") copy_into(hw.w1, t);
    if (s.name == "b1") copy_into(hw.b1, t);
    if (s.name == "w2") copy_into(hw.w2, t);
    if (s.name == "b2") copy_into(hw.b2, t);
    if (s.name == "wg") copy_into(hw.wg, t);
  }
  for (const auto& [name, t] : f.tensors)
    if (!expected.count(name))
      fail("{}: tensor '{}' is not a parameter of a {} layer{}", what, name, to_string(c.kind),
           c.scalar_gate ? " with scalar_gate" : " without scalar_gate");
  return hw;
}

void save_weights(const std::string& path, const Config& c, const Weights& w, bool values) {
  safetensors::save(path, weights_to_file(c, w, values));
}

HostWeights load_weights(const std::string& path) {
  return weights_from_file(safetensors::load(path), path);
}

}  // namespace memlayers::memory_layer
