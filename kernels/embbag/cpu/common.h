// Small helpers shared by the CPU variants of the EmbeddingBag: typed views of the Params'
// untyped pointers. Host only.
#pragma once
#include <cstdint>

#include "common/bf16.h"
#include "common/dtype.h"

namespace memlayers::embbag::cpu {

inline int64_t load_index(const void* indices, DType t, int64_t i) {
  return t == DType::i32 ? int64_t{static_cast<const int32_t*>(indices)[i]}
                         : static_cast<const int64_t*>(indices)[i];
}

inline float load_value(const void* values, DType t, int64_t i) {
  return t == DType::bf16 ? bf16_bits_to_float(static_cast<const uint16_t*>(values)[i])
                          : static_cast<const float*>(values)[i];
}

inline void store_value(void* out, DType t, int64_t i, float v) {
  if (t == DType::bf16)
    static_cast<uint16_t*>(out)[i] = float_to_bf16_bits(v);
  else
    static_cast<float*>(out)[i] = v;
}

}  // namespace memlayers::embbag::cpu
