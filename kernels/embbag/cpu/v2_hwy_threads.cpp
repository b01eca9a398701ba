// v2_hwy_threads — embbag forward for bandwidth: over v1_scalar it
//  - vectorises with Highway, the instruction set chosen at run time (SSE4/AVX2/AVX-512), FMA
//    accumulation in fp32, bf16 rows widened in registers (a shift, no table). bf16 rows are
//    loaded 2N elements at a time as N 32-bit pairs, the odd elements kept by a mask and the even
//    ones by a shift, into an accumulator that holds each chunk's evens then its odds and is put
//    back in order once a bag (FoldPairs): one load and no shuffle per 2N elements, where a
//    zero-extending load per N took two loads and two shuffles. At dim 1024, k 32, B 4096 bf16
//    (the two builds alternating, 4 rounds): 15.4-16.2 ms against 17.0-17.8 ms; one thread
//    30.8-31.8 against 34.6-38.1 ms; dim 100: 3.08-3.44 against 3.42-3.80 ms;
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
//    (reports/cpu-intel-xeon/notes.md);
//  - where rows are whole 4 KiB pages (fp32 at dim 1024, 2048, ...), prefetches only the first
//    line of each page and leaves the rest to the L2's stream prefetcher, which that line starts
//    and which stays inside the page (common.h, row_prefetch_step); other rows get every line
//    prefetched, since a stream would run on into the neighbouring row. (Why a prefetch a line
//    costs more, presumably the line fill buffers it holds from the demand loads, was not
//    measured: the VM has no hardware counters.) At dim 1024, k 32, B 4096 fp32 (the two builds
//    alternating, full runs, 2-core Xeon VM) 20.3-20.7 ms, 89.6-91.9% of the streaming read,
//    against 22.1-22.2 ms, 82.5-83.5%; the memory layer's bag (--k 128 --batch 256) 4.74-4.96
//    against 5.08-5.49 ms; dim 4096 74.7-76.5 against 75.9-77.7 ms. The plain gather ceiling
//    reads as fast either way. Prefetching only each row's head (64 or 256 bytes) was as fast at
//    4 KiB rows but 3-8% slower at bf16's 2 KiB rows and at 400-byte rows, where the stream
//    overran the row or never started.
// Ragged dims run full vectors then a scalar tail; the dtype branch is hoisted out of the loops.
// Smaller rows read less of the streaming-read ceiling (fp32, k 32, B 4096, one run each: dim 100
// 43%, 256 56%, 512 69%, 1024 82%; bf16 at dim 1024, 2 KiB rows, 64%). The memory system sets
// that, not this loop: bench_embbag's gather ceiling (a plain gather of fresh random rows of the
// same size, 8 at a time, prefetched alike, no arithmetic but a sum) read 4 KiB rows at 81% of
// the stream, 2 KiB rows at 66% and 400-byte rows at 42% in one run, and this kernel read 106%,
// 99% and 122% of it (pct_gather; its bags keep more rows in flight than the plain gather). One
// thread reads half of what two do at every dim. Tried on bf16 rows at dim 1024, alternating:
// 64 rows ahead instead of 32, 16 rows a pass instead of 8, the FMA chain split in two, the
// output rounded in SIMD: no change; prefetching into L1: 11% slower. At dim 100, 32 to 256
// rows ahead: no change.
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
// current rows, the same offset of the G rows in `next` is prefetched where o is a multiple of
// pf_step bytes (a power of two of at least 64: every line, or the first of every page).
template <int G, bool kBf16, bool kFirst>
HWY_NOINLINE void FoldRows(float* HWY_RESTRICT acc, const void* const* rows, const float* w,
                           const char* const* next, int64_t pf_step, int64_t dim) {
  constexpr int64_t kSize = kBf16 ? 2 : 4;
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  hn::Vec<DF> vw[G];
  for (int g = 0; g < G; ++g) vw[g] = hn::Set(df, w[g]);
  int64_t d = 0;
  const int64_t step = pf_step / kSize;  // elements
  for (; d + N <= dim; d += N) {
    if (next && (d & (step - 1)) < N)
      for (int g = 0; g < G; ++g) __builtin_prefetch(next[g] + d * kSize, 0, 2);
    auto a = kFirst ? hn::Mul(vw[0], LoadRow<kBf16>(df, rows[0], d))
                    : hn::MulAdd(vw[0], LoadRow<kBf16>(df, rows[0], d), hn::LoadU(df, acc + d));
    for (int g = 1; g < G; ++g) a = hn::MulAdd(vw[g], LoadRow<kBf16>(df, rows[g], d), a);
    hn::StoreU(a, df, acc + d);
  }
  if (next && d < dim && (d & (step - 1)) < N)
    for (int g = 0; g < G; ++g) __builtin_prefetch(next[g] + d * kSize, 0, 2);
  for (; d < dim; ++d) {
    float a = kFirst ? 0.0f : acc[d];
    for (int g = 0; g < G; ++g) a += w[g] * LoadScalar<kBf16>(rows[g], d);
    acc[d] = a;
  }
}

// bf16 rows over [0, pairs): each load takes 2N elements as N 32-bit pairs, widened with a mask
// (the odd elements) and a shift (the even ones) instead of a zero-extending shuffle per N
// elements. acc[c, c + 2N) then holds the chunk's even elements, then its odd ones (Interleave
// puts them back in order). pairs is a multiple of 2N.
template <int G, bool kFirst>
HWY_NOINLINE void FoldPairs(float* HWY_RESTRICT acc, const void* const* rows, const float* w,
                            const char* const* next, int64_t pf_step, int64_t pairs) {
  const int64_t step = pf_step / 2;  // bf16 elements
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto high = hn::Set(du, 0xffff0000u);
  hn::Vec<DF> vw[G];
  for (int g = 0; g < G; ++g) vw[g] = hn::Set(df, w[g]);
  for (int64_t d = 0; d < pairs; d += 2 * N) {
    if (next && (d & (step - 1)) < 2 * N)
      for (int g = 0; g < G; ++g) __builtin_prefetch(next[g] + d * 2, 0, 2);
    hn::Vec<DF> even, odd;
    for (int g = 0; g < G; ++g) {
      const auto u = hn::LoadU(
          du, reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(rows[g]) + d));
      const auto e = hn::BitCast(df, hn::ShiftLeft<16>(u)), o = hn::BitCast(df, hn::And(u, high));
      if (g == 0 && kFirst) {
        even = hn::Mul(vw[0], e);
        odd = hn::Mul(vw[0], o);
      } else if (g == 0) {
        even = hn::MulAdd(vw[0], e, hn::LoadU(df, acc + d));
        odd = hn::MulAdd(vw[0], o, hn::LoadU(df, acc + d + N));
      } else {
        even = hn::MulAdd(vw[g], e, even);
        odd = hn::MulAdd(vw[g], o, odd);
      }
    }
    hn::StoreU(even, df, acc + d);
    hn::StoreU(odd, df, acc + d + N);
  }
}

// out[0, pairs) = FoldPairs' accumulator back in element order; out may be acc.
void Interleave(const float* acc, int64_t pairs, float* out) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t d = 0; d < pairs; d += 2 * N)
    hn::StoreInterleaved2(hn::LoadU(df, acc + d), hn::LoadU(df, acc + d + N), df, out + d);
}

// G rows of a group: bf16 rows in pairs over [0, pairs), then [pairs, dim) one element a lane.
template <int G, bool kBf16, bool kFirst>
HWY_INLINE void Fold(float* acc, const void* const* rows, const float* w, const char* const* next,
                     int64_t pf_step, int64_t pairs, int64_t dim) {
  if (!kBf16 || pairs == 0) return FoldRows<G, kBf16, kFirst>(acc, rows, w, next, pf_step, dim);
  FoldPairs<G, kFirst>(acc, rows, w, next, pf_step, pairs);
  if (pairs == dim) return;
  const void* tail[G];
  const char* tail_next[G];
  for (int g = 0; g < G; ++g) {
    tail[g] = static_cast<const uint16_t*>(rows[g]) + pairs;
    if (next) tail_next[g] = next[g] + pairs * 2;
  }
  FoldRows<G, kBf16, kFirst>(acc + pairs, tail, w, next ? tail_next : nullptr, pf_step,
                             dim - pairs);
}

template <bool kBf16, bool kFirst>
HWY_INLINE void FoldGroup(int g, float* acc, const void* const* rows, const float* w,
                          const char* const* next, int64_t pf_step, int64_t pairs, int64_t dim) {
  switch (g) {
    case 1:
      return Fold<1, kBf16, kFirst>(acc, rows, w, next, pf_step, pairs, dim);
    case 2:
      return Fold<2, kBf16, kFirst>(acc, rows, w, next, pf_step, pairs, dim);
    case 3:
      return Fold<3, kBf16, kFirst>(acc, rows, w, next, pf_step, pairs, dim);
    case 4:
      return Fold<4, kBf16, kFirst>(acc, rows, w, next, pf_step, pairs, dim);
    case 5:
      return Fold<5, kBf16, kFirst>(acc, rows, w, next, pf_step, pairs, dim);
    case 6:
      return Fold<6, kBf16, kFirst>(acc, rows, w, next, pf_step, pairs, dim);
    case 7:
      return Fold<7, kBf16, kFirst>(acc, rows, w, next, pf_step, pairs, dim);
    default:
      return Fold<8, kBf16, kFirst>(acc, rows, w, next, pf_step, pairs, dim);
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
  // bf16 rows: [0, pairs) is folded two elements a 32-bit lane (FoldPairs).
  const int64_t pairs = kBf16 ? dim / (2 * hn::Lanes(DF())) * (2 * hn::Lanes(DF())) : 0;
  // The fp32 accumulator when the output is bf16 or the rows are folded in pairs.
  HWY_ALIGN float scratch[kMaxDim];
  const auto row = [&](int64_t t) {  // the row of flat slot t = bag · k + slot
    return base + load_index(p.indices, p.index_dtype, t) * row_bytes;
  };
  const int64_t ahead = std::clamp<int64_t>(kAheadBytes / row_bytes, kGroup, kAheadRows);
  // Every line of a row, or the first of each page where rows are whole pages (common.h).
  const int64_t pf_step = row_prefetch_step(base, row_bytes, dim * (kBf16 ? 2 : 4));
  const int64_t end = b1 * k;  // the chunk's slots end here: nothing past it is prefetched
  const void* rows[kMaxK];
  const char* next[kMaxK];  // next[j]: the row of slot j + ahead, prefetched while j is read
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t t0 = b * k, n_next = std::clamp<int64_t>(end - t0 - ahead, 0, k);
    for (int64_t j = 0; j < k; ++j) rows[j] = row(t0 + j);
    for (int64_t j = 0; j < n_next; ++j) next[j] = row(t0 + ahead + j);
    const float* w = p.weights + t0;
    float* const out_row = out_f32 ? static_cast<float*>(p.out) + b * os : nullptr;
    float* acc = out_f32 && !pairs ? out_row : scratch;
    for (int64_t j = 0; j < k; j += kGroup) {
      const int g = static_cast<int>(std::min<int64_t>(kGroup, k - j));
      const char* const* nx = j + g <= n_next ? next + j : nullptr;
      if (j == 0)
        FoldGroup<kBf16, true>(g, acc, rows + j, w + j, nx, pf_step, pairs, dim);
      else
        FoldGroup<kBf16, false>(g, acc, rows + j, w + j, nx, pf_step, pairs, dim);
    }
    if (pairs) {  // acc is scratch: back in element order, into the output row when fp32
      Interleave(acc, pairs, out_f32 ? out_row : acc);
      if (out_f32) std::copy(acc + pairs, acc + dim, out_row + pairs);
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
