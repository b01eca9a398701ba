// The running top-k of a row half and the scratch buffers of the fused CPU searches
// (v2_fused_pruned, v3_amx_rescored): the parts that do not depend on the SIMD target. The
// per-target selection passes are in select-inl.h.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>

#include <hwy/aligned_allocator.h>

#include "pk_topk/cpu/common.h"

namespace memlayers::pk_topk::cpu {

// The running k best of one half's scores, fed chunk by chunk in ascending index order: an
// unsorted buffer of keys; after a chunk, nth_element keeps the k best and `threshold` becomes the
// k-th best score. A later score (higher index, so it loses ties) can only be among the k best if
// it ranks before that one: s > threshold, or any number when the threshold is NaN. So
// !(s <= threshold) is its filter, with threshold NaN (passing everything) before the first
// compaction.
struct TopKBuffer {
  int64_t k = 0, size = 0;
  uint64_t* keys = nullptr;
  float threshold = std::numeric_limits<float>::quiet_NaN();

  void reset(int64_t k_, uint64_t* buffer) {
    k = k_, size = 0, keys = buffer;
    threshold = std::numeric_limits<float>::quiet_NaN();
  }
  void compact() {
    if (size <= k) return;
    std::nth_element(keys, keys + (k - 1), keys + size, std::greater<>());
    size = k;
    threshold = key_score(keys[k - 1]);
  }
  void append(float s, int64_t i) { keys[size++] = rank_key(s, i); }
};

// A buffer that only grows and is never cleared: what it holds is written before it is read, and
// zero-filling it (a vector's resize) cost the harness's small searches ~8% of a training step.
template <class T>
struct Scratch {
  hwy::AlignedFreeUniquePtr<T[]> data;
  int64_t size = 0;
  T* at_least(int64_t n) {
    if (n > size) data = hwy::AllocateAligned<T>(static_cast<std::size_t>(n)), size = n;
    return data.get();
  }
};

}  // namespace memlayers::pk_topk::cpu
