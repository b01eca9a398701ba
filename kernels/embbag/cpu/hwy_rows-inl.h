// Row loads shared by the Highway CPU variants: a vector of fp32 (bf16 widened) from a row at an
// element offset, and the scalar fallback for ragged tails. Per-target header (Highway's -inl.h
// convention): each file that runs foreach_target includes it after <hwy/highway.h>.
#if defined(MEMLAYERS_EMBBAG_CPU_HWY_ROWS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MEMLAYERS_EMBBAG_CPU_HWY_ROWS_INL_H_
#undef MEMLAYERS_EMBBAG_CPU_HWY_ROWS_INL_H_
#else
#define MEMLAYERS_EMBBAG_CPU_HWY_ROWS_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>

#include "embbag/cpu/common.h"

HWY_BEFORE_NAMESPACE();
namespace memlayers::embbag::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

// D: any fp32 tag (full or capped vectors).
template <bool kBf16, class D>
HWY_INLINE hn::Vec<D> LoadRow(D df, const void* row, int64_t d) {
  if constexpr (kBf16) {
    const hn::Rebind<uint16_t, D> d16;
    const hn::RebindToUnsigned<D> d32;
    const auto bits = hn::PromoteTo(d32, hn::LoadU(d16, static_cast<const uint16_t*>(row) + d));
    return hn::BitCast(df, hn::ShiftLeft<16>(bits));
  } else {
    return hn::LoadU(df, static_cast<const float*>(row) + d);
  }
}

template <bool kBf16>
HWY_INLINE float LoadScalar(const void* row, int64_t d) {
  if constexpr (kBf16)
    return bf16_bits_to_float(static_cast<const uint16_t*>(row)[d]);
  else
    return static_cast<const float*>(row)[d];
}

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::embbag::cpu
HWY_AFTER_NAMESPACE();

#endif  // MEMLAYERS_EMBBAG_CPU_HWY_ROWS_INL_H_
