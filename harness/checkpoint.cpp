// Training checkpoints: the file layout and its verification are documented in checkpoint.h.
#include "harness/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/safetensors.h"

namespace memlayers::harness {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;
namespace st = safetensors;

std::string hex64(uint64_t h) { return fmt::format("0x{:016x}", h); }

// The checksum of the metadata entries that carry state: each string and a 0 byte after it, so
// moving text from one entry to the next changes the sum.
uint64_t metadata_checksum(const std::string& format, const std::string& config,
                           const std::string& history) {
  uint64_t h = kFnv64Offset;
  for (const std::string* s : {&format, &config, &history}) {
    h = fnv1a64(s->data(), s->size(), h);
    const unsigned char zero = 0;
    h = fnv1a64(&zero, 1, h);
  }
  return h;
}

json number_or_null(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

double number_from(const json& j) {
  return j.is_null() ? std::numeric_limits<double>::quiet_NaN() : j.get<double>();
}

std::string history_json(const std::vector<EvalPoint>& history) {
  json h = json::array();
  for (const EvalPoint& p : history)
    h.push_back(
        {p.step, number_or_null(p.loss), number_or_null(p.accuracy), number_or_null(p.train_loss)});
  return h.dump();
}

// {"a": {"b": 1}, "c": [1, 2]} → [("a.b", "1"), ("c", "[1,2]")], in the text's order: the fields
// a config comparison names, the first difference first.
using Fields = std::vector<std::pair<std::string, std::string>>;
void flatten(const ordered_json& j, const std::string& prefix, Fields& out) {
  if (j.is_object()) {
    for (const auto& [key, value] : j.items())
      flatten(value, prefix.empty() ? key : prefix + "." + key, out);
  } else {
    out.emplace_back(prefix, j.dump());
  }
}

std::vector<float> floats(const st::Tensor& t) {
  std::vector<float> v(static_cast<std::size_t>(t.numel()));
  if (!v.empty()) std::memcpy(v.data(), t.data.data(), v.size() * sizeof(float));
  return v;
}

}  // namespace

uint64_t fnv1a64(const void* data, std::size_t n, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string checkpoint_path(const std::string& dir) {
  return (fs::path(dir) / "checkpoint.safetensors").string();
}
std::string previous_checkpoint_path(const std::string& dir) {
  return (fs::path(dir) / "checkpoint.prev.safetensors").string();
}

void save_checkpoint(const std::string& path, const std::string& config_json, const TrainState& s) {
  const auto n = static_cast<int64_t>(s.params.size());
  MEMLAYERS_CHECK(n >= 1 && s.m.size() == s.params.size() && s.v.size() == s.params.size(),
                  "checkpoint '{}': {} parameters with moments of {} and {}: accepted are ≥ 1 "
                  "parameters and moments of the same length",
                  path, n, s.m.size(), s.v.size());
  const auto table = static_cast<std::size_t>(s.value_rows * s.value_dim);
  MEMLAYERS_CHECK(s.value_rows >= 0 && s.value_dim >= 0 && s.values.size() == table &&
                      s.values_m.size() == table && s.values_v.size() == table,
                  "checkpoint '{}': value table {} × {} with {}, {} and {} elements in the table "
                  "and its moments: accepted is rows·dim in each",
                  path, s.value_rows, s.value_dim, s.values.size(), s.values_m.size(),
                  s.values_v.size());
  st::File f;
  f.tensors["params"] = st::make_tensor(DType::f32, {n}, s.params.data());
  f.tensors["adam.m"] = st::make_tensor(DType::f32, {n}, s.m.data());
  f.tensors["adam.v"] = st::make_tensor(DType::f32, {n}, s.v.data());
  if (table > 0) {
    const std::vector<int64_t> shape = {s.value_rows, s.value_dim};
    f.tensors["values"] = st::make_tensor(DType::f32, shape, s.values.data());
    f.tensors["values.adam.m"] = st::make_tensor(DType::f32, shape, s.values_m.data());
    f.tensors["values.adam.v"] = st::make_tensor(DType::f32, shape, s.values_v.data());
  }
  f.tensors["step"] = st::make_tensor(DType::i64, {1}, &s.step);
  const int64_t position[2] = {s.epoch, s.index};
  f.tensors["data_position"] = st::make_tensor(DType::i64, {2}, position);

  json sums = json::object();
  for (const auto& [name, t] : f.tensors) sums[name] = hex64(fnv1a64(t.data.data(), t.data.size()));
  const std::string history = history_json(s.history);
  sums["__metadata__"] = hex64(metadata_checksum(kCheckpointFormat, config_json, history));
  f.metadata["format"] = kCheckpointFormat;
  f.metadata["config"] = config_json;
  f.metadata["history"] = history;
  f.metadata["checksums"] = sums.dump();
  st::save(path, f);
}

TrainState load_checkpoint(const std::string& path, const std::string& config_json,
                           const std::vector<std::string>& may_differ) {
  st::File f;
  try {
    f = st::load(path);
  } catch (const Error& e) {
    fail("checkpoint '{}' is unreadable (truncated or corrupt?): {}", path, e.what());
  }
  auto meta = [&](const char* key) -> const std::string& {
    const auto it = f.metadata.find(key);
    MEMLAYERS_CHECK(it != f.metadata.end(),
                    "checkpoint '{}' has no '{}' in its metadata: accepted are files written by "
                    "`memlayers train` ({})",
                    path, key, kCheckpointFormat);
    return it->second;
  };
  const std::string& format = meta("format");
  MEMLAYERS_CHECK(format == kCheckpointFormat, "checkpoint '{}' has format '{}': accepted is '{}'",
                  path, format, kCheckpointFormat);
  json sums;
  try {
    sums = json::parse(meta("checksums"));
  } catch (const json::exception& e) {
    fail("checkpoint '{}': its checksums are not JSON ({}): the file is corrupt", path, e.what());
  }
  MEMLAYERS_CHECK(sums.is_object(), "checkpoint '{}': its checksums are not a JSON object", path);
  auto stored_sum = [&](const std::string& name) {
    MEMLAYERS_CHECK(sums.contains(name) && sums[name].is_string(),
                    "checkpoint '{}' has no checksum for '{}': the file is corrupt", path, name);
    return sums[name].get<std::string>();
  };

  // ---- checksums: every byte that becomes state ----
  const std::string& config = meta("config");
  const std::string& history = meta("history");
  const std::string meta_sum = hex64(metadata_checksum(format, config, history));
  MEMLAYERS_CHECK(stored_sum("__metadata__") == meta_sum,
                  "checkpoint '{}': its metadata (config, history) fails its checksum (stored "
                  "{}, computed {}): the file is corrupt",
                  path, stored_sum("__metadata__"), meta_sum);
  for (const auto& [name, t] : f.tensors) {
    const std::string sum = hex64(fnv1a64(t.data.data(), t.data.size()));
    MEMLAYERS_CHECK(stored_sum(name) == sum,
                    "checkpoint '{}': tensor '{}' fails its checksum (stored {}, computed {}): the "
                    "file is corrupt",
                    path, name, stored_sum(name), sum);
  }

  // ---- the config: the run's, except the fields that may differ ----
  Fields theirs, ours;
  try {
    flatten(ordered_json::parse(config), "", theirs);
  } catch (const json::exception& e) {
    fail("checkpoint '{}': its config is not JSON ({})", path, e.what());
  }
  flatten(ordered_json::parse(config_json), "", ours);
  const auto allowed = [&](const std::string& key) {
    return std::find(may_differ.begin(), may_differ.end(), key) != may_differ.end();
  };
  const auto find = [](const Fields& fields, const std::string& key) {
    return std::find_if(fields.begin(), fields.end(),
                        [&](const auto& kv) { return kv.first == key; });
  };
  std::string allowed_list;
  for (const std::string& key : may_differ)
    allowed_list += (allowed_list.empty() ? "" : ", ") + key;
  for (const auto& [key, value] : ours) {
    if (allowed(key)) continue;
    const auto it = find(theirs, key);
    const std::string there = it == theirs.end() ? "absent" : it->second;
    MEMLAYERS_CHECK(there == value,
                    "checkpoint '{}' is of another run: {} is {} there and {} here (accepted: a "
                    "checkpoint of this run's config; only {} may differ)",
                    path, key, there, value, allowed_list.empty() ? "nothing" : allowed_list);
  }
  for (const auto& [key, value] : theirs)
    MEMLAYERS_CHECK(allowed(key) || find(ours, key) != ours.end(),
                    "checkpoint '{}' is of another run: its config has {} = {}, which this run's "
                    "lacks",
                    path, key, value);

  // ---- the tensors ----
  auto tensor = [&](const char* name, DType dtype) -> const st::Tensor& {
    MEMLAYERS_CHECK(f.has(name), "checkpoint '{}' has no tensor '{}'", path, name);
    const st::Tensor& t = f.at(name);
    MEMLAYERS_CHECK(t.dtype == dtype, "checkpoint '{}': tensor '{}' is {}: accepted is {}", path,
                    name, st::dtype_name(t.dtype), st::dtype_name(dtype));
    return t;
  };
  TrainState s;
  const st::Tensor& params = tensor("params", DType::f32);
  MEMLAYERS_CHECK(params.shape.size() == 1 && params.numel() >= 1,
                  "checkpoint '{}': tensor 'params' has {} dimensions: accepted is one", path,
                  params.shape.size());
  s.params = floats(params);
  for (auto [name, out] : {std::pair{"adam.m", &s.m}, std::pair{"adam.v", &s.v}}) {
    const st::Tensor& t = tensor(name, DType::f32);
    MEMLAYERS_CHECK(t.shape == params.shape,
                    "checkpoint '{}': tensor '{}' has {} elements but 'params' {}: accepted is the "
                    "same shape",
                    path, name, t.numel(), params.numel());
    *out = floats(t);
  }
  if (f.has("values")) {
    const st::Tensor& values = tensor("values", DType::f32);
    MEMLAYERS_CHECK(values.shape.size() == 2 && values.numel() >= 1,
                    "checkpoint '{}': tensor 'values' is not a (rows, dim) table", path);
    s.value_rows = values.shape[0], s.value_dim = values.shape[1];
    s.values = floats(values);
    for (auto [name, out] :
         {std::pair{"values.adam.m", &s.values_m}, std::pair{"values.adam.v", &s.values_v}}) {
      const st::Tensor& t = tensor(name, DType::f32);
      MEMLAYERS_CHECK(t.shape == values.shape,
                      "checkpoint '{}': tensor '{}' is not shaped like 'values': accepted is the "
                      "same shape",
                      path, name);
      *out = floats(t);
    }
  }
  const st::Tensor& step = tensor("step", DType::i64);
  const st::Tensor& position = tensor("data_position", DType::i64);
  MEMLAYERS_CHECK(step.numel() == 1 && position.numel() == 2,
                  "checkpoint '{}': 'step' has {} and 'data_position' {} elements: accepted are 1 "
                  "and 2",
                  path, step.numel(), position.numel());
  s.step = step.as<int64_t>()[0];
  s.epoch = position.as<int64_t>()[0], s.index = position.as<int64_t>()[1];
  MEMLAYERS_CHECK(s.step >= 0 && s.epoch >= 0 && s.index >= 0,
                  "checkpoint '{}': step {}, epoch {}, index {}: accepted are values ≥ 0", path,
                  s.step, s.epoch, s.index);

  try {
    for (const json& p : json::parse(history))
      s.history.push_back({p.at(0).get<int64_t>(), number_from(p.at(1)), number_from(p.at(2)),
                           number_from(p.at(3))});
  } catch (const json::exception& e) {
    fail("checkpoint '{}': its history is not [[step, loss, accuracy, train_loss], ...] ({})", path,
         e.what());
  }
  return s;
}

std::string save_checkpoint_in(const std::string& dir, const std::string& config_json,
                               const TrainState& s, bool rotate) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  MEMLAYERS_CHECK(!ec, "checkpoint folder '{}' cannot be created: {}", dir, ec.message());
  const std::string path = checkpoint_path(dir), prev = previous_checkpoint_path(dir);
  // rename() replaces prev atomically; from here until the save's own rename, prev is the newest
  // complete file.
  if (rotate && fs::exists(path, ec) && std::rename(path.c_str(), prev.c_str()) != 0)
    fail("cannot keep the previous checkpoint: renaming '{}' to '{}' failed: {}", path, prev,
         std::strerror(errno));
  save_checkpoint(path, config_json, s);
  return path;
}

std::optional<Resumed> load_newest_checkpoint(const std::string& dir,
                                              const std::string& config_json,
                                              const std::vector<std::string>& may_differ) {
  std::string refused;
  bool any = false;
  for (const std::string& path : {checkpoint_path(dir), previous_checkpoint_path(dir)}) {
    std::error_code ec;
    if (!fs::exists(path, ec)) continue;
    any = true;
    try {
      return Resumed{path, load_checkpoint(path, config_json, may_differ), refused};
    } catch (const Error& e) {
      refused += (refused.empty() ? "" : "; ") + std::string(e.what());
    }
  }
  if (!any) return std::nullopt;
  fail("no checkpoint in '{}' verifies: {}", dir, refused);
}

}  // namespace memlayers::harness
