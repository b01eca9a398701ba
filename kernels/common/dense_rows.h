// Dense gradient tables that only some rows of reach (EmbeddingBag dV, pk_topk dK): each touched
// row is written once, by whoever sums it; the others are zeroed here, without writing a touched
// row twice.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <ranges>

#include "common/parallel.h"

namespace memlayers {

// Zeroes the rows of `dense` (num_rows × width, fp32) that are not touched: threaded by ranges of
// rows, each gap between touched rows one memset. touched(i) for i < n: the touched rows,
// ascending and distinct.
template <class Touched>
void zero_untouched_rows(float* dense, int64_t num_rows, int64_t width, int64_t n,
                         Touched&& touched) {
  parallel_for(num_rows, balanced_grain(num_rows, std::max<int64_t>(1, 65536 / width)),
               [&](int64_t r0, int64_t r1) {
                 const auto ids = std::views::iota(int64_t{0}, n);
                 int64_t i =
                     *std::ranges::partition_point(ids, [&](int64_t j) { return touched(j) < r0; });
                 for (int64_t r = r0; r < r1; ++i) {
                   const int64_t next = i < n ? std::min(r1, touched(i)) : r1;
                   std::memset(dense + r * width, 0,
                               static_cast<std::size_t>((next - r) * width) * sizeof(float));
                   r = next + 1;
                 }
               });
}

}  // namespace memlayers
