// v2_bwd_sorted — embbag backward grouped by row, over v1_bwd_scalar:
//  - the (row, position) pairs are radix-sorted by row (LSD, 11-bit digits, stable, so each row's
//    positions stay in (bag, slot) order); each unique row's gradient is then summed by one thread
//    in that fixed order: no atomics, and bitwise identical results whatever the thread count;
//  - threads over row segments (kernels/common/parallel.h), claimed dynamically, so a popular row
//    does not stall the others;
//  - dw is fused into the same pass: a row of V is read once per unique row, for all its
//    occurrences, while it is in cache, instead of once per (bag, slot);
//  - Highway SIMD (runtime dispatch) for the axpy into dV and the dot for dw, in one loop over dy;
//  - dense dV zeroes only the untouched rows, in parallel, and writes touched rows once;
//  - subnormal weights and products flushed to zero (common/denormals.h): with a third of the
//    weights subnormal the backward ran 1.8× slower;
//  - each row's dV is summed in an aligned scratch row, then written with non-temporal stores
//    (where the destination row is vector-aligned): a plain store first reads the line it
//    overwrites, ~500 MB of reads the op does not need at dim 1024, k 32, B 4096;
//  - the next segment's value row (into L2) and its first dy row are prefetched meanwhile.
//    With both, on a 2-core Xeon: 49.6-50.7 ms (67% of the streaming read) became 42.2 ms (80%);
//    the memory layer's bag backward (memory+, B 256) 11.7 ms became 9.4-9.9 ms.
// Measured when it landed (same loaded 2-core VM, so roughly): dim 1024, k 32, fp32, B 4096 over
// 2^20 rows, dw + compact dV — 211 ms against 1035 ms for v1_bwd_scalar.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "common/denormals.h"
#include "common/dense_rows.h"
#include "common/parallel.h"
#include "embbag/cpu/common.h"
#include "embbag/embbag.h"

// foreach_target includes this file once per SIMD target: declare shared types once.
#ifndef MEMLAYERS_EMBBAG_V2_BWD_SORTED_TYPES
#define MEMLAYERS_EMBBAG_V2_BWD_SORTED_TYPES
namespace memlayers::embbag::cpu {
struct RowPos {
  int64_t row, pos;
};
}  // namespace memlayers::embbag::cpu
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "embbag/cpu/v2_bwd_sorted.cpp"
#include <hwy/aligned_allocator.h>
#include <hwy/cache_control.h>
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "embbag/cpu/hwy_rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace memlayers::embbag::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One occurrence of a row: acc (=|+=) w·dy, and returns dy·v. Either part may be off.
template <bool kBf16, bool kDV, bool kDW, bool kFirst>
HWY_INLINE float Occurrence(float* HWY_RESTRICT acc, const float* HWY_RESTRICT dy, float w,
                            const void* vrow, int64_t dim) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto vw = hn::Set(df, w);
  auto dot0 = hn::Zero(df), dot1 = hn::Zero(df);
  int64_t d = 0;
  for (; d + 2 * N <= dim; d += 2 * N) {
    const auto y0 = hn::LoadU(df, dy + d), y1 = hn::LoadU(df, dy + d + N);
    if constexpr (kDV) {
      if constexpr (kFirst) {
        hn::StoreU(hn::Mul(vw, y0), df, acc + d);
        hn::StoreU(hn::Mul(vw, y1), df, acc + d + N);
      } else {
        hn::StoreU(hn::MulAdd(vw, y0, hn::LoadU(df, acc + d)), df, acc + d);
        hn::StoreU(hn::MulAdd(vw, y1, hn::LoadU(df, acc + d + N)), df, acc + d + N);
      }
    }
    if constexpr (kDW) {
      dot0 = hn::MulAdd(y0, LoadRow<kBf16>(df, vrow, d), dot0);
      dot1 = hn::MulAdd(y1, LoadRow<kBf16>(df, vrow, d + N), dot1);
    }
  }
  for (; d + N <= dim; d += N) {
    const auto y0 = hn::LoadU(df, dy + d);
    if constexpr (kDV) {
      if constexpr (kFirst)
        hn::StoreU(hn::Mul(vw, y0), df, acc + d);
      else
        hn::StoreU(hn::MulAdd(vw, y0, hn::LoadU(df, acc + d)), df, acc + d);
    }
    if constexpr (kDW) dot0 = hn::MulAdd(y0, LoadRow<kBf16>(df, vrow, d), dot0);
  }
  float dot = 0;
  if constexpr (kDW) dot = hn::GetLane(hn::SumOfLanes(df, hn::Add(dot0, dot1)));
  for (; d < dim; ++d) {
    if constexpr (kDV) acc[d] = kFirst ? w * dy[d] : acc[d] + w * dy[d];
    if constexpr (kDW) dot += dy[d] * LoadScalar<kBf16>(vrow, d);
  }
  return dot;
}

template <bool kBf16, bool kDV, bool kDW>
void Segment(const BwdParams& p, const RowPos* pairs, int64_t s, int64_t e, float* acc) {
  const int64_t vs = p.values_stride ? p.values_stride : p.dim;
  const void* vrow = static_cast<const char*>(p.values) +
                     pairs[s].row * vs * static_cast<int64_t>(dtype_size(p.values_dtype));
  for (int64_t i = s; i < e; ++i) {
    const int64_t pos = pairs[i].pos;
    const float* dy = p.grad_out + (pos / p.k) * p.dim;
    const float w = p.weights[pos];
    const float dot = i == s ? Occurrence<kBf16, kDV, kDW, true>(acc, dy, w, vrow, p.dim)
                             : Occurrence<kBf16, kDV, kDW, false>(acc, dy, w, vrow, p.dim);
    if constexpr (kDW) p.grad_weights[pos] = dot;
  }
}

// dst[0, dim) = src[0, dim) with non-temporal stores where dst is vector-aligned: a dV row is
// written once and not read again here, and a plain store would first read its line from memory.
HWY_INLINE void StreamRow(float* HWY_RESTRICT dst, const float* HWY_RESTRICT src, int64_t dim) {
  const DF df;
  const auto N = static_cast<int64_t>(hn::Lanes(df));
  if (reinterpret_cast<uintptr_t>(dst) % (N * sizeof(float)) != 0) {
    std::memcpy(dst, src, static_cast<std::size_t>(dim) * sizeof(float));
    return;
  }
  int64_t d = 0;
  for (; d + N <= dim; d += N) hn::Stream(hn::Load(df, src + d), df, dst + d);
  for (; d < dim; ++d) dst[d] = src[d];
}

template <bool kBf16, bool kDV, bool kDW>
void Segments(const BwdParams& p, const RowPos* pairs, const int64_t* starts, int64_t u0,
              int64_t u1) {
  const int64_t vs = p.values_stride ? p.values_stride : p.dim;
  const auto elem = static_cast<int64_t>(dtype_size(p.values_dtype));
  const int64_t row_bytes = p.dim * elem;
  auto scratch = hwy::AllocateAligned<float>(static_cast<std::size_t>(kDV ? p.dim : 1));
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t row = pairs[starts[u]].row;
    if (u + 1 < u1) {  // the next segment's value row (to L2) and first dy row, meanwhile
      const RowPos& next = pairs[starts[u + 1]];
      if constexpr (kDW) {
        const char* v = static_cast<const char*>(p.values) + next.row * vs * elem;
        for (int64_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(v + o, 0, 2);
      }
      const char* dy = reinterpret_cast<const char*>(p.grad_out + next.pos / p.k * p.dim);
      for (int64_t o = 0; o < p.dim * 4; o += 64) __builtin_prefetch(dy + o, 0, 3);
    }
    Segment<kBf16, kDV, kDW>(p, pairs, starts[u], starts[u + 1], scratch.get());
    if constexpr (kDV) {
      if (p.grad_values_compact) StreamRow(p.grad_values_compact + u * p.dim, scratch.get(), p.dim);
      if (p.grad_values_dense) StreamRow(p.grad_values_dense + row * p.dim, scratch.get(), p.dim);
    }
  }
  hwy::FlushStream();
}

using SegmentsFn = void (*)(const BwdParams&, const RowPos*, const int64_t*, int64_t, int64_t);

template <bool kBf16>
SegmentsFn Pick(bool dv, bool dw) {
  if (dv && dw) return Segments<kBf16, true, true>;
  if (dv) return Segments<kBf16, true, false>;
  return Segments<kBf16, false, true>;
}

void RunSegments(const BwdParams& p, const RowPos* pairs, const int64_t* starts,
                 int64_t num_segments) {
  const bool dv = p.grad_values_compact || p.grad_values_dense;
  const SegmentsFn fn = p.values_dtype == DType::bf16 ? Pick<true>(dv, p.grad_weights != nullptr)
                                                      : Pick<false>(dv, p.grad_weights != nullptr);
  // Segments are claimed in small chunks: their sizes vary with how popular a row is.
  const int64_t per_segment = std::max<int64_t>(1, p.batch * p.k / num_segments) * p.dim;
  const int64_t grain = balanced_grain(num_segments, std::max<int64_t>(1, 16384 / per_segment), 16);
  parallel_for(num_segments, grain, [&](int64_t u0, int64_t u1) {
    const FlushDenormals ftz;  // subnormal weights or products: a microcode assist per FMA
    fn(p, pairs, starts, u0, u1);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::embbag::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memlayers::embbag::cpu {
HWY_EXPORT(RunSegments);
namespace {

// Stable LSD radix sort of the pairs by row; rows < 2^bits. Two buffers, ping-pong.
void radix_sort_by_row(std::vector<RowPos>& a, int bits) {
  constexpr int kDigit = 11;
  constexpr std::size_t kBuckets = std::size_t{1} << kDigit;
  std::vector<RowPos> tmp(a.size());
  std::vector<std::size_t> count(kBuckets);
  for (int shift = 0; shift < bits; shift += kDigit) {
    std::fill(count.begin(), count.end(), 0);
    for (const RowPos& x : a) ++count[(static_cast<uint64_t>(x.row) >> shift) & (kBuckets - 1)];
    std::size_t sum = 0;
    for (auto& c : count) sum += std::exchange(c, sum);
    for (const RowPos& x : a)
      tmp[count[(static_cast<uint64_t>(x.row) >> shift) & (kBuckets - 1)]++] = x;
    a.swap(tmp);
  }
}

void bwd_v2_sorted(const BwdParams& p, Stream) {
  const int64_t n = p.batch * p.k;
  std::vector<RowPos> pairs(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) pairs[i] = {load_index(p.indices, p.index_dtype, i), i};
  radix_sort_by_row(pairs, std::bit_width(static_cast<uint64_t>(p.num_rows - 1)));

  std::vector<int64_t> starts;  // segment u is pairs[starts[u], starts[u + 1])
  starts.reserve(static_cast<std::size_t>(n) + 1);
  for (int64_t i = 0; i < n; ++i)
    if (i == 0 || pairs[i].row != pairs[i - 1].row) starts.push_back(i);
  const auto num_segments = static_cast<int64_t>(starts.size());
  starts.push_back(n);

  if (p.unique_rows) {
    for (int64_t u = 0; u < num_segments; ++u) p.unique_rows[u] = pairs[starts[u]].row;
    *p.num_unique = num_segments;
  }
  if (p.grad_values_dense) {
    // Untouched rows only; touched rows are written once, by their segment.
    zero_untouched_rows(p.grad_values_dense, p.num_rows, p.dim, num_segments,
                        [&](int64_t u) { return pairs[starts[u]].row; });
  }
  HWY_DYNAMIC_DISPATCH(RunSegments)(p, pairs.data(), starts.data(), num_segments);
}

MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{
                            .name = "v2_bwd_sorted",
                            .backend = Backend::cpu,
                            .launch = bwd_v2_sorted,
                            .summary = "radix sort by row, one thread per row segment in fixed "
                                       "order (no atomics), dw fused, Highway SIMD",
                            .deterministic = true,
                        });

}  // namespace
}  // namespace memlayers::embbag::cpu
#endif  // HWY_ONCE
