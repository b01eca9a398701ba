// A memory layer's parameters as a safetensors file (kernels/common/safetensors.h): one tensor per
// Weights field, named as the field ("wq", "bq", "keys1", "keys2", "values", "down", "w1", "b1",
// "w2", "b2", "wg"), fp32 except the value tables (values_dtype), and the Config in __metadata__
// ("memlayers.kind", "memlayers.d_model", ...). The value table is shared by a model's memory
// layers, so a layer's file may leave "values" out (save with values = false) and the caller
// supplies it; everything else the config uses must be present with its exact shape and dtype.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/safetensors.h"
#include "memory_layer/memory_layer.h"

namespace memlayers::memory_layer {

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// The tensors a config's weights hold, in Weights field order.
std::vector<TensorSpec> weight_specs(const Config& c);

// Host copies of a layer's parameters, owning their storage.
struct HostWeights {
  Config config;
  std::vector<float> wq, bq, keys1, keys2, w1, b1, w2, b2, wg;
  std::vector<unsigned char> values, down;  // values_dtype storage; values empty if not in the file
  Weights view() const;  // pointers into this object (null for what it does not hold)
};

// To and from a safetensors::File (host pointers in `w`).
safetensors::File weights_to_file(const Config& c, const Weights& w, bool values = true);
HostWeights weights_from_file(const safetensors::File& f, const std::string& what = "weights");

void save_weights(const std::string& path, const Config& c, const Weights& w, bool values = true);
HostWeights load_weights(const std::string& path);

}  // namespace memlayers::memory_layer
