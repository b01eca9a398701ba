// Small helpers shared by the CPU variants of the EmbeddingBag: typed views of the Params'
// untyped pointers, and how far apart in a gathered row software prefetches go. Host only.
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

// The byte step of the software prefetches that bring a gathered row into L2 ahead of its use:
// where each row is whole 4 KiB pages (rows `row_bytes` apart from a page-aligned `base`, all
// of each read), the first line of each page, and the L2's stream prefetcher, which stays inside
// a page, brings the rest; otherwise every 64-byte line, since a stream would run on into the
// neighbouring row. v2_hwy_threads and bench_embbag's gather ceiling both use it.
inline int64_t row_prefetch_step(const void* base, int64_t row_bytes, int64_t read_bytes) {
  constexpr int64_t kPage = 4096;
  const bool whole_pages = row_bytes % kPage == 0 && read_bytes == row_bytes &&
                           reinterpret_cast<uintptr_t>(base) % kPage == 0;
  return whole_pages ? kPage : 64;
}

}  // namespace memlayers::embbag::cpu
