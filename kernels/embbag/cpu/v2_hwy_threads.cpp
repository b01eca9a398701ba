// v2_hwy_threads — embbag forward for bandwidth: over v1_scalar it
//  - vectorises with Highway, the instruction set chosen at run time (SSE4/AVX2/AVX-512), FMA
//    accumulation in fp32, bf16 rows widened in registers (a shift, no table);
//  - folds eight rows per pass over the accumulator, so the accumulator row (the output row itself
//    when it is fp32) is loaded and stored once per eight gathered rows instead of once per row,
//    and eight row streams are in flight at once (eight measured 64–87% of the read ceiling where
//    four measured 63% on the same noisy VM: see reports/);
//  - threads over bags (kernels/common/parallel.h), each thread owning whole output rows;
//  - prefetches rows into L2 32 slots ahead of the rows it gathers (fewer when 32 rows pass
//    128 KiB), in the chunk's (bag, slot) order: a bag is a run of random row addresses, each of
//    which the hardware prefetcher would only pick up after a miss. The first version prefetched
//    the next bag, a distance that grew with k and dim: 512 KiB at the memory layer's bag of
//    4 heads × 32 at dim 1024, where it read 70% of the streaming read
//    (reports/cpu-intel-xeon/notes.md).
// Ragged dims run full vectors then a scalar tail; the dtype branch is hoisted out of the loops.
// Subnormal weights and products are flushed to zero (common/denormals.h): with a third of the
// weights subnormal the forward ran 4× slower.
// Measured when it landed (2-core AMD EPYC VM under heavy load from other jobs, so roughly): dim
// 1024, k 32, fp32, B 4096 over 2^20 rows — 5.3 GB/s against 5.6 GB/s for a plain threaded read
// of the table in the same run, v1_scalar 1.9 GB/s. bench_embbag gives the figures to quote.
#include <algorithm>
#include <cstdint>

#include "common/denormals.h"
#include "common/parallel.h"
#include "embbag/cpu/common.h"
#include "embbag/embbag.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "embbag/cpu/v2_hwy_threads.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "embbag/cpu/hwy_rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace memlayers::embbag::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// acc[0, dim) (=|+=) Σ_g w[g]·rows[g][0, dim), G rows at once. While at byte offset o of the
// current rows, the same offset of the G rows in `next` is prefetched: one line per 64 bytes.
template <int G, bool kBf16, bool kFirst>
HWY_NOINLINE void FoldRows(float* HWY_RESTRICT acc, const void* const* rows, const float* w,
                           const char* const* next, int64_t dim) {
  constexpr int64_t kSize = kBf16 ? 2 : 4;
  constexpr int64_t kLine = 64 / kSize;  // elements per cache line
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  hn::Vec<DF> vw[G];
  for (int g = 0; g < G; ++g) vw[g] = hn::Set(df, w[g]);
  int64_t d = 0;
  for (; d + N <= dim; d += N) {
    if (next && d % kLine < N)
      for (int g = 0; g < G; ++g) __builtin_prefetch(next[g] + d * kSize, 0, 2);
    auto a = kFirst ? hn::Mul(vw[0], LoadRow<kBf16>(df, rows[0], d))
                    : hn::MulAdd(vw[0], LoadRow<kBf16>(df, rows[0], d), hn::LoadU(df, acc + d));
    for (int g = 1; g < G; ++g) a = hn::MulAdd(vw[g], LoadRow<kBf16>(df, rows[g], d), a);
    hn::StoreU(a, df, acc + d);
  }
  if (next && d < dim && d % kLine < N)
    for (int g = 0; g < G; ++g) __builtin_prefetch(next[g] + d * kSize, 0, 2);
  for (; d < dim; ++d) {
    float a = kFirst ? 0.0f : acc[d];
    for (int g = 0; g < G; ++g) a += w[g] * LoadScalar<kBf16>(rows[g], d);
    acc[d] = a;
  }
}

template <bool kBf16, bool kFirst>
HWY_INLINE void FoldGroup(int g, float* acc, const void* const* rows, const float* w,
                          const char* const* next, int64_t dim) {
  switch (g) {
    case 1:
      return FoldRows<1, kBf16, kFirst>(acc, rows, w, next, dim);
    case 2:
      return FoldRows<2, kBf16, kFirst>(acc, rows, w, next, dim);
    case 3:
      return FoldRows<3, kBf16, kFirst>(acc, rows, w, next, dim);
    case 4:
      return FoldRows<4, kBf16, kFirst>(acc, rows, w, next, dim);
    case 5:
      return FoldRows<5, kBf16, kFirst>(acc, rows, w, next, dim);
    case 6:
      return FoldRows<6, kBf16, kFirst>(acc, rows, w, next, dim);
    case 7:
      return FoldRows<7, kBf16, kFirst>(acc, rows, w, next, dim);
    default:
      return FoldRows<8, kBf16, kFirst>(acc, rows, w, next, dim);
  }
}

constexpr int64_t kGroup = 8;  // rows folded per pass over the accumulator

// The prefetch distance, in slots of the chunk's (bag, slot) order: 32 rows, fewer where 32 rows
// pass 128 KiB, never under one group. The header says what was measured.
constexpr int64_t kAheadRows = 32, kAheadBytes = int64_t{128} << 10;

template <bool kBf16>
void Bags(const FwdParams& p, int64_t b0, int64_t b1) {
  const int64_t k = p.k, dim = p.dim;
  const int64_t vs = p.values_stride ? p.values_stride : dim;
  const int64_t os = p.out_stride ? p.out_stride : dim;
  const int64_t row_bytes = vs * (kBf16 ? 2 : 4);
  const char* base = static_cast<const char*>(p.values);
  const bool out_f32 = p.out_dtype == DType::f32;
  HWY_ALIGN float scratch[kMaxDim];  // the fp32 accumulator when the output is bf16
  const auto row = [&](int64_t t) {  // the row of flat slot t = bag · k + slot
    return base + load_index(p.indices, p.index_dtype, t) * row_bytes;
  };
  const int64_t ahead = std::clamp<int64_t>(kAheadBytes / row_bytes, kGroup, kAheadRows);
  const int64_t end = b1 * k;  // the chunk's slots end here: nothing past it is prefetched
  const void* rows[kMaxK];
  const char* next[kMaxK];  // next[j]: the row of slot j + ahead, prefetched while j is read
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t t0 = b * k, n_next = std::clamp<int64_t>(end - t0 - ahead, 0, k);
    for (int64_t j = 0; j < k; ++j) rows[j] = row(t0 + j);
    for (int64_t j = 0; j < n_next; ++j) next[j] = row(t0 + ahead + j);
    const float* w = p.weights + t0;
    float* acc = out_f32 ? static_cast<float*>(p.out) + b * os : scratch;
    for (int64_t j = 0; j < k; j += kGroup) {
      const int g = static_cast<int>(std::min<int64_t>(kGroup, k - j));
      const char* const* nx = j + g <= n_next ? next + j : nullptr;
      if (j == 0)
        FoldGroup<kBf16, true>(g, acc, rows + j, w + j, nx, dim);
      else
        FoldGroup<kBf16, false>(g, acc, rows + j, w + j, nx, dim);
    }
    if (!out_f32) {
      auto* out = static_cast<uint16_t*>(p.out) + b * os;
      for (int64_t d = 0; d < dim; ++d) out[d] = float_to_bf16_bits(acc[d]);
    }
  }
}

void Forward(const FwdParams& p) {
  // Chunks of at least ~256 KiB of gathered rows: thread hand-off stays negligible.
  const int64_t bag_bytes = p.k * p.dim * static_cast<int64_t>(dtype_size(p.values_dtype));
  const int64_t grain = balanced_grain(p.batch, std::max<int64_t>(1, (256 << 10) / bag_bytes));
  parallel_for(p.batch, grain, [&](int64_t b0, int64_t b1) {
    const FlushDenormals ftz;  // a subnormal weight costs a microcode assist per FMA
    if (p.values_dtype == DType::bf16)
      Bags<true>(p, b0, b1);
    else
      Bags<false>(p, b0, b1);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::embbag::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memlayers::embbag::cpu {
HWY_EXPORT(Forward);
namespace {

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{
                            .name = "v2_hwy_threads",
                            .backend = Backend::cpu,
                            .launch =
                                [](const FwdParams& p, Stream) {
                                  HWY_DYNAMIC_DISPATCH(Forward)
                                  (p);
                                },
                            .summary = "Highway SIMD (runtime dispatch), 8 rows per pass, threads "
                                       "over bags, rows prefetched 32 slots ahead",
                            .deterministic = true,
                        });

}  // namespace
}  // namespace memlayers::embbag::cpu
#endif  // HWY_ONCE
